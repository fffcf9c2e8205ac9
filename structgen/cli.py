"""The `structgen` command. Each subcommand is thin: parse, load the config, call the API.

Exit codes: 0 success, 2 bad input (usage, config, data, run folder, checkpoint), 3 training
diverged (non-finite loss), 130 interrupted, 1 anything else.
"""
from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config (see configs/); defaults apply without it")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set training.lr=3e-4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from structgen import __version__

    parser = argparse.ArgumentParser(prog="structgen", description="Learn a tree of clusters from unlabelled "
                                     "images (CNN-TreeVAE) and generate per-leaf images.")
    parser.add_argument("--version", action="version", version=f"structgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", help="versions, device, datasets found")
    p.add_argument("--data-dir", help="dataset folder to inspect (default: ../shared/data or ./data)")

    p = sub.add_parser("prepare-data", help="verify a dataset and print its summary")
    p.add_argument("--dataset", "-d", required=True, help="digits, mnist, fmnist, cifar10 or synthetic")
    p.add_argument("--data-dir", help="folder holding the dataset folders")
    p.add_argument("--format", choices=("memory",), default="memory",
                   help="memory: verify and summarise the in-memory arrays")
    p.add_argument("--seed", type=int, default=42, help="seed of the split for single-split datasets")

    p = sub.add_parser("config", help="print the resolved config (with one comment per key)")
    _config_args(p)

    p = sub.add_parser("train-tree", help="grow, prune and finetune a CNN-TreeVAE, then evaluate it")
    _config_args(p)
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue the last run (or RUN_DIR) from its latest checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")

    p = sub.add_parser("evaluate", help="test-set metrics, baselines and figures of a trained run")
    p.add_argument("run", metavar="RUN", help="run folder or checkpoint file")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override evaluation keys, e.g. --set evaluation.compute_ll=true")

    p = sub.add_parser("generate", help="per-leaf images from a trained run (PNG grids + .npz)")
    p.add_argument("run", metavar="RUN", help="run folder or checkpoint file")
    p.add_argument("--mode", required=True, choices=("vae_recons", "vae_samples"))
    p.add_argument("--n", type=int, help="number of images (default evaluation.n_generate)")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def _info(args) -> int:
    import platform

    import torch

    from structgen import __version__
    from structgen.data import DATASETS, DataError, resolve_data_dir

    print(f"structgen {__version__}  python {platform.python_version()}  torch {torch.__version__}")
    print(f"device: {'cuda (' + torch.cuda.get_device_name(0) + ')' if torch.cuda.is_available() else 'cpu'}"
          f"  threads: {torch.get_num_threads()}")
    try:
        root = resolve_data_dir(args.data_dir)
        print(f"data_dir: {root}")
        for name, folder in (("mnist", "mnist"), ("fmnist", "fashion-mnist"), ("cifar10", "cifar10-jpeg")):
            print(f"  {name:<8} {'found' if (root / folder).exists() else 'missing'}  ({root / folder})")
    except DataError as err:
        print(f"data_dir: {err}")
    print(f"datasets: {', '.join(DATASETS)} (digits and synthetic need no files)")
    return 0


def _prepare(args) -> int:
    from structgen.data import format_summary, load_split, summarize

    for split in ("train", "test"):
        ds = load_split(args.dataset, split, args.data_dir, seed=args.seed)
        print(format_summary(summarize(ds)))
    print(f"{args.dataset}: OK")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from structgen.config import ConfigError
    from structgen.data import DataError
    from structgen.runs import RunError
    from structgen.train.checkpoint import CheckpointError

    try:
        if args.command == "info":
            return _info(args)
        if args.command == "prepare-data":
            return _prepare(args)
        from structgen import api
        from structgen.config import config_to_yaml, load_config

        if args.command == "config":
            print(config_to_yaml(load_config(args.config, args.overrides)), end="")
            return 0
        if args.command == "train-tree":
            cfg = load_config(args.config, args.overrides)
            api.train_tree(cfg, resume=args.resume, evaluate=not args.no_eval)
            return 0
        if args.command == "evaluate":
            api.evaluate_run(args.run, overrides=args.overrides)
            return 0
        if args.command == "generate":
            for path in api.generate(args.run, args.mode, args.n, args.overrides):
                print(path)
            return 0
    except (ConfigError, DataError, RunError, CheckpointError) as err:
        print(f"structgen: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("structgen: interrupted (the last checkpoint is kept; continue with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        from structgen.train.phase import NonFiniteLossError
        if isinstance(err, NonFiniteLossError):
            print(f"structgen: error: {err}", file=sys.stderr)
            return EXIT_DIVERGED
        raise
    return 1


if __name__ == "__main__":
    sys.exit(main())
