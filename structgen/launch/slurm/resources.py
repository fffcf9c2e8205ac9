"""The SLURM request (config's slurm section < STRUCTGEN_SLURM_* < flags) and the submitit
executor built from it."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import submitit

from structgen.config import Config, ConfigError, apply_overrides
from structgen.config.schema import SlurmConfig

ENV_PREFIX = "STRUCTGEN_SLURM_"
ENV_KEYS = ("partition", "account", "qos", "folder")         # the settings that may come from the environment


class Resources(SlurmConfig):
    """The SLURM request: the slurm section's settings, overridden by env, overridden by flags
    (resolve_resources), and what follows from them."""

    @property
    def tasks_per_node(self) -> int:
        """One DDP rank per GPU; one per node on CPU (its threads use the task's CPUs)."""
        return self.gpus_per_node or 1


def resolve_resources(slurm_cfg, flags: dict | None = None, env=None) -> Resources:
    """Precedence: flag (not None) > STRUCTGEN_SLURM_<KEY> > config."""
    env = os.environ if env is None else env
    values = dataclasses.asdict(slurm_cfg)
    for key in ENV_KEYS:
        if env.get(ENV_PREFIX + key.upper()):
            values[key] = env[ENV_PREFIX + key.upper()]
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    unknown = set(values) - {f.name for f in dataclasses.fields(Resources)}
    if unknown:
        raise ConfigError(f"slurm: unknown resource setting(s) {', '.join(sorted(unknown))}")
    # flags and variables obey the schema's bounds too (--nodes 0 fails here, naming the key)
    checked = apply_overrides(Config(), {f"slurm.{k}": v for k, v in values.items()},
                              source=f"slurm flags / {ENV_PREFIX}* variables").slurm
    return Resources(**dataclasses.asdict(checked))


def executor_parameters(res: Resources, *, name: str, local: bool, single_process: bool = False,
                        array_parallelism: int | None = None) -> dict[str, Any]:
    """AutoExecutor.update_parameters arguments. ``single_process``: run the job function once,
    in the batch step, instead of once per task (the Ray launcher starts its own steps)."""
    params: dict[str, Any] = {"name": name, "timeout_min": res.timeout_min, "nodes": res.nodes,
                              "cpus_per_task": res.cpus_per_task, "mem_gb": res.mem_gb,
                              "tasks_per_node": 1 if single_process else res.tasks_per_node}
    if res.gpus_per_node:              # no --gpus-per-node=0: clusters without GPU gres reject it
        params["gpus_per_node"] = res.gpus_per_node
    if local:
        return params
    params.update({f"slurm_{k}": getattr(res, k) for k in ("partition", "account", "qos") if getattr(res, k)})
    params["slurm_signal_delay_s"] = res.signal_delay_s
    # --requeue: SLURM may requeue the job itself (node failure, preemption) even where the
    # cluster's default forbids it; the job resumes either way.
    params["slurm_additional_parameters"] = {"requeue": True}
    if res.setup:
        params["slurm_setup"] = list(res.setup)
    if single_process:
        params["slurm_use_srun"] = False
    if array_parallelism:
        params["slurm_array_parallelism"] = array_parallelism
    return params


def log_folder(res: Resources) -> str:
    """Absolute, so that --logs and the job agree whatever folder the job runs in."""
    return str(Path(res.folder).expanduser().absolute())


def build_executor(folder: str, parameters: dict, *, local: bool, max_timeouts: int = 3):
    executor = submitit.AutoExecutor(folder=folder, cluster="local" if local else "slurm",
                                     **{f"{'local' if local else 'slurm'}_max_num_timeout": max_timeouts})
    executor.update_parameters(**parameters)
    return executor
