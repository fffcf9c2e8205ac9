"""Evaluate a trained TreeVAE on the test split (algorithm.md §4): clustering metrics, ELBO,
an importance-weighted log-likelihood, pixel baselines, and the figures a person looks at."""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from structgen.data.memory_loader import to_device_float
from structgen.eval.baselines import pixel_baselines
from structgen.eval.clustering import clustering_report
from structgen.models.elbo import log_importance_weights, per_sample_nelbo
from structgen.models.treevae import TreeVAE
from structgen.runtime.context import Context
from structgen.runtime.leaf_probabilities import leaf_probabilities

LABELLED_METRICS = ("acc", "nmi", "ari", "leaf_purity", "dendrogram_purity")


def _batches(images: np.ndarray, batch_size: int, device):
    for start in range(0, len(images), batch_size):    # per batch: a BetonImages set is read as it goes
        yield to_device_float(torch.from_numpy(np.asarray(images[start:start + batch_size])), device)


@torch.no_grad()
def elbo_and_ll(model: TreeVAE, images: np.ndarray, batch_size: int, device, ll_samples: int = 0) -> dict:
    """Mean ELBO (nats per image) and, when ll_samples > 0, the K-sample importance-weighted
    log-likelihood estimate; both with the model in eval mode."""
    model.eval()
    nelbo, ll = [], []
    for x in _batches(images, batch_size, device):
        out = model(x)
        nelbo.append(per_sample_nelbo(model, out, x))
        if ll_samples:
            logw = [log_importance_weights(model, out, x)]
            logw += [log_importance_weights(model, model(x), x) for _ in range(ll_samples - 1)]
            ll.append(torch.logsumexp(torch.stack(logw), 0) - math.log(ll_samples))
    result = {"elbo": -torch.cat(nelbo).mean().item()}
    if ll_samples:
        result["log_likelihood"] = torch.cat(ll).mean().item()
        result["ll_samples"] = ll_samples
    return result


def evaluate_model(model: TreeVAE, data, ev, ctx: Context, *, seed: int) -> tuple[dict, torch.Tensor]:
    """All test-set numbers in one JSON-serialisable dict, and the test leaf probabilities, as
    the ``evaluation`` config section ``ev`` asks; ``seed`` seeds the pixel baselines."""
    t0 = time.perf_counter()
    test, train = data.test, data.train
    labelled = getattr(data, "labelled", True)
    probs = leaf_probabilities(model, test.images, ctx, ev.batch_size)
    pred = probs.argmax(1).numpy()
    sizes = np.bincount(pred, minlength=probs.shape[1])
    result = {
        "split": "test", "n_test": len(test), "n_leaves": len(model.tree.leaves()), "leaves": model.tree.leaves(),
        "depth": model.tree.max_depth(), "labelled": labelled,
        "leaf_mass": probs.mean(0).tolist(), "leaf_sizes": sizes.tolist(),
        "leaf_share": (sizes / max(1, len(pred))).tolist(),
    }
    # Class metrics need classes: unlabelled user data gets the ELBO, masses, sizes and depth only.
    if labelled:
        result.update(clustering_report(model.tree, test.labels, pred, data.num_classes))
        train_probs = leaf_probabilities(model, train.images, ctx, ev.batch_size)
        train_report = clustering_report(model.tree, train.labels, train_probs.argmax(1).numpy(), data.num_classes)
        result["train"] = {k: train_report[k] for k in LABELLED_METRICS}
        result["class_names"] = list(data.train.class_names)
    result.update(elbo_and_ll(model, test.images, ev.batch_size, ctx.device, ev.ll_samples if ev.compute_ll else 0))
    if ev.baselines:
        result["baselines"] = pixel_baselines(test.images, test.labels if labelled else None,
                                              len(model.tree.leaves()), seed=seed)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result, probs


def format_report(result: dict) -> str:
    if not result.get("labelled", True):
        return format_unlabelled_report(result)
    cols = LABELLED_METRICS
    head = f"{'method':<22}" + "".join(f"{c:>18}" for c in cols)
    rows = [head, "-" * len(head)]
    rows.append(f"{'CNN-TreeVAE (test)':<22}" + "".join(f"{result[c]:>18.4f}" for c in cols))
    rows.append(f"{'CNN-TreeVAE (train)':<22}" + "".join(f"{result['train'][c]:>18.4f}" for c in cols))
    for name, scores in (result.get("baselines") or {}).items():
        if isinstance(scores, dict):
            rows.append(f"{name + ' (pixels)':<22}" + "".join(
                f"{scores[c]:>18.4f}" if c in scores else f"{'-':>18}" for c in cols))
    rows.append("")
    rows.append(f"leaves: {result['n_leaves']}   test images: {result['n_test']}   ELBO: {result['elbo']:.2f} nats")
    if "log_likelihood" in result:
        rows.append(f"log-likelihood (IW, K={result['ll_samples']}): {result['log_likelihood']:.2f} nats")
    mass = "  ".join(f"{leaf}:{m:.3f}" for leaf, m in zip(result["leaves"], result["leaf_mass"]))
    rows.append(f"leaf probability mass: {mass}")
    return "\n".join(rows)


def format_unlabelled_report(result: dict) -> str:
    """The report of a run without labels: ELBO, depth, and every leaf's mass and size, beside
    the cluster sizes k-means and Ward find on pixels."""
    rows = [f"CNN-TreeVAE on {result['n_test']} unlabelled test images: {result['n_leaves']} leaves, depth "
            f"{result['depth']}, ELBO {result['elbo']:.2f} nats"]
    if "log_likelihood" in result:
        rows.append(f"log-likelihood (IW, K={result['ll_samples']}): {result['log_likelihood']:.2f} nats")
    rows += ["", f"{'leaf':<10}{'mass':>8}{'images':>8}"]
    rows += [f"{leaf:<10}{m:>8.3f}{n:>8d}" for leaf, m, n in zip(result["leaves"], result["leaf_mass"],
                                                                   result["leaf_sizes"])]
    for name, scores in (result.get("baselines") or {}).items():
        if isinstance(scores, dict) and "sizes" in scores:
            rows.append(f"{name + ' (pixels)':<22} cluster sizes: {' '.join(map(str, scores['sizes']))}")
    return "\n".join(rows)
