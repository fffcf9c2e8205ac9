"""The noise schedule and the timestep spacings, against hand computation (algorithm.md §5.2, §5.6)."""
import math

import pytest
import torch

from structgen.diffusion.schedule import NoiseSchedule, spaced_timesteps


def test_linear_betas_and_cumulative_alphas_match_a_hand_computation():
    s = NoiseSchedule(1e-4, 0.02, 1000)
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert s.betas[500].item() == pytest.approx(betas[500], rel=1e-12)
    prod = 1.0
    for b in betas:
        prod *= 1.0 - b
    assert s.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, rel=1e-12)
    assert s.alphas_cumprod[-1].item() == pytest.approx(prod, rel=1e-9)
    assert 3e-5 < prod < 5e-5                       # x_T is essentially pure noise
    ab_prev = math.prod(1 - b for b in betas[:499])
    ab = ab_prev * (1 - betas[499])
    assert s.posterior_variance[499].item() == pytest.approx(betas[499] * (1 - ab_prev) / (1 - ab), rel=1e-9)
    assert s.posterior_variance[0].item() == 0.0


def test_q_sample_and_x0_prediction_invert_each_other():
    s = NoiseSchedule(1e-4, 0.02, 1000)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1, torch.randn(3, 1, 4, 4, generator=g)
    t = torch.tensor([0, 400, 999])
    x_t = s.q_sample(x0, t, noise)
    ab = torch.tensor([s.alpha_bar(i) for i in t.tolist()], dtype=torch.float32).view(-1, 1, 1, 1)
    assert torch.allclose(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * noise, atol=1e-6)
    assert torch.allclose(s.predict_x0(x_t[1:2], 400, noise[1:2]), x0[1:2], atol=1e-5)
    assert torch.allclose(s.eps_from_x0(x_t[1:2], 400, x0[1:2]), noise[1:2], atol=1e-4)


def test_schedule_rejects_bad_betas():
    with pytest.raises(ValueError, match="beta1 < beta2"):
        NoiseSchedule(0.02, 1e-4, 1000)


@pytest.mark.parametrize("spacing", ["uniform", "quad"])
@pytest.mark.parametrize("n", [1, 7, 100, 900, 1000])
def test_spacings_are_distinct_ascending_and_end_at_T_minus_1(spacing, n):
    ts = spaced_timesteps(1000, n, spacing)
    assert len(ts) == n and ts[-1] == 999
    assert (ts[1:] > ts[:-1]).all()
    if n > 1:
        assert ts[0] == 0


def test_quad_spacing_is_dense_near_zero_and_reaches_T_minus_1_unlike_the_reference():
    ts = spaced_timesteps(1000, 100, "quad")
    # The reference's quad grid, int(linspace(0, sqrt(0.8 T), n)^2), stops at 800 (§8.6).
    reference_last = int(math.sqrt(0.8 * 1000) ** 2)
    assert reference_last == 800 and ts[-1] == 999
    gaps = ts[1:] - ts[:-1]
    assert gaps[:10].float().mean() < gaps[-10:].float().mean() / 5
    assert ts[50].item() == round((50 / 99 * math.sqrt(999)) ** 2)


def test_spacing_rejects_more_steps_than_timesteps():
    with pytest.raises(ValueError, match="steps <= T"):
        spaced_timesteps(100, 101, "uniform")
