"""A Ray Tune sweep over a sweep file: trials, ASHA or FIFO, random or Optuna search, a summary
table, the best config as YAML, and PNG plots. Re-running the same command resumes it."""
from __future__ import annotations

import importlib
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from structgen.config import Config, ConfigError, apply_overrides, config_to_dict, save_config
from structgen.launch.job_args import absolute_paths
from structgen.runs import check_run_name
from structgen.stages import STAGES, get_stage
from structgen.sweeps import Sweep, slow_scoring_warning


def _tune_space(sweep: Sweep) -> dict:
    from ray import tune

    make = {"choice": tune.choice, "grid": tune.grid_search,
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v)}
    return {key: make[d.kind](d.values) for key, d in sweep.params.items()}


def _trainable(sweep: Sweep, cpus_per_trial: int):
    from ray import tune

    stage = get_stage(sweep.stage, str(sweep.path))
    if stage.trial is None:
        raise ConfigError(f"{sweep.path}: stage {sweep.stage!r} has no Tune trial in this release; "
                          f"available: {', '.join(s.name for s in STAGES.values() if s.trial)}")
    module, function = stage.trial.split(":")
    return tune.with_resources(getattr(importlib.import_module(module), function), {"cpu": cpus_per_trial})


def run_sweep(cfg: Config, sweep: Sweep, name: str, storage_path: str | Path, cpus_per_trial: int = 1):
    """Fit (or resume) the sweep; returns (experiment folder, ResultGrid)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if sweep.searcher == "optuna" and sweep.grid_keys:
        raise ConfigError(f"{sweep.path}: the optuna searcher cannot take grid parameters "
                          f"({', '.join(sweep.grid_keys)}); use choice instead")
    get_stage(sweep.stage, str(sweep.path)).check(cfg, f"{sweep.path}: a {sweep.stage} sweep")
    warning = slow_scoring_warning(sweep, cfg)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    cfg = apply_overrides(cfg, absolute_paths(cfg))     # trials run in their own working folders
    storage = Path(storage_path).resolve()
    experiment = storage / check_run_name(name, "sweep name (--name)")
    trainable = _trainable(sweep, cpus_per_trial)
    if tune.Tuner.can_restore(str(experiment)):
        print(f"resuming sweep {experiment}")
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_errored=True, resume_unfinished=True)
        with _metric_in_last_report_only(sweep):
            return experiment, tuner.fit()
    scheduler = (ASHAScheduler(time_attr="training_iteration", grace_period=sweep.grace_period, reduction_factor=2)
                 if sweep.scheduler == "asha" else FIFOScheduler())
    search_alg = None
    if sweep.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch
        search_alg = OptunaSearch(seed=cfg.run.seed)
    tuner = tune.Tuner(
        trainable,
        param_space={"base": config_to_dict(cfg), "threads": cpus_per_trial, "params": _tune_space(sweep),
                     "runs_root": str(experiment / "runs")},
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                                    scheduler=scheduler, search_alg=search_alg,
                                    max_concurrent_trials=sweep.max_concurrent,
                                    # the next trial in the last one's process: no new Python and torch
                                    # import (~10 s a trial on 2 cores); every trial sets its own seed,
                                    # threads and run folder, so its result is the same
                                    reuse_actors=sweep.reuse_actors),
        run_config=tune.RunConfig(name=name, storage_path=str(storage)))
    with _metric_in_last_report_only(sweep):
        return experiment, tuner.fit()


@contextmanager
def _metric_in_last_report_only(sweep: Sweep):
    """Tune wants the sweep's metric in every report unless told otherwise; a labelled metric
    (load_sweep allows it with FIFO and random search only) comes in a trial's last report."""
    if sweep.metric not in STAGES[sweep.stage].final_metrics:
        yield
        return
    key, before = "TUNE_DISABLE_STRICT_METRIC_CHECKING", os.environ.get("TUNE_DISABLE_STRICT_METRIC_CHECKING")
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def summarise(cfg: Config, sweep: Sweep, experiment: Path, results) -> dict:
    """Print the table, write best.yml, summary.csv and the plots; returns the paths."""
    # The other scores a trial reports beside the sweep's metric (the training loss aside).
    others = [m for m in STAGES[sweep.stage].sweep_metrics if m not in (sweep.metric, "loss")]
    rows = []
    for result in results:
        params = (result.config or {}).get("params", {})
        metrics = result.metrics or {}
        # A trial folder is "<trainable>_<experiment id>_<index>_<its values>": name it up to the index.
        rows.append({"trial": "_".join(Path(result.path).name.split("_")[:4]) if result.path else "?", **params,
                     **{k: metrics.get(k) for k in (sweep.metric, *others, "n_leaves", "depth", "training_iteration")},
                     "stopped_early": not metrics.get("final", False),
                     "error": bool(result.error)})
    keys = list(sweep.params)
    header = ["trial", *keys, sweep.metric, *others, "n_leaves", "depth", "training_iteration", "stopped_early"]
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in map(row.get, header)))
    best = results.get_best_result(metric=sweep.metric, mode=sweep.mode, scope="last", filter_nan_and_inf=True)
    best_cfg = apply_overrides(cfg, best.config["params"], source="best trial")
    best_cfg.run.name = None
    command = get_stage(sweep.stage, str(sweep.path)).command
    best_yaml = save_config(best_cfg, experiment / "best.yml",
                            header=f"best trial of sweep {sweep.path} ({sweep.metric} {sweep.mode}: "
                                   f"{best.metrics.get(sweep.metric)})\n"
                                   f"run it: structgen {command} --config {experiment / 'best.yml'}")
    import csv
    with open(experiment / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header + ["error"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plots = _plots(sweep, rows, experiment)
    print(f"best config: {best_yaml}")
    print(f"plots: {', '.join(map(str, plots))}")
    return {"best": best_yaml, "plots": plots, "rows": rows}


def _plots(sweep: Sweep, rows: list[dict], experiment: Path) -> list[Path]:
    from matplotlib.figure import Figure

    ok = [r for r in rows if isinstance(r.get(sweep.metric), (int, float)) and math.isfinite(r[sweep.metric])]
    paths = []
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    ax.scatter([r.get("depth") for r in ok], [r[sweep.metric] for r in ok], c=["tab:red" if r["stopped_early"]
                                                                                else "tab:blue" for r in ok])
    ax.set_xlabel("tree depth reached")
    ax.set_ylabel(sweep.metric)
    ax.set_title(f"{sweep.metric} against depth (red: stopped early)")
    paths.append(experiment / "metric_vs_depth.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    keys = list(sweep.params)
    fig = Figure(figsize=(3.2 * len(keys), 3.2))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        xs = [r.get(key) for r in ok]
        ax.scatter([str(x) if isinstance(x, list) else x for x in xs], [r[sweep.metric] for r in ok])
        if sweep.params[key].kind == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(key, fontsize=8)
        if i == 0:
            ax.set_ylabel(sweep.metric)
    fig.suptitle(f"{sweep.metric} across the searched keys")
    paths.append(experiment / "metric_by_key.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    return paths
