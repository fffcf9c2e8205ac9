"""The DDPM process object used directly, without the training loop.

    .venv/bin/python examples/diffusion_process.py

Builds a small conditional UNet, takes a few optimiser steps of the ε-prediction loss on real
digits conditioned on a stand-in "VAE image" (here the blurred digit itself, so no TreeVAE is
needed), and samples with DDIM, with and without classifier-free guidance. The README shows
this file; tests/test_examples.py runs it.
"""
import torch
import torch.nn.functional as F

from structgen.data import TensorLoader, load_split
from structgen.diffusion.conditioning import Condition, ConditionalUNet, SignalEmbedding
from structgen.diffusion.process import DiffusionProcess
from structgen.diffusion.samplers import make_scheduler
from structgen.diffusion.schedule import NoiseSchedule
from structgen.diffusion.unet import UNet, UNetSpec

torch.manual_seed(0)
digits = load_split("digits", "train")                       # uint8 N x 1 x 28 x 28, no download
loader = TensorLoader(digits.images, digits.labels, batch_size=32, seed=0)

spec = UNetSpec(image_shape=(1, 28, 28), dim=16, n_residual=1, attn_resolutions=[], n_heads=4)
network = ConditionalUNet(UNet(spec), SignalEmbedding("none", spec.emb_dim))
process = DiffusionProcess(network, NoiseSchedule(n_timesteps=100))
optimizer = torch.optim.Adam(network.parameters(), lr=2e-4)


def blurred(x01: torch.Tensor) -> Condition:
    """A conditioning batch: the digit blurred (standing in for a leaf's VAE image), in [-1, 1]."""
    soft = F.avg_pool2d(x01, 4, stride=1, padding=2, count_include_pad=False)[..., :28, :28]
    return Condition(recon=soft * 2 - 1, keep=torch.ones(len(x01)))


for step, (x, _, _) in zip(range(5), loader):
    cond = blurred(x).with_dropout(0.1)                     # classifier-free guidance needs dropped rows
    per_sample, t = process.loss(x * 2 - 1, cond)           # x0 in [-1, 1]; t drawn uniformly
    loss = per_sample.mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step}: loss {loss.item():.3f}  (timesteps {t.min().item()}..{t.max().item()})")

network.eval()
cond = blurred(x[:4])
ddim = make_scheduler(process.schedule, "ddim", n_steps=10)  # or make_scheduler(process.schedule, "ddpm")
plain = process.sample(cond, ddim, generator=torch.Generator().manual_seed(1))
guided = process.sample(cond, ddim, guidance=2.0, generator=torch.Generator().manual_seed(1))
print("sampled", tuple(plain.shape), "in", [round(plain.min().item(), 2), round(plain.max().item(), 2)])
print("guidance changes the samples:", not torch.equal(plain, guided))
