from structgen.config.dump import config_to_dict, config_to_yaml, save_config
from structgen.config.load import ConfigError, all_keys, load_config, parse_override
from structgen.config.schema import Config

__all__ = ["Config", "ConfigError", "load_config", "parse_override", "all_keys", "save_config",
           "config_to_yaml", "config_to_dict"]
