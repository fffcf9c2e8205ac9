NAME = "info"
HELP = "versions, device, datasets found"


def add_arguments(p) -> None:
    p.add_argument("--data-dir", help="dataset folder to inspect (default: ../shared/data or ./data)")


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
    return 0
