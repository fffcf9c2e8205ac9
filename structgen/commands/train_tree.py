from structgen.commands import add_config_arguments

NAME = "train-tree"
HELP = "grow, prune and finetune a CNN-TreeVAE, then evaluate it"


def add_arguments(p) -> None:
    add_config_arguments(p)
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue the last run (or RUN_DIR) from its latest checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")


def run(args) -> int:
    from structgen.api import train_tree
    from structgen.config import load_config
    from structgen.launch.distributed import decided_on_rank0, process_group, several_processes
    from structgen.runs import choose_run_dir, last_checkpoint

    cfg = load_config(args.config, args.overrides)
    if not several_processes():
        train_tree(cfg, resume=args.resume, evaluate=not args.no_eval)
        return 0
    # Started by torchrun (or srun) as one of several ranks: one DDP group, one run folder.
    with process_group(cfg.run.device) as ctx:
        run_dir, resume = decided_on_rank0(ctx, lambda: choose_run_dir(cfg, args.resume))
        train_tree(cfg, ctx=ctx, run_dir=run_dir, evaluate=not args.no_eval,
                   resume_checkpoint=last_checkpoint(run_dir) if resume else None)
    return 0
