from structgen.config.flags import add_set_argument

NAME = "evaluate"
HELP = "test-set metrics, baselines and figures of a trained run"


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="run folder or checkpoint file")
    add_set_argument(p, "override evaluation keys, e.g. --set evaluation.compute_ll=true")


def run(args) -> int:
    from structgen.api import evaluate_run

    evaluate_run(args.run, overrides=args.overrides)
    return 0
