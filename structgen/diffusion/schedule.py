"""The forward noising process: a linear beta schedule and its closed forms (algorithm.md §5.2).

Constants are computed once in float64 (ᾱ_t of a 1000-step schedule reaches ~4e-5, where
float32 products drift) and cast to the data's dtype when used.
"""
from __future__ import annotations

import math

import torch


class NoiseSchedule:
    """β_t = linspace(beta1, beta2, T); ᾱ_t = Π_{s<=t} (1 - β_s); t runs 0..T-1."""

    def __init__(self, beta1: float = 1e-4, beta2: float = 0.02, n_timesteps: int = 1000):
        if not 0.0 < beta1 < beta2 < 1.0:
            raise ValueError(f"NoiseSchedule needs 0 < beta1 < beta2 < 1; got beta1={beta1}, beta2={beta2}")
        if n_timesteps < 2:
            raise ValueError(f"NoiseSchedule needs at least 2 timesteps; got {n_timesteps}")
        self.T = n_timesteps
        self.betas = torch.linspace(beta1, beta2, n_timesteps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # Variance of q(x_{t-1} | x_t, x_0); zero at t=0, where x_0 is reached.
        self.posterior_variance = self.betas * (1.0 - ab_prev) / (1.0 - self.alphas_cumprod)

    @classmethod
    def from_config(cls, d) -> "NoiseSchedule":
        return cls(d.beta1, d.beta2, d.n_timesteps)

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t for one timestep; t = -1 means "before the first step" (ᾱ = 1)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x_0 + sqrt(1-ᾱ_t)·ε, with t one timestep per sample."""
        ab = self.alphas_cumprod.to(t.device)[t].to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bar(t)
        return x_t / math.sqrt(ab) - math.sqrt(1.0 / ab - 1.0) * eps

    def eps_from_x0(self, x_t: torch.Tensor, t: int, x0: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bar(t)
        return (x_t / math.sqrt(ab) - x0) / math.sqrt(1.0 / ab - 1.0)

    def posterior_mean_coefs(self, t: int) -> tuple[float, float]:
        """(c_x0, c_xt) of the mean of q(x_{t-1} | x_t, x_0) = c_x0·x_0 + c_xt·x_t."""
        ab, ab_prev, beta = self.alpha_bar(t), self.alpha_bar(t - 1), float(self.betas[t])
        return beta * math.sqrt(ab_prev) / (1.0 - ab), (1.0 - ab_prev) * math.sqrt(1.0 - beta) / (1.0 - ab)


QUARTERS = 4       # the ε-loss is reported per quarter of the timestep range, as improved-diffusion does


def timestep_quarter(t: torch.Tensor, T: int) -> torch.Tensor:
    """Which quarter of 0..T-1 each timestep falls in: 0 (least noise) to 3 (most)."""
    return (t * QUARTERS) // T


def spaced_timesteps(T: int, n: int, spacing: str) -> torch.Tensor:
    """n distinct timesteps in 0..T-1, ascending, always including 0 and T-1.

    uniform: evenly spaced (any n, no exact-stride requirement). quad: t_i ∝ i², dense near
    t=0 where detail is decided. Unlike the reference (§8.6), quad ends at T-1, so sampling
    starts where x_T ~ N(0, I) actually holds.
    """
    if not 1 <= n <= T:
        raise ValueError(f"need 1 <= steps <= T = {T}; got {n} steps")
    if n == 1:
        return torch.tensor([T - 1])
    if spacing == "uniform":
        ts = torch.linspace(0, T - 1, n, dtype=torch.float64).round().long()
    elif spacing == "quad":
        ts = (torch.linspace(0, math.sqrt(T - 1), n, dtype=torch.float64) ** 2).round().long()
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}: expected uniform or quad")
    # Where rounding puts two steps on one integer (dense low end), push later ones up by one;
    # t_i - i is largest at the last step (T - n), so nothing passes T - 1.
    i = torch.arange(n)
    ts = torch.cummax(ts - i, dim=0).values + i
    return ts.clamp(max=T - 1)
