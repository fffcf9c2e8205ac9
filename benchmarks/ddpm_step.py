"""Images/s of one DDPM training step, with the frozen TreeVAE's conditioning done two ways in
the same process: every leaf decoded and one kept (the full forward), and only each row's chosen
leaf decoded (`VAEConditioner.posterior_condition`, what training uses). Same math: the same
posterior samples, leaves and images (tested in tests/test_diffusion_conditioning.py).

    .venv/bin/python benchmarks/ddpm_step.py [--vae TREE_RUN] [--threads 2 1] [--rounds 3]

Without --vae the TreeVAE is an untrained 10-leaf MNIST tree of the reference's shape
(`tree_throughput.ten_leaf_model`, the MNIST profile's spectral-norm placement). For the
CPU-sized UNet (benchmarks/diffusion_quality.py) and the reference-size one (configs/mnist.yml)
it prints, per thread count: the conditioning alone (ms per batch, both ways), the whole step
(images/s, both ways), their ratios, and the conditioning's share of the old step. Timings
interleave the two ways so that machine noise hits both alike; the best round is kept.

With --unet-variants it then times the CPU-sized UNet's step alone (one fixed condition batch)
as it is, on channels-last tensors, and through `torch.compile` (its compile time printed):
the UNet side of a step, ratios against the plain one, interleaved in the same way.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from diffusion_quality import CPU_DDPM
from tree_throughput import ten_leaf_model

from structgen.config import load_config
from structgen.diffusion.conditioning import ConditionalUNet, signal_spec
from structgen.diffusion.process import DiffusionProcess
from structgen.diffusion.schedule import NoiseSchedule
from structgen.diffusion.unet import UNetSpec
from structgen.diffusion.vae_condition import VAEConditioner, choose_leaf, to_signed

UNETS = {"CPU-sized UNet (dim 16)": (CPU_DDPM, 64), "reference-size UNet (dim 64)": ([], 32)}


def full_condition(conditioner: VAEConditioner, x01: torch.Tensor):
    """The way before: the whole TreeVAE forward, every leaf decoded, one kept per row."""
    parts = conditioner.posterior(x01)
    return conditioner.condition(parts, choose_leaf(parts.probs, "sample"))


def lean_condition(conditioner: VAEConditioner, x01: torch.Tensor):
    return conditioner.posterior_condition(x01, "sample")


def seconds(fn, repeats: int) -> float:
    fn()                                   # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def unet_variants(conditioner: VAEConditioner, threads: list[int], rounds: int, repeats: int) -> None:
    """The CPU-sized UNet's training step as is, channels-last and compiled, on one condition batch."""
    d = load_config("configs/mnist.yml", CPU_DDPM).diffusion
    base = ConditionalUNet.build(UNetSpec.from_config(d, conditioner.image_shape),
                                 signal_spec(conditioner.kind, conditioner))
    x01 = torch.rand(64, *conditioner.image_shape)
    condition = lean_condition(conditioner, x01)
    variants = {"plain": (copy.deepcopy(base), torch.contiguous_format),
                "channels_last": (copy.deepcopy(base).to(memory_format=torch.channels_last), torch.channels_last)}
    steps = {}
    for name, (model, memory_format) in variants.items():
        steps[name] = unet_step(model, NoiseSchedule.from_config(d), memory_format, x01, lambda: condition)
    start = time.perf_counter()
    steps["compiled"] = unet_step(torch.compile(copy.deepcopy(base)), NoiseSchedule.from_config(d),
                                  torch.contiguous_format, x01, lambda: condition)
    steps["compiled"]()                                   # the first call compiles
    print(f"\nCPU-sized UNet step alone, batch 64: torch.compile took {time.perf_counter() - start:.0f} s")
    print(f"{'threads':>7}" + "".join(f"{name + ' img/s':>22}" for name in steps) + "".join(
        f"{name + ' ratio':>22}" for name in list(steps)[1:]))
    for n in threads:
        torch.set_num_threads(n)
        best = {name: float("inf") for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                best[name] = min(best[name], seconds(step, repeats))
        print(f"{n:>7}" + "".join(f"{64 / best[name]:>22.0f}" for name in steps) + "".join(
            f"{best['plain'] / best[name]:>22.2f}" for name in list(steps)[1:]), flush=True)


def unet_step(model, schedule, memory_format, x01, make_condition):
    """One training step on x01 as a callable; ``make_condition()`` is timed inside it."""
    process = DiffusionProcess(model, schedule, memory_format)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def run():
        loss = process.loss(to_signed(x01), make_condition())[0].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", help="a TreeVAE run to condition on (default: an untrained 10-leaf tree)")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--conditioning", default="leaf", choices=("none", "leaf", "path"))
    parser.add_argument("--unet-variants", action="store_true",
                        help="also time the CPU-sized UNet's step plain, channels-last and compiled")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.vae:
        from structgen.runs import checkpoint_of
        from structgen.runtime.tree_checkpoint import load_model
        vae, _ = load_model(checkpoint_of(args.vae), "cpu")
    else:
        vae = ten_leaf_model("reference")
    conditioner = VAEConditioner(vae.eval(), args.conditioning)
    print(f"torch {torch.__version__}, TreeVAE with {conditioner.n_leaves} leaves "
          f"({args.vae or 'untrained, reference shape'}), conditioning {args.conditioning}")
    for name, (overrides, batch) in UNETS.items():
        d = load_config("configs/mnist.yml", overrides).diffusion
        model = ConditionalUNet.build(UNetSpec.from_config(d, conditioner.image_shape),
                                      signal_spec(args.conditioning, conditioner))
        x01 = torch.rand(batch, *conditioner.image_shape)

        step_full, step_lean = (unet_step(model, NoiseSchedule.from_config(d), torch.contiguous_format, x01,
                                          lambda condition=condition: condition(conditioner, x01))
                                for condition in (full_condition, lean_condition))

        print(f"\n{name}: {sum(p.numel() for p in model.parameters()):,} parameters, batch {batch}")
        print(f"{'threads':>7}{'cond full ms':>14}{'cond lean ms':>14}{'ratio':>7}"
              f"{'step full img/s':>17}{'step lean img/s':>17}{'ratio':>7}{'cond share before':>19}")
        for threads in args.threads:
            torch.set_num_threads(threads)
            best = {k: float("inf") for k in ("cf", "cl", "sf", "sl")}
            for _ in range(args.rounds):
                best["cf"] = min(best["cf"], seconds(lambda: full_condition(conditioner, x01), args.repeats))
                best["cl"] = min(best["cl"], seconds(lambda: lean_condition(conditioner, x01), args.repeats))
                best["sf"] = min(best["sf"], seconds(step_full, args.repeats))
                best["sl"] = min(best["sl"], seconds(step_lean, args.repeats))
            print(f"{threads:>7}{best['cf'] * 1e3:>14.0f}{best['cl'] * 1e3:>14.0f}{best['cf'] / best['cl']:>7.2f}"
                  f"{batch / best['sf']:>17.0f}{batch / best['sl']:>17.0f}{best['sf'] / best['sl']:>7.2f}"
                  f"{best['cf'] / best['sf']:>19.2f}", flush=True)
    if args.unet_variants:
        unet_variants(conditioner, args.threads, args.rounds, args.repeats)


if __name__ == "__main__":
    main()
