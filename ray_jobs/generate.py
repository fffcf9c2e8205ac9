"""Generate images from a trained run on a Ray cluster: one Ray task per worker, each drawing
its share of the images with its own seed into its own shard folder.

    python ray_jobs/generate.py --run runs/digits/demo --mode vae_samples --n 64 --num-workers 2
    python ray_jobs/generate.py --run runs/digits/ddpm1 --mode sample_all_leaves --n 8
TreeVAE runs take the modes vae_samples | vae_recons; DDPM runs recons | recons_all_leaves |
sample | sample_all_leaves.
"""
import sys
from pathlib import Path

import _args  # noqa: F401  (puts the repository on sys.path)

TREE_MODES = ("vae_samples", "vae_recons")


def shard(run: str, mode: str, n: int, seed: int, out: str) -> list[str]:
    """One worker's share (runs inside a Ray task)."""
    if mode in TREE_MODES:
        from structgen.api import load_model
        from structgen.config import load_config
        from structgen.eval.figures import write_generations
        from structgen.train.data import load_run_data

        cfg = load_config(Path(run) / "config.yml")
        model, _ = load_model(run)
        test = load_run_data(cfg).test if mode == "vae_recons" else None
        return [str(p) for p in write_generations(model, mode, Path(out), n, seed, test=test)]
    from structgen.diffusion.api import sample
    return [str(p) for p in sample(run, mode, n, seed=seed, out_dir=out)]


def main(argv=None) -> int:
    parser = _args.job_parser(__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="trained TreeVAE or DDPM run folder")
    parser.add_argument("--mode", required=True)
    parser.add_argument("--n", type=int, default=64, help="images in total")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from structgen.launch.ray_cluster import init_ray

    workers = args.num_workers or 1
    ray = init_ray(args.address)
    task = ray.remote(num_cpus=args.cpus_per_worker or 1, num_gpus=1 if args.use_gpu else 0)(shard)
    base = Path(args.run) / "samples" / f"ray-{args.mode}"
    sizes = [args.n // workers + (k < args.n % workers) for k in range(workers)]
    futures = [task.remote(str(Path(args.run).resolve()), args.mode, size, args.seed + k, str((base / f"shard{k}").resolve()))
               for k, size in enumerate(sizes) if size]
    for paths in ray.get(futures):
        for p in paths:
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
