"""Batched inference with the judging classifier: logits and penultimate features.

Both accept uint8 or float images (floats are clamped to [0,1] first, §8.2), numpy or torch,
and run in eval mode without gradients, restoring the model's mode afterwards.
"""
from __future__ import annotations

import numpy as np
import torch

from structgen.scoring.images import as_unit_images


@torch.no_grad()
def _batched(classifier, images, batch_size: int, fn) -> torch.Tensor:
    x_all = as_unit_images(images)
    if len(x_all) == 0:
        raise ValueError("no images to classify (got an empty batch)")
    shape = tuple(x_all.shape[1:])
    expected = getattr(classifier, "arch", {}).get("in_channels")
    if expected is not None and shape[0] != expected:
        raise ValueError(f"classifier takes {expected}-channel images, got images of shape {shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    try:
        return torch.cat([fn(x_all[i:i + batch_size].to(device)).cpu() for i in range(0, len(x_all), batch_size)])
    finally:
        classifier.train(was_training)


def predict_classes(classifier, images, batch_size: int = 500) -> np.ndarray:
    """(N,) int64 argmax class of every image."""
    return _batched(classifier, images, batch_size, lambda x: classifier(x).argmax(1)).numpy()


def class_probabilities(classifier, images, batch_size: int = 500) -> np.ndarray:
    """(N, K) float64 softmax over the classes for every image."""
    return _batched(classifier, images, batch_size, lambda x: classifier(x).softmax(1)).double().numpy()


def classifier_features(classifier, images, batch_size: int = 500) -> np.ndarray:
    """(N, D) float64 penultimate-layer features (global-average-pooled last block)."""
    return _batched(classifier, images, batch_size, classifier.features).double().numpy()
