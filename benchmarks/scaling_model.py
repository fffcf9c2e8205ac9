"""Scaling on paper: predicted wall time of the faithful MNIST and CIFAR-10 tree schedules and of
the DDPM on 1, 8 and 64 GPUs, from per-step costs measured on one H200 (issue #18 part 4).

    .venv/bin/python benchmarks/scaling_model.py [--gpu benchmarks/measured/h200_gpu_check.json]
        [--log benchmarks/measured/h200_mnist_reference_schedule.log] [--plot docs/scaling.png]

Inputs (measured): `benchmarks/gpu_check.py`'s images/s at batch 256 and 1024 for every step kind,
and the per-phase images/s of a whole MNIST run at the reference's 5/3/1/3 schedule on that GPU.
Counted here on the CPU: operators per train step, FLOPs per image, BatchNorm layers, gradient bytes.

The model of one DDP step at global batch B on P GPUs (B stays the method's 256: a larger global
batch would change the optimisation, not just its speed):

    t(P) = t0 + c * B / P + comm(P)       t0, c: fitted per step kind from the two batch sizes
    comm(P) = n_collectives * alpha(P) + 2 (P - 1) / P * gradient_bytes / beta(P)

n_collectives = 2 per BatchNorm layer (global-batch statistics: one all-reduce forward, one
backward; structgen/runtime/global_batchnorm.py) + one per 25 MB DDP gradient bucket. alpha and
beta are NOT measured here (one GPU): ASSUMED values for an 8-GPU NVSwitch node and for 8 such
nodes on 400 Gb/s InfiniBand per GPU, printed with the results. A phase's step time in the real
loop is its measured one-GPU time scaled by t(P) / t(1).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from structgen.models.elbo import Clamps, total_loss                          # noqa: E402
from structgen.models.objective import Contrastive, FullTreeObjective, SubTreeObjective  # noqa: E402
from structgen.models.treevae import ModelSpec, SubTree                        # noqa: E402
from gpu_check import MNIST, TREE_SPECS as SPECS, grown    # noqa: E402 (the trees it timed)

BATCH = 256
BUCKET_BYTES = 25 * 2**20                       # DDP's default gradient bucket
# (alpha seconds per small all-reduce, beta bytes/s all-reduce bus bandwidth): ASSUMED, see docstring.
LINKS = {1: (0.0, math.inf), 8: (10e-6, 300e9), 64: (30e-6, 40e9)}
GPUS = (1, 8, 64)
# Faithful schedules (configs/*.yml): epochs per phase kind; the measured run used 5/3/1/3.
FAITHFUL = {"mnist": {"initial": 150, "subtree": 150, "intermediate": 80, "finetune": 200},
            "cifar10": {"initial": 150, "subtree": 150, "intermediate": 0, "finetune": 0}}
MEASURED_EPOCHS = {"initial": 5, "subtree": 3, "intermediate": 1, "finetune": 3}
TRAIN_IMAGES = {"mnist": 60_000, "cifar10": 50_000}
DDPM_EPOCHS = 1000


# --- counted on the CPU ----------------------------------------------------------------------

class OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Operators that launch work (views excluded): on a GPU each is one or more kernel launches."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not getattr(func, "is_view", False):
            self.ops += 1
        return func(*args, **(kwargs or {}))


def step_costs(name: str, leaves: int, kind: str) -> dict:
    """Ops per step (forward + backward), FLOPs per image, BatchNorms under DDP, gradient bytes."""
    from torch.utils.flop_counter import FlopCounterMode

    shape, keys, contrastive = SPECS[name]
    torch.manual_seed(0)
    model = grown(ModelSpec(shape, contrastive=contrastive, **keys), leaves)
    extra = Contrastive(1.0, "InfoNCE,instancewise_full") if contrastive else None
    if kind == "full":
        trained, objective = model, FullTreeObjective(model, Clamps(), extra)
        model.train()
    else:
        trained = SubTree(model, model.tree.leaves()[-1])
        objective = SubTreeObjective(model, trained, Clamps())
        model.eval()
    x = torch.rand(8, *shape)
    counter, flops = OpCounter(), FlopCounterMode(display=False)
    with counter, flops:
        total_loss(objective(x), 1.0).backward()
    return {"ops": counter.ops, "flops_per_image": flops.get_total_flops() / 8,
            "batchnorms": sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in trained.modules()),
            "grad_bytes": 4 * sum(p.numel() for p in trained.parameters())}


def unet_costs(shape) -> dict:
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from structgen.diffusion.unet import UNet, UNetSpec

    spec = UNetSpec(shape, dim=64)
    unet = UNet(spec)
    x = torch.randn(4, *shape)
    counter, flops = OpCounter(), FlopCounterMode(display=False)
    with counter, flops:
        F.mse_loss(unet(x, torch.randint(0, 1000, (4,)), x, torch.randn(4, spec.emb_dim)), x).backward()
    return {"ops": counter.ops, "flops_per_image": flops.get_total_flops() / 4, "batchnorms": 0,
            "grad_bytes": 4 * sum(p.numel() for p in unet.parameters())}


# --- the step model --------------------------------------------------------------------------

def fit(rate_small: float, rate_large: float, small: int = 256, large: int = 1024) -> tuple[float, float]:
    """(t0, c) of t(b) = t0 + c b through the two measured points (images/s at two batch sizes)."""
    t_small, t_large = small / rate_small, large / rate_large
    c = max((t_large - t_small) / (large - small), 0.0)
    return max(t_small - c * small, 0.0), c


def comm_seconds(costs: dict, gpus: int) -> float:
    if gpus == 1:
        return 0.0
    alpha, beta = LINKS[gpus]
    collectives = 2 * costs["batchnorms"] + math.ceil(costs["grad_bytes"] / BUCKET_BYTES)
    return collectives * alpha + 2 * (gpus - 1) / gpus * costs["grad_bytes"] / beta


def step_seconds(t0: float, c: float, costs: dict, gpus: int, batch: int = BATCH) -> float:
    return t0 + c * batch / gpus + comm_seconds(costs, gpus)


# --- the measured run ------------------------------------------------------------------------

PHASE = re.compile(r"== phase (\S+): (\d+) epochs(?: below \S+ on (\d+) images)?; tree has (\d+) leaves")
EPOCH = re.compile(r"^\[(\S+)\] epoch \d+/\d+ .* (\d+) img/s")


def measured_phases(log: Path, train_images: int) -> list[dict]:
    """Each phase of the measured run: kind, leaves, images per epoch, mean images/s."""
    phases, current = [], None
    for line in log.read_text().splitlines():
        if m := PHASE.match(line):
            name, _, images, leaves = m.groups()
            kind = name.split("-")[0]
            current = {"name": name, "kind": kind, "images": int(images or train_images),
                       "leaves": int(leaves) + (1 if kind == "subtree" else 0), "rates": []}
            phases.append(current)
        elif (m := EPOCH.match(line)) and current is not None:
            current["rates"].append(float(m.group(2)))
    for p in phases:
        p["rate"] = len(p["rates"]) / sum(1 / r for r in p["rates"])   # harmonic mean: time-weighted
    return phases


# --- the check on this machine: gloo over loopback ----------------------------------------------

def _gloo_rank(rank: int, port: int, grad_bytes: int, out: Path) -> None:
    import time

    import torch.distributed as dist

    torch.set_num_threads(1)                 # as each of ray_scaling.py's two workers
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    small, big = torch.zeros(65), torch.zeros(grad_bytes // 4)
    for _ in range(20):
        dist.all_reduce(small)
    start = time.perf_counter()
    for _ in range(300):
        dist.all_reduce(small)
    alpha = (time.perf_counter() - start) / 300
    dist.all_reduce(big)
    start = time.perf_counter()
    for _ in range(5):
        dist.all_reduce(big)
    big_s = (time.perf_counter() - start) / 5
    if rank == 0:
        out.write_text(json.dumps({"alpha": alpha, "beta": grad_bytes / max(big_s - alpha, 1e-9)}))
    dist.destroy_process_group()


def gloo_links(grad_bytes: int) -> tuple[float, float]:
    """(alpha, beta) of a two-process gloo all-reduce on this machine, measured."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as sock, tempfile.TemporaryDirectory() as tmp:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        out = Path(tmp) / "links.json"
        mp.spawn(_gloo_rank, args=(port, grad_bytes, out), nprocs=2)
        links = json.loads(out.read_text())
    return links["alpha"], links["beta"]


def cpu_check() -> None:
    """The DDP share that the model predicts for benchmarks/ray_scaling.py's two workers (10-leaf
    MNIST tree without spectral norm, global batch 256), from gloo's measured alpha and beta."""
    import time

    torch.manual_seed(0)
    model = grown(ModelSpec(MNIST), 10)
    costs = {"batchnorms": sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()),
             "grad_bytes": 4 * sum(p.numel() for p in model.parameters())}
    alpha, beta = gloo_links(costs["grad_bytes"])
    LINKS[2] = (alpha, beta)
    objective = FullTreeObjective(model, Clamps())
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(BATCH // 2, *MNIST)

    def step():
        loss = total_loss(objective(x), 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(3):
        step()
    local = (time.perf_counter() - start) / 3
    comm = comm_seconds(costs, 2)
    print(f"\n== check on this machine (gloo, loopback): alpha {alpha * 1e6:.0f} us, beta {beta / 1e9:.2f} GB/s; "
          f"{costs['batchnorms']} BatchNorms, {costs['grad_bytes'] / 2**20:.1f} MB of gradients")
    print(f"  predicted DDP communication per step of 2 workers: {comm * 1e3:.1f} ms "
          f"({2 * costs['batchnorms'] + 1} all-reduces)")
    print(f"  one process, 1 thread, 128 images (one worker's shard, nothing else running): {local * 1e3:.0f} ms; "
          f"predicted 2-worker step {(local + comm) * 1e3:.0f} ms = {BATCH / (local + comm):.0f} img/s")
    print("  compare: .venv/bin/python benchmarks/ray_scaling.py --steps 5 (its 'DDP overhead' and 2-worker step)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", type=Path, default=ROOT / "benchmarks/measured/h200_gpu_check.json")
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks/measured/h200_mnist_reference_schedule.log")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs/scaling.png")
    parser.add_argument("--no-cpu-check", action="store_true", help="skip the gloo check on this machine")
    args = parser.parse_args()
    torch.set_num_threads(1)
    speed = json.loads(args.gpu.read_text())["speed"]

    def rates(name, leaves, key="train", precision="fp32"):
        row = lambda b: speed[f"{name}_tree leaves={leaves} batch={b} {precision}"][key]   # noqa: E731
        return row(256), row(1024)

    print("== one step on the H200 (fp32): t(b) = t0 + c b from batch 256 and 1024; counted on the CPU")
    print(f"{'step':<28}{'t(256) ms':>10}{'t0 ms':>8}{'c us/img':>10}{'ops':>7}{'us/op':>7}{'GFLOP/img':>10}"
          f"{'TFLOP/s':>9}{'BN':>5}{'grad MB':>9}")
    model = {}
    for name in SPECS:
        for leaves, kind in ((2, "full"), (10, "full"), (10, "sub")):
            key = "train" if kind == "full" else "subtree_train"
            t0, c = fit(*rates(name, leaves, key))
            costs = step_costs(name, leaves, kind)
            model[name, leaves, kind] = (t0, c, costs)
            t256 = t0 + c * BATCH
            print(f"{f'{name} {kind} {leaves} leaves':<28}{t256 * 1e3:>10.1f}{t0 * 1e3:>8.1f}{c * 1e6:>10.1f}"
                  f"{costs['ops']:>7}{t0 / costs['ops'] * 1e6:>7.1f}{costs['flops_per_image'] / 1e9:>10.3f}"
                  f"{costs['flops_per_image'] * BATCH / t256 / 1e12:>9.2f}{costs['batchnorms']:>5}"
                  f"{costs['grad_bytes'] / 2**20:>9.1f}")
    us_per_op = [model[k][0] / model[k][2]["ops"] for k in model]
    per_op = sorted(us_per_op)[len(us_per_op) // 2]
    unet = unet_costs(MNIST)
    unet_t = BATCH / speed["mnist_unet dim=64 batch=256 fp32"]["train"]
    unet_t0 = min(unet["ops"] * per_op, unet_t)                 # launch floor from the trees' cost per op
    unet_c = (unet_t - unet_t0) / BATCH
    print(f"{'DDPM UNet (dim 64)':<28}{unet_t * 1e3:>10.1f}{unet_t0 * 1e3:>8.1f}{unet_c * 1e6:>10.1f}"
          f"{unet['ops']:>7}{per_op * 1e6:>7.1f}{unet['flops_per_image'] / 1e9:>10.3f}"
          f"{unet['flops_per_image'] * BATCH / unet_t / 1e12:>9.2f}{0:>5}{unet['grad_bytes'] / 2**20:>9.1f}")
    print(f"  (UNet: one batch size measured; its t0 is its operator count x the trees' median {per_op * 1e6:.1f} "
          "us/op)")

    def fitted(name, kind, leaves):
        """(t0, c, costs) of a phase's step: the sub-tree step, or the full tree at ``leaves``
        (interpolated between the 2- and 10-leaf measurements)."""
        if kind == "subtree":
            return model[name, 10, "sub"]
        w = min(max((leaves - 2) / 8, 0.0), 1.0)
        (a0, ac, acost), (b0, bc, bcost) = model[name, 2, "full"], model[name, 10, "full"]
        costs = {k: acost[k] + w * (bcost[k] - acost[k]) for k in ("batchnorms", "grad_bytes")}
        return a0 + w * (b0 - a0), ac + w * (bc - ac), costs

    def scale(name, kind, leaves, gpus):
        """t(P) / t(1) of a phase's step."""
        t0, c, costs = fitted(name, kind, leaves)
        return step_seconds(t0, c, costs, gpus) / step_seconds(t0, c, costs, 1)

    phases = measured_phases(args.log, TRAIN_IMAGES["mnist"])
    print("\n== check: the measured MNIST run at 5/3/1/3 on one H200 against the step model (no loop overhead)")
    measured_s = predicted_s = 0.0
    for p in phases:
        seconds = MEASURED_EPOCHS[p["kind"]] * p["images"] / p["rate"]
        t0, c, _ = fitted("mnist", p["kind"], p["leaves"])
        model_s = MEASURED_EPOCHS[p["kind"]] * math.ceil(p["images"] / BATCH) * (t0 + c * BATCH)
        measured_s, predicted_s = measured_s + seconds, predicted_s + model_s
        print(f"  {p['name']:<16} {p['leaves']:>2} leaves {p['images']:>6} images  measured {seconds:6.1f} s  "
              f"step model {model_s:6.1f} s  ratio {seconds / model_s:4.2f}")
    print(f"  training phases: measured {measured_s:.0f} s, step model {predicted_s:.0f} s "
          f"(the loop's own per-step work: {measured_s / predicted_s:.2f}x)")
    loop_factor = measured_s / predicted_s

    def phase_seconds(name, p, gpus, grown_batch):
        """Seconds of one phase of ``name``'s faithful schedule on ``gpus`` GPUs: global batch 256,
        or 256 per GPU (``grown_batch``: fewer, larger steps; at least one step an epoch)."""
        epochs = FAITHFUL[name][p["kind"]]
        images = p["images"] * TRAIN_IMAGES[name] / TRAIN_IMAGES["mnist"]   # CIFAR: subsets alike
        steps = math.ceil((2 if name == "cifar10" else 1) * images / BATCH)    # CIFAR: two views
        t0, c, costs = fitted(name, p["kind"], p["leaves"])
        if name == "mnist":
            one = epochs * images / p["rate"]
        else:                       # no measured run: the step model x the MNIST run's loop factor
            one = epochs * steps * (t0 + c * BATCH) * loop_factor
        if not grown_batch:
            return one * step_seconds(t0, c, costs, gpus) / step_seconds(t0, c, costs, 1)
        return (one * math.ceil(steps / gpus) / steps
                * step_seconds(t0, c, costs, gpus, BATCH * gpus) / step_seconds(t0, c, costs, 1))

    vae_t0, vae_c = fit(*rates("mnist", 10, "forward_no_grad"))   # the DDPM's frozen conditioning pass

    def ddpm_seconds(gpus, grown_batch):
        batch = BATCH * gpus if grown_batch else BATCH
        steps = DDPM_EPOCHS * math.ceil(TRAIN_IMAGES["mnist"] / batch)
        return steps * (step_seconds(unet_t0, unet_c, unet, gpus, batch) + vae_t0 + vae_c * batch / gpus) * loop_factor

    print("\n== predicted wall time, hours (alpha/beta ASSUMED: "
          + ", ".join(f"P={p}: {a * 1e6:.0f} us, {b / 1e9:.0f} GB/s" for p, (a, b) in LINKS.items() if p > 1) + ")")
    curves = {}
    for grown_batch in (False, True):
        print("global batch 256 (the method's)" if not grown_batch else
              "global batch 256 x GPUs (changes the optimisation: fewer, larger steps, lr to be retuned)")
        print(f"  {'schedule':<34}" + "".join(f"{f'{g} GPU':>9}" for g in GPUS) + f"{'64 vs 1':>9}"
              f"{'sub-tree share (1 GPU)':>24}")
        for name in SPECS:
            hours, subtree = {}, 0.0
            for g in GPUS:
                seconds = [(p["kind"], phase_seconds(name, p, g, grown_batch)) for p in phases
                           if FAITHFUL[name][p["kind"]]]
                hours[g] = sum(t for _, t in seconds) / 3600
                if g == 1:
                    subtree = sum(t for kind, t in seconds if kind == "subtree") / 3600 / hours[1]
            curves[name, grown_batch] = hours
            print(f"  {f'{name} tree, faithful schedule':<34}" + "".join(f"{hours[g]:>9.2f}" for g in GPUS)
                  + f"{hours[1] / hours[64]:>8.1f}x{subtree:>24.0%}")
        ddpm = {g: ddpm_seconds(g, grown_batch) / 3600 for g in GPUS}
        curves["ddpm", grown_batch] = ddpm
        print(f"  {'DDPM, MNIST profile, 1000 epochs':<34}" + "".join(f"{ddpm[g]:>9.2f}" for g in GPUS)
              + f"{ddpm[1] / ddpm[64]:>8.1f}x{'-':>24}")
    plot(curves, args.plot)
    print(f"\nplot: {args.plot}")
    if not args.no_cpu_check:
        cpu_check()


def plot(curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"mnist": "MNIST tree, faithful", "cifar10": "CIFAR-10 tree, faithful", "ddpm": "DDPM, MNIST, 1000 epochs"}
    fig, ax = plt.subplots(figsize=(7, 4.6))
    colours = {}
    for (name, grown_batch), hours in curves.items():
        line, = ax.plot(GPUS, [hours[g] for g in GPUS], marker="o", ls="--" if grown_batch else "-",
                        color=colours.get(name), label=labels[name] + (", batch 256/GPU" if grown_batch else ""))
        colours[name] = line.get_color()
        if not grown_batch:
            ax.plot(GPUS, [hours[1] / g for g in GPUS], ls=":", color=line.get_color(), lw=1)
    ax.set(xscale="log", yscale="log", xlabel="H200 GPUs", ylabel="predicted wall time, hours",
           title="Scaling on paper: global batch 256 (solid), 256 per GPU (dashed), perfect (dotted)")
    ax.set_xticks(GPUS, [str(g) for g in GPUS])
    ax.legend(fontsize=7)
    ax.title.set_fontsize(9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
