from structgen.commands import add_config_arguments

NAME = "train-tree"
HELP = "grow, prune and finetune a CNN-TreeVAE, then evaluate it"


def add_arguments(p) -> None:
    add_config_arguments(p)
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue the last run (or RUN_DIR) from its latest checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")


def run(args) -> int:
    from structgen.config import load_config
    from structgen.launch.distributed import run_stage
    from structgen.stages import STAGES

    run_stage(STAGES["tree"], load_config(args.config, args.overrides), args.resume, evaluate=not args.no_eval)
    return 0
