"""The `structgen` command. Each subcommand lives in `structgen/commands/` and is thin: parse,
load the config, call the API.

Exit codes: 0 success, 2 bad input (usage, config, data, run folder, checkpoint), 3 training
diverged (non-finite loss), 130 interrupted, 1 anything else.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from structgen.commands import COMMANDS
from structgen.errors import BAD_INPUT, NonFiniteLossError

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    from structgen import __version__

    parser = argparse.ArgumentParser(prog="structgen", description="Learn a tree of clusters from unlabelled "
                                     "images (CNN-TreeVAE) and generate per-leaf images.")
    parser.add_argument("--version", action="version", version=f"structgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    handlers = {}
    for module_name in COMMANDS:
        module = importlib.import_module(f"structgen.commands.{module_name}")
        module.add_arguments(sub.add_parser(module.NAME, help=module.HELP, description=module.HELP))
        handlers[module.NAME] = module.run
    return parser, handlers


def main(argv=None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        return handlers[args.command](args)
    except BAD_INPUT as err:
        print(f"structgen: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("structgen: interrupted (the last checkpoint is kept; continue with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NonFiniteLossError as err:
        print(f"structgen: error: {err}", file=sys.stderr)
        return EXIT_DIVERGED


if __name__ == "__main__":
    sys.exit(main())
