"""Arithmetic and memory format of a training step: `run.precision` and `run.channels_last`.

Both training loops (TreeVAE phases, DDPM) run their forward pass and loss inside
`autocast()`, give every batch to `batch()`, put their modules through `module()`, and end a
step with `backward()` and `step()`, so one object decides how a step is computed:

* ``fp32``: plain float32, the default and what every measured figure uses.
* ``bf16``: autocast to bfloat16 (GPUs from A100 on; on a CPU with AVX-512 BF16 a TreeVAE step
  measured 0.68x the fp32 one, README "Benchmarks"). Same exponent range as fp32, so no loss
  scaling.
* ``fp16``: autocast to float16 with dynamic loss scaling (`torch.amp.GradScaler`), for GPUs
  without bf16. A step whose scaled gradients overflow is skipped and the scale lowered; that
  is the scaler's job, not a training failure.

Evaluation, routing and sampling always run in fp32: the figures a run reports do not depend on
the training arithmetic. The scaler's state is not checkpointed; a resumed fp16 run starts from
the initial scale and re-calibrates within a few steps.
"""
from __future__ import annotations

import contextlib
import math

import torch

from structgen.config.schema import PRECISIONS

_DTYPES = dict(zip(PRECISIONS, (None, torch.bfloat16, torch.float16)))


class StepPrecision:
    def __init__(self, precision: str, channels_last: bool, device: torch.device):
        if precision not in _DTYPES:
            raise ValueError(f"run.precision = {precision!r}: expected one of {', '.join(PRECISIONS)}")
        self.name = precision
        self.device_type = torch.device(device).type
        self.dtype = _DTYPES[precision]
        self.channels_last = channels_last
        self.scaler = torch.amp.GradScaler(self.device_type) if precision == "fp16" else None

    @classmethod
    def of_run(cls, run_cfg, device: torch.device) -> "StepPrecision":
        return cls(run_cfg.precision, run_cfg.channels_last, device)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def module(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` in the step's memory format (in place; a no-op for NCHW)."""
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def clip_grad_norm(self, params, max_norm: float, optimizer: torch.optim.Optimizer) -> float:
        """Clip to ``max_norm`` (0 = no clip); returns the true (unscaled) norm before clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm or math.inf))

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)      # skipped when the scaled gradients overflowed
        self.scaler.update()

    @property
    def skips_overflow(self) -> bool:
        """Whether a non-finite gradient is the scaler's business (fp16: skip the step, lower the
        scale) rather than a training failure."""
        return self.scaler is not None
