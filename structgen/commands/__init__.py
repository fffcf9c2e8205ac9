"""One module per `structgen` subcommand: NAME, HELP, add_arguments(parser), run(args) -> int.

Modules are imported only to build the parser; heavy imports stay inside `run`.
"""
COMMANDS = ["info", "prepare_data", "config", "train_tree", "evaluate", "generate", "train_classifier", "train_ddpm",
            "sample", "compare_ddpm", "score_ddpm", "assign", "export_tree"]


def add_config_arguments(p) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config (see configs/); defaults apply without it")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set training.lr=3e-4 (repeatable)")
