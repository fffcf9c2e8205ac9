from structgen.config.flags import add_set_argument

NAME = "assign"
HELP = "the leaf of every image under a trained run, with its probabilities, as a CSV"


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="run folder or checkpoint file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="PATH", help="a folder of images (recursive), one image file, an "
                                                       ".npz / idx-ubyte file, or a raw .beton file")
    src.add_argument("--dataset", nargs="?", const="", metavar="NAME",
                     help="a dataset by name (with --set data.*=...); without NAME the run's own data")
    p.add_argument("--split", choices=("train", "test", "all"), default="all", help="with --dataset (default all)")
    p.add_argument("--out", default="assignments.csv", help="CSV to write (default assignments.csv)")
    p.add_argument("--batch-size", type=int, default=256, help="images decoded and scored at a time (default 256)")
    p.add_argument("--top-k", type=int, default=0, help="only the k most probable leaves per image, not every leaf")
    p.add_argument("--latents", action="store_true", help="also write the root latent means to <out>.latents.npy")
    p.add_argument("--on-bad-image", choices=("error", "skip"), default="error",
                   help="an unreadable image stops the command (error) or is logged and left out (skip)")
    add_set_argument(p, "data keys for --dataset, e.g. --set data.path=DIR")


def run(args) -> int:
    from structgen.api import assign_to_csv
    from structgen.config import ConfigError

    if args.batch_size < 1 or args.top_k < 0:
        raise ConfigError("assign: --batch-size must be >= 1 and --top-k >= 0")
    bad = [o for o in args.overrides if not o.startswith("data.")]
    if bad:
        raise ConfigError(f"assign --set {bad[0]}: only data.* keys choose what to assign")
    csv_path, npy, rows = assign_to_csv(args.run, args.out, args.images, dataset=args.dataset or None,
                                        split=args.split, overrides=args.overrides, batch_size=args.batch_size,
                                        top_k=args.top_k, latents=args.latents, on_bad_image=args.on_bad_image)
    print(f"assigned {rows} images: {csv_path}" + (f"  (root latent means: {npy})" if npy else ""))
    return 0
