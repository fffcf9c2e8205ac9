"""Ray Train DDP on this machine: 2 workers vs 1 worker, and the per-step cost of DDP; with
--two-nodes, 2 workers on one Ray node vs one on each of two.

    .venv/bin/python benchmarks/ray_scaling.py [--steps 10] [--batch 256] [--leaves 10] [--two-nodes]

Each configuration runs as a real TorchTrainer job on a local Ray cluster. Inside the workers
the same full-tree train step (global batch split across workers) is timed twice: through
DDP (gradient all-reduce, global-batch BatchNorm) and as a plain local step on the same shard.
Prints images/s per configuration, the 2-vs-1 ratio, and the communication share of a step.
--two-nodes starts a head and a second node (`ray start --block`, 2 CPUs each, on loopback) and
runs the 2-worker job PACK (both on the head) and SPREAD (one per node), 1 thread per worker.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
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
        (Path(config["out"]) / f"{config['label']}.json").write_text(
            json.dumps({"t_ddp": t_ddp, "t_local": t_local}))
    ray.train.report({"t_ddp": t_ddp})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--leaves", type=int, default=10)
    parser.add_argument("--two-nodes", action="store_true", help="2 workers on one node vs on two nodes")
    args = parser.parse_args()
    print(f"full-tree train step, {args.leaves} leaves, global batch {args.batch}, {args.steps} timed steps")
    if args.two_nodes:
        two_nodes(args)
        return
    from structgen.launch.ray_cluster import init_ray

    init_ray(num_cpus=3)
    # the machine's 2 cores, shared out
    results = fit_each(args, {"1 worker": (1, 2, "PACK"), "2 workers": (2, 1, "PACK")})
    ratio = results["1 worker"]["t_ddp"] / results["2 workers"]["t_ddp"]
    print(f"  2 workers / 1 worker throughput ratio: {ratio:.2f}")


def two_nodes(args) -> None:
    from structgen.launch.hosts import free_loopback_port
    from structgen.launch.ray_cluster import init_ray
    from structgen.launch.ray_nodes import AGENT_PORT_OF_ITS_OWN, cluster_temp_dir, start_node, stop_node

    os.environ.setdefault("RAY_AUTH_MODE", "token")      # the second node and this driver show the head's token
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = f"127.0.0.1:{free_loopback_port()}"
    temp_dir = cluster_temp_dir()            # not the /tmp/ray that other clusters here may share
    node = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--disable-usage-stats",
            "--temp-dir", temp_dir, AGENT_PORT_OF_ITS_OWN]
    nodes = []
    try:
        nodes.append(start_node([ray_cli, "start", "--head", "--port", head.split(":")[1], "--include-dashboard=false",
                                 *node], ready_timeout_s=120))
        nodes.append(start_node([ray_cli, "start", "--address", head, *node], ready_timeout_s=120))
        init_ray(head)
        results = fit_each(args, {"2 workers, one node (PACK)": (2, 1, "PACK"),
                                  "2 workers, two nodes (SPREAD)": (2, 1, "SPREAD")})
    finally:
        import ray
        ray.shutdown()
        for n in reversed(nodes):
            stop_node(n, grace_s=2)
        shutil.rmtree(temp_dir, ignore_errors=True)
    one, two = results.values()
    print(f"  two nodes / one node step time: {two['t_ddp'] / one['t_ddp']:.2f}")


def fit_each(args, runs: dict[str, tuple[int, int, str]]) -> dict[str, dict]:
    """{label: (workers, threads per worker, placement)} -> {label: the timings}; prints each."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, (world, threads, placement)) in enumerate(runs.items()):
            TorchTrainer(worker, train_loop_config={"out": tmp, "steps": args.steps, "batch": args.batch,
                                                    "leaves": args.leaves, "threads": threads, "label": f"run{i}"},
                         scaling_config=ScalingConfig(num_workers=world, placement_strategy=placement),
                         run_config=RunConfig(name=f"bench-{i}", storage_path=f"{tmp}/ray")).fit()
            m = results[label] = json.loads((Path(tmp) / f"run{i}.json").read_text())
            print(f"  {label}: {args.batch / m['t_ddp']:7.0f} img/s   step {m['t_ddp'] * 1000:7.1f} ms   "
                  f"same shard without DDP {m['t_local'] * 1000:7.1f} ms   "
                  f"DDP overhead {(m['t_ddp'] - m['t_local']) / m['t_ddp']:6.1%}")
    return results


if __name__ == "__main__":
    main()
