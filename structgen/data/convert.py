"""Converting user images, once at load time, to the one shape a model takes.

Every image becomes ``channels`` x ``side`` x ``side`` uint8: greyscale (Pillow's "L", ITU-R 601
luma) or RGB; transparent pixels are composited onto white first (a transparent PNG glyph
would otherwise turn black on black); the resize is Pillow's antialiased LANCZOS filter,
straight to a square (no crop, so nothing at the border is lost; a non-square image is
stretched).
"""
from __future__ import annotations

import io

import numpy as np

from structgen.errors import DataError


def _to_mode(im, channels: int):
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    elif im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float images: scale their own range to 0..255 rather than clip at 255
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        im = Image.fromarray(np.round(a).astype(np.uint8), mode="L")
    return im.convert("L" if channels == 1 else "RGB")


def convert_image(im, side: int, channels: int) -> np.ndarray:
    """A Pillow image as (channels, side, side) uint8."""
    from PIL import Image

    im = _to_mode(im, channels)
    if im.size != (side, side):
        im = im.resize((side, side), Image.Resampling.LANCZOS)
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def decode_image(data: bytes, where: str, side: int, channels: int) -> np.ndarray:
    """Decode file bytes and convert; a DataError naming ``where`` and Pillow's message."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()                     # decode everything now: truncated files fail here
            return convert_image(im, side, channels)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e


def convert_array_images(images: np.ndarray, side: int, channels: int, where: str) -> np.ndarray:
    """(N, C, H, W) uint8 arrays (C 1, 3 or 4) converted like decoded files."""
    from PIL import Image

    n, c, h, w = images.shape
    if c == channels and (h, w) == (side, side):
        return np.ascontiguousarray(images)
    out = np.empty((n, channels, side, side), dtype=np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(c)
    if mode is None:
        raise DataError(f"{where}: images have {c} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    for i in range(n):  # Pillow resizes one image at a time; done once at load
        hwc = images[i, 0] if c == 1 else images[i].transpose(1, 2, 0)
        out[i] = convert_image(Image.fromarray(np.ascontiguousarray(hwc), mode=mode), side, channels)
    return out
