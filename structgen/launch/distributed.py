"""One way into torch.distributed for every launcher: torchrun, SLURM tasks (srun / submitit),
submitit's local executor, and a plain single process.

    ctx = init_distributed("auto")          # Context(rank, world_size, device), group joined
    train_tree(cfg, ctx=ctx, run_dir=...)

The rank layout is read from the environment, in this order: torchrun's RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT; an srun step's SLURM_PROCID / SLURM_STEP_NUM_TASKS /
SLURM_LOCALID (submitit starts its tasks that way), with the first host of the node list as
master and a port derived from the job id; submitit's local executor (SUBMITIT_LOCAL_*).
One process in total gives a plain Context and no process group. Backend: nccl when the device
is a GPU, gloo otherwise.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from structgen.launch.hosts import job_port, slurm_hosts
from structgen.runtime.context import Context, resolve_device

# Ports in [PORT_BASE, PORT_BASE + PORT_SPAN): above the well-known range and below Linux's
# ephemeral range (32768+), so a job's rendezvous port rarely collides with a client socket.
PORT_BASE, PORT_SPAN = 15000, 15000


@dataclass(frozen=True)
class Layout:
    """Where this process sits: rank among world_size, its rank on the node, the rendezvous."""
    source: str            # torchrun | slurm | submitit-local | single
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500


def port_for_job(job_id: str) -> int:
    """This job's DDP rendezvous port."""
    return job_port(job_id, PORT_BASE, PORT_SPAN)


def detect_layout(env=None) -> Layout:
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return Layout("torchrun", int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                      env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)))
    # Only srun steps set SLURM_STEP_NUM_TASKS. The batch script (and an salloc shell) also carry
    # SLURM_PROCID=0 and the allocation's SLURM_NTASKS, but there this process is alone.
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        world = int(env["SLURM_STEP_NUM_TASKS"])
        if world == 1:
            return Layout("single")
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        addr = env.get("MASTER_ADDR") or slurm_hosts(nodelist)[0]     # "node[03-05,7]" -> "node03"
        port = int(env.get("MASTER_PORT") or port_for_job(env.get("SLURM_JOB_ID", "0")))
        return Layout("slurm", int(env["SLURM_PROCID"]), world, int(env.get("SLURM_LOCALID", 0)), addr, port)
    if "SUBMITIT_LOCAL_NTASKS" in env and int(env["SUBMITIT_LOCAL_NTASKS"]) > 1:
        return Layout("submitit-local", int(env["SUBMITIT_LOCAL_GLOBALID"]), int(env["SUBMITIT_LOCAL_NTASKS"]),
                      int(env.get("SUBMITIT_LOCAL_LOCALID", 0)), "127.0.0.1",
                      port_for_job(env.get("SUBMITIT_LOCAL_JOB_ID", "0")))
    return Layout("single")


def _device_for(device: str, local_rank: int) -> torch.device:
    dev = resolve_device(device)
    if dev.type == "cuda":
        # One task per GPU: a task that sees every GPU of its node takes the local_rank-th;
        # a task restricted by CUDA_VISIBLE_DEVICES to its own GPU sees it as index 0.
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device: str = "auto") -> Context:
    """Join the process group this process belongs to and return its Context.

    ``device``: auto | cpu | cuda (as run.device). The Context's run_dir is a placeholder that
    the API (train_tree, train_ddpm) replaces with the run folder.
    """
    layout = detect_layout()
    dev = _device_for(device, layout.local_rank)
    if layout.world_size == 1:
        return Context(run_dir=Path("."), device=dev)
    # Later libraries (DDP, NCCL, Ray) read the torchrun names; publish them once, consistently.
    os.environ.update(RANK=str(layout.rank), WORLD_SIZE=str(layout.world_size), LOCAL_RANK=str(layout.local_rank),
                      MASTER_ADDR=layout.master_addr, MASTER_PORT=str(layout.master_port))
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{layout.master_addr}:{layout.master_port}",
                                rank=layout.rank, world_size=layout.world_size,
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return Context(run_dir=Path("."), device=dev, rank=layout.rank, world_size=layout.world_size)


@contextmanager
def process_group(device: str = "auto"):
    """init_distributed ... close_distributed around a block: ``with process_group() as ctx:``."""
    ctx = init_distributed(device)
    try:
        yield ctx
    finally:
        close_distributed()


def several_processes() -> bool:
    """Whether this process is one of several started together (torchrun, an srun step)."""
    return detect_layout().world_size > 1


def decided_on_rank0(ctx: Context, decide):
    """``decide()`` run on rank 0 only, its result handed to every rank. An exception raised
    there is raised on every rank, so no rank waits forever for a decision that never comes."""
    outcome = None
    if ctx.is_main:
        try:
            outcome = ("ok", decide())
        except Exception as err:           # noqa: BLE001 (re-raised on every rank just below)
            outcome = ("error", err)
    kind, value = ctx.broadcast_object(outcome)
    if kind == "error":
        raise value
    return value


def run_stage(stage, cfg, resume, evaluate: bool = True) -> tuple[bool, Path]:
    """A training command's stage (``resume`` as its --resume), in this process; or, when torchrun
    (or srun) started several, on every rank of one DDP group, with one run folder chosen on rank
    0. Returns (whether this is the main process, the run folder)."""
    from structgen.launch.worker_record import record_worker
    from structgen.runs import resume_point

    if not several_processes():
        run_dir, checkpoint = resume_point(cfg, stage.name, resume=resume)
        return True, stage.run(cfg, ctx=None, run_dir=run_dir, resume_checkpoint=checkpoint, evaluate=evaluate)[0]
    with process_group(cfg.run.device) as ctx:
        run_dir, checkpoint = decided_on_rank0(ctx, lambda: resume_point(cfg, stage.name, resume=resume,
                                                                         new_folder=True))
        record_worker(run_dir, ctx.rank, ctx.world_size, restored=checkpoint is not None)
        stage.run(cfg, ctx=ctx, run_dir=run_dir, evaluate=evaluate, resume_checkpoint=checkpoint)
    return ctx.is_main, run_dir


def close_distributed() -> None:
    """Leave the process group (a no-op without one), so a job exits without NCCL/gloo warnings."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
