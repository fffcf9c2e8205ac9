"""One training phase: a fresh Adam, StepLR and KL annealer, E epochs over (a subset of) the
training set, a checkpoint after every `checkpoint_every` epochs (algorithm.md §3.1).

A phase is plain data (`Phase`) so a checkpoint can say exactly where a run stopped; the
optimiser, scheduler and annealer states travel beside it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from structgen.errors import NonFiniteLossError
from structgen.models.elbo import Clamps, total_loss
from structgen.models.objective import LEAF_MASS, Contrastive, FullTreeObjective, SubTreeObjective
from structgen.models.treevae import SubTree, TreeVAE
from structgen.runtime.context import Context
from structgen.runtime.fault import maybe_die
from structgen.runtime.precision import StepPrecision
from structgen.runtime.resources import memory_fields
from structgen.train.annealing import KLAnnealer
from structgen.train.optimizer import adam
from structgen.train.split_init import init_split

TERMS = ("rec", "kl_root", "kl_nodes", "kl_decisions", "aug")


@dataclass
class Phase:
    name: str                     # "initial", "subtree-3", "intermediate-1", "finetune"
    kind: str                     # "full" or "subtree"
    index: int                    # position in the run's sequence of phases (seeds the data order)
    epochs: int
    kl_start: float
    decay_kl: float
    leaf: str | None = None       # subtree: the leaf being split
    subset: list[int] | None = field(default=None, repr=False)   # subtree: training indices
    epoch: int = 0                # epochs completed
    warmup_epochs: float = 0.0    # linear learning-rate warm-up over this many epochs (0: none)
    lr_factor: float = 1.0        # this phase's Adam rate is training.lr times this

    def to_dict(self) -> dict:
        return asdict(self)


def warmup_scale(phase: Phase, batch: int, n_batches: int) -> float:
    """Learning-rate factor for ``batch`` of the phase's current epoch: rises linearly from
    1/steps to 1 over the first ``phase.warmup_epochs`` epochs (the first batch moves too)."""
    steps = phase.warmup_epochs * n_batches
    done = phase.epoch * n_batches + batch
    return 1.0 if done >= steps else (done + 1) / (steps + 1)


@dataclass
class PhaseState:
    """Everything a phase owns that must survive a restart."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    annealer: KLAnnealer
    subtree: SubTree | None


def batch_per_rank(training, world_size: int) -> int:
    """Dataset images in one rank's batch: training.batch_size shared by the ranks, halved when
    the batch holds two augmented views of each image."""
    return training.batch_size // world_size // (2 if training.augment else 1)


class PhaseRunner:
    """Trains phases with the ``training`` and ``run`` config sections; batches come from
    ``loaders`` (`data.loaders.make_loader` bound to the run's data section)."""

    def __init__(self, training, run, ctx: Context, model: TreeVAE, train_images: np.ndarray,
                 train_labels: np.ndarray, loaders, log, progress, checkpoint: Callable[[Phase, PhaseState], None]):
        self.t, self.seed, self.ctx, self.model = training, run.seed, ctx, model
        self.train_images, self.train_labels, self.loaders = train_images, train_labels, loaders
        self.log, self.progress, self.checkpoint = log, progress, checkpoint
        t = training
        self.clamps = Clamps.from_config(t)
        self.precision = StepPrecision.of_run(run, ctx.device)
        self.contrastive = (Contrastive(t.aug_decisions_weight, t.augmentation_method)
                            if t.augment and t.augmentation_method != "simple" else None)

    # ---- construction --------------------------------------------------------------------
    def new_state(self, phase: Phase, saved: dict | None = None) -> PhaseState:
        t = self.t
        subtree = None
        if phase.kind == "subtree":
            subtree = SubTree(self.model, phase.leaf).to(self.ctx.device)
            if saved is not None:
                subtree.load_state_dict(saved["subtree"])
            elif t.split_init == "kmeans":
                self._init_split(phase, subtree)
            params = list(subtree.parameters())
        else:
            params = list(self.model.parameters())
        optimizer = adam(params, lr=t.lr * phase.lr_factor, weight_decay=t.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.decay_stepsize, gamma=t.decay_lr)
        annealer = KLAnnealer(phase.kl_start, phase.decay_kl, per_step=t.kl_anneal == "step")
        if saved is not None:
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            annealer = KLAnnealer.from_state(saved["annealer"])
        return PhaseState(optimizer, scheduler, annealer, subtree)

    def _init_split(self, phase: Phase, subtree: SubTree) -> None:
        summary = init_split(self.model, subtree, self.train_images, phase.subset, steps=self.t.split_init_steps,
                             seed=self.seed * 1000 + phase.index, device=self.ctx.device)
        if self.ctx.is_main:
            self.log.write("split_init", phase=phase.name, leaf=phase.leaf, **summary)
            self.progress.line(f"   split init {phase.leaf}: 2-means {summary['left']} / {summary['images']} "
                               f"images, router agrees on {summary['router_agrees']:.1%}")

    def objective(self, phase: Phase, state: PhaseState) -> torch.nn.Module:
        if phase.kind == "subtree":
            self.precision.module(self.model)       # the frozen tree runs in the step too
            objective = SubTreeObjective(self.model, state.subtree, self.clamps, self.contrastive)
        else:
            objective = FullTreeObjective(self.model, self.clamps, self.contrastive)
        return self.precision.module(objective)

    def loader(self, phase: Phase):
        """In-memory or FFCV batches per `data.loader`, sharded for this rank, seeded per phase."""
        t, ctx = self.t, self.ctx
        return self.loaders(self.train_images, self.train_labels, batch_per_rank(t, ctx.world_size),
                            split="train", shuffle=True,
                            seed=self.seed * 1000 + phase.index, rank=ctx.rank, world_size=ctx.world_size,
                            drop_last=True, indices=phase.subset, device=ctx.device, two_views=t.augment,
                            min_batches=t.min_batches_per_epoch)

    # ---- training ------------------------------------------------------------------------
    def run(self, phase: Phase, state: PhaseState, on_epoch: Callable[[], int],
            refit: Callable[[Phase, PhaseState], None] | None = None) -> None:
        """Train the remaining epochs of ``phase``; checkpoints through ``self.checkpoint``.
        ``refit``, called after every epoch, may change the phase's length (``phase.epochs``, not
        below the epochs done) and its KL ramp before the epoch is logged and checkpointed, so the
        logs and the checkpoint say what was trained and what is still to come."""
        loader = self.loader(phase)
        if loader.passes > 1 and self.ctx.is_main:
            self.progress.line(f"   {phase.name}: {loader.passes} passes over its images an epoch, {len(loader)} "
                               f"batches (training.min_batches_per_epoch {self.t.min_batches_per_epoch})")
        objective = self.objective(phase, state)
        step_fn = self.ctx.wrap(objective)
        while phase.epoch < phase.epochs:
            loader.set_epoch(phase.epoch)
            self.ctx.seed_noise(self.seed, phase.index * 100_003 + phase.epoch)
            self.train_mode(phase, state)
            alpha, lr = state.annealer.alpha, state.optimizer.param_groups[0]["lr"]
            sums = self._epoch(phase, state, loader, step_fn)
            state.scheduler.step()
            state.annealer.step()
            phase.epoch += 1
            step = on_epoch()
            if refit is not None:
                refit(phase, state)
            self._log_epoch(phase, sums, step, alpha=alpha, lr=lr)
            if phase.epoch % self.t.checkpoint_every == 0 or phase.epoch == phase.epochs:
                self.checkpoint(phase, state)
            maybe_die(phase.name, phase.epoch, self.ctx.rank)

    def train_mode(self, phase: Phase, state: PhaseState) -> None:
        if phase.kind == "subtree":
            self.model.eval()             # frozen: BN uses running stats, as in the reference
            state.subtree.train()
        else:
            self.model.train()

    def _epoch(self, phase: Phase, state: PhaseState, loader, step_fn) -> torch.Tensor:
        n_batches = len(loader)
        # The scheduler's rate for this epoch; warm-up scales it per batch and hands it back
        # unscaled, so StepLR and the checkpoint at the epoch's end never see a scaled value.
        base_lr = [group["lr"] for group in state.optimizer.param_groups]
        # Image-weighted sums, kept on the device so that a step never waits for the host:
        # the terms, the loss, the images, then each leaf's mass.
        sums = torch.zeros(len(TERMS) + 2 + len(self._mass_names(phase)), dtype=torch.float64, device=self.ctx.device)
        bar = self.progress.epoch(len(loader), f"{phase.name} {phase.epoch + 1}/{phase.epochs}")
        for i, (x, _, _) in enumerate(loader):
            alpha = state.annealer.alpha_at(i / n_batches)
            scale = warmup_scale(phase, i, n_batches)
            for group, lr in zip(state.optimizer.param_groups, base_lr):
                group["lr"] = lr * scale
            loss, terms = self.train_step(phase, state, step_fn, x, alpha)
            one = sums.new_ones(())
            row = [terms[k].detach().double() if k in terms else one * 0 for k in TERMS] + [loss.detach().double(), one]
            sums += torch.cat([torch.stack(row), terms[LEAF_MASS].detach().double()]) * x.shape[0]
            bar.update(x.shape[0], {"loss": float(loss.detach()), "rec": float(terms["rec"].detach())})
        bar.close()
        for group, lr in zip(state.optimizer.param_groups, base_lr):
            group["lr"] = lr
        self._images_per_s = bar.images_per_s * self.ctx.world_size
        return sums

    def train_step(self, phase: Phase, state: PhaseState, objective, x: torch.Tensor,
                   alpha: float) -> tuple[torch.Tensor, dict]:
        """One optimiser step on batch ``x``: the objective's terms, their total at KL weight
        ``alpha`` in the run's precision, backward, step. Returns the loss and the terms."""
        with self.precision.autocast():
            terms = objective(self.precision.batch(x))
            loss = total_loss(terms, alpha, terms.get("aug"))
        self._check_finite(phase, loss, terms)
        state.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        self.precision.step(state.optimizer)
        return loss, terms

    def _check_finite(self, phase: Phase, loss: torch.Tensor, terms: dict) -> None:
        if torch.isfinite(loss):
            return
        bad = [k for k in TERMS if k in terms and not torch.isfinite(terms[k])] or ["loss"]
        raise NonFiniteLossError(
            f"non-finite loss in phase '{phase.name}', epoch {phase.epoch + 1}: term(s) {', '.join(bad)} = "
            f"{', '.join(str(float(terms.get(k, loss).detach())) for k in bad)}. The last good checkpoint is kept; "
            f"try a lower training.lr or check the data.")

    def _mass_names(self, phase: Phase) -> list[str]:
        """The leaves whose mass an epoch record carries: the tree's, or the sub-tree's two children."""
        return [phase.leaf + "0", phase.leaf + "1"] if phase.kind == "subtree" else self.model.tree.leaves()

    def _log_epoch(self, phase: Phase, sums: torch.Tensor, step: int, alpha: float, lr: float) -> None:
        sums = self.ctx.all_reduce_sum(sums)
        n = max(sums[len(TERMS) + 1].item(), 1.0)
        record = {k: sums[i].item() / n for i, k in enumerate(TERMS)}
        record["loss"] = sums[len(TERMS)].item() / n
        masses = (sums[len(TERMS) + 2:] / n).tolist()
        # A sub-tree's children share its leaf's mass on the subset: log their split of it.
        total = sum(masses) if phase.kind == "subtree" else 1.0
        record[LEAF_MASS] = {leaf: round(m / max(total, 1e-12), 5) for leaf, m in zip(self._mass_names(phase), masses)}
        record.update(phase=phase.name, kind=phase.kind, epoch=phase.epoch, epochs=phase.epochs,
                      alpha=alpha, lr=lr,
                      images_per_s=self._images_per_s, n_leaves=len(self.model.tree.leaves()),
                      images=int(n), **memory_fields(self.ctx.device))
        if phase.leaf:
            record["leaf"] = phase.leaf
        if self.ctx.on_epoch_end is not None:
            self.ctx.on_epoch_end(record)
        if self.ctx.is_main:
            self.log.write("epoch", step=step, **record)
            emptiest = min(record[LEAF_MASS], key=record[LEAF_MASS].get)
            self.progress.line(
                f"[{phase.name}] epoch {phase.epoch}/{phase.epochs}  loss {record['loss']:.2f}  "
                f"rec {record['rec']:.2f}  kl_root {record['kl_root']:.2f}  kl_nodes {record['kl_nodes']:.2f}  "
                f"kl_dec {record['kl_decisions']:.3f}" + (f"  aug {record['aug']:.3f}" if record["aug"] else "")
                + f"  alpha {record['alpha']:.3f}  emptiest {emptiest} {record[LEAF_MASS][emptiest]:.1%}"
                + f"  {record['images_per_s']:.0f} img/s")
        if not math.isfinite(record["loss"]):
            raise NonFiniteLossError(f"non-finite mean loss in phase '{phase.name}', epoch {phase.epoch}")
