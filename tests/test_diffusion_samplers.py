"""DDPM and DDIM steps against the formulas written out here, and their sampling statistics."""
import math

import pytest
import torch

from structgen.diffusion.samplers import DDIMScheduler, DDPMScheduler, make_scheduler, sample_loop, shared_noise
from structgen.diffusion.schedule import NoiseSchedule


pytestmark = pytest.mark.usefixtures("one_torch_thread")

T = 10
BETAS = [0.1 + 0.1 * i / (T - 1) for i in range(T)]


def alpha_bar(t):
    return math.prod(1 - b for b in BETAS[:t + 1]) if t >= 0 else 1.0


@pytest.fixture
def known():
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(2, 1, 3, 3, generator=g)
    eps = torch.randn(2, 1, 3, 3, generator=g) * 0.5
    noise = torch.randn(2, 1, 3, 3, generator=g)
    return NoiseSchedule(0.1, 0.2, T), x_t, eps, noise


def test_ddpm_step_is_posterior_mean_plus_beta_noise(known):
    schedule, x_t, eps, noise = known
    t = 5
    ab, ab_prev, beta = alpha_bar(t), alpha_bar(t - 1), BETAS[t]
    x0 = ((x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
    mean = beta * math.sqrt(ab_prev) / (1 - ab) * x0 + (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab) * x_t
    out = DDPMScheduler(schedule, "fixedlarge").step(eps, t, x_t, noise=noise)
    assert torch.allclose(out.pred_x0, x0, atol=1e-6)
    assert torch.allclose(out.prev_sample, mean + math.sqrt(beta) * noise, atol=1e-6)
    small = DDPMScheduler(schedule, "fixedsmall").step(eps, t, x_t, noise=noise)
    post_var = beta * (1 - ab_prev) / (1 - ab)
    assert torch.allclose(small.prev_sample, mean + math.sqrt(post_var) * noise, atol=1e-6)


def test_ddpm_last_step_returns_the_clamped_x0_without_noise(known):
    schedule, x_t, eps, noise = known
    sched = DDPMScheduler(schedule)
    out = sched.step(eps * 40, 0, x_t, noise=noise)
    assert torch.allclose(out.prev_sample, out.pred_x0, atol=1e-6)
    assert out.pred_x0.abs().max() <= 1.0 and (out.pred_x0.abs() == 1.0).any()
    # fixedlarge: beta_t, with the posterior variance at t=1 in the t=0 slot
    assert sched.variance[0].item() == pytest.approx(BETAS[1] * (1 - alpha_bar(0)) / (1 - alpha_bar(1)))
    assert sched.variance[4].item() == pytest.approx(BETAS[4])


def test_ddim_step_formula_on_a_respaced_grid(known):
    schedule, x_t, eps, noise = known
    sched = DDIMScheduler(schedule, eta=0.5, spacing="uniform")
    sched.set_timesteps(4)
    assert sched.timesteps.tolist() == [9, 6, 3, 0]
    t, t_prev = 6, 3
    ab, ab_prev = alpha_bar(t), alpha_bar(t_prev)
    x0 = ((x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
    eps_hat = (x_t - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
    sigma = 0.5 * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
    expected = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma ** 2) * eps_hat + sigma * noise
    out = sched.step(eps, t, x_t, noise=noise)
    assert torch.allclose(out.prev_sample, expected, atol=1e-5)
    last = sched.step(eps, 0, x_t, noise=noise)
    assert torch.allclose(last.prev_sample, last.pred_x0, atol=1e-6)   # t=0 lands on x0


def test_schedulers_refuse_wrong_step_counts_and_foreign_timesteps(known):
    schedule = known[0]
    with pytest.raises(ValueError, match="Use the ddim sampler"):
        DDPMScheduler(schedule).set_timesteps(5)
    sched = make_scheduler(schedule, "ddim", n_steps=3, spacing="uniform")
    with pytest.raises(ValueError, match="not one of this scheduler's timesteps"):
        sched.step(known[2], 5, known[1])


def dummy_eps(x, t):
    return 0.3 * x + 0.01 * t.float().view(-1, 1, 1, 1)


def run_steps(sched, x_T, seed):
    g, x = torch.Generator().manual_seed(seed), x_T
    for t in sched.timesteps.tolist():
        x = sched.step(dummy_eps(x, torch.full((len(x),), t)), t, x, generator=g).prev_sample
    return x


def test_ddim_with_eta_0_is_deterministic_and_eta_1_is_not():
    schedule = NoiseSchedule(1e-4, 0.02, 50)
    x_T = torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    det = make_scheduler(schedule, "ddim", n_steps=10, eta=0.0)
    assert torch.equal(run_steps(det, x_T, seed=5), run_steps(det, x_T, seed=6))
    sto = make_scheduler(schedule, "ddim", n_steps=10, eta=1.0)
    assert not torch.allclose(run_steps(sto, x_T, seed=5), run_steps(sto, x_T, seed=6))


@pytest.mark.parametrize("t", [3, 30, 90])
def test_ddim_full_grid_eta_1_matches_ddpm_ancestral_statistics(t):
    schedule = NoiseSchedule(1e-4, 0.02, 100)
    n = 40000
    x_t = torch.linspace(-1.5, 1.5, 4).view(1, 1, 2, 2).expand(n, 1, 2, 2)
    t_batch = torch.full((n,), t)
    ddim = make_scheduler(schedule, "ddim", n_steps=100, eta=1.0)
    ddpm_small = DDPMScheduler(schedule, "fixedsmall")
    ddpm_large = DDPMScheduler(schedule, "fixedlarge")
    draws = {}
    for name, sched, seed in (("ddim", ddim, 0), ("small", ddpm_small, 1), ("large", ddpm_large, 2)):
        g = torch.Generator().manual_seed(seed)
        draws[name] = sched.step(dummy_eps(x_t, t_batch), t, x_t, generator=g).prev_sample.double()
    mean, var = {k: v.mean(0) for k, v in draws.items()}, {k: v.var(0) for k, v in draws.items()}
    post_var = schedule.posterior_variance[t].item()
    tol_mean = 5 * math.sqrt(post_var / n)
    assert torch.allclose(mean["ddim"], mean["small"], atol=tol_mean)
    assert torch.allclose(var["ddim"], torch.full_like(var["ddim"], post_var), rtol=0.05)
    assert torch.allclose(var["small"], torch.full_like(var["small"], post_var), rtol=0.05)
    # fixedlarge has the same mean and variance beta_t, close to the posterior variance for large t
    beta = schedule.betas[t].item()
    assert torch.allclose(mean["large"], mean["small"], atol=5 * math.sqrt(beta / n))
    assert torch.allclose(var["large"], torch.full_like(var["large"], beta), rtol=0.05)
    if t >= 30:
        assert post_var == pytest.approx(beta, rel=0.1)


def test_shared_noise_repeats_within_groups_only():
    noise = shared_noise((6, 1, 3, 3), 3, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(noise[0], noise[1]) and torch.equal(noise[0], noise[2])
    assert not torch.allclose(noise[0], noise[3])
    with pytest.raises(ValueError, match="groups of 4"):
        shared_noise((6, 1, 3, 3), 4, None, "cpu")


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_grouped_sampling_gives_identical_rows_when_the_model_ignores_the_row(sampler):
    schedule = NoiseSchedule(1e-4, 0.02, 20)
    sched = make_scheduler(schedule, sampler, n_steps=5, eta=1.0)
    out = sample_loop(dummy_eps, sched, (6, 1, 4, 4), torch.Generator().manual_seed(0), "cpu", group=3)
    assert torch.equal(out[0], out[2]) and torch.equal(out[3], out[5])
    assert not torch.allclose(out[0], out[3])


@pytest.mark.parametrize("sampler, steps, eta", [("ddpm", None, 0.0), ("ddim", 10, 0.0), ("ddim", 25, 1.0)])
@pytest.mark.parametrize("spacing", ["uniform", "quad"])
def test_an_oracle_noise_predictor_leads_every_sampler_to_the_data_point(sampler, steps, eta, spacing):
    # Data = one image x*: the exact ε given x_t is (x_t − sqrt(ᾱ_t)·x*) / sqrt(1 − ᾱ_t).
    schedule = NoiseSchedule(1e-4, 0.02, 100)
    target = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4)

    def oracle(x, t):
        ab = schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return (x - ab.sqrt() * target) / (1 - ab).sqrt()

    sched = make_scheduler(schedule, sampler, n_steps=steps, eta=eta, spacing=spacing)
    out = sample_loop(oracle, sched, (5, 1, 4, 4), torch.Generator().manual_seed(0), "cpu")
    assert torch.allclose(out, target.expand(5, 1, 4, 4), atol=1e-3)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_strength_keeps_the_timesteps_at_or_below_its_share_of_T(sampler):
    sched = make_scheduler(NoiseSchedule(1e-4, 0.02, 100), sampler, n_steps=20)
    every = sched.timesteps.tolist()
    assert sched.timesteps_from(1.0) == every
    half = sched.timesteps_from(0.5)
    assert half == [t for t in every if t <= 49.5] and half[-1] == 0 and len(half) < len(every)
    assert sched.timesteps_from(1e-6) == [0]
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="strength must lie in"):
            sched.timesteps_from(bad)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_a_partial_strength_starts_from_the_start_image_noised_to_its_first_timestep(sampler):
    schedule = NoiseSchedule(1e-4, 0.02, 100)
    sched = make_scheduler(schedule, sampler, n_steps=20, eta=1.0)
    start = torch.linspace(-1, 1, 32).view(2, 1, 4, 4)
    calls = []

    def recording(x, t):
        calls.append((x.clone(), t.clone()))
        return torch.zeros_like(x)

    sample_loop(recording, sched, (2, 1, 4, 4), torch.Generator().manual_seed(0), "cpu", start=start, strength=0.4)
    first_t = sched.timesteps_from(0.4)[0]
    assert len(calls) == len(sched.timesteps_from(0.4)) and set(calls[0][1].tolist()) == {first_t}
    noise = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    expected = schedule.q_sample(start, torch.full((2,), first_t), noise)
    assert torch.allclose(calls[0][0], expected, atol=1e-6)
    # strength 1 is the pure-noise start, whatever start image is passed
    plain = sample_loop(dummy_eps, sched, (2, 1, 4, 4), torch.Generator().manual_seed(1), "cpu")
    ignored = sample_loop(dummy_eps, sched, (2, 1, 4, 4), torch.Generator().manual_seed(1), "cpu", start=start)
    assert torch.equal(plain, ignored)
    with pytest.raises(ValueError, match="needs a start image"):
        sample_loop(dummy_eps, sched, (2, 1, 4, 4), None, "cpu", strength=0.4)
