from structgen.commands import add_config_arguments

NAME = "train-ddpm"
HELP = "train the Diffuse-TreeVAE DDPM on a trained TreeVAE run (stage 2)"


def add_arguments(p) -> None:
    add_config_arguments(p)
    p.add_argument("--vae", metavar="RUN_DIR", help="TreeVAE run folder (or checkpoint) to condition on; "
                   "default diffusion.vae_run")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue the newest ddpm-* run (or RUN_DIR) from its latest checkpoint")


def run(args) -> int:
    from structgen.config import apply_overrides, load_config
    from structgen.launch.distributed import run_stage
    from structgen.stages import STAGES

    cfg = load_config(args.config, args.overrides)
    if args.vae:                        # as given, not parsed as YAML like a --set value
        cfg = apply_overrides(cfg, {"diffusion.vae_run": args.vae})
    is_main, run_dir = run_stage(STAGES["ddpm"], cfg, args.resume)
    if is_main:
        print(f"DDPM run: {run_dir}")
    return 0
