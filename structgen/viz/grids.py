"""Image grids written as plain PNGs (no axes, one pixel per image pixel), and the save step
shared by the matplotlib figures."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

PAD_VALUE = 255  # white gutters: MNIST-like data has black backgrounds, so black pads would vanish
PAIR_GAP = 3  # gutter between pairs, in multiples of the gutter inside a pair


def to_uint8_nchw(images, what: str = "images") -> np.ndarray:
    """(N, C, H, W) uint8 from a uint8 array, or a float array/tensor in [0,1] (clipped)."""
    if hasattr(images, "detach"):  # a torch tensor; .float() also covers bf16, which numpy lacks
        t = images.detach().cpu()
        images = t.numpy() if str(t.dtype) == "torch.uint8" else t.float().numpy()
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"{what} must be shaped (N, C, H, W) with C in {{1, 3}}; got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what} is empty: nothing to draw")
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what} must be uint8 (0..255) or float in [0,1]; got dtype {arr.dtype}")
    # nan_to_num first: a diverged model's NaNs would otherwise become arbitrary bytes.
    arr = np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0)
    return np.round(arr * 255.0).astype(np.uint8)


def grid_array(images, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile images into one (H', W', C) uint8 array, ``nrow`` images per row (default ≈ √N)."""
    x = to_uint8_nchw(images)
    n, c, h, w = x.shape
    ncol = nrow or math.ceil(math.sqrt(n))
    if ncol < 1 or pad < 0:
        raise ValueError(f"grid needs nrow >= 1 and pad >= 0; got nrow={nrow}, pad={pad}")
    nrows = math.ceil(n / ncol)
    # Fill a (rows, cols, C, H, W) block then move axes: one reshape instead of a paste loop.
    tiles = np.full((nrows * ncol, c, h + pad, w + pad), PAD_VALUE, dtype=np.uint8)
    tiles[:n, :, :h, :w] = x
    tiles = tiles.reshape(nrows, ncol, c, h + pad, w + pad).transpose(0, 3, 1, 4, 2)
    body = tiles.reshape(nrows * (h + pad), ncol * (w + pad), c)
    # Every tile carries its gutter on the right and bottom; add the left and top border.
    return np.pad(body, ((pad, 0), (pad, 0), (0, 0)), constant_values=PAD_VALUE)


def _write_png(array_hwc: np.ndarray, path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = array_hwc[..., 0] if array_hwc.shape[-1] == 1 else array_hwc
    Image.fromarray(img).save(path)
    return path


def save_figure(fig, path, dpi: int, title: str | None = None, title_gap: float = 0.08,
                title_size: float = 11) -> Path:
    """Write a matplotlib figure (format from the suffix; parent folders are created), with
    ``title`` centred ``title_gap`` inches below its top edge."""
    if title:
        fig.suptitle(title, y=1 - title_gap / fig.get_figheight(), va="top", fontsize=title_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def save_grid(images, path, nrow: int | None = None, pad: int = 2) -> Path:
    """Write images (N, C, H, W) as one PNG grid; parent folders are created."""
    return _write_png(grid_array(images, nrow=nrow, pad=pad), path)


def _header(width: int, channels: int, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    left, top, right, bottom = font.getbbox(text)
    height = bottom - top + 6
    strip = Image.new("L", (max(width, right + 6), height), color=PAD_VALUE)
    ImageDraw.Draw(strip).text((3, 3 - top), text, fill=0, font=font)
    arr = np.asarray(strip)[..., None]
    return np.repeat(arr, channels, axis=-1)


def save_side_by_side(
    originals,
    reconstructions,
    path,
    titles=("original", "reconstruction"),
    nrow: int | None = None,
    pad: int = 2,
) -> Path:
    """Each original immediately followed (to its right) by its reconstruction.

    ``nrow`` counts *pairs* per row (default ≈ √N), so the grid has 2·nrow image columns:
    ``pad`` pixels inside a pair, ``PAIR_GAP·pad`` between pairs. A one-line header names the
    two members of a pair (the canvas widens if the grid is narrower than that line);
    ``titles=None`` leaves it out.
    """
    a = to_uint8_nchw(originals, "originals")
    b = to_uint8_nchw(reconstructions, "reconstructions")
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(
            f"originals {a.shape} and reconstructions {b.shape} must have the same count and size"
        )
    if a.shape[1] != b.shape[1]:  # e.g. grey originals beside RGB reconstructions
        a, b = (np.repeat(v, 3, axis=1) if v.shape[1] == 1 else v for v in (a, b))
    # Each pair becomes one wide tile (original | thin gutter | reconstruction); the gutter
    # between pairs is wider so the eye groups images into pairs, not a uniform mosaic.
    n, c, h, _ = a.shape
    pairs = np.concatenate([a, np.full((n, c, h, pad), PAD_VALUE, np.uint8), b], axis=3)
    grid = grid_array(pairs, nrow=nrow, pad=PAIR_GAP * pad)
    if titles is not None:
        left, right = titles
        head = _header(grid.shape[1], grid.shape[2], f"pairs: {left} | {right}")
        # The header is never narrower than the grid: a narrow grid widens rather than clip it.
        grid = np.pad(grid, ((0, 0), (0, head.shape[1] - grid.shape[1]), (0, 0)), constant_values=PAD_VALUE)
        grid = np.concatenate([head, grid], axis=0)
    return _write_png(grid, path)
