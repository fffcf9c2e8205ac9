"""One module per `structgen` subcommand: NAME, HELP, add_arguments(parser), run(args) -> int.

Modules are imported only to build the parser; heavy imports stay inside `run`.
"""
from structgen.config.flags import add_set_argument

COMMANDS = ["info", "prepare_data", "config", "train_tree", "evaluate", "generate", "train_classifier", "train_ddpm",
            "sample", "compare_ddpm", "score_ddpm", "assign", "export_tree"]


def add_config_arguments(p) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config (see configs/); defaults apply without it")
    add_set_argument(p, "override one key, e.g. --set training.lr=3e-4 (repeatable)")


def add_sampler_arguments(p) -> None:
    """How a trained DDPM samples; each flag left out takes the run's own setting."""
    p.add_argument("--sampler", choices=("ddpm", "ddim"), help="default diffusion.sampler")
    p.add_argument("--steps", type=int, help="DDIM steps (default diffusion.n_steps)")
    p.add_argument("--eta", type=float, help="DDIM eta in [0, 1] (default diffusion.eta)")
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance weight w (default diffusion.guidance_weight)")
    p.add_argument("--strength", type=float,
                   help="start from the leaf's VAE image noised to strength*(T-1) (SDEdit), in (0, 1]; "
                        "1 = pure noise (default diffusion.strength)")
    p.add_argument("--seed", type=int, help="default run.seed")
