"""Sweep files: dotted config keys with search distributions, validated against the schema
before any trial starts. Ray Tune turns them into a `param_space`; SLURM job arrays draw the
same trials with `expand_trials`.

    stage: tree                      # tree | ddpm
    metric: elbo                     # reported by every trial (see structgen.tune)
    mode: max
    num_samples: 4                   # random draws (times the grid's size)
    scheduler: asha                  # asha | fifo
    searcher: random                 # random | optuna
    grace_period: 1
    params:
      training.num_clusters_tree: {choice: [3, 4, 6]}
      training.lr: {loguniform: [1.0e-4, 3.0e-3]}
      training.decay_kl: {uniform: [0.01, 0.2]}
      training.num_epochs: {grid: [2, 4]}
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from structgen.config import Config, ConfigError, all_keys, apply_overrides
from structgen.config.dump import _scalar
from structgen.config.load import _closest
from structgen.stages import STAGES

KINDS = ("choice", "uniform", "loguniform", "grid")
METRICS = {stage.name: stage.sweep_metrics for stage in STAGES.values() if stage.trial}


@dataclass
class Distribution:
    kind: str
    values: list

    def draw(self, rng: random.Random) -> Any:
        if self.kind in ("choice", "grid"):
            return rng.choice(self.values)
        lo, hi = self.values
        if self.kind == "uniform":
            return rng.uniform(lo, hi)
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))


@dataclass
class Sweep:
    path: Path
    stage: str = "tree"
    metric: str = "elbo"
    mode: str = "max"
    num_samples: int = 4
    scheduler: str = "asha"
    searcher: str = "random"
    grace_period: int = 1
    max_concurrent: int = 1
    reuse_actors: bool = True
    params: dict[str, Distribution] = field(default_factory=dict)

    @property
    def grid_keys(self) -> list[str]:
        return [k for k, d in self.params.items() if d.kind == "grid"]


def slow_scoring_warning(sweep: Sweep, cfg: Config) -> str | None:
    """DDPM trials score their samples with the config's sampler; ancestral sampling over all T
    steps on CPU workers takes hours per trial, so say so before any trial starts."""
    d = cfg.diffusion
    if sweep.stage != "ddpm" or cfg.ray.use_gpu or "diffusion.sampler" in sweep.params or d.sampler != "ddpm" \
            or d.n_timesteps <= 100:
        return None
    return (f"{sweep.path}: every trial scores its samples with ancestral DDPM sampling over all T = "
            f"{d.n_timesteps} steps on CPU workers (ray.use_gpu false): hours per trial on a CPU. To score with "
            f"DDIM add --set diffusion.sampler=ddim --set diffusion.n_steps=50")


def _fail(path: Path, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}")


def load_sweep(path: str | Path, base: Config | None = None) -> Sweep:
    """Parse and validate a sweep file; every probe value must be a valid setting of its key on
    top of ``base`` (the config the trials start from; schema defaults without it), whose tune
    section gives the settings the file leaves out."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise _fail(path, f"not valid YAML: {err}") from None
    known = {"stage", "metric", "mode", "num_samples", "scheduler", "searcher", "grace_period", "max_concurrent",
             "reuse_actors", "params"}
    for key in data:
        if key not in known:
            raise _fail(path, f"unknown sweep setting '{key}'; valid: {', '.join(sorted(known))}")
    # A setting the file leaves out comes from the config's tune section.
    settings = {**asdict((base or Config()).tune), **{k: v for k, v in data.items() if k != "params"}}
    sweep = Sweep(path=path, **settings)
    checks = {"stage": tuple(METRICS), "mode": ("max", "min"), "scheduler": ("asha", "fifo"), "searcher": ("random", "optuna")}
    for key, allowed in checks.items():
        if getattr(sweep, key) not in allowed:
            raise _fail(path, f"{key} = {getattr(sweep, key)!r}; expected one of {', '.join(allowed)}")
    if sweep.metric not in METRICS[sweep.stage]:
        raise _fail(path, f"metric = {sweep.metric!r} is not reported by {sweep.stage} trials; "
                          f"expected one of {', '.join(METRICS[sweep.stage])}")
    if sweep.metric in STAGES[sweep.stage].final_metrics and (sweep.scheduler, sweep.searcher) != ("fifo", "random"):
        raise _fail(path, f"metric = {sweep.metric!r} comes only in a trial's last report (it needs the finished "
                          f"run), so neither ASHA nor Optuna has earlier values to compare: use scheduler: fifo and "
                          f"searcher: random (they are {sweep.scheduler} and {sweep.searcher})")
    if not isinstance(sweep.reuse_actors, bool):
        raise _fail(path, f"reuse_actors = {sweep.reuse_actors!r}; expected true or false")
    if not isinstance(sweep.num_samples, int) or sweep.num_samples < 1:
        raise _fail(path, f"num_samples = {sweep.num_samples!r}; expected an integer >= 1")
    params = data.get("params") or {}
    if not isinstance(params, dict) or not params:
        raise _fail(path, "params must map dotted config keys to distributions, e.g. training.lr: {loguniform: [1e-4, 1e-2]}")
    valid_keys = list(all_keys())
    for key, spec in params.items():
        if key not in valid_keys:
            raise _fail(path, f"unknown config key '{key}' in params{_closest(key, valid_keys, '')}")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise _fail(path, f"params.{key}: expected one of {{{', '.join(k + ': [...]' for k in KINDS)}}}, got {spec!r}")
        kind, values = next(iter(spec.items()))
        if not isinstance(values, list) or not values or (kind in ("uniform", "loguniform") and len(values) != 2):
            raise _fail(path, f"params.{key}: {kind} needs {'[low, high]' if kind in ('uniform', 'loguniform') else 'a non-empty list'}")
        if kind == "loguniform" and min(values) <= 0:
            raise _fail(path, f"params.{key}: loguniform bounds must be > 0, got {values}")
        dist = Distribution(kind, values)
        for probe in dist.values:                   # every listed value, or both bounds
            try:
                apply_overrides(base or Config(), {key: probe}, source="base config" if base else "defaults")
            except ConfigError as err:
                raise _fail(path, f"params.{key}: value {probe!r} is not valid: {err}") from None
        sweep.params[key] = dist
    return sweep


def expand_trials(sweep: Sweep, seed: int = 0) -> list[dict[str, Any]]:
    """Concrete trials: the grid's product times num_samples random draws of the rest."""
    rng = random.Random(seed)
    grid = [sweep.params[k].values for k in sweep.grid_keys]
    trials = []
    for combo in itertools.product(*grid) if grid else [()]:
        for _ in range(sweep.num_samples):
            trial = dict(zip(sweep.grid_keys, combo))
            trial.update({k: d.draw(rng) for k, d in sweep.params.items() if d.kind != "grid"})
            trials.append(trial)
    return trials


def trial_overrides(trial: dict[str, Any]) -> list[str]:
    """`--set` strings for one trial."""
    return [f"{k}={_scalar(v)}" for k, v in trial.items()]
