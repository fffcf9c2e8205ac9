"""Real image files for the "your own images" tests, written by the tests into tmp folders.

- ``cifar_tree``: the shared CIFAR-10 JPEGs copied as a class-folder tree (a few classes).
- ``digits_pngs``: scikit-learn's digits saved as flat PNGs (unlabelled), plus a hidden file
  and a text file that must be ignored.
- ``digits_npz``: the same digits as an ``.npz`` with labels and class names.
- ``mixed_folder``: one folder of mixed formats, sizes and modes.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

import structgen

SHARED = Path(structgen.__file__).resolve().parents[2] / "shared" / "data"
CIFAR_JPEG = SHARED / "cifar10-jpeg" / "test"


def cifar_tree(root: Path, classes=("airplane", "cat", "ship"), per_class: int = 12) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        for src in sorted((CIFAR_JPEG / name).glob("*.jpg"))[:per_class]:
            shutil.copyfile(src, root / name / src.name)
    return root


def digits_arrays(n: int = 60):
    """(images N x 8 x 8 uint8, labels): the first n of scikit-learn's digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images[:n] * (255.0 / 16.0)).astype(np.uint8), d.target[:n].astype(np.int64)


def digits_pngs(root: Path, n: int = 60) -> Path:
    from PIL import Image

    images, _ = digits_arrays(n)
    root.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im, mode="L").save(root / f"digit_{i:03d}.png")
    (root / ".DS_Store").write_bytes(b"\0junk")
    (root / "notes.txt").write_text("not an image")
    return root


def digits_npz(path: Path, n: int = 60, **extra) -> Path:
    images, labels = digits_arrays(n)
    arrays = {"images": images, "labels": labels, "class_names": np.array([str(k) for k in range(10)])}
    arrays.update(extra)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def mixed_folder(root: Path) -> Path:
    """PNG (grey, RGBA), JPEG (RGB, grey), BMP, TIFF (16-bit), WebP, GIF (palette), upper-case
    extensions; sizes from 12x12 to 64x40."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    rgb = lambda w, h: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")  # noqa: E731
    rgb(32, 32).save(root / "a.png")
    rgb(64, 40).convert("RGBA").save(root / "b_rgba.PNG")
    rgb(20, 20).save(root / "c.jpg", quality=90)
    rgb(17, 33).convert("L").save(root / "d_grey.JPEG")
    rgb(12, 12).save(root / "e.bmp")
    Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16)).save(root / "f16.tif")
    rgb(28, 28).save(root / "g.webp")
    rgb(30, 30).convert("P").save(root / "h.gif")
    return root


def corrupt_jpeg(path: Path) -> Path:
    """A JPEG cut off half-way: its header opens, its data does not decode."""
    data = (sorted((CIFAR_JPEG / "cat").glob("*.jpg"))[0]).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
