"""Images/s of the three ways to feed training, in one process, on MNIST and the CIFAR-10 JPEGs:

- ffcv:   FFCVLoader over a .beton file (raw pixels; for CIFAR also a JPEG field)
- memory: the in-memory TensorLoader (structgen's default)
- tv:     a torchvision-style DataLoader, --threads worker processes, one PIL image per __getitem__
          (MNIST: PIL images in memory, as torchvision.datasets.MNIST; CIFAR: ImageFolder-style,
          each JPEG opened and decoded per access)

each without augmentation and with the contrastive two-view augmentation (random resized crop,
flip, and for colour images jitter + greyscale; FFCV in its pipeline, memory through
augment.two_views on the batch, tv through torchvision.transforms per image).

    .venv/bin/python benchmarks/loaders.py [--batch 256] [--seconds 3] [--threads 1]

--threads sets torch's threads, FFCV's threads and the DataLoader's worker processes alike. The
default 1 keeps numbers stable on a shared machine: with 2 threads on 2 busy cores, OpenMP and
numba barriers wait for descheduled threads and every loader slows down by 10x or more.

Throughput counts source images (a two-view batch of B images yields 2B views). Each
measurement skips two warm-up batches (FFCV's numba compile, worker start-up; compile times are
printed) and then runs for --seconds or one epoch, whichever ends first.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from structgen.data import TensorLoader, load_split, resolve_data_dir  # noqa: E402
from structgen.data.augment import two_views  # noqa: E402
from structgen.data.ffcv_files import write_beton  # noqa: E402
from structgen.data.ffcv_loader import FFCVLoader  # noqa: E402


def measure(batches, batch_size: int, seconds: float, warmup: int = 2) -> float:
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    n, start = 0, time.perf_counter()
    for _ in it:
        n += batch_size
        if time.perf_counter() - start > seconds:
            break
    rate = n / (time.perf_counter() - start)
    if hasattr(it, "close"):
        it.close()
    return rate


# ---- torchvision-style baseline ----------------------------------------------------------
class PILSet(torch.utils.data.Dataset):
    """One PIL image per item: from memory (MNIST) or decoded from its file (CIFAR JPEGs)."""

    def __init__(self, transform, images=None, files=None):
        self.transform, self.images, self.files = transform, images, files

    def __len__(self):
        return len(self.files) if self.files is not None else len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        if self.files is not None:
            with Image.open(self.files[i]) as im:
                img = im.convert("RGB")
        else:
            img = Image.fromarray(self.images[i, 0])          # uint8 HxW: mode L
        return self.transform(img), i


def tv_transform(colour: bool, augment: bool):
    from torchvision import transforms as T

    if not augment:
        return T.ToTensor()
    ops = [T.RandomResizedCrop(28 if not colour else 32, scale=(0.2, 1.0),
                               interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip()]
    if colour:
        ops += [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2)]
    one = T.Compose(ops + [T.ToTensor()])
    return lambda img: torch.stack([one(img), one(img)])


def tv_loader(ds_kwargs, colour, augment, batch, workers):
    data = PILSet(tv_transform(colour, augment), **ds_kwargs)
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)


# ---- one dataset ------------------------------------------------------------------------
def bench(name, ds, betons, tv_kwargs, args, rows):
    colour = ds.images.shape[1] == 3
    for augment in (False, True):
        mem = TensorLoader(ds.images, ds.labels, args.batch, seed=0)
        mem_batches = ((two_views(x), y, i) for x, y, i in mem) if augment else mem
        rates = {"memory": measure(mem_batches, args.batch, args.seconds)}
        for mode, path in betons.items():
            t0 = time.perf_counter()
            ffcv = FFCVLoader(path, args.batch, seed=0, two_views=augment, num_workers=args.threads)
            it = iter(ffcv)
            next(it)                                     # first batch: compiles the pipeline
            compile_s = time.perf_counter() - t0
            it.close()
            rates[f"ffcv-{mode}"] = measure(ffcv, args.batch, args.seconds)
            print(f"  ({name} ffcv-{mode} augment={augment}: first batch after {compile_s:.1f} s)", flush=True)
        rates["tv"] = measure(tv_loader(tv_kwargs, colour, augment, args.batch, args.threads), args.batch,
                              args.seconds)
        rows.append((name, augment, rates))
        print(f"  {name} augment={augment}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in rates.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0, help="measurement time per loader")
    parser.add_argument("--threads", type=int, default=1, help="torch threads = FFCV threads = DataLoader workers")
    parser.add_argument("--data-dir", help="folder holding mnist/ and cifar10-jpeg/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="structgen-bench-") as tmp:
        tmp = Path(tmp)
        mnist = load_split("mnist", "train", args.data_dir)
        t0 = time.perf_counter()
        betons = {"raw": write_beton(mnist, tmp / "mnist-train.beton")}
        print(f"mnist: wrote {len(mnist)} images ({betons['raw'].stat().st_size / 2**20:.0f} MiB) "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        bench("mnist", mnist, betons, {"images": mnist.images}, args, rows)

        cifar = load_split("cifar10", "train", args.data_dir)
        betons = {}
        for mode in ("raw", "jpg"):
            t0 = time.perf_counter()
            betons[mode] = write_beton(cifar, tmp / f"cifar10-train-{mode}.beton", image_mode=mode)
            print(f"cifar10: wrote {len(cifar)} images {mode} ({betons[mode].stat().st_size / 2**20:.0f} MiB) "
                  f"in {time.perf_counter() - t0:.1f} s", flush=True)
        files = sorted((resolve_data_dir(args.data_dir) / "cifar10-jpeg").rglob("*.jpg"))
        bench("cifar10", cifar, betons, {"files": files}, args, rows)

    print(f"\nimages/s (batch {args.batch}, {torch.get_num_threads()} threads; ratios > 1: FFCV faster)")
    header = f"{'data':8} {'augment':7} {'ffcv-raw':>9} {'ffcv-jpg':>9} {'memory':>9} {'tv':>9} " \
             f"{'raw/mem':>8} {'raw/tv':>8} {'jpg/mem':>8} {'jpg/tv':>8}"
    print(header)
    for name, augment, r in rows:
        def ratio(a, b):
            return f"{r[a] / r[b]:8.2f}" if a in r else f"{'-':>8}"
        jpg = f"{r['ffcv-jpg']:9,.0f}" if "ffcv-jpg" in r else f"{'-':>9}"
        print(f"{name:8} {str(augment):7} {r['ffcv-raw']:9,.0f} {jpg} {r['memory']:9,.0f} {r['tv']:9,.0f} "
              f"{ratio('ffcv-raw', 'memory')} {ratio('ffcv-raw', 'tv')} {ratio('ffcv-jpg', 'memory')} "
              f"{ratio('ffcv-jpg', 'tv')}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
