from structgen.commands import add_config_arguments

NAME = "config"
HELP = "print the resolved config (with one comment per key)"


def add_arguments(p) -> None:
    add_config_arguments(p)


def run(args) -> int:
    from structgen.config import config_to_yaml, load_config

    print(config_to_yaml(load_config(args.config, args.overrides)), end="")
    return 0
