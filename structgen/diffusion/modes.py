"""The four generation modes (algorithm.md §5.6), as one batched sampler call per chunk.

* ``recons``: encode test images, condition on one leaf (most probable by default), denoise.
* ``recons_all_leaves``: the same for every leaf at once.
* ``sample``: sample the TreeVAE prior, condition on one leaf, denoise.
* ``sample_all_leaves``: one prior sample, every leaf at once.

Every mode starts from x_T ~ N(0, I): reconstructions do not see the original image through
x_T (the reference's recons modes leak it, §8.5). With ``strength`` < 1 a mode starts instead
from each row's leaf VAE image noised to strength·(T-1) (SDEdit), never from the input image.
In the all-leaves modes the batch holds each root sample L times (sample-major) and x_T and
every step's noise are drawn once per root sample, so leaves differ only in their conditioning.
Two generators keep runs comparable: one for the VAE (prior samples, leaf draws), one for the
diffusion noise; with the same seed two DDPMs on the same TreeVAE see the same root samples and
the same noise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from structgen.data.memory_loader import to_device_float
from structgen.diffusion.comparison_figures import all_leaves_figure
from structgen.diffusion.process import DiffusionProcess
from structgen.diffusion.samplers import make_scheduler
from structgen.diffusion.schedule import NoiseSchedule
from structgen.diffusion.vae_condition import VAEConditioner, choose_leaf, to_unit
from structgen.viz.grids import save_grid, save_side_by_side

MODES = ("recons", "recons_all_leaves", "sample", "sample_all_leaves")


@dataclass
class SamplerOptions:
    sampler: str = "ddpm"
    n_steps: int | None = None      # ddim only; ddpm always runs T steps
    eta: float = 0.0
    spacing: str = "quad"
    variance: str = "fixedlarge"
    guidance: float = 0.0
    leaf_choice: str = "max"
    strength: float = 1.0           # < 1: start from the leaf's VAE image noised to strength·(T-1)

    @classmethod
    def from_config(cls, d, **overrides) -> "SamplerOptions":
        base = cls(d.sampler, d.n_steps, d.eta, d.skip_strategy, d.variance, d.guidance_weight, d.leaf_choice,
                   d.strength)
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def tag(self, T: int) -> str:
        """A folder name that tells runs with different sampler settings apart."""
        tag = f"ddpm{T}" if self.sampler == "ddpm" else f"ddim{self.n_steps or T}{self.spacing[0]}"
        if self.sampler == "ddim" and self.eta:
            tag += f"-eta{self.eta:g}"
        if self.guidance:
            tag += f"-w{self.guidance:g}"
        if self.strength < 1:
            tag += f"-s{self.strength:g}"
        return tag


class DiffusionSampler:
    def __init__(self, model: torch.nn.Module, conditioner: VAEConditioner, schedule: NoiseSchedule,
                 options: SamplerOptions, device, batch_size: int = 256, progress=None):
        self.model = model.eval()
        self.process = DiffusionProcess(self.model, schedule)
        self.conditioner, self.schedule, self.options = conditioner, schedule, options
        self.device, self.batch_size, self.progress = torch.device(device), batch_size, progress
        self.scheduler = make_scheduler(schedule, options.sampler, n_steps=options.n_steps, eta=options.eta,
                                        spacing=options.spacing, variance=options.variance)

    @torch.no_grad()
    def denoise(self, cond, generator: torch.Generator, group: int = 1) -> torch.Tensor:
        """Images in [0, 1] for a batch of conditions; ``group`` rows share their noise."""
        steps = len(self.scheduler.timesteps_from(self.options.strength))
        bar = self.progress.epoch(steps, f"sampling {len(cond)} images") if self.progress is not None else None
        x = self.process.sample(cond, self.scheduler, guidance=self.options.guidance, generator=generator, group=group,
                                on_step=(lambda: bar.update(0, {})) if bar is not None else None,
                                strength=self.options.strength)
        if bar is not None:
            bar.close()
        return to_unit(x)

    def run(self, mode: str, n: int, seed: int, originals: np.ndarray | None = None,
            labels: np.ndarray | None = None) -> dict:
        """Arrays of one mode: images, vae, leaf_probs (+ leaf, originals, labels); floats in [0, 1].

        The global RNG (the VAE's posterior samples draw from it) is seeded inside and restored
        afterwards, so a preview during training leaves the training stream untouched."""
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch.manual_seed(seed)
            return self._run(mode, n, seed, originals, labels)

    def _run(self, mode, n, seed, originals, labels) -> dict:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
        recons, all_leaves = mode.startswith("recons"), mode.endswith("_all_leaves")
        if recons:
            if originals is None:
                raise ValueError(f"mode {mode} needs test images")
            n = min(n, len(originals))
        g_vae = torch.Generator(device=self.device).manual_seed(seed)
        g_noise = torch.Generator(device=self.device).manual_seed(seed + 1)
        n_leaves = self.conditioner.n_leaves
        chunk = max(1, self.batch_size // n_leaves) if all_leaves else self.batch_size
        out = {"images": [], "vae": [], "leaf_probs": [], "leaf": []}
        start_time = time.perf_counter()
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            if recons:
                batch = torch.as_tensor(originals[start:start + m])
                x01 = to_device_float(batch, self.device) if batch.dtype == torch.uint8 else batch.to(self.device)
                parts = self.conditioner.posterior(x01)
            else:
                parts = self.conditioner.prior(m, g_vae)
            if all_leaves:
                images = self.denoise(self.conditioner.all_leaves(parts), g_noise, group=n_leaves)
                out["images"].append(images.view(m, n_leaves, *images.shape[1:]).cpu())
                out["vae"].append(parts.images.cpu())
            else:
                leaf = choose_leaf(parts.probs, self.options.leaf_choice, g_vae)
                out["images"].append(self.denoise(self.conditioner.condition(parts, leaf), g_noise).cpu())
                out["vae"].append(parts.images[torch.arange(m, device=leaf.device), leaf].cpu())
                out["leaf"].append(leaf.cpu())
            out["leaf_probs"].append(parts.probs.cpu())
        seconds = time.perf_counter() - start_time
        result = {k: torch.cat(v).numpy() for k, v in out.items() if v}
        if recons:
            o = np.asarray(originals[:n])
            result["originals"] = o.astype(np.float32) / 255.0 if o.dtype == np.uint8 else o
            if labels is not None:
                result["labels"] = np.asarray(labels[:n])
        result["seconds"] = np.float64(seconds)
        result["images_per_s"] = np.float64(n * (n_leaves if all_leaves else 1) / max(seconds, 1e-9))
        return result


def write_outputs(result: dict, out_dir: Path, mode: str, leaves: list[str], meta: dict) -> list[Path]:
    """PNG grids, the all-leaves figure and one .npz with every array and the sampler settings."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    images, vae = result["images"], result["vae"]
    if mode.endswith("_all_leaves"):
        written += [save_grid(images[:, i], out_dir / f"leaf{i:02d}_{leaf}.png") for i, leaf in enumerate(leaves)]
        written.append(all_leaves_figure(vae, images, result["leaf_probs"], leaves, out_dir / "all_leaves.png",
                                         originals=result.get("originals"),
                                         title=f"{mode}: VAE and DDPM image of every leaf ({meta.get('sampler', '')})"))
    else:
        written.append(save_grid(images, out_dir / "ddpm.png"))
        written.append(save_side_by_side(vae, images, out_dir / "vae_vs_ddpm.png", titles=("VAE", "DDPM")))
        if "originals" in result:
            written.append(save_side_by_side(result["originals"], images, out_dir / "input_vs_ddpm.png",
                                             titles=("input", "DDPM")))
    npz = out_dir / f"{mode}.npz"
    np.savez_compressed(npz, **result, leaves=np.array(leaves), **{f"meta_{k}": np.array(v) for k, v in meta.items()})
    written.append(npz)
    return written
