from structgen.config.dump import config_to_dict, config_to_yaml, save_config
from structgen.config.load import (ConfigError, all_keys, apply_overrides, config_from_dict, load_config,
                                   parse_override)
from structgen.config.schema import Config

__all__ = ["Config", "ConfigError", "load_config", "config_from_dict", "apply_overrides", "parse_override", "all_keys",
           "save_config", "config_to_yaml", "config_to_dict"]
