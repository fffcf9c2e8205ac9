"""Reverse-process samplers behind one diffusers-style interface (algorithm.md §5.6).

    sched = DDIMScheduler(schedule, eta=0.0, spacing="quad"); sched.set_timesteps(100)
    for t in sched.timesteps:
        x = sched.step(model_eps(x, t), t, x, generator).prev_sample

Both clamp the predicted x_0 to the data range [-1, 1]. `noise=` lets a caller supply the step
noise (the all-leaves modes share it across leaves); otherwise it is drawn from `generator`.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from structgen.diffusion.schedule import NoiseSchedule, spaced_timesteps

CLIP = 1.0   # data live in [-1, 1]


class StepOutput(NamedTuple):
    prev_sample: torch.Tensor
    pred_x0: torch.Tensor


def _noise(x: torch.Tensor, generator, noise):
    if noise is not None:
        if noise.shape != x.shape:
            raise ValueError(f"step noise of shape {tuple(noise.shape)} does not match x_t {tuple(x.shape)}")
        return noise
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class _Scheduler:
    needs_noise = True

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule

    def _set(self, ascending: torch.Tensor) -> None:
        ts = ascending.tolist()
        self._prev = {t: (ts[i - 1] if i else -1) for i, t in enumerate(ts)}
        self.timesteps = ascending.flip(0)

    def prev_timestep(self, t: int) -> int:
        try:
            return self._prev[int(t)]
        except KeyError:
            raise ValueError(f"t = {int(t)} is not one of this scheduler's timesteps; call set_timesteps first") \
                from None

    def x0(self, eps, t, x_t):
        return self.schedule.predict_x0(x_t, t, eps).clamp(-CLIP, CLIP)

    def timesteps_from(self, strength: float = 1.0) -> list[int]:
        """The descending timesteps a run of ``strength`` walks: all of them at 1, else those at or
        below strength·(T-1) (t = 0 is always among them)."""
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must lie in (0, 1]; got {strength}")
        ts = self.timesteps.tolist()
        return ts if strength == 1.0 else [t for t in ts if t <= strength * (self.schedule.T - 1)]


class DDPMScheduler(_Scheduler):
    """Ancestral sampling over all T steps.

    x_{t-1} = c_x0·x̂_0 + c_xt·x_t + σ_t·z. "fixedlarge": σ²_t = β_t, except at t=0 where the
    posterior variance at t=1 stands in (the reference; no noise is added at t=0 anyway);
    "fixedsmall": σ²_t = the posterior variance β̃_t.
    """

    def __init__(self, schedule: NoiseSchedule, variance: str = "fixedlarge"):
        super().__init__(schedule)
        if variance == "fixedlarge":
            self.variance = torch.cat([schedule.posterior_variance[1:2], schedule.betas[1:]])
        elif variance == "fixedsmall":
            self.variance = schedule.posterior_variance
        else:
            raise ValueError(f"unknown DDPM variance {variance!r}: expected fixedlarge or fixedsmall")
        self.set_timesteps()

    def set_timesteps(self, n: int | None = None) -> None:
        T = self.schedule.T
        if n is not None and n != T:
            raise ValueError(f"ancestral DDPM runs all T = {T} steps; got {n}. Use the ddim sampler for fewer steps")
        self._set(torch.arange(T))

    def step(self, eps, t, x_t, generator=None, noise=None) -> StepOutput:
        t = int(t)
        x0 = self.x0(eps, t, x_t)
        c0, ct = self.schedule.posterior_mean_coefs(t)
        mean = c0 * x0 + ct * x_t
        if t == 0:
            return StepOutput(mean, x0)
        return StepOutput(mean + math.sqrt(float(self.variance[t])) * _noise(x_t, generator, noise), x0)


class DDIMScheduler(_Scheduler):
    """DDIM (Song et al.) on n respaced timesteps.

    From x̂_0 (clamped) and the ε it implies: x_prev = sqrt(ᾱ_prev)·x̂_0 + sqrt(1-ᾱ_prev-σ²)·ε + σ·z,
    σ = η·sqrt((1-ᾱ_prev)/(1-ᾱ_t))·sqrt(1-ᾱ_t/ᾱ_prev). η = 0 is deterministic; η = 1 with n = T is
    ancestral sampling with the posterior variance.
    """

    def __init__(self, schedule: NoiseSchedule, eta: float = 0.0, spacing: str = "quad", n_steps: int | None = None):
        super().__init__(schedule)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"DDIM eta must lie in [0, 1]; got {eta}")
        self.eta, self.spacing = eta, spacing
        self.needs_noise = eta > 0
        self.set_timesteps(n_steps)

    def set_timesteps(self, n: int | None = None) -> None:
        self._set(spaced_timesteps(self.schedule.T, n or self.schedule.T, self.spacing))

    def step(self, eps, t, x_t, generator=None, noise=None) -> StepOutput:
        t = int(t)
        t_prev = self.prev_timestep(t)
        x0 = self.x0(eps, t, x_t)
        eps = self.schedule.eps_from_x0(x_t, t, x0)      # consistent with the clamped x̂_0
        ab, ab_prev = self.schedule.alpha_bar(t), self.schedule.alpha_bar(t_prev)
        sigma = self.eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab)) * math.sqrt(1.0 - ab / ab_prev)
        out = math.sqrt(ab_prev) * x0 + math.sqrt(max(1.0 - ab_prev - sigma ** 2, 0.0)) * eps
        if sigma > 0 and t_prev >= 0:
            out = out + sigma * _noise(x_t, generator, noise)
        return StepOutput(out, x0)


def make_scheduler(schedule: NoiseSchedule, sampler: str, *, n_steps: int | None = None, eta: float = 0.0,
                   spacing: str = "quad", variance: str = "fixedlarge") -> _Scheduler:
    if sampler == "ddpm":
        return DDPMScheduler(schedule, variance)
    if sampler == "ddim":
        return DDIMScheduler(schedule, eta, spacing, n_steps)
    raise ValueError(f"unknown sampler {sampler!r}: expected ddpm or ddim")


def shared_noise(shape, group: int, generator, device, dtype=torch.float32) -> torch.Tensor:
    """Noise for a batch laid out as (root sample, leaf) pairs: drawn once per root sample and
    repeated over its ``group`` leaves, so leaves differ only in their conditioning."""
    if shape[0] % group:
        raise ValueError(f"batch of {shape[0]} is not a whole number of groups of {group}")
    base = torch.randn((shape[0] // group, *shape[1:]), generator=generator, device=device, dtype=dtype)
    return base.repeat_interleave(group, dim=0)


@torch.no_grad()
def sample_loop(eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler: _Scheduler, shape,
                generator: torch.Generator | None, device, group: int = 1, on_step=None,
                start: torch.Tensor | None = None, strength: float = 1.0) -> torch.Tensor:
    """Run the reverse process to x_0 from x_T ~ N(0, I) (no image leaks in, §8.5), or, with
    ``strength`` < 1, from ``start`` noised to the first timestep at or below strength·(T-1)
    (SDEdit; ``start`` is the leaf's VAE image, never the input image).

    ``eps_fn(x_t, t_batch)`` is the (guided) noise prediction; ``group`` > 1 shares the first
    noise and every step's noise within consecutive groups of that many batch rows.
    """
    timesteps = scheduler.timesteps_from(strength)
    x = shared_noise(shape, group, generator, device)
    if strength < 1.0:
        if start is None or start.shape != torch.Size(shape):
            raise ValueError(f"strength {strength} < 1 needs a start image batch of shape {tuple(shape)}")
        first = torch.full((shape[0],), timesteps[0], device=device, dtype=torch.long)
        x = scheduler.schedule.q_sample(start.to(x.dtype), first, x)
    for t in timesteps:
        t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
        noise = shared_noise(shape, group, generator, device) if scheduler.needs_noise and t > 0 else None
        x = scheduler.step(eps_fn(x, t_batch), t, x, noise=noise).prev_sample
        if on_step is not None:
            on_step()
    return x
