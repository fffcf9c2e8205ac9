NAME = "sample"
HELP = "generate with a trained DDPM run: recons, recons_all_leaves, sample, sample_all_leaves"

MODES = ("recons", "recons_all_leaves", "sample", "sample_all_leaves")   # structgen.diffusion.modes.MODES


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="DDPM run folder or checkpoint file")
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--n", type=int, help="root samples / test images (default diffusion.n_samples)")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), help="default diffusion.sampler")
    p.add_argument("--steps", type=int, help="DDIM steps (default diffusion.n_steps)")
    p.add_argument("--eta", type=float, help="DDIM eta in [0, 1] (default diffusion.eta)")
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance weight w (default diffusion.guidance_weight)")
    p.add_argument("--leaf-choice", choices=("max", "sample"),
                   help="recons / sample: most probable leaf or one drawn from the leaf probabilities")
    p.add_argument("--seed", type=int, help="default run.seed")
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN/samples/<mode>-<sampler>)")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def run(args) -> int:
    from structgen.ddpm_api import sample

    for path in sample(args.run, args.mode, args.n, sampler=args.sampler, steps=args.steps, eta=args.eta,
                       guidance=args.guidance, leaf_choice=args.leaf_choice, seed=args.seed,
                       overrides=args.overrides, out_dir=args.out):
        print(path)
    return 0
