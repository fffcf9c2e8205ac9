from structgen.config.flags import add_set_argument

NAME = "generate"
HELP = "per-leaf images from a trained run (PNG grids + .npz)"


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="run folder or checkpoint file")
    p.add_argument("--mode", required=True, choices=("vae_recons", "vae_samples"))
    p.add_argument("--n", type=int, help="number of images (default evaluation.n_generate)")
    add_set_argument(p)


def run(args) -> int:
    from structgen.api import generate

    for path in generate(args.run, args.mode, args.n, args.overrides):
        print(path)
    return 0
