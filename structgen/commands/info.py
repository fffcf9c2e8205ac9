NAME = "info"
HELP = "versions, device, datasets found; with --run, where a tree run's wall time went"


def add_arguments(p) -> None:
    p.add_argument("--data-dir", help="dataset folder to inspect (default: ../shared/data or ./data)")
    p.add_argument("--run", metavar="RUN_DIR", help="a tree run's folder: print its wall minutes per part of "
                   "the schedule (finished, running or stopped runs alike)")


def run(args) -> int:
    import platform

    import torch

    from structgen import __version__
    from structgen.data import DATASETS, DataError, resolve_data_dir

    print(f"structgen {__version__}  python {platform.python_version()}  torch {torch.__version__}")
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    print(f"device: {device}  threads: {torch.get_num_threads()}")
    try:
        root = resolve_data_dir(args.data_dir)
        print(f"data_dir: {root}")
        for name, folder in (("mnist", "mnist"), ("fmnist", "fashion-mnist"), ("cifar10", "cifar10-jpeg")):
            print(f"  {name:<8} {'found' if (root / folder).exists() else 'missing'}  ({root / folder})")
    except DataError as err:
        print(f"data_dir: {err}")
    print(f"datasets: {', '.join(DATASETS)} (digits and synthetic need no files; folder and "
          f"arrays read your own images from data.path)")
    if args.run:
        print_run_parts(args.run)
    return 0


def print_run_parts(run_dir: str) -> None:
    from pathlib import Path

    from structgen.errors import RunError
    from structgen.runtime.metrics_log import read_metrics
    from structgen.runtime.part_minutes import TITLE, part_minutes, part_table

    run = Path(run_dir)
    if not (run / "config.yml").is_file() or not (run / "metrics.jsonl").is_file():
        raise RunError(f"--run {run_dir}: not a tree run's folder (it needs config.yml and metrics.jsonl)")
    records = read_metrics(run)
    print(f"run: {run}  (last record: {records[-1]['event']})" if records else f"run: {run}  (no records yet)")
    print(f"{TITLE}:\n" + part_table(part_minutes(run)))
