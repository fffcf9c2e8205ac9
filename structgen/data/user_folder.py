"""`data.dataset: folder`: a user's folder of image files, with or without class folders.

Layouts (``DIR`` = data.path):
- ``DIR/train/`` and ``DIR/test/``: the two splits; each is laid out like ``DIR`` below.
- only one of them: it is the pool both splits are drawn from (seeded, as without them).
- ``DIR/<class>/**/*.png``: labels from the first folder level (data.labels auto needs two or
  more class folders and no loose image beside them; ``folders`` insists; ``none`` ignores them).
- anything else, e.g. a flat ``DIR/*.jpg``: unlabelled.

Every file is read once: its bytes feed the fingerprint and the decoder. Nothing is written
under ``DIR``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from structgen.data.convert import decode_image
from structgen.errors import DataError
from structgen.data.image_files import Listing, list_images, subfolders


@dataclass
class FolderPart:
    """One folder's decoded images (a split, or the pool the splits are drawn from)."""
    images: np.ndarray            # N x C x S x S uint8
    labels: np.ndarray            # int64; -1 when unlabelled
    class_names: list[str]        # empty when unlabelled
    sources: list[str]


def split_folders(root: Path) -> dict[str, Path]:
    return {s: root / s for s in ("train", "test") if (root / s).is_dir()}


def _class_of(files: list[Path], root: Path, mode: str, where: str) -> list[str] | None:
    """Class folder name per file, or None for unlabelled data."""
    if mode == "none":
        return None
    classes = subfolders(root)
    loose = [f for f in files if f.parent == root]
    if mode == "auto" and (len(classes) < 2 or loose):
        return None
    if loose:
        raise DataError(f"{where}: data.labels = folders, but {len(loose)} images sit directly in {root} "
                        f"(e.g. {loose[0].name}) instead of a class folder")
    if not classes:
        raise DataError(f"{where}: data.labels = folders, but {root} has no class folders")
    names = [f.relative_to(root).parts[0] for f in files]
    empty = [c.name for c in classes if c.name not in set(names)]
    if empty:
        raise DataError(f"{where}: class folder {root / empty[0]} holds no images"
                        + (f" (nor do {', '.join(empty[1:])})" if len(empty) > 1 else "")
                        + "; remove it, or set data.labels=none to ignore the class folders")
    return names


def read_part(root: Path, side: int, channels: int, labels_mode: str, on_bad: str, hasher) -> FolderPart:
    """Decode every image under ``root``; ``hasher`` (a user_data.FileHasher) takes each file's
    relative name and content, unreadable ones included (fixing one changes the data)."""
    where = f"folder {root}"
    listing: Listing = list_images(root)
    if not listing.files:
        raise DataError(f"{where}: no image files inside{listing.note()}; expected PNG, JPEG, BMP, TIFF, WebP, ...")
    names = _class_of(listing.files, root, labels_mode, where)
    if listing.hidden or listing.not_images:
        print(f"structgen: {where}: {len(listing.files)} images{listing.note()}", file=sys.stderr)
    images = np.empty((len(listing.files), channels, side, side), dtype=np.uint8)
    keep = np.ones(len(listing.files), dtype=bool)
    skipped = []
    for i, path in enumerate(listing.files):  # decoding is per file by nature; done once per load
        try:
            data = path.read_bytes()
        except OSError as e:
            data, error = b"", DataError(f"{path}: cannot read ({e.strerror or e})")
        else:
            error = None
        rel = path.relative_to(root).as_posix()
        hasher.add(rel, data)
        try:
            if error is not None:
                raise error
            images[i] = decode_image(data, str(path), side, channels)
        except DataError as err:
            if on_bad == "error":
                raise DataError(f"{err} (set data.on_bad_image=skip to leave such files out)") from None
            keep[i] = False
            skipped.append(str(err))
            print(f"structgen: skipped {err}", file=sys.stderr)
    if skipped:
        print(f"structgen: {where}: skipped {len(skipped)} unreadable image(s) of {len(keep)}", file=sys.stderr)
    sources = [str(p) for p, k in zip(listing.files, keep) if k]
    if names is None:
        return FolderPart(images[keep], np.full(int(keep.sum()), -1, dtype=np.int64), [], sources)
    class_names = sorted(set(names))
    index = {c: k for k, c in enumerate(class_names)}
    labels = np.array([index[c] for c in names], dtype=np.int64)[keep]
    return FolderPart(images[keep], labels, class_names, sources)


def relabel(part: FolderPart, class_names: list[str], where: str) -> FolderPart:
    """Express ``part``'s labels in ``class_names`` (the training split's classes)."""
    if not part.class_names:
        return part
    unknown = sorted(set(part.class_names) - set(class_names))
    if unknown:
        raise DataError(f"{where}: class folders {unknown} are not among the training classes {class_names}")
    lut = np.array([class_names.index(c) for c in part.class_names], dtype=np.int64)
    return FolderPart(part.images, lut[part.labels], list(class_names), part.sources)
