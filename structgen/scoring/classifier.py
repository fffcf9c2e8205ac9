"""The classifier that judges generated images (algorithm.md §6), sized for a CPU.

The reference fine-tunes an ImageNet ResNet-50 and keeps its 1000-way output (§8.14). Here
ImageNet weights cannot be fetched and a ResNet-50 is far too slow on 2 cores, so a small
ResNet is trained from scratch: a 3x3 stem and a few BasicBlocks that halve the resolution,
global average pooling (the penultimate features used by the classifier-Fréchet distance) and
a linear layer with exactly one output per class. Inputs are pixels in [0,1]; the per-channel
mean and std of the training set are buffers of the model, so callers never normalise.

One checkpoint file holds everything needed to rebuild and check the model: weights, the
constructor arguments, dataset, class names, image shape, test accuracy and a format string.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from structgen.errors import CheckpointError
from structgen.runtime.checkpoint_io import read_checkpoint, save_checkpoint

FORMAT = "structgen.classifier/1"
# A stride-2 stem (28 -> 14 px), then one stride-2 BasicBlock per further width (14 -> 7 -> 4):
# ~290k parameters, 128-d features, ~1000 training images/s on one CPU core. Full-resolution
# blocks cost ~4x as much; the targets are met without them.
DEFAULT_WIDTHS = (32, 64, 128)
# Epochs that reach the targets (MNIST >= 98%, FMNIST >= 90%) in a few CPU minutes.
DEFAULT_EPOCHS = {"mnist": 2, "fmnist": 4, "cifar10": 20, "digits": 15, "synthetic": 3}
# Single-split datasets (digits, CIFAR-10's shared copy, synthetic) are split with the config's
# default seed, so the classifier's test images are a default TreeVAE run's test images too.
SPLIT_SEED = 42


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut, as in ResNet-18."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """forward(x in [0,1]) -> logits (N, num_classes); features(x) -> penultimate (N, widths[-1])."""

    def __init__(self, in_channels: int, num_classes: int, widths=DEFAULT_WIDTHS, mean=None, std=None,
                 stem_stride: int = 2):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"SmallResNet: in_channels must be 1 or 3, got {in_channels}")
        if num_classes < 2:
            raise ValueError(f"SmallResNet: num_classes must be >= 2, got {num_classes}")
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2:
            raise ValueError(f"SmallResNet: widths needs a stem width and at least one block width, got {widths}")
        self.arch = {"in_channels": in_channels, "num_classes": num_classes, "widths": list(widths),
                     "stem_stride": int(stem_stride),
                     "mean": _per_channel(mean, 0.5, in_channels), "std": _per_channel(std, 0.5, in_channels)}
        self.register_buffer("mean", torch.tensor(self.arch["mean"]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(self.arch["std"]).view(1, -1, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        # A repeated width is a stride-1 block; a new width halves the resolution.
        self.blocks = nn.Sequential(*[BasicBlock(a, b, stride=1 if a == b else 2)
                                      for a, b in zip(widths[:-1], widths[1:])])
        self.fc = nn.Linear(widths[-1], num_classes)
        self.dataset: str | None = None  # set by load_classifier

    @property
    def num_classes(self) -> int:
        return self.arch["num_classes"]

    @property
    def feature_dim(self) -> int:
        return self.arch["widths"][-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # Clamp here too: the model is also called directly on generator output (§8.2).
        x = (x.clamp(0.0, 1.0) - self.mean) / self.std
        return F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _per_channel(value, default: float, channels: int) -> list[float]:
    values = [default] * channels if value is None else [float(v) for v in np.ravel(value)]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"SmallResNet: expected {channels} per-channel values, got {values}")
    return values


# ---- checkpoint ---------------------------------------------------------------------------
def default_classifier_path(dataset: str, runs_dir="runs") -> Path:
    return Path(runs_dir) / "classifiers" / f"{dataset}.pt"


def save_classifier(model: SmallResNet, path, *, dataset: str, class_names, image_shape, test_accuracy: float,
                    **extra) -> Path:
    state = {"format": FORMAT, "dataset": dataset, "class_names": [str(c) for c in class_names],
             "image_shape": [int(s) for s in image_shape], "test_accuracy": float(test_accuracy),
             "arch": model.arch, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             **extra}
    return save_checkpoint(state, Path(path))  # atomic; adds package version and git SHA


def load_classifier(path, expect_dataset: str | None = None, expect_shape=None, device="cpu"):
    """(SmallResNet in eval mode, checkpoint dict). Refuses foreign, truncated or mismatched files."""
    path = Path(path)
    if not path.is_file():
        hint = (f"; train one with `structgen train-classifier --dataset {expect_dataset}`"
                if expect_dataset else "")
        raise CheckpointError(f"classifier checkpoint not found: {path}{hint}")
    state = read_checkpoint(path, kind="classifier", current=FORMAT, readable_as="classifier checkpoint")
    if expect_dataset is not None and state["dataset"] != expect_dataset:
        raise CheckpointError(f"{path}: classifier was trained on {state['dataset']!r}, but {expect_dataset!r} "
                              "images are to be judged")
    if expect_shape is not None and tuple(state["image_shape"]) != tuple(int(s) for s in expect_shape):
        raise CheckpointError(f"{path}: classifier expects images of shape {tuple(state['image_shape'])}, "
                              f"got {tuple(expect_shape)}")
    arch = state["arch"]
    try:
        model = SmallResNet(**arch)  # arch holds exactly the constructor's arguments
        model.load_state_dict(state["state_dict"])
    except (TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path}: weights do not fit the stored architecture {arch}: {err}") from None
    model.dataset = state["dataset"]  # lets scores refuse to judge another dataset's images
    return model.to(device).eval(), state


def _check_writable(path: Path) -> None:
    """Fail on an unwritable destination now, not after minutes of training. Runs after the
    data has loaded, so a bad dataset name still writes nothing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise CheckpointError(f"cannot write the classifier to {path}: {err}") from None


# ---- training -----------------------------------------------------------------------------
def train_classifier(dataset: str, data_dir=None, epochs: int | None = None, batch_size: int = 128, seed: int = 0,
                     out=None, progress=True, lr: float = 3e-3, augment: bool | None = None,
                     degrade: bool = False, device="cpu") -> tuple[Path, float]:
    """Train, test and save a SmallResNet on ``dataset``; returns (checkpoint path, test accuracy).

    ``epochs=None`` takes DEFAULT_EPOCHS[dataset]; ``out=None`` saves to runs/classifiers/<dataset>.pt;
    ``augment=None`` crops (and for CIFAR flips) where that pays off within the default epochs
    (see augment.AUGMENT_BY_DEFAULT). ``degrade`` also blurs and hazes training images
    (augment.degrade), for judging blurry generations by their shapes.
    """
    from structgen.data import TensorLoader, load_split
    from structgen.runtime.progress import Progress
    from structgen.scoring.augment import AUGMENT_BY_DEFAULT, augment_for
    from structgen.scoring.augment import degrade as degrade_images
    from structgen.scoring.predict import predict_classes

    epochs = DEFAULT_EPOCHS.get(dataset, 10) if epochs is None else int(epochs)
    augment = dataset in AUGMENT_BY_DEFAULT if augment is None else bool(augment)
    if epochs < 1:
        raise ValueError(f"train_classifier: epochs must be >= 1, got {epochs}")
    train = load_split(dataset, "train", data_dir, seed=SPLIT_SEED)
    test = load_split(dataset, "test", data_dir, seed=SPLIT_SEED)
    out = default_classifier_path(dataset) if out is None else Path(out)
    _check_writable(out)

    torch.manual_seed(seed)
    pixels = train.images.astype(np.float32) / 255.0
    mean, std = pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3)) + 1e-3  # +: blank channels
    del pixels
    model = SmallResNet(train.images.shape[1], len(train.class_names), mean=mean, std=std).to(device)
    loader = TensorLoader(train.images, train.labels, batch_size, shuffle=True, seed=seed, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    # One-cycle: a short warm-up then annealing to ~0 gives a converged net in few epochs.
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.2)
    g = torch.Generator(device=device).manual_seed(seed)
    log = Progress(enabled=bool(progress))
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        loader.set_epoch(epoch)
        bar = log.epoch(len(loader), f"classifier {dataset} epoch {epoch + 1}/{epochs}")
        loss_sum, hits, seen = 0.0, 0, 0
        for x, y, _ in loader:
            x = augment_for(dataset, x, g) if augment else x
            logits = model(degrade_images(x, g) if degrade else x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(y)
            hits += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update(len(y), {"loss": float(loss.detach())})
        bar.close()
        log.line(f"classifier {dataset} epoch {epoch + 1}/{epochs}: loss {loss_sum / seen:.4f}  "
                 f"train acc {hits / seen:.4f}  {bar.images_per_s:.0f} img/s")
    test_acc = float((predict_classes(model, test.images) == test.labels).mean())
    seconds = time.perf_counter() - started
    log.line(f"classifier {dataset}: test accuracy {test_acc:.4f} ({len(test)} images), {seconds:.0f} s")
    path = save_classifier(model.cpu(), out, dataset=dataset, class_names=train.class_names,
                           image_shape=train.images.shape[1:], test_accuracy=test_acc, epochs=epochs, seed=seed,
                           batch_size=batch_size, augment=augment, degrade=degrade, train_seconds=seconds,
                           split_seed=SPLIT_SEED)
    return path, test_acc
