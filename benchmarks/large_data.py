"""Training on a data set larger than memory: peak resident memory and images/s as the set grows.

    .venv/bin/python benchmarks/large_data.py [--sizes 60000 600000 2000000] [--dir /tmp/structgen-large]
                                              [--steps 150] [--threads 1]

For each size N it writes ``<dir>/augmnist<N>-train.beton`` (once; kept for later runs): MNIST's
60,000 training images followed by shifted copies (every copy moves each digit by up to 2
pixels, a different shift per copy), written by a generator that never holds the set (the file
stores grey images as RGB: 2,352 bytes an image, 4.7 GB at 2M). The test split is MNIST's test
set. Then, each in a fresh process so that its peak is its own:

- ``ffcv``: dataset ``beton`` (the file is the run's data, nothing is loaded) with
  ``data.loader: ffcv``: ``--steps`` shuffled training steps of a 10-leaf TreeVAE through the
  FFCV loader, then a routing pass (leaf probabilities, as growth and ``assign`` compute them)
  over all N images, read from the file a batch at a time;
- ``memory`` (60k only, the baseline): the same with the in-RAM loader, which holds the set;
- at the largest size, ``memory`` with ``data.memory_limit_gb`` below the set's size, which must
  be refused before any work, pointing to ``data.loader: ffcv``.

Printed per run: peak resident memory (VmHWM), the resident memory at the end split into
private (RssAnon) and file-backed pages (RssFile: the libraries, and any of the data file that
is mapped), training images/s and routing images/s, and the ratios of each to the 60k FFCV run.
The per-step work is the same at every size, so the ratios show what the size alone costs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MNIST_TRAIN = 60000
_SHIFT = 2                                      # pixels a copy may move a digit, each way


class AugmentedMNIST:
    """``count`` MNIST training images: the originals, then shifted copies; a source for
    ``write_beton`` (``read(start, stop)``), computed on demand."""

    def __init__(self, count: int, split: str = "train"):
        from structgen.data import load_split

        base = load_split("mnist", "train")
        self.labels_base, self.class_names = base.labels, base.class_names
        self.padded = np.pad(base.images, ((0, 0), (0, 0), (_SHIFT, _SHIFT), (_SHIFT, _SHIFT)))
        self.name, self.split, self.count, self.shape = f"augmnist{count}", split, count, base.images.shape[1:]

    def _shift(self, i: int) -> tuple[int, int]:
        copy, k = divmod(i, MNIST_TRAIN)
        if copy == 0:
            return 0, 0
        side = 2 * _SHIFT + 1
        s = (copy * 7 + k * 13) % (side * side - 1) + 1      # never (0, 0): a copy always moves
        s = s if s != side * side // 2 else 0                  # ... the centre index maps to a corner
        return s // side - _SHIFT, s % side - _SHIFT

    def read(self, start: int, stop: int):
        _, h, w = self.shape
        out = np.empty((stop - start, *self.shape), dtype=np.uint8)
        for row, i in enumerate(range(start, stop)):
            dy, dx = self._shift(i)
            k = i % MNIST_TRAIN
            out[row] = self.padded[k, :, _SHIFT + dy:_SHIFT + dy + h, _SHIFT + dx:_SHIFT + dx + w]
        return out, self.labels_base[np.arange(start, stop) % MNIST_TRAIN]


def build(folder: Path, count: int) -> Path:
    """``<folder>/augmnist<count>`` (the dataset beton prefix), writing its files if missing."""
    from structgen.data import load_split
    from structgen.data.ffcv_files import check_beton, write_beton

    prefix = folder / f"augmnist{count}"
    for split in ("train", "test"):
        path = Path(f"{prefix}-{split}.beton")
        try:
            check_beton(path)
            continue
        except Exception:  # noqa: BLE001 - missing or stale: write it
            pass
        start = time.perf_counter()
        source = AugmentedMNIST(count) if split == "train" else load_split("mnist", "test")
        write_beton(source, path)
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - start:.0f} s",
              flush=True)
    return prefix


def memory_status() -> dict:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024          # MiB
    return fields


def child(prefix: str, loader: str, steps: int, batch: int, threads: int, limit_gb: float) -> dict:
    """One measured run in this process: training steps through the loader, then a routing pass."""
    import torch

    from structgen.config import load_config
    from structgen.data.loaders import make_loader
    from structgen.data.run_data import load_run_data
    from structgen.errors import DataError
    from structgen.models.elbo import Clamps, total_loss
    from structgen.models.objective import FullTreeObjective
    from structgen.runtime.context import Context
    from structgen.runtime.leaf_probabilities import leaf_probabilities
    from tree_throughput import ten_leaf_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(None, ["data.dataset=beton", f"data.path={prefix}", f"data.loader={loader}",
                             f"data.ffcv_workers={threads}", f"data.memory_limit_gb={limit_gb}"])
    data = load_run_data(cfg)
    phases = {"loaded": memory_status()}
    start = time.perf_counter()
    try:
        train = make_loader(cfg.data, data.train.images, data.train.labels, batch, seed=0)
    except DataError as e:
        return {"refused": str(e), "seconds_to_refuse": round(time.perf_counter() - start, 2), **memory_status()}
    model = ten_leaf_model("reference")
    objective = FullTreeObjective(model, Clamps())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    done, t0 = 0, None
    for step, (x, _, _) in enumerate(train):
        if step == 2:                           # after FFCV's compile and the first page faults
            t0, done = time.perf_counter(), 0
        loss = total_loss(objective(x), 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += len(x)
        if step + 1 >= steps:
            break
    train_rate = done / (time.perf_counter() - t0)
    phases["trained"] = memory_status()
    t1 = time.perf_counter()
    probs = leaf_probabilities(model, data.train.images, Context(run_dir=Path(".")), 1000)
    route_rate = len(probs) / (time.perf_counter() - t1)
    return {"train_img_s": round(train_rate, 1), "route_img_s": round(route_rate, 1), "routed": len(probs),
            **memory_status(), "phases": phases}


def run_child(prefix: Path, loader: str, args, limit_gb: float = 0.0) -> dict:
    cmd = [sys.executable, __file__, "--child", str(prefix), "--loader", loader, "--steps", str(args.steps),
           "--batch", str(args.batch), "--threads", str(args.threads), "--limit-gb", str(limit_gb)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"child failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[60000, 600000, 2000000])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/structgen-large"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--loader", default="ffcv", help=argparse.SUPPRESS)
    parser.add_argument("--limit-gb", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.loader, args.steps, args.batch, args.threads, args.limit_gb)))
        return
    sizes = sorted(args.sizes)
    rows = []
    for n in sizes:
        prefix = build(args.dir, n)
        rows.append((n, "ffcv", run_child(prefix, "ffcv", args)))
        if n == sizes[0]:
            rows.append((n, "memory", run_child(prefix, "memory", args)))
        if n == sizes[-1]:
            limit = round(n * 784 / 2**30 / 2, 2)           # half the set's size in memory
            rows.append((n, f"memory, limit {limit} GiB", run_child(prefix, "memory", args, limit)))
        print(f"  {n}: {rows[-1][2]}", flush=True)
    base = rows[0][2]
    print(f"\n{'images':>9}  {'loader':<22}{'peak RSS MiB':>13}{'end anon':>10}{'end file':>10}"
          f"{'train img/s':>12}{'route img/s':>12}{'peak/60k':>9}{'train/60k':>10}{'route/60k':>10}")
    for n, loader, r in rows:
        if "refused" in r:
            print(f"{n:>9}  {loader:<22}{r['VmHWM']:>13.0f}  refused in {r['seconds_to_refuse']} s: "
                  f"{r['refused'][:110]}...")
            continue
        print(f"{n:>9}  {loader:<22}{r['VmHWM']:>13.0f}{r['RssAnon']:>10.0f}{r['RssFile']:>10.0f}"
              f"{r['train_img_s']:>12.0f}{r['route_img_s']:>12.0f}{r['VmHWM'] / base['VmHWM']:>9.2f}"
              f"{r['train_img_s'] / base['train_img_s']:>10.2f}{r['route_img_s'] / base['route_img_s']:>10.2f}")


if __name__ == "__main__":
    main()
