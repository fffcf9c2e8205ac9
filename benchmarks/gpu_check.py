"""The CUDA paths on one GPU, checked and timed in one short prepared run (issues #14 and #18).

    python benchmarks/gpu_check.py --out DIR [--data-dir DIR] [--device cuda] [--quick]

For a lent GPU machine, where each minute counts: every part is time-boxed, and DIR/gpu_check.json
is rewritten after each part, so a run cut short still reports what it reached. On a machine
without a GPU, ``--device cpu --quick`` runs the same parts small (how the script itself is tested).

Parts:
  equivalence  one full-tree step of a 4-leaf MNIST tree (reference spectral norm) in fp32, fp32
               channels-last, bf16 and fp16 autocast on the device, against fp32 on the CPU: loss,
               gradient cosine and relative gap
  transfers    pinned + non_blocking uint8 batches (`to_device_float`: evaluation passes, the memory
               loader) equal plain copies
  ddp          two processes on the one device: structgen's Context.wrap (DDP + global-batch BatchNorm)
               on the device's tensors, one SGD step of the full tree and of a sub-tree; parameters
               equal one process on the whole batch. NCCL is tried first (it refuses two ranks on one
               GPU, which is then reported), then gloo
  ffcv         (when ffcv imports) FFCVLoader with ToDevice: batches arrive on the device, equal to
               the CPU loader's
  speed        images/s of the full-tree train step at 2 and 10 leaves, the sub-tree step, the
               routing pass and the no-grad forward (MNIST and CIFAR-10 trees), and of the DDPM UNet
               step (MNIST and CIFAR-10 profiles), in fp32, bf16, bf16 + channels-last, at two batch
               sizes; peak device memory; gradient bytes that DDP all-reduces per step
  end_to_end   `train_tree` on MNIST on the device (the reference's 5/3/1/3 schedule; bf16 and
               channels-last unless GPU_CHECK_PRECISION holds other `--set` items, e.g.
               "run.precision=fp32") in a child process with a deadline, its per-phase seconds
               from metrics.jsonl, then `train_ddpm` for one epoch on 4,096 images
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from structgen.launch.hosts import free_loopback_port                          # noqa: E402
from structgen.models.elbo import Clamps, total_loss                          # noqa: E402
from structgen.models.objective import Contrastive, FullTreeObjective, SubTreeObjective  # noqa: E402
from structgen.models.treevae import ModelSpec, SubTree, TreeVAE               # noqa: E402
from structgen.runtime.precision import StepPrecision                          # noqa: E402
from structgen.tree.topology import Tree                                       # noqa: E402

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
# The trees timed here and counted by scaling_model.py: (image shape, ModelSpec keys, contrastive),
# the MNIST and CIFAR-10 profiles' models.
TREE_SPECS = {"mnist": (MNIST, {"spectral_norm": "reference"}, False),
              "cifar10": (CIFAR, {"encoder": "cnn2", "dim_mod_conv": True, "spectral_norm": "none"}, True)}


class Report:
    """The results so far, rewritten to disk after every part."""

    def __init__(self, out: Path):
        self.path = out / "gpu_check.json"
        self.data: dict = {}

    def part(self, name: str, fn, *args):
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            result = fn(*args)
        except Exception as err:               # noqa: BLE001 (a failed part is a result; the rest still run)
            result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.perf_counter() - start, 1)
        self.data[name] = result
        self.path.write_text(json.dumps(self.data, indent=1))
        print(json.dumps({k: v for k, v in result.items() if k != "traceback"}, indent=1)[:4000], flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "device": str(device), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, nccl=".".join(map(str, torch.cuda.nccl.version())))
    return info


# --- equivalence -----------------------------------------------------------------------------

def step_result(precision: StepPrecision, device: torch.device, seed: int = 0):
    """Loss and flat (unscaled) gradients of one full-tree step of a fixed 4-leaf tree."""
    if precision.scaler is not None:
        # The default scale (2^16) overflows on a loss of hundreds of nats until it has been lowered
        # a few times (tests/test_precision.py); start low so that one step has gradients to compare.
        precision.scaler = torch.amp.GradScaler(device.type, init_scale=8.0)
    torch.manual_seed(seed)
    model = TreeVAE(ModelSpec(MNIST, spectral_norm="reference"), Tree.complete(2)).to(device)
    objective = precision.module(FullTreeObjective(model, Clamps()))
    x = torch.rand(64, *MNIST, generator=torch.Generator().manual_seed(1)).to(device)
    with precision.autocast():
        torch.manual_seed(seed + 1)          # the same sampling noise for every precision (CPU generator)
        out = objective(precision.batch(x))
        loss = total_loss(out, 0.5)
    precision.backward(loss)
    grads = torch.cat([p.grad.flatten().float().cpu() for p in model.parameters() if p.grad is not None])
    assert grads.isfinite().all(), f"{precision.name}: {int((~grads.isfinite()).sum())} non-finite gradient entries"
    if precision.scaler is not None:
        grads = grads / precision.scaler.get_scale()
    return float(loss.detach()), grads


def equivalence(device: torch.device) -> dict:
    from structgen.models import gaussian as G

    real_sample = G.sample

    def cpu_noise(mu, var, generator=None):   # one noise stream whatever the device: draws on the CPU
        return mu + torch.randn(mu.shape).to(mu.device, mu.dtype) * torch.sqrt(var + G.EPS)

    G.sample = cpu_noise
    try:
        base_loss, base_grads = step_result(StepPrecision("fp32", False, torch.device("cpu")), torch.device("cpu"))
        rows = {}
        for name, (prec, cl) in {"fp32": ("fp32", False), "fp32+channels_last": ("fp32", True),
                                 "bf16": ("bf16", False), "bf16+channels_last": ("bf16", True),
                                 "fp16": ("fp16", False)}.items():
            try:
                loss, grads = step_result(StepPrecision(prec, cl, device), device)
            except AssertionError as err:
                rows[name] = {"error": str(err)}
                continue
            rows[name] = {"loss": round(loss, 4), "loss_rel_gap": abs(loss - base_loss) / abs(base_loss),
                          "grad_cosine": float(torch.nn.functional.cosine_similarity(grads, base_grads, dim=0)),
                          "grad_rel_gap": float((grads - base_grads).norm() / base_grads.norm())}
    finally:
        G.sample = real_sample
    return {"cpu_fp32_loss": round(base_loss, 4), "on_device": rows}


# --- transfers -------------------------------------------------------------------------------

def transfers(device: torch.device) -> dict:
    from structgen.data.memory_loader import TensorLoader, to_device_float

    images = torch.randint(0, 256, (4096, *MNIST), dtype=torch.uint8)
    plain = images.to(device).float().div_(255.0)
    fast = to_device_float(images, device)
    loader = TensorLoader(images.numpy(), torch.zeros(4096, dtype=torch.long).numpy(), 512, shuffle=True, seed=3,
                          device=device)
    batches = list(loader)
    first_x, _, first_idx = batches[0]
    same_batch = torch.equal(first_x, images[first_idx.cpu()].to(device).float() / 255.0)
    return {"pinned_non_blocking_equal": bool(torch.equal(plain, fast)), "on_device": str(fast.device),
            "loader_batch_device": str(first_x.device), "loader_batch_equal": bool(same_batch),
            "loader_batches": len(batches)}


# --- ddp -------------------------------------------------------------------------------------

def ddp_rank(rank: int, backend: str, port: int, out: Path, device: str) -> None:
    """One rank of the two-process check (this script re-run with --ddp-rank)."""
    import torch.distributed as dist
    from ray_helpers import one_step

    from structgen.runtime.context import Context

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", 0)          # NCCL's device_id needs an index (init_distributed gives one)
    kwargs = {"device_id": dev} if backend == "nccl" else {}
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, **kwargs)
    ctx = Context(run_dir=out, device=dev, rank=rank, world_size=2)
    states = {kind: one_step(kind, rank, 2, ctx, device=device) for kind in ("full", "sub")}
    if rank == 0:
        torch.save({k: {n: t.cpu() for n, t in s.items()} for k, s in states.items()}, out / f"ddp_{backend}.pt")
    dist.destroy_process_group()


def ddp(device: torch.device, out: Path) -> dict:
    from ray_helpers import one_step

    single = {kind: {n: t.cpu() for n, t in one_step(kind, 0, 1, None, device=str(device)).items()}
              for kind in ("full", "sub")}
    result = {}
    for backend in (["nccl", "gloo"] if device.type == "cuda" else ["gloo"]):
        port = free_loopback_port()
        procs = [subprocess.Popen([sys.executable, __file__, "--out", str(out), "--device", str(device),
                                   "--ddp-rank", str(r), "--backend", backend, "--port", str(port)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
        try:
            logs = [p.communicate(timeout=60)[0] for p in procs]
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            result[backend] = {"ok": False, "error": "no answer in 60 s"}
            continue
        if any(p.returncode for p in procs):
            tail = "\n".join(line for log in logs for line in log.splitlines()[-4:])
            result[backend] = {"ok": False, "error": tail[-1500:]}
            continue
        ranks = torch.load(out / f"ddp_{backend}.pt")
        gaps = {kind: max(float((ranks[kind][n].float() - t.float()).abs().max()) for n, t in single[kind].items())
                for kind in single}
        result[backend] = {"ok": True, "max_abs_param_gap_vs_one_process": gaps}
    return result


# --- ffcv ------------------------------------------------------------------------------------

def as_pixels(x: torch.Tensor) -> torch.Tensor:
    return (x * 255.0).round().to(torch.uint8)


def ffcv_to_device(device: torch.device, out: Path) -> dict:
    import numpy as np

    from structgen.data import ImageSet
    from structgen.data.ffcv_files import write_beton
    from structgen.data.ffcv_loader import FFCVLoader

    rng = np.random.default_rng(0)
    ds = ImageSet(rng.integers(0, 256, (1024, *MNIST), dtype=np.uint8), rng.integers(0, 10, 1024).astype(np.int64),
                  "mnist", "train", [str(i) for i in range(10)])
    workers = min(4, os.cpu_count() or 1)
    path = write_beton(ds, out / "check.beton", num_workers=workers)
    pixels = torch.from_numpy(ds.images)
    results = {}
    for stream in (False, True):
        for synced in (False, True):
            batches = []
            for x, _, idx in FFCVLoader(path, 256, shuffle=True, seed=1, device=device, stream=stream,
                                        num_workers=workers):
                if synced:
                    sync(device)
                batches.append((x.cpu(), idx.cpu(), str(x.device)))
            on_cpu = list(FFCVLoader(path, 256, shuffle=True, seed=1, device="cpu", stream=stream,
                                     num_workers=workers))
            results[f"{'streamed' if stream else 'os_cache'}{' synced' if synced else ''}"] = {
                "batch_device": batches[0][2],
                "same_order_as_cpu": all(torch.equal(a[1], b[2]) for a, b in zip(batches, on_cpu)),
                # Pixels, not floats: the device's x / 255 may differ from the CPU's in the last bit.
                "images_right": all(torch.equal(as_pixels(x), pixels[idx]) for x, idx, _ in batches),
                "max_abs_diff_to_cpu_batches": max(float((a[0] - b[0]).abs().max()) for a, b in zip(batches, on_cpu)),
                "cpu_images_right": all(torch.equal(as_pixels(b[0]), pixels[b[2]]) for b in on_cpu)}
    (out / "check.beton").unlink()
    return results


# --- speed -----------------------------------------------------------------------------------

def grown(spec: ModelSpec, leaves: int, device: torch.device = torch.device("cpu")) -> TreeVAE:
    """A tree of ``leaves`` leaves, grown breadth-first (as benchmarks/tree_throughput.py's)."""
    model = TreeVAE(spec)
    while len(model.tree.leaves()) < leaves:
        leaf = min(model.tree.leaves(), key=len)
        model.attach(leaf, SubTree(model, leaf))
    return model.to(device)


def rate(step, batch: int, device: torch.device, seconds: float) -> float:
    """Images/s of ``step`` (after 3 warm-up calls), over at least 5 calls and about ``seconds``."""
    for _ in range(3):
        step()
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls < 5 or time.perf_counter() - start < seconds:
        step()
        calls += 1
        if calls % 5 == 0:
            sync(device)
    sync(device)
    return batch * calls / (time.perf_counter() - start)


def tree_rates(shape, spec_keys: dict, leaves: int, batch: int, precision: StepPrecision, device, seconds,
               contrastive: bool) -> dict:
    torch.manual_seed(0)
    spec = ModelSpec(shape, contrastive=contrastive, **spec_keys)
    model = grown(spec, leaves, device)
    extra = Contrastive(1.0, "InfoNCE,instancewise_full") if contrastive else None
    objective = precision.module(FullTreeObjective(model, Clamps(), extra))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = precision.batch(torch.rand(batch, *shape, device=device))

    def train():
        model.train()
        with precision.autocast():
            loss = total_loss(objective(x), 1.0)
        opt.zero_grad(set_to_none=True)
        precision.backward(loss)
        precision.step(opt)

    def route():
        model.eval()
        with torch.no_grad():
            model.predict(x)

    def forward():
        model.eval()
        with torch.no_grad():
            model(x)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row = {"train": rate(train, batch, device, seconds)}
    if device.type == "cuda":
        row["peak_train_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    if precision.name == "fp32" and not precision.channels_last:
        row["route"] = rate(route, batch, device, seconds / 2)
        row["forward_no_grad"] = rate(forward, batch, device, seconds / 2)
        leaf = model.tree.leaves()[-1]
        sub = SubTree(model, leaf).to(device)
        sub_objective = SubTreeObjective(model, sub, Clamps())
        sub_opt = torch.optim.Adam(sub.parameters(), lr=1e-4)

        def subtree():
            model.eval()
            loss = total_loss(sub_objective(x), 1.0)
            sub_opt.zero_grad(set_to_none=True)
            loss.backward()
            sub_opt.step()

        row["subtree_train"] = rate(subtree, batch, device, seconds / 2)
        row["grad_mib"] = round(sum(p.numel() for p in model.parameters()) * 4 / 2**20, 3)
        row["batchnorms"] = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}


def unet_rates(shape, dim: int, batch: int, precision: StepPrecision, device, seconds) -> dict:
    import torch.nn.functional as F

    from structgen.diffusion.unet import UNet, UNetSpec

    torch.manual_seed(0)
    spec = UNetSpec(shape, dim=dim)
    unet = precision.module(UNet(spec).to(device))
    opt = torch.optim.Adam(unet.parameters(), lr=2e-4)
    x_t, recon, noise = (precision.batch(torch.randn(batch, *shape, device=device)) for _ in range(3))
    t = torch.randint(0, 1000, (batch,), device=device)
    signal = torch.randn(batch, spec.emb_dim, device=device)

    def train():
        unet.train()
        with precision.autocast():
            loss = F.mse_loss(unet(x_t, t, recon, signal).float(), noise)
        opt.zero_grad(set_to_none=True)
        precision.backward(loss)
        precision.step(opt)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row = {"train": round(rate(train, batch, device, seconds), 1),
           "grad_mib": round(sum(p.numel() for p in unet.parameters()) * 4 / 2**20, 2)}
    if device.type == "cuda":
        row["peak_train_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return row


def speed(device: torch.device, quick: bool) -> dict:
    seconds = 0.2 if quick else 1.5
    batches = [32] if quick else [256, 1024]
    precisions = [("fp32", False), ("bf16", False), ("bf16", True)]
    results: dict = {}
    for dataset, (shape, keys, contrastive) in TREE_SPECS.items():
        label = f"{dataset}_tree"
        for leaves in (2, 10):
            for batch in batches:
                for prec, cl in precisions:
                    name = f"{label} leaves={leaves} batch={batch} {prec}{'+cl' if cl else ''}"
                    results[name] = tree_rates(shape, keys, leaves, batch, StepPrecision(prec, cl, device), device,
                                               seconds, contrastive)
                    print(name, results[name], flush=True)
    for label, shape in (("mnist_unet", MNIST), ("cifar10_unet", CIFAR)):
        for batch in ([16] if quick else [256]):
            for prec, cl in precisions:
                name = f"{label} dim=64 batch={batch} {prec}{'+cl' if cl else ''}"
                results[name] = unet_rates(shape, 16 if quick else 64, batch, StepPrecision(prec, cl, device),
                                           device, seconds)
                print(name, results[name], flush=True)
    return results


# --- end to end ------------------------------------------------------------------------------

def end_to_end(device: torch.device, work: Path, out: Path, data_dir: str | None, quick: bool,
               deadline_s: float) -> dict:
    """`train_tree` + `train_ddpm` in a child process (killed at the deadline), then read its log."""
    runs = work / "runs"
    child = subprocess.Popen([sys.executable, __file__, "--out", str(out), "--work", str(work), "--device", str(device),
                              "--end-to-end-child", *(["--data-dir", data_dir] if data_dir else []),
                              *(["--quick"] if quick else [])],
                             stdout=open(out / "end_to_end.log", "w"), stderr=subprocess.STDOUT)
    try:
        child.wait(timeout=deadline_s)
        finished = child.returncode == 0
    except subprocess.TimeoutExpired:
        child.kill()
        finished = False
    result = {"finished": finished, "returncode": child.returncode}
    for run in sorted(runs.glob("*/*/metrics.jsonl")):
        records = [json.loads(line) for line in run.read_text().splitlines()]
        result[run.parent.name] = phase_seconds(records)
    return result


def phase_seconds(records: list[dict]) -> dict:
    """Seconds per phase kind (the gap before each record is charged to it), the last images/s
    and peak memory of each, and the evaluation's figures."""
    phases: dict = {}
    for before, r in zip(records, records[1:]):
        key = r.get("kind", r["event"]) if r["event"] == "epoch" else r["event"]
        entry = phases.setdefault(key, {"records": 0, "seconds": 0.0})
        entry["records"] += 1
        entry["seconds"] = round(entry["seconds"] + r["time"] - before["time"], 2)
        for k in ("images_per_s", "peak_cuda_mb", "peak_rss_mb"):
            if k in r:
                entry[k] = round(r[k], 1)
    phases["first_to_last_record_s"] = round(records[-1]["time"] - records[0]["time"], 1) if records else 0
    evaluation = [r for r in records if r["event"] == "evaluation"]
    if evaluation:
        phases["evaluation_figures"] = {k: v for k, v in evaluation[-1].items() if isinstance(v, (int, float))}
    return phases


def end_to_end_child(device: torch.device, out: Path, data_dir: str | None, quick: bool) -> None:
    from structgen.api import train_tree
    from structgen.config import load_config
    from structgen.ddpm_api import train_ddpm

    common = [f"run.runs_dir={out / 'runs'}", f"run.device={device.type}", "run.progress=plain",
              *os.environ.get("GPU_CHECK_PRECISION", "run.precision=bf16 run.channels_last=true").split()]
    if data_dir:
        common.append(f"data.data_dir={data_dir}")
    schedule = ["training.num_epochs=5", "training.num_epochs_smalltree=3",
                "training.num_epochs_intermediate_fulltrain=1", "training.num_epochs_finetuning=3"]
    if quick:
        common.append("data.dataset=digits")
        schedule = ["training.num_epochs=1", "training.num_epochs_smalltree=1",
                    "training.num_epochs_intermediate_fulltrain=1", "training.num_epochs_finetuning=1",
                    "training.num_clusters_tree=3"]
    start = time.perf_counter()
    vae_dir, report = train_tree(load_config(ROOT / "configs/mnist.yml", common + schedule + ["run.name=tree"]))
    print(f"train_tree: {time.perf_counter() - start:.1f} s; report {json.dumps(report, default=str)[:2000]}",
          flush=True)
    start = time.perf_counter()
    ddpm = ["run.name=ddpm", "diffusion.epochs=1", f"data.train_subset={256 if quick else 4096}",
            "diffusion.sample_every=0"] + (["diffusion.dim=16", "diffusion.batch_size=32"] if quick else [])
    train_ddpm(load_config(ROOT / "configs/mnist.yml", common + ddpm), vae_dir)
    print(f"train_ddpm: {time.perf_counter() - start:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where gpu_check.json and the logs go")
    parser.add_argument("--work", type=Path, default=None, help="run folders and scratch files (default: --out)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-dir", default=None, help="folder holding mnist/ (default: structgen's)")
    parser.add_argument("--quick", action="store_true", help="small sizes (a CPU check of this script)")
    parser.add_argument("--parts", nargs="+", default=["equivalence", "transfers", "ddp", "ffcv", "speed",
                                                       "end_to_end"])
    parser.add_argument("--end-to-end-deadline", type=float, default=180.0, help="seconds")
    parser.add_argument("--ddp-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="gloo", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--end-to-end-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work = args.work or args.out
    for folder in (args.out, args.work):
        folder.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if args.ddp_rank is not None:
        return ddp_rank(args.ddp_rank, args.backend, args.port, args.work, args.device)
    if args.end_to_end_child:
        return end_to_end_child(device, args.work, args.data_dir, args.quick)
    report = Report(args.out)
    report.part("environment", environment, device)
    parts = {"equivalence": (equivalence, device), "transfers": (transfers, device), "ddp": (ddp, device, args.work),
             "ffcv": (ffcv_to_device, device, args.work), "speed": (speed, device, args.quick),
             "end_to_end": (end_to_end, device, args.work, args.out, args.data_dir, args.quick,
                            args.end_to_end_deadline)}
    for name in args.parts:
        fn, *fn_args = parts[name]
        report.part(name, fn, *fn_args)
    print(f"written: {report.path}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
