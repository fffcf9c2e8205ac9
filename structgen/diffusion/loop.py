"""DDPM training: ε-prediction with an L2 loss on images in [-1, 1], conditioned on the frozen
TreeVAE (algorithm.md §5.1-5.4), with EMA, LR warm-up, gradient clipping and resumable
checkpoints.

The loop talks only to a `Context`: data are sharded by rank, the module is wrapped by
`ctx.wrap` (DDP when distributed), metrics are all-reduced, and only the main rank writes.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from structgen.diffusion import ddpm_checkpoint as ddpm_ckpt
from structgen.diffusion.ema import EMA
from structgen.diffusion.conditioning import ConditionalUNet, signal_spec
from structgen.diffusion.process import DiffusionProcess
from structgen.diffusion.schedule import QUARTERS, NoiseSchedule, timestep_quarter
from structgen.diffusion.unet import UNetSpec
from structgen.diffusion.vae_condition import VAEConditioner, to_signed
from structgen.errors import NonFiniteLossError
from structgen.runs import final_checkpoint, last_checkpoint
from structgen.runtime.checkpoint_io import rng_state, set_rng_state
from structgen.runtime.context import Context
from structgen.runtime.precision import StepPrecision
from structgen.runtime.resources import memory_fields

_RANK_SEED_STRIDE = 7919


def lr_factor(step: int, warmup_steps: int, total_steps: int, decay: str) -> float:
    """The multiplier of diffusion.lr at optimiser step ``step`` (from 0): a linear warm-up over
    ``warmup_steps``, then 1 (``none``, the reference) or a half cosine from 1 after the warm-up
    to 0 at ``total_steps`` (``cosine``). A run resumed with more epochs stretches the rest of
    its cosine over the new total."""
    if step < warmup_steps or decay == "none":
        return min((step + 1) / max(warmup_steps, 1), 1.0)
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class DDPMTrainer:
    """Trains with the ``diffusion`` and ``run`` config sections; batches come from ``loaders``
    (`data.loaders.make_loader` bound to the run's data section) and ``record`` (the run's
    resolved config and its frozen TreeVAE) goes unchanged into every checkpoint."""

    def __init__(self, d, run, ctx: Context, train_set, conditioner: VAEConditioner, *, loaders, record: dict,
                 log, progress, saved: dict | None = None, preview=None):
        self.d, self.seed, self.ctx, self.log, self.progress = d, run.seed, ctx, log, progress
        self.conditioner, self.record, self.preview = conditioner, record, preview
        per_rank = d.batch_size // ctx.world_size
        if per_rank < 1:
            raise ValueError(f"diffusion.batch_size = {d.batch_size} is smaller than the {ctx.world_size} workers")
        torch.manual_seed(run.seed)                      # identical initial weights on every rank
        self.unet_spec = UNetSpec.from_config(d, conditioner.image_shape)
        self.signal = signal_spec(d.conditioning, conditioner)
        self.precision = StepPrecision.of_run(run, ctx.device)
        self.model = self.precision.module(ConditionalUNet.build(self.unet_spec, self.signal).to(ctx.device))
        self.ema = EMA(self.model, d.ema_decay, d.ema_warmup)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=d.lr)
        self.schedule = NoiseSchedule.from_config(d)
        # Shuffled, unlike the reference (§8 perf 6); sharded by rank with equal batch counts.
        self.loader = loaders(train_set.images, train_set.labels, per_rank, split="train", shuffle=True,
                              seed=run.seed, rank=ctx.rank, world_size=ctx.world_size, drop_last=True,
                              device=ctx.device)
        total_steps = d.epochs * len(self.loader)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, d.warmup_steps, total_steps, d.lr_decay))
        self.step = self.epoch = self.batch_in_epoch = 0
        self.sums = self._zero_sums()
        if saved is not None:
            self._restore(saved)
        else:
            torch.manual_seed(run.seed + 1 + _RANK_SEED_STRIDE * ctx.rank)
        self.train_module = ctx.wrap(self.model)
        self.process = DiffusionProcess(self.train_module, self.schedule, self.precision.memory_format)

    # ---- state ------------------------------------------------------------------------------
    def _zero_sums(self) -> torch.Tensor:
        # [loss·n, grad_norm·batches, batches, n, per-quartile loss sums (4), per-quartile counts (4)]
        return torch.zeros(4 + 2 * QUARTERS, dtype=torch.float64, device=self.ctx.device)

    def _restore(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.ema.load_state_dict(saved["ema"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.lr_schedule.load_state_dict(saved["lr_schedule"])
        self.step, self.epoch, self.batch_in_epoch = saved["step"], saved["epoch"], saved["batch_in_epoch"]
        self.sums = saved["epoch_sums"].to(self.ctx.device)
        if self.ctx.rank == 0:
            set_rng_state(saved["rng"])
        else:
            torch.manual_seed(self.seed + 1 + _RANK_SEED_STRIDE * self.ctx.rank + self.step)

    def state(self) -> dict:
        return {**self.record, "unet_spec": self.unet_spec.to_dict(), "signal": self.signal,
                "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_schedule.state_dict(),
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "epoch_sums": self.sums.cpu(), "rng": rng_state(), "metrics_lines": self.log.lines,
                "vae_run": self.d.vae_run}

    @property
    def checkpoint_path(self) -> Path:
        return last_checkpoint(self.ctx.run_dir)

    def _check_ema_agrees(self) -> None:
        """DDP keeps the online weights identical, so the EMA must be too; a drift would mean a
        rank skipped an update. Compared through a checksum broadcast from rank 0."""
        if not self.ctx.distributed:
            return
        mine = float(sum(p.double().sum() for p in self.ema.shadow.parameters()))
        reference = self.ctx.broadcast_object(mine)
        if abs(mine - reference) > 1e-6 * max(1.0, abs(reference)):
            raise RuntimeError(f"rank {self.ctx.rank}: EMA weights differ from rank 0's at step {self.step} "
                               f"(checksum {mine!r} vs {reference!r})")

    def checkpoint(self) -> None:
        self._check_ema_agrees()
        state = self.state()
        path = ddpm_ckpt.save(state, self.checkpoint_path) if self.ctx.is_main else None
        if self.ctx.on_checkpoint is not None:      # every rank: Ray's report() is a collective
            self.ctx.on_checkpoint(state, path)
        self.ctx.barrier()

    # ---- training ---------------------------------------------------------------------------
    def train_step(self, x01: torch.Tensor) -> tuple[float, float]:
        d = self.d
        x0 = to_signed(x01)
        cond = self.conditioner.posterior_condition(x01, "sample").with_dropout(d.cfg_rate)   # leaf ∝ π(x)
        with self.precision.autocast():
            per_sample, t = self.process.loss(x0, cond)
            loss = per_sample.mean()
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        norm_v = self.precision.clip_grad_norm(self.model.parameters(), d.grad_clip, self.optimizer)
        loss_v = float(loss.detach())
        overflow_skipped = self.precision.skips_overflow and not math.isfinite(norm_v)
        if not (math.isfinite(loss_v) and (math.isfinite(norm_v) or overflow_skipped)):
            what = f"loss = {loss_v}" if not math.isfinite(loss_v) else f"gradient norm = {norm_v}"
            raise NonFiniteLossError(
                f"non-finite DDPM {what} at step {self.step + 1} (epoch {self.epoch + 1}, batch "
                f"{self.batch_in_epoch + 1}). The last good checkpoint ({self.checkpoint_path}) is kept; "
                f"try a lower diffusion.lr or check the data.")
        self.precision.step(self.optimizer)
        self.lr_schedule.step()
        self.ema.update(self.model)
        self.step += 1
        q = timestep_quarter(t, self.schedule.T)
        n = len(x0)
        logged_norm = 0.0 if overflow_skipped else norm_v     # an fp16 overflow step changed nothing
        self.sums[:4] += torch.tensor([loss_v * n, logged_norm, 1.0, n], dtype=torch.float64, device=self.sums.device)
        self.sums[4:4 + QUARTERS].index_add_(0, q, per_sample.detach().double())
        self.sums[4 + QUARTERS:].index_add_(0, q, torch.ones_like(per_sample, dtype=torch.float64))
        return loss_v, norm_v

    def run(self) -> torch.nn.Module:
        d = self.d
        while self.epoch < d.epochs:
            self.loader.set_epoch(self.epoch)
            self.model.train()
            bar = self.progress.epoch(len(self.loader) - self.batch_in_epoch, f"ddpm epoch {self.epoch + 1}/{d.epochs}")
            start = self.batch_in_epoch
            for b, (x01, _, _) in enumerate(self.loader):
                if b < start:
                    continue                                  # resumed mid-epoch: same order, skip what was seen
                loss, _ = self.train_step(x01)
                self.batch_in_epoch = b + 1
                bar.update(len(x01), {"loss": loss, "lr": self.optimizer.param_groups[0]["lr"]})
                if d.checkpoint_every_steps and self.step % d.checkpoint_every_steps == 0:
                    self.checkpoint()
            bar.close()
            self.epoch += 1
            self.batch_in_epoch = 0
            self._log_epoch(bar.images_per_s * self.ctx.world_size)
            if self.epoch % d.checkpoint_every == 0 or self.epoch == d.epochs:
                self.checkpoint()
            if self.preview is not None and d.sample_every and self.epoch % d.sample_every == 0:
                self._preview()
        # epochs = 0: still leave a loadable run. Every rank checkpoints (a collective), on rank 0's word.
        if self.ctx.broadcast_object(not self.checkpoint_path.exists() if self.ctx.is_main else None):
            self.checkpoint()
        if self.ctx.is_main:
            shutil.copyfile(self.checkpoint_path, final_checkpoint(self.ctx.run_dir))
        self.ctx.barrier()
        return self.ema.shadow

    def _preview(self) -> None:
        if self.ctx.is_main:
            path = self.preview(self.ema.shadow, self.epoch)
            self.progress.line(f"preview: {path}")
        self.ctx.barrier()

    def _log_epoch(self, images_per_s: float) -> None:
        sums = self.ctx.all_reduce_sum(self.sums).cpu()
        self.sums = self._zero_sums()
        n, batches = max(sums[3].item(), 1.0), max(sums[2].item(), 1.0)
        q_loss, q_count = sums[4:4 + QUARTERS], sums[4 + QUARTERS:].clamp(min=1)
        record = {"epoch": self.epoch, "epochs": self.d.epochs, "steps": self.step, "loss": sums[0].item() / n,
                  "grad_norm": sums[1].item() / batches, "lr": self.optimizer.param_groups[0]["lr"],
                  "ema_decay": self.ema.current_decay(), "images_per_s": images_per_s, "images": int(sums[3].item()),
                  **{f"loss_q{i}": (q_loss[i] / q_count[i]).item() for i in range(QUARTERS)},
                  **memory_fields(self.ctx.device)}
        if self.ctx.on_epoch_end is not None:
            self.ctx.on_epoch_end(record)
        if self.ctx.is_main:
            self.log.write("ddpm_epoch", step=self.step, **record)
            quartiles = " ".join(f"{record['loss_q' + str(i)]:.3f}" for i in range(QUARTERS))
            self.progress.line(f"[ddpm] epoch {self.epoch}/{self.d.epochs}  step {self.step}  "
                               f"loss {record['loss']:.4f}  "
                               f"(by t quartile {quartiles})  "
                               f"grad {record['grad_norm']:.2f}  lr {record['lr']:.2e}  {images_per_s:.0f} img/s")
        if not math.isfinite(record["loss"]):
            raise NonFiniteLossError(f"non-finite mean DDPM loss in epoch {self.epoch} (step {self.step})")
