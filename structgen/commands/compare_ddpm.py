from structgen.commands import add_sampler_arguments

NAME = "compare-ddpm"
HELP = "the same TreeVAE root samples through several DDPM runs (e.g. conditioning none / leaf / path)"


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="DDPM runs trained on the same TreeVAE")
    p.add_argument("--n", type=int, default=4, help="root samples (default 4)")
    p.add_argument("--labels", nargs="+", help="row labels (default: each run's conditioning)")
    add_sampler_arguments(p)          # each run's own diffusion.* settings; the first run's run.seed
    p.add_argument("--out", metavar="PNG", help="default FIRST_RUN/figures/compare_ddpm.png")


def run(args) -> int:
    from structgen.ddpm_api import compare_ddpm

    print(compare_ddpm(args.runs, args.n, labels=args.labels, sampler=args.sampler, steps=args.steps, eta=args.eta,
                       guidance=args.guidance, strength=args.strength, seed=args.seed, out=args.out))
    return 0
