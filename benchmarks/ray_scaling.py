"""Ray Train DDP on this machine: 2 workers vs 1 worker, and the per-step cost of DDP.

    .venv/bin/python benchmarks/ray_scaling.py [--steps 10] [--batch 256] [--leaves 10]

Each configuration runs as a real TorchTrainer job on a local Ray cluster. Inside the workers
the same full-tree train step (global batch split across workers) is timed twice: through
DDP (gradient all-reduce, global-batch BatchNorm) and as a plain local step on the same shard.
Prints images/s per configuration, the 2-vs-1 ratio, and the communication share of a step.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def worker(config: dict) -> None:
    import ray.train
    import torch

    from structgen.launch.ray_train import ray_context
    from structgen.stages import STAGES
    from structgen.models.elbo import Clamps, total_loss
    from structgen.models.objective import FullTreeObjective
    from structgen.models.treevae import ModelSpec, SubTree, TreeVAE

    ctx = ray_context(Path(config["out"]), STAGES["tree"])
    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    model = TreeVAE(ModelSpec((1, 28, 28)))
    while len(model.tree.leaves()) < config["leaves"]:
        leaf = min(model.tree.leaves(), key=len)
        model.attach(leaf, SubTree(model, leaf))
    objective = FullTreeObjective(model, Clamps())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(config["batch"] // ctx.world_size, 1, 28, 28)

    def timed(step_fn) -> float:
        for _ in range(2):
            step_fn()
        ctx.barrier()
        start = time.perf_counter()
        for _ in range(config["steps"]):
            step_fn()
        ctx.barrier()
        return (time.perf_counter() - start) / config["steps"]

    def step(module):
        def run():
            loss = total_loss(module(x), 1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return run

    # The plain step first: ctx.wrap switches the model's BatchNorms to global-batch statistics in
    # place, after which the "plain" step would all-reduce them too.
    t_local = timed(step(objective))
    t_ddp = timed(step(ctx.wrap(objective)))
    if ctx.is_main:         # Ray's Result.metrics keeps only reports that carry a checkpoint
        (Path(config["out"]) / f"world{ctx.world_size}.json").write_text(
            json.dumps({"t_ddp": t_ddp, "t_local": t_local}))
    ray.train.report({"t_ddp": t_ddp})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--leaves", type=int, default=10)
    args = parser.parse_args()
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from structgen.launch.ray_cluster import init_ray

    init_ray(num_cpus=3)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            threads = 2 // world             # the machine's 2 cores, shared out
            TorchTrainer(worker, train_loop_config={"out": tmp, "steps": args.steps, "batch": args.batch,
                                                             "leaves": args.leaves, "threads": threads},
                                  scaling_config=ScalingConfig(num_workers=world),
                                  run_config=RunConfig(name=f"bench-{world}", storage_path=f"{tmp}/ray")).fit()
            results[world] = json.loads((Path(tmp) / f"world{world}.json").read_text())
    print(f"full-tree train step, {args.leaves} leaves, global batch {args.batch}, {args.steps} timed steps")
    for world, m in results.items():
        print(f"  {world} worker(s): {args.batch / m['t_ddp']:7.0f} img/s   step {m['t_ddp'] * 1000:7.1f} ms   "
              f"same shard without DDP {m['t_local'] * 1000:7.1f} ms   "
              f"DDP overhead {(m['t_ddp'] - m['t_local']) / m['t_ddp']:6.1%}")
    print(f"  2 workers / 1 worker throughput ratio: {results[1]['t_ddp'] / results[2]['t_ddp']:.2f}")


if __name__ == "__main__":
    main()
