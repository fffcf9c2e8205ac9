"""The paper's stage-2 figures: for several root samples, every leaf's VAE image beside its
diffusion image(s), with the leaf probabilities; the same layout compares several DDPMs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CELL = 1.0          # inches per image
LABEL_W = 0.8       # inches for the row labels
DPI = 110


def _as_hwc(img: np.ndarray) -> np.ndarray:
    img = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def leaf_rows_figure(blocks: list[list[tuple[str, np.ndarray]]], probs: np.ndarray, leaves: list[str], path,
                     originals: np.ndarray | None = None, title: str | None = None) -> Path:
    """One block per root sample; a block is rows of (label, images (L, C, H, W)), one column per
    leaf headed by the leaf name and its probability. ``originals`` (n, C, H, W) adds a first
    column with the encoded image (reconstruction modes)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no backend selection

    from structgen.viz import save_figure

    n_leaves = len(leaves)
    first = 1 if originals is not None else 0
    n_rows = sum(len(b) for b in blocks)
    gap = 0.35                                       # headroom above each block for the leaf titles
    width = LABEL_W + CELL * (n_leaves + first)
    height = n_rows * CELL + len(blocks) * gap + (0.4 if title else 0.1)
    fig = Figure(figsize=(width, height))
    y = height - (0.4 if title else 0.1)
    for s, block in enumerate(blocks):
        y -= gap
        for r, (label, images) in enumerate(block):
            y -= CELL
            fig.text(0.05 / width, (y + CELL / 2) / height, label, ha="left", va="center", fontsize=8)
            for col in range(n_leaves + first):
                ax = fig.add_axes(((LABEL_W + col * CELL) / width, y / height, 0.95 * CELL / width,
                                   0.95 * CELL / height))
                ax.set_axis_off()
                if col < first:
                    if r == 0:
                        ax.imshow(_as_hwc(originals[s]), cmap="gray", vmin=0, vmax=1)
                        ax.set_title("input", fontsize=7, pad=2)
                    continue
                leaf = col - first
                ax.imshow(_as_hwc(images[leaf]), cmap="gray", vmin=0, vmax=1)
                if r == 0:
                    ax.set_title(f"{leaves[leaf]}  p={probs[s, leaf]:.2f}", fontsize=7, pad=2)
    return save_figure(fig, path, DPI, title, title_gap=0.05, title_size=10)


def all_leaves_figure(vae: np.ndarray, ddpm: np.ndarray, probs: np.ndarray, leaves: list[str], path,
                      originals: np.ndarray | None = None, n_show: int = 4, title: str | None = None) -> Path:
    """vae, ddpm: (n, L, C, H, W) in [0, 1]; the first ``n_show`` root samples."""
    k = min(n_show, len(vae))
    blocks = [[("VAE", vae[s]), ("DDPM", ddpm[s])] for s in range(k)]
    return leaf_rows_figure(blocks, probs, leaves, path, None if originals is None else originals[:k], title)


def compare_figure(vae: np.ndarray, by_model: dict[str, np.ndarray], probs: np.ndarray, leaves: list[str], path,
                   n_show: int = 4, title: str | None = None) -> Path:
    """The same root samples through several DDPMs: per sample a VAE row and one row per model."""
    k = min(n_show, len(vae))
    blocks = [[("VAE", vae[s])] + [(label, images[s]) for label, images in by_model.items()] for s in range(k)]
    return leaf_rows_figure(blocks, probs, leaves, path, title=title)
