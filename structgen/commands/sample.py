from structgen.commands import add_sampler_arguments
from structgen.config.flags import add_set_argument

NAME = "sample"
HELP = "generate with a trained DDPM run: recons, recons_all_leaves, sample, sample_all_leaves"

MODES = ("recons", "recons_all_leaves", "sample", "sample_all_leaves")   # structgen.diffusion.modes.MODES


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="DDPM run folder or checkpoint file")
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--n", type=int, help="root samples / test images (default diffusion.n_samples)")
    add_sampler_arguments(p)
    p.add_argument("--leaf-choice", choices=("max", "sample"),
                   help="recons / sample: most probable leaf or one drawn from the leaf probabilities")
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN/samples/<mode>-<sampler>)")
    add_set_argument(p)


def run(args) -> int:
    from structgen.ddpm_api import sample

    for path in sample(args.run, args.mode, args.n, sampler=args.sampler, steps=args.steps, eta=args.eta,
                       guidance=args.guidance, leaf_choice=args.leaf_choice, strength=args.strength, seed=args.seed,
                       overrides=args.overrides, out_dir=args.out):
        print(path)
    return 0
