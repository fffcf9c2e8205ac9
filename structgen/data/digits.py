"""scikit-learn's bundled 8x8 digits (1797 images, no download), upsampled to MNIST's 28x28."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SIDE = 28


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as (N,1,28,28) uint8 in 0..255 and int64 labels 0..9."""
    from sklearn.datasets import load_digits  # deferred: sklearn import costs ~1 s

    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    # Bilinear keeps the strokes smooth; antialias is irrelevant when enlarging.
    big = F.interpolate(small, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    images = big.round().clamp_(0, 255).to(torch.uint8).numpy()
    return images, bunch.target.astype(np.int64)
