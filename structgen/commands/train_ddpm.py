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
    from structgen.config import load_config
    from structgen.diffusion.api import train_ddpm
    from structgen.launch.distributed import decided_on_rank0, process_group, several_processes
    from structgen.runs import choose_run_dir, last_checkpoint

    cfg = load_config(args.config, args.overrides)
    if not several_processes():
        run_dir = train_ddpm(cfg, args.vae, resume=args.resume)
        print(f"DDPM run: {run_dir}")
        return 0
    # Started by torchrun (or srun) as one of several ranks: one DDP group, one run folder.
    with process_group(cfg.run.device) as ctx:
        run_dir, resume = decided_on_rank0(ctx, lambda: choose_run_dir(cfg, args.resume, "ddpm"))
        train_ddpm(cfg, args.vae, ctx=ctx, run_dir=run_dir,
                   resume_checkpoint=last_checkpoint(run_dir) if resume else None)
    if ctx.is_main:
        print(f"DDPM run: {run_dir}")
    return 0
