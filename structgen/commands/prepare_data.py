NAME = "prepare-data"
HELP = "verify a dataset and print its summary"


def add_arguments(p) -> None:
    p.add_argument("--dataset", "-d", required=True, help="digits, mnist, fmnist, cifar10 or synthetic")
    p.add_argument("--data-dir", help="folder holding the dataset folders")
    p.add_argument("--format", choices=("memory",), default="memory",
                   help="memory: verify and summarise the in-memory arrays")
    p.add_argument("--seed", type=int, default=42, help="seed of the split for single-split datasets")


def run(args) -> int:
    from structgen.data import format_summary, load_split, summarize

    for split in ("train", "test"):
        print(format_summary(summarize(load_split(args.dataset, split, args.data_dir, seed=args.seed))))
    print(f"{args.dataset}: OK")
    return 0
