"""How good a DDPM run's generations are, next to its TreeVAE's own (algorithm.md §6).

One set of TreeVAE root samples feeds both models, so the two columns differ only in the
diffusion refinement:

* classifier-Fréchet distance (CFD) to the test set of ``n`` samples (``sample`` mode: the most
  probable leaf), of the TreeVAE image and of the diffusion image, and of ``n`` training images
  as the floor that finite samples reach (Inception weights cannot be fetched here, so the
  features are the dataset classifier's: compare numbers from the same classifier only);
* generation purity from ``sample_all_leaves``: every leaf's images, classified, as normalised
  class histograms, summarised as the leaf-probability-weighted majority-class share; per leaf too;
* with labelled test images, agreement: the same average of the share of each leaf's images given
  the majority class of the test images the TreeVAE routes to that leaf (purity can be high for
  a leaf that generates the wrong class; agreement cannot);
* the paper's figure for each model: the tree with every leaf's images and, under them, the
  class histogram.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from structgen.diffusion.modes import DiffusionSampler
from structgen.scoring.generation_figure import draw_generation_figure
from structgen.scoring.frechet import CFD_LABEL, classifier_frechet_distance
from structgen.scoring.leaf_agreement import leaf_majority_classes, majority_agreement, per_leaf_agreement
from structgen.scoring.purity import generation_purity, leaf_class_histograms

MODELS = {"vae": "TreeVAE samples", "diffusion": "diffusion samples"}


def training_floor(classifier, dataset: str, data_dir, n: int) -> float:
    """CFD of n training images to the test set: what a perfect generator of n images scores."""
    from structgen.data import load_split
    from structgen.scoring.classifier import SPLIT_SEED

    train = load_split(dataset, "train", data_dir, seed=SPLIT_SEED).images
    pick = np.random.default_rng(0).permutation(len(train))[:n]
    return classifier_frechet_distance(classifier, torch.from_numpy(train[np.sort(pick)]), dataset,
                                       data_dir=data_dir)


def score_generations(sampler: DiffusionSampler, classifier, dataset: str, data_dir=None, *, n: int = 500,
                      per_leaf: int = 50, seed: int = 0, floor: bool = True, test=None) -> dict:
    """Scores and the arrays behind them: {"vae": {...}, "diffusion": {...}, "train_floor_cfd",
    "leaf_weights", "leaf_images": {"vae", "diffusion"}, "leaf_classes"}. ``test``: labelled test
    images (a Split) for agreement; without labels "leaf_classes" and agreement are None."""
    single = sampler.run("sample", n, seed)
    leaves = sampler.run("sample_all_leaves", per_leaf, seed)
    weights = leaves["leaf_probs"].mean(0)                  # the prior's leaf probabilities
    majority = None
    if test is not None and test.labels is not None:
        majority = leaf_majority_classes(sampler.conditioner.vae, test.images, test.labels, classifier.num_classes)
    scores: dict = {"leaf_weights": weights, "leaf_images": {}, "leaf_classes": majority}
    for model, key in (("vae", "vae"), ("diffusion", "images")):
        hist = leaf_class_histograms(classifier, torch.from_numpy(leaves[key]), classifier.num_classes)
        scores[model] = {"cfd": classifier_frechet_distance(classifier, torch.from_numpy(single[key]), dataset,
                                                            data_dir=data_dir),
                         "purity": generation_purity(hist, weights), "histograms": hist,
                         "leaf_purity": hist.max(1),
                         "agreement": None if majority is None else majority_agreement(hist, majority, weights),
                         "leaf_agreement": None if majority is None else per_leaf_agreement(hist, majority)}
        scores["leaf_images"][model] = leaves[key]
    scores["train_floor_cfd"] = training_floor(classifier, dataset, data_dir, n) if floor else None
    scores["seconds"] = float(single["seconds"] + leaves["seconds"])
    return scores


def write_scores(scores: dict, tree, out_dir: Path, meta: dict, class_names=None) -> list[Path]:
    """scores.json and one generation figure per model; returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [draw_generation_figure(tree, scores["leaf_images"][model], scores[model]["histograms"],
                                      scores["leaf_weights"], out_dir / f"generation_{model}.png",
                                      class_names=class_names, title=title) for model, title in MODELS.items()]
    summary = {**meta, "cfd_label": CFD_LABEL, "train_floor_cfd": scores["train_floor_cfd"],
               "leaves": tree.leaves(), "leaf_weights": np.asarray(scores["leaf_weights"]).round(4).tolist(),
               "leaf_classes": _listed(scores.get("leaf_classes")),
               **{model: {"cfd": scores[model]["cfd"], "purity": scores[model]["purity"],
                          "agreement": scores[model].get("agreement"),
                          "leaf_purity": _listed(scores[model].get("leaf_purity"), 4),
                          "leaf_agreement": _listed(scores[model].get("leaf_agreement"), 4),
                          "histograms": np.asarray(scores[model]["histograms"]).round(4).tolist()}
                  for model in MODELS}}
    (out_dir / "scores.json").write_text(json.dumps(summary, indent=1))
    return [out_dir / "scores.json", *written]


def _listed(values, digits: int | None = None):
    """JSON-ready list (NaN as null), or None."""
    if values is None:
        return None
    values = np.asarray(values, dtype=np.float64 if digits else np.int64)
    return [None if np.isnan(v) else round(float(v), digits) for v in values] if digits else values.tolist()


def format_table(scores: dict) -> str:
    agreement = scores["vae"].get("agreement") is not None
    rows = [f"{'':22s} {'CFD to test':>12s} {'purity':>8s}" + (f" {'agreement':>10s}" if agreement else "")]
    rows += [f"{title:22s} {scores[m]['cfd']:12.3f} {scores[m]['purity']:8.3f}"
             + (f" {scores[m]['agreement']:10.3f}" if agreement else "") for m, title in MODELS.items()]
    if scores.get("train_floor_cfd") is not None:
        rows.append(f"{'training images':22s} {scores['train_floor_cfd']:12.3f} {'':>8s}")
    return "\n".join(rows)
