from structgen.commands import add_sampler_arguments
from structgen.config.flags import add_set_argument

NAME = "score-ddpm"
HELP = "classifier-Fréchet distance and per-leaf purity of a DDPM run's samples next to its TreeVAE's"


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="DDPM run folder or checkpoint file")
    p.add_argument("--classifier", metavar="PT",
                   help="classifier from `structgen train-classifier` (default runs/classifiers/<dataset>.pt)")
    p.add_argument("--n", type=int, default=500, help="root samples scored by CFD (default 500)")
    p.add_argument("--per-leaf", type=int, default=50, help="images per leaf for purity (default 50)")
    add_sampler_arguments(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN/scores/<sampler>)")
    add_set_argument(p)


def run(args) -> int:
    from structgen.ddpm_api import score_ddpm

    _, written = score_ddpm(args.run, classifier=args.classifier, n=args.n, per_leaf=args.per_leaf,
                            sampler=args.sampler, steps=args.steps, eta=args.eta, guidance=args.guidance,
                            strength=args.strength, seed=args.seed, overrides=args.overrides, out_dir=args.out)
    for path in written:
        print(path)
    return 0
