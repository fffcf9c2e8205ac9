"""What a training loop may know about where it runs: rank, world size, device, collectives,
the checkpoint sink and the metrics log. Loops never import Ray or submitit; launchers build
the context (the single-process one here, a `torch.distributed` one under torchrun / SLURM,
a Ray one in `ray_jobs`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist


@dataclass
class Context:
    run_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    # Called on every rank after every checkpoint with (state, path written by rank 0, or None
    # on other ranks); the Ray launcher uses it to hand the file to `ray.train.report`.
    on_checkpoint: Callable[[dict, Path], None] | None = None
    # Called on every rank after every epoch with its all-reduced metrics record (Tune uses
    # it to report intermediate results).
    on_epoch_end: Callable[[dict], None] | None = None
    # The model being trained (set by the trainer), for hooks that score it.
    model: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equally sized per-rank tensors along dim 0, in rank order."""
        if not self.distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def all_gather_object(self, obj: Any) -> list:
        """Every rank's (picklable) value, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def alone(self) -> "Context":
        """This process as a world of one on the same device and run folder: no collectives,
        no DDP, rank 0's data shard and noise, no checkpoint or metrics hooks."""
        return Context(run_dir=self.run_dir, device=self.device)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's value everywhere: a guard that every rank takes the same decision."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module to call for training: DDP with global-batch BatchNorm when distributed.

        Phases wrap a fresh objective, so the DDP wrapper is rebuilt after every attach and
        prune around exactly the parameters that now train.
        """
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        from structgen.runtime.global_batchnorm import use_global_batchnorm

        use_global_batchnorm(module)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(module, device_ids=ids)

    def seed_noise(self, seed: int, step: int) -> None:
        """Reseed the sampling noise: distinct per rank, a pure function of (seed, step, rank),
        so a resumed run draws exactly what the uninterrupted run drew."""
        torch.manual_seed((seed * 1_000_003 + step * 7919 + self.rank) % 2**63)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_torch(cfg) -> torch.device:
    """Apply `run.threads` (0 keeps torch's default) and return the device `run.device` names.
    Entry points that call it are wrapped in `structgen.torch_threads.keep_torch_threads`."""
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    return resolve_device(cfg.run.device)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("run.device = cuda but no CUDA device is visible")
        return torch.device("cuda")
    return torch.device("cpu")
