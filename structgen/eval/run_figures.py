"""Images a person opens after a run: the tree figure, per-leaf sample and reconstruction
grids (PNG) with their arrays (.npz)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from structgen.data.memory_loader import to_device_float
from structgen.eval.clustering import leaf_histograms
from structgen.models.treevae import TreeVAE
from structgen.viz.grids import save_grid, save_side_by_side
from structgen.viz.tree_figure import draw_tree_figure

MODES = ("vae_samples", "vae_recons")


@torch.no_grad()
def leaf_samples(model: TreeVAE, n: int, seed: int):
    """(n, n_leaves, C, H, W) images and (n, n_leaves) prior leaf probabilities."""
    model.eval()
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    images, probs, _ = model.generate(n, generator=g)
    return images.cpu(), probs.cpu()


@torch.no_grad()
def leaf_reconstructions(model: TreeVAE, images_uint8: np.ndarray, device):
    model.eval()
    x = to_device_float(torch.from_numpy(images_uint8), device)
    out = model(x)
    return x.cpu(), model.images(out).cpu(), out.leaf_probs.cpu()


def write_generations(model: TreeVAE, mode: str, out_dir: Path, n: int, seed: int, test=None, device="cpu") -> list[Path]:
    """Per-leaf PNG grids and one .npz for a mode; returns the written paths."""
    out_dir = Path(out_dir) / mode
    out_dir.mkdir(parents=True, exist_ok=True)
    leaves = model.tree.leaves()
    written = []
    if mode == "vae_samples":
        images, probs = leaf_samples(model, n, seed)
        for i, leaf in enumerate(leaves):
            written.append(save_grid(images[:, i], out_dir / f"leaf{i:02d}_{leaf}.png"))
        np.savez_compressed(out_dir / "samples.npz", images=images.numpy(), leaf_probs=probs.numpy(),
                            leaves=np.array(leaves))
    elif mode == "vae_recons":
        if test is None:
            raise ValueError("vae_recons needs test images")
        originals, recons, probs = leaf_reconstructions(model, test.images[:n], device)
        for i, leaf in enumerate(leaves):
            written.append(save_side_by_side(originals, recons[:, i], out_dir / f"leaf{i:02d}_{leaf}.png"))
        best = recons[torch.arange(len(recons)), probs.argmax(1)]
        written.append(save_side_by_side(originals, best, out_dir / "most_probable_leaf.png"))
        np.savez_compressed(out_dir / "recons.npz", originals=originals.numpy(), images=recons.numpy(),
                            leaf_probs=probs.numpy(), labels=test.labels[:n], leaves=np.array(leaves))
    else:
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    written.append(out_dir / ("samples.npz" if mode == "vae_samples" else "recons.npz"))
    return written


def most_confident(probs: np.ndarray, k: int) -> list[np.ndarray]:
    """Per leaf, the indices of up to ``k`` images assigned to it (argmax), highest
    probability first: the images a leaf holds most confidently."""
    probs = np.asarray(probs)
    pred = probs.argmax(1)
    out = []
    for leaf in range(probs.shape[1]):           # one pass per leaf, vectorised over images
        members = np.flatnonzero(pred == leaf)
        out.append(members[np.argsort(-probs[members, leaf], kind="stable")[:k]])
    return out


def write_run_tree_figure(model: TreeVAE, path: Path, data, test_probs, result: dict, cfg) -> Path:
    """figures/tree.png of an evaluation: the learned tree with each leaf's prior samples and
    probability mass, the test images it holds most confidently (evaluation.real_per_leaf), and
    its class histogram when the data has classes; titled with ACC/NMI when it has labels, with
    the ELBO and image count when it has none."""
    probs, leaves, test, ev = np.asarray(test_probs), model.tree.leaves(), data.test, cfg.evaluation
    images, _ = leaf_samples(model, ev.samples_per_leaf, cfg.run.seed)
    hist = None
    if data.num_classes:
        counts = leaf_histograms(model.tree, test.labels, probs.argmax(1), data.num_classes)
        hist = {leaf: counts[i] for i, leaf in enumerate(leaves)}
    examples = None
    if ev.real_per_leaf:
        examples = {leaf: test.images[idx] for leaf, idx in zip(leaves, most_confident(probs, ev.real_per_leaf))}
    name = Path(cfg.data.path).name if cfg.data.dataset in ("folder", "arrays") and cfg.data.path else cfg.data.dataset
    if data.labelled:
        title = f"{name}: ACC {result['acc']:.3f}  NMI {result['nmi']:.3f}"
    else:
        title = f"{name}: {result['n_test']} unlabelled test images  ELBO {result['elbo']:.1f}"
    return draw_tree_figure(model.tree, {leaf: images[:, i].numpy() for i, leaf in enumerate(leaves)},
                            {leaf: float(result["leaf_mass"][i]) for i, leaf in enumerate(leaves)},
                            hist, path, class_names=data.train.class_names if data.num_classes else None,
                            title=title, leaf_examples=examples)
