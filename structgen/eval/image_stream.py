"""Images to assign, streamed in batches so that a large folder never sits in memory at once.

A source is a folder (every image file under it), one image file, an ``.npz`` / idx-ubyte file
of arrays, a ``.beton`` file (read a batch at a time), or arrays (or a list of them, laid end
to end). Every image is converted exactly as training converted
its data (``structgen.data.convert``) to the model's (C, H, W), so a file the run trained on
gets the same pixels, and so the same leaf, as during training.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from structgen.errors import DataError


@dataclass
class ImageStream:
    names: list[str]                   # one per image: the file, or "<file>#<index>" / "#<index>"
    batches: Iterator[tuple[list[str], np.ndarray]]   # (names, N x C x H x W uint8)

    def __len__(self) -> int:
        return len(self.names)


def _rows(parts: list, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the parts laid end to end."""
    pieces, offset = [], 0
    for part in parts:
        lo, hi = max(start - offset, 0), min(stop - offset, len(part))
        if lo < hi:
            pieces.append(part[lo:hi])
        offset += len(part)
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _array_stream(images, names: list[str], shape, batch_size: int, where: str) -> ImageStream:
    """Batches of an array, or of several laid end to end; a BetonImages part is read from its
    file one batch at a time (a set larger than memory)."""
    from structgen.data.beton_images import BetonImages
    from structgen.data.convert import convert_array_images
    from structgen.data.user_arrays import _nchw, _uint8

    parts = [p if isinstance(p, BetonImages) else _uint8(_nchw(np.asarray(p), where), where)
             for p in (images if isinstance(images, list) else [images])]
    channels, side, _ = shape

    def batches():
        for start in range(0, len(names), batch_size):
            chunk = convert_array_images(_rows(parts, start, start + batch_size), side, channels, where)
            yield names[start:start + batch_size], chunk
    return ImageStream(names, batches())


def _file_stream(files: list[Path], shape, batch_size: int, on_bad: str) -> ImageStream:
    from structgen.data.convert import decode_image

    channels, side, _ = shape
    names = [str(f) for f in files]

    def batches():
        for start in range(0, len(names), batch_size):
            kept, arrays = [], []
            for name in names[start:start + batch_size]:  # decoded per file; one batch held at a time
                try:
                    arrays.append(decode_image(Path(name).read_bytes(), name, side, channels))
                    kept.append(name)
                except (DataError, OSError) as err:
                    if on_bad == "error":
                        raise DataError(f"{err} (pass --on-bad-image skip to leave such files out)") from None
                    print(f"structgen: skipped {err}", file=sys.stderr)
            if kept:
                yield kept, np.stack(arrays)
    return ImageStream(names, batches())


def open_images(source, shape: tuple[int, int, int], batch_size: int = 256, on_bad: str = "error") -> ImageStream:
    """An ImageStream over ``source`` (a path or an array), converted to ``shape``."""
    if not isinstance(source, (str, Path)):
        parts = source if isinstance(source, list) else [source]
        count = sum(len(p) for p in parts)
        return _array_stream(source, [f"#{i}" for i in range(count)], shape, batch_size, "images")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"--images {str(path)!r} does not exist")
    if path.is_dir():
        from structgen.data.image_files import list_images

        listing = list_images(path)
        if not listing.files:
            raise DataError(f"{path}: no image files inside{listing.note()}")
        return _file_stream(listing.files, shape, batch_size, on_bad)
    from structgen.data.image_files import image_extensions

    if path.suffix.lower() in image_extensions():
        return _file_stream([path], shape, batch_size, on_bad)
    if path.suffix == ".beton":
        from structgen.data.beton_images import BetonImages

        images = BetonImages(path)
        return _array_stream(images, [f"{path}#{i}" for i in range(len(images))], shape, batch_size, str(path))
    from structgen.data.user_arrays import read_arrays
    from structgen.data.user_data import FileHasher

    images, _, _ = read_arrays(path, FileHasher())
    return _array_stream(images, [f"{path}#{i}" for i in range(len(images))], shape, batch_size, str(path))
