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
    from structgen.ddpm_api import train_ddpm
    from structgen.launch.distributed import run_stage_on_ranks, several_processes
    from structgen.stages import STAGES

    cfg = load_config(args.config, args.overrides)
    if not several_processes():
        print(f"DDPM run: {train_ddpm(cfg, args.vae, resume=args.resume)}")
        return 0
    if args.vae:
        cfg = apply_overrides(cfg, {"diffusion.vae_run": args.vae})
    ctx, run_dir = run_stage_on_ranks(STAGES["ddpm"], cfg, args.resume)
    if ctx.is_main:
        print(f"DDPM run: {run_dir}")
    return 0
