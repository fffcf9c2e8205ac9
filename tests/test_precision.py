"""`run.precision` and `run.channels_last` (structgen.runtime.precision) on CPU: channels-last is the
same math, bf16/fp16 autocast really lowers the arithmetic and stays close, fp16 loss scaling
skips an overflowing step instead of failing, and both training loops run end to end with them."""
import json

import pytest
import torch
from conftest import TINY_VAE

from structgen.config import load_config
from structgen.models.elbo import Clamps, total_loss
from structgen.models.objective import FullTreeObjective
from structgen.models.treevae import ModelSpec, TreeVAE
from structgen.runtime.precision import StepPrecision
from structgen.tree.topology import Tree

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_step(precision: StepPrecision, seed: int = 0):
    """Loss, gradients and the decoder output dtype of one full-tree step of a fixed 4-leaf tree."""
    torch.manual_seed(seed)
    model = TreeVAE(ModelSpec((1, 28, 28), spectral_norm="reference"), Tree.complete(2))
    objective = precision.module(FullTreeObjective(model, Clamps()))
    x = torch.rand(16, 1, 28, 28)
    torch.manual_seed(seed + 1)        # the same sampling noise for every precision
    with precision.autocast():
        out = model(precision.batch(x))
        torch.manual_seed(seed + 1)
        loss = total_loss(objective(precision.batch(x)), 0.5)
    precision.backward(loss)
    grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    return float(loss.detach()), grads, out.decoder_out.dtype


def relative_gap(a, b):
    return float((a - b).norm() / b.norm())


def test_channels_last_is_the_same_math():
    loss, grads, dtype = one_step(StepPrecision("fp32", False, torch.device("cpu")))
    loss_cl, grads_cl, _ = one_step(StepPrecision("fp32", True, torch.device("cpu")))
    assert dtype == torch.float32
    assert loss_cl == pytest.approx(loss, rel=1e-5)
    assert relative_gap(grads_cl, grads) < 1e-4


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_lowers_the_arithmetic_and_stays_close(precision, dtype):
    loss, grads, _ = one_step(StepPrecision("fp32", False, torch.device("cpu")))
    low = StepPrecision(precision, False, torch.device("cpu"))
    loss_low, grads_low, low_dtype = one_step(low)
    assert low_dtype == dtype                         # the decoders really ran in lower precision
    assert loss_low == pytest.approx(loss, rel=0.02)
    if low.scaler is not None:
        # fp16 gradients come back scaled by 2^16, which overflows on a loss of hundreds of nats
        # until the scaler has lowered its scale (the overflow test below); nothing to compare yet.
        return
    # bf16 keeps ~3 significant digits: the gradient points the same way, element-wise it is rough.
    assert torch.nn.functional.cosine_similarity(grads_low, grads, dim=0) > 0.98
    assert relative_gap(grads_low, grads) < 0.25


def test_fp16_loss_scaling_skips_an_overflowing_step_instead_of_failing():
    precision = StepPrecision("fp16", False, torch.device("cpu"))
    weight = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scale = precision.scaler.get_scale()
    precision.backward((weight * 1e38).sum())        # finite in fp32, inf once scaled
    norm = precision.clip_grad_norm([weight], 1.0, optimizer)
    precision.step(optimizer)
    assert norm == float("inf") and precision.skips_overflow
    assert torch.equal(weight.detach(), torch.ones(4))   # the step was skipped
    assert precision.scaler.get_scale() < scale          # and the scale lowered

    optimizer.zero_grad()
    precision.backward(weight.sum())
    assert precision.clip_grad_norm([weight], 0.0, optimizer) == pytest.approx(2.0)   # unscaled
    precision.step(optimizer)
    assert torch.allclose(weight.detach(), torch.full((4,), 0.9))


def test_fp16_keeps_the_gaussian_arithmetic_finite():
    from structgen.models import gaussian as G

    # A variance of 1e-6 has a precision of 1e6, beyond fp16's largest value (65,504).
    half = dict(dtype=torch.float16)
    mu, var = G.precision_weighted(torch.ones(2, 4, **half), torch.full((2, 4), 1e-6, **half),
                                   torch.zeros(2, 4, **half), torch.ones(2, 4, **half))
    assert mu.dtype == var.dtype == torch.float32
    assert torch.allclose(mu, torch.ones(2, 4), atol=1e-3) and var.isfinite().all()
    tiny = torch.full((2, 4), 1e-6, **half)
    assert G.kl_normal(mu.half(), var.half(), torch.zeros(2, 4, **half), tiny).isfinite().all()

    # The tree that first showed it: before the casts its first fp16 step had NaN gradients.
    torch.manual_seed(0)
    model = TreeVAE(ModelSpec((1, 28, 28), spectral_norm="reference"), Tree.complete(2))
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = total_loss(FullTreeObjective(model, Clamps())(x), 0.5)
    loss.backward()
    assert all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None)


def test_unknown_precision_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="run.precision"):
        load_config(None, ["run.precision=fp64"])
    with pytest.raises(ValueError, match="run.precision"):
        StepPrecision("fp8", False, torch.device("cpu"))


def epoch_losses(run_dir, event):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if json.loads(line)["event"] == event]


def test_tree_and_ddpm_train_end_to_end_in_lower_precision_and_channels_last(runs_dir):
    from test_diffusion_train import TINY_DDPM

    from structgen.api import load_model, train_tree
    from structgen.ddpm_api import train_ddpm

    low = ["run.precision=bf16", "run.channels_last=true", f"run.runs_dir={runs_dir}"]
    vae_dir, _ = train_tree(load_config(None, TINY_VAE + low + ["run.name=bf16"]), evaluate=False)
    losses = epoch_losses(vae_dir, "epoch")
    assert losses and all(0 < loss < 1e4 for loss in losses)
    model, _ = load_model(vae_dir, torch.device("cpu"))      # a plain fp32, NCHW model
    assert next(model.parameters()).dtype == torch.float32
    assert model.predict(torch.rand(3, 1, 28, 28)).sum(1).allclose(torch.ones(3))

    ddpm_cfg = load_config(None, TINY_DDPM + ["run.precision=fp16", "run.channels_last=true", "diffusion.epochs=1",
                                              f"run.runs_dir={runs_dir}"])
    ddpm_dir = train_ddpm(ddpm_cfg, vae_dir)
    ddpm_losses = epoch_losses(ddpm_dir, "ddpm_epoch")
    assert len(ddpm_losses) == 1 and all(0 < loss < 1.5 for loss in ddpm_losses)
    records = [json.loads(line) for line in (ddpm_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["peak_rss_mb"] > 50 for r in records if r["event"] == "ddpm_epoch")
