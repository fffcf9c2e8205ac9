"""Ray Tune sweeps on a real local Ray cluster: validation before any trial, a 4-trial ASHA
sweep on `synthetic`, the best config as YAML that the ordinary command accepts."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import SYNTHETIC_FAST

from structgen.config import ConfigError, load_config
from structgen.runtime.metrics_log import read_metrics
from structgen.sweeps import expand_trials, load_sweep, slow_scoring_warning, trial_overrides

ROOT = Path(__file__).resolve().parents[1]
TINY = SYNTHETIC_FAST + ["data.train_subset=384", "data.test_subset=128", "training.num_epochs=3",
                         "training.num_epochs_smalltree=2", "training.num_epochs_finetuning=2",
                         "evaluation.baselines=false", "evaluation.batch_size=256"]


def write_sweep(tmp_path, params: dict, **settings) -> Path:
    path = tmp_path / "sweep.yml"
    path.write_text(yaml.safe_dump({"stage": "tree", "metric": "elbo", "mode": "max", **settings, "params": params}))
    return path


@pytest.mark.parametrize("params, fragment", [
    ({"training.lr_rate": {"uniform": [0.1, 0.2]}}, "unknown config key 'training.lr_rate' in params; did you mean 'training.lr'"),
    ({"training.lr": {"normal": [0, 1]}}, "expected one of"),
    ({"training.lr": {"loguniform": [0, 1]}}, "loguniform bounds must be > 0"),
    ({"model.act_function": {"choice": ["swish", "tanh"]}}, "value 'tanh' is not valid"),
    ({"training.batch_size": {"grid": [64, 1]}}, "value 1 is not valid"),
])
def test_invalid_sweeps_fail_before_any_trial(tmp_path, params, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_sweep(write_sweep(tmp_path, params))


def test_sweep_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="metric = 'fid'"):
        load_sweep(write_sweep(tmp_path, {"training.lr": {"uniform": [0.1, 0.2]}}, metric="fid"))
    with pytest.raises(ConfigError, match="unknown sweep setting 'trials'"):
        load_sweep(write_sweep(tmp_path, {"training.lr": {"uniform": [0.1, 0.2]}}, trials=3))
    with pytest.raises(ConfigError, match="reuse_actors = 'no'; expected true or false"):
        load_sweep(write_sweep(tmp_path, {"training.lr": {"uniform": [0.1, 0.2]}}, reuse_actors="no"))
    assert load_sweep(write_sweep(tmp_path, {"training.lr": {"uniform": [0.1, 0.2]}})).reuse_actors is True


def test_a_labelled_metric_needs_fifo_and_random_search(tmp_path):
    """nmi comes only in a trial's last report: neither ASHA nor Optuna has earlier values."""
    params = {"training.lr": {"uniform": [1e-3, 2e-3]}}
    for settings in ({"scheduler": "asha", "searcher": "random"}, {"scheduler": "fifo", "searcher": "optuna"}):
        with pytest.raises(ConfigError, match="metric = 'nmi' comes only in a trial's last report"):
            load_sweep(write_sweep(tmp_path, params, metric="nmi", **settings))
    assert load_sweep(write_sweep(tmp_path, params, metric="nmi", scheduler="fifo", searcher="random")).metric == "nmi"


@pytest.mark.parametrize("sweep_file", sorted((ROOT / "configs" / "sweeps").glob("*.yml")), ids=lambda p: p.name)
def test_every_shipped_sweep_file_loads_on_its_profile(sweep_file):
    config = "configs/cifar10.yml" if "cifar" in sweep_file.name else "configs/digits.yml"
    assert load_sweep(sweep_file, load_config(ROOT / config)).params


def test_a_ddpm_sweep_scoring_with_ancestral_sampling_on_cpu_is_warned_about(tmp_path):
    sweep = load_sweep(ROOT / "configs" / "sweeps" / "ddpm_guidance.yml", load_config(ROOT / "configs/mnist.yml"))
    warning = slow_scoring_warning(sweep, load_config(ROOT / "configs/mnist.yml"))
    assert "all T = 1000 steps" in warning and "--set diffusion.sampler=ddim" in warning
    for fix in (["diffusion.sampler=ddim"], ["ray.use_gpu=true"]):
        assert slow_scoring_warning(sweep, load_config(ROOT / "configs/mnist.yml", fix)) is None
    assert slow_scoring_warning(load_sweep(write_sweep(tmp_path, {"training.lr": {"uniform": [0.1, 0.2]}})),
                                load_config(ROOT / "configs/mnist.yml")) is None


def test_sweep_values_are_checked_on_top_of_the_base_config(tmp_path):
    """cnn2 cannot take the default dataset's 28x28 images but can take cifar10's 32x32: a
    cifar10 sweep over it is valid, the same sweep without that base is not."""
    sweep = write_sweep(tmp_path, {"model.encoder": {"choice": ["cnn2"]}})
    with pytest.raises(ConfigError, match="value 'cnn2' is not valid"):
        load_sweep(sweep)
    assert load_sweep(sweep, load_config(None, ["data.dataset=cifar10"])).params["model.encoder"].values == ["cnn2"]


def test_a_sweep_file_takes_the_settings_it_leaves_out_from_the_config_tune_section(tmp_path):
    base = load_config(None, ["tune.num_samples=7", "tune.scheduler=fifo"])
    sweep = load_sweep(write_sweep(tmp_path, {"training.lr": {"uniform": [1e-3, 2e-3]}}, num_samples=2), base)
    assert (sweep.num_samples, sweep.scheduler, sweep.searcher) == (2, "fifo", "random")


def test_a_trial_restarted_without_a_checkpoint_sets_its_first_attempt_aside(tmp_path):
    """A trial stopped after its first metrics but before Tune stored its checkpoint is started
    over by Tune: the folder it wrote moves aside (nothing lost), and a fresh one is free."""
    from structgen.launch.tune_trials import set_aside_unfinished_attempt
    from structgen.run_lock import claim_run_dir

    run_dir = tmp_path / "runs" / "tree_trial_00001"
    assert set_aside_unfinished_attempt(run_dir) is None          # a first attempt: nothing to move
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"event": "epoch"}\n')
    aside = set_aside_unfinished_attempt(run_dir)
    assert aside.name.startswith("tree_trial_00001.attempt-") and (aside / "metrics.jsonl").exists()
    claim_run_dir(run_dir, fresh=True).release()                  # the restarted attempt may claim it


def test_grid_times_samples_and_overrides_round_trip(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, {"training.num_epochs": {"grid": [1, 2]},
                                              "training.lr": {"loguniform": [1e-4, 1e-2]}}, num_samples=3))
    trials = expand_trials(sweep, seed=1)
    assert len(trials) == 6 and {t["training.num_epochs"] for t in trials} == {1, 2}
    assert all(1e-4 <= t["training.lr"] <= 1e-2 for t in trials)
    cfg = load_config(None, trial_overrides(trials[0]))
    assert cfg.training.lr == pytest.approx(trials[0]["training.lr"])


def test_tune_cli_rejects_a_bad_sweep_without_starting_ray(tmp_path):
    bad = write_sweep(tmp_path, {"training.nope": {"choice": [1]}})
    out = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "tune.py"), "--sweep", str(bad),
                          "--storage-path", str(tmp_path / "tune")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "training.nope" in out.stderr
    assert not (tmp_path / "tune").exists()


def test_the_tune_driver_runs_as_a_module_outside_the_checkout(tmp_path):
    """What a SLURM allocation runs: `python -m structgen.launch.tune_main`, from any folder."""
    bad = write_sweep(tmp_path, {"training.nope": {"choice": [1]}})
    out = subprocess.run([sys.executable, "-m", "structgen.launch.tune_main", "--sweep", str(bad),
                          "--storage-path", str(tmp_path / "tune")], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 2 and "training.nope" in out.stderr
    assert not (tmp_path / "tune").exists()


@pytest.fixture(scope="class")
def local_ray():
    """One local Ray (2 CPUs) for the in-process sweeps of a class: its start-up is seconds each time.
    Class-scoped, so it is down before the CLI test below starts a Ray of its own."""
    from structgen.launch.ray_cluster import init_ray

    ray = init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def sweep_on_local_ray(cfg, sweep, name: str, storage):
    """Run a sweep on the running local Ray and summarise it: (experiment, results, summary)."""
    from structgen.launch.tune_sweep import run_sweep, summarise

    experiment, results = run_sweep(cfg, sweep, name, storage)
    return experiment, results, summarise(cfg, sweep, experiment, results)


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
class TestSweepsOnOneLocalRay:
    def test_four_trial_asha_sweep(self, tmp_path):
        sweep = load_sweep(write_sweep(tmp_path, {"training.num_clusters_tree": {"choice": [2, 3]},
                                                  "training.lr": {"loguniform": [1e-5, 3e-3]},
                                                  "training.decay_kl": {"uniform": [0.05, 0.2]}},
                                       num_samples=4, scheduler="asha", grace_period=1))
        cfg = load_config(None, TINY + [f"run.runs_dir={tmp_path}"])
        experiment, results, info = sweep_on_local_ray(cfg, sweep, "sweep", tmp_path / "tune")
        assert len(results) == 4 and not results.errors
        finished = [r for r in info["rows"] if not r["stopped_early"]]
        assert 1 <= len(finished) < 4, "ASHA should stop at least one trial early"
        best = load_config(info["best"])                      # the best YAML loads as an ordinary config
        assert best.data.dataset == "synthetic" and best.training.num_clusters_tree in (2, 3)
        for png in info["plots"]:
            assert png.exists() and png.stat().st_size > 1000
        assert list(experiment.rglob("events.out.tfevents.*")), "Tune writes TensorBoard files"

    def test_a_fifo_sweep_chooses_by_a_labelled_metric_from_the_last_reports(self, tmp_path):
        """Also: trials reuse one process (reuse_actors), and the third trial, the first's settings
        again run after two others in that process, reports exactly what the first reported."""
        sweep = load_sweep(write_sweep(tmp_path, {"training.decay_kl": {"grid": [0.05, 0.2, 0.05]}}, metric="acc",
                                       num_samples=1, scheduler="fifo", searcher="random"))
        # the initial 2-leaf tree only (no sub-trees): what is checked here needs no growth
        cfg = load_config(None, TINY + [f"run.runs_dir={tmp_path}", "training.num_clusters_tree=2"])
        experiment, results, info = sweep_on_local_ray(cfg, sweep, "acc-sweep", tmp_path / "tune")
        assert len(results) == 3 and not results.errors
        rows = info["rows"]
        assert all(0 < r["acc"] <= 1 and not r["stopped_early"] for r in rows)
        best = max(rows, key=lambda r: r["acc"])
        assert load_config(info["best"]).training.decay_kl == best["training.decay_kl"]
        first, _, again = sorted(results, key=lambda r: r.path)
        assert first.config["params"] == again.config["params"]
        assert (again.metrics["acc"], again.metrics["elbo"]) == (first.metrics["acc"], first.metrics["elbo"])
        pids = {json.loads(line)["pid"] for trial in _trials_started(experiment)
                for line in (trial / "result.json").read_text().splitlines() if line.strip()}
        assert len(pids) == 1, f"the trials ran in {len(pids)} processes, not one reused"

    def test_ddpm_sweep_over_conditioning_chooses_by_purity_and_cfd(self, tmp_path):
        """The objective of configs/sweeps/ddpm_guidance.yml: with the dataset's --degrade classifier
        in runs/classifiers, each finished trial scores its guided samples against the TreeVAE's."""
        from structgen.api import train_tree
        from structgen.scoring.classifier import train_classifier
        vae_dir, _ = train_tree(load_config(None, TINY + [f"run.runs_dir={tmp_path}", "run.name=vae", "training.num_epochs=1",
                                                          "training.grow=false", "training.num_epochs_finetuning=0"]),
                                evaluate=False)
        train_classifier("synthetic", epochs=1, out=tmp_path / "classifiers" / "synthetic-degrade.pt", degrade=True,
                         progress=False)
        sweep = load_sweep(write_sweep(tmp_path, {"diffusion.conditioning": {"grid": ["leaf", "path"]},
                                                  "diffusion.lr": {"loguniform": [1e-4, 1e-3]}},
                                       stage="ddpm", metric="purity_cfd_score", mode="max", num_samples=1,
                                       scheduler="fifo"))
        cfg = load_config(None, TINY + [f"run.runs_dir={tmp_path}", f"diffusion.vae_run={vae_dir}", "data.train_subset=128",
                                        "diffusion.dim=16", "diffusion.dim_mults=[1,2]", "diffusion.n_residual=1",
                                        "diffusion.attn_resolutions=[14]", "diffusion.n_heads=4", "diffusion.epochs=2",
                                        "diffusion.batch_size=64", "diffusion.sample_every=0", "diffusion.cfg_rate=0.2",
                                        "diffusion.guidance_weight=1", "diffusion.sampler=ddim", "diffusion.n_steps=5"])
        experiment, results, info = sweep_on_local_ray(cfg, sweep, "ddpm-sweep", tmp_path / "tune")
        assert len(results) == 2 and not results.errors
        assert {r["diffusion.conditioning"] for r in info["rows"]} == {"leaf", "path"}
        assert all(r["training_iteration"] >= 2 for r in info["rows"])          # per-epoch reports + final
        for row in info["rows"]:
            assert 0 < row["purity_cfd_score"] < 100 and 0 < row["generation_purity"] <= 1
            assert 0 <= row["agreement"] <= 1 and row["cfd"] > 0
        best, top = load_config(info["best"]), max(info["rows"], key=lambda r: r["purity_cfd_score"])
        assert (best.diffusion.conditioning, best.diffusion.lr) == (top["diffusion.conditioning"], top["diffusion.lr"])
        assert best.diffusion.vae_run == str(vae_dir.resolve())


def _trials_started(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.glob("*") if p.is_dir() and (p / "result.json").exists())


def _iterations(trial_dir: Path) -> list[int]:
    import json
    return [json.loads(line)["training_iteration"] for line in (trial_dir / "result.json").read_text().splitlines()
            if line.strip()]


def _run_of(experiment: Path, trial_dir: Path) -> Path:
    """The run folder of a trial: <experiment>/runs/<trial name>, the trial folder's name up to its index."""
    runs = [p for p in (experiment / "runs").iterdir() if trial_dir.name.startswith(p.name + "_")]
    assert len(runs) == 1, f"no single run folder for {trial_dir.name}: {runs}"
    return runs[0]


@pytest.mark.slow
def test_interrupted_sweep_resumes_with_the_same_command(tmp_path):
    """Ctrl-C (SIGINT) on `python ray_jobs/tune.py` while the second of three trials runs; the
    same command again finishes the sweep: the first trial is not repeated, the interrupted one
    continues from its checkpoint, and the summary covers all three."""
    import json
    import os
    import signal
    import time

    sweep = write_sweep(tmp_path, {"training.lr": {"grid": [1e-3, 2e-3, 3e-3]}}, num_samples=1, scheduler="fifo")
    short = ["training.num_clusters_tree=3", "training.num_epochs=2", "training.num_epochs_finetuning=1"]
    sets = [a for s in TINY + short + [f"run.runs_dir={tmp_path}"] for a in ("--set", s)]
    command = [sys.executable, str(ROOT / "ray_jobs" / "tune.py"), "--sweep", str(sweep), "--name", "resumable",
               "--storage-path", str(tmp_path / "tune"), *sets]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    experiment = tmp_path / "tune" / "resumable"
    log = open(tmp_path / "first.log", "w")               # a file, not a pipe: a full pipe would block the driver
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        # Watch the trials' own run folders (metrics.jsonl is written line by line), not Tune's
        # result.json, which Tune flushes seconds late: by then a 9-second trial can be over.
        runs = experiment / "runs"
        while time.monotonic() < deadline and first.poll() is None:
            started = sorted(runs.iterdir()) if runs.exists() else []
            try:
                if len(started) >= 2 and any(r["event"] == "epoch" for r in read_metrics(started[1])):
                    break                                           # the second trial has trained an epoch
            except ValueError:                                      # a line half written: look again
                pass
            time.sleep(0.5)
        assert first.poll() is None, "the sweep ended before it could be interrupted:\n" + \
            (tmp_path / "first.log").read_text()[-3000:]
        first.send_signal(signal.SIGINT)
        first.wait(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    done_before = {p.name: _iterations(p) for p in _trials_started(experiment)}
    assert len(done_before) == 2

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming sweep" in again.stdout
    trials = _trials_started(experiment)
    assert len(trials) == 3
    for trial in trials:
        seen = _iterations(trial)
        assert seen == list(range(1, len(seen) + 1)), f"{trial.name} repeated or skipped reports: {seen}"
        assert json.loads((trial / "result.json").read_text().splitlines()[-1]).get("final"), trial.name
        epochs = [(r["phase"], r["epoch"]) for r in read_metrics(_run_of(experiment, trial))
                  if r["event"] == "epoch"]
        assert len(epochs) == len(set(epochs)), f"{trial.name} trained some epochs twice"
        assert epochs[:1] == [("initial", 1)], f"{trial.name}: the run folder lost its first epochs: {epochs}"
        assert len(epochs) == len(seen) - 1, f"{trial.name}: one metrics.jsonl epoch per Tune report"
    finished_first = sorted(done_before)[0]
    assert _iterations(experiment / finished_first) == done_before[finished_first], "the finished trial ran again"
    assert load_config(experiment / "best.yml").training.lr in (1e-3, 2e-3, 3e-3)
