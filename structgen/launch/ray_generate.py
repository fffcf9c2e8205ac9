"""Generate images from a trained run on a Ray cluster: one Ray task per worker, each drawing
its share of the images with its own seed into its own shard folder.

    python -m structgen.launch.ray_generate --run runs/digits/demo --mode vae_samples --n 64 --num-workers 2
    python ray_jobs/generate.py --run runs/digits/ddpm1 --mode sample_all_leaves --n 8

TreeVAE runs take the modes vae_samples | vae_recons; DDPM runs recons | recons_all_leaves |
sample | sample_all_leaves. The Ray flags default to the run's own config (its `ray` section)
and are checked like `--set` values; a bad one exits 2 before Ray starts.
"""
from __future__ import annotations

import sys
from pathlib import Path

from structgen.launch.job_args import bad_input, job_parser, ray_flag_overrides

TREE_MODES = ("vae_samples", "vae_recons")


def shard(run: str, mode: str, n: int, seed: int, out: str) -> list[str]:
    """One worker's share (runs inside a Ray task)."""
    if mode in TREE_MODES:
        from structgen.api import load_model
        from structgen.eval.run_figures import write_generations
        from structgen.runs import run_config
        from structgen.data.run_data import load_run_data

        model, _ = load_model(run)
        test = load_run_data(run_config(run)).test if mode == "vae_recons" else None
        return [str(p) for p in write_generations(model, mode, Path(out), n, seed, test=test)]
    from structgen.ddpm_api import sample
    return [str(p) for p in sample(run, mode, n, seed=seed, out_dir=out)]


def main(argv=None) -> int:
    parser = job_parser(__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="trained TreeVAE or DDPM run folder")
    parser.add_argument("--mode", required=True)
    parser.add_argument("--n", type=int, default=64, help="images in total")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from structgen.errors import BAD_INPUT, ConfigError
    from structgen.launch.ray_cluster import init_ray
    from structgen.runs import run_config

    try:
        if args.n < 1:
            raise ConfigError(f"--n {args.n}: expected at least 1 image")
        r = run_config(args.run, args.overrides + ray_flag_overrides(args)).ray
    except BAD_INPUT as err:
        return bad_input("generate", err)
    ray = init_ray(r.address)
    task = ray.remote(num_cpus=r.cpus_per_worker, num_gpus=1 if r.use_gpu else 0)(shard)
    base = Path(args.run) / "samples" / f"ray-{args.mode}"
    sizes = [args.n // r.num_workers + (k < args.n % r.num_workers) for k in range(r.num_workers)]
    futures = [task.remote(str(Path(args.run).resolve()), args.mode, size, args.seed + k,
                           str((base / f"shard{k}").resolve()))
               for k, size in enumerate(sizes) if size]
    for paths in ray.get(futures):
        for p in paths:
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
