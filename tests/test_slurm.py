"""The SLURM launcher against a real single-node SLURM (slurm-local.sh, started here as root):
one job, a job array from a sweep, a job killed and preempted mid-run that ends with the same
tree and weights as an uninterrupted one, 2 srun tasks forming a gloo group and training one
tree, a Ray Tune sweep on a Ray cluster inside one allocation, status and logs; without SLURM:
precedence of settings, rank detection, the dry run, the ddpm wiring, the local executor."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SYNTHETIC_FAST

REPO = Path(__file__).resolve().parents[1]
SMALL = SYNTHETIC_FAST + ["data.train_subset=400", "data.test_subset=100", "training.num_epochs=3",
                          "training.num_epochs_smalltree=3", "training.num_epochs_finetuning=2", "run.threads=1",
                          "evaluation.baselines=false"]
# A share of the 2-core test machine; timeout_min > 10 so that a USR2 counts as a preemption,
# not as a time-out (submitit only calls it a time-out past 80% of the limit or limit - 10 min).
TINY_JOB = {"cpus_per_task": 1, "mem_gb": 1, "timeout_min": 15}


def load_launch():
    spec = importlib.util.spec_from_file_location("slurm_launch", REPO / "slurm" / "launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slurm_script() -> Path:
    shared = Path(os.environ["STRUCTGEN_SHARED"]) if os.environ.get("STRUCTGEN_SHARED") else REPO.parent / "shared"
    return shared / "tools" / "slurm-local.sh"


def slurm_is_up() -> bool:
    if not shutil.which("scontrol"):
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    return ping.returncode == 0 and "UP" in ping.stdout


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running SLURM with accounting; started (and at the end stopped) only if it was not up."""
    started = False
    if not slurm_is_up():
        script = slurm_script()
        if not script.is_file():
            pytest.skip(f"no SLURM running and no {script} to start one (set STRUCTGEN_SHARED)")
        if os.geteuid() != 0:
            pytest.skip("no SLURM running, and slurm-local.sh must run as root to start one")
        t0 = time.time()
        up = subprocess.run(["bash", str(script), "up"], env={**os.environ, "SLURM_SMOKE": "0"},
                            capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, f"slurm-local.sh up failed:\n{up.stderr[-3000:]}"
        started = True
        print(f"\n[test_slurm] SLURM started in {time.time() - t0:.1f} s", file=sys.stderr)
    yield
    if started:
        subprocess.run(["bash", str(slurm_script()), "down"], capture_output=True, timeout=120)


@pytest.fixture
def cancel_unfinished():
    """Jobs a test submitted and left unfinished (it failed) are cancelled: the node is for the next test."""
    jobs = []
    yield jobs
    for job in jobs:
        if not job.done():
            subprocess.run(["scancel", job.job_id], capture_output=True)


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def result_of(job, timeout: float = 150):
    wait_for(job.done, timeout, f"job {job.job_id} to finish", poll=0.5)
    return job.result()


def epochs(run_dir: Path) -> list[tuple[str, int]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    complete = path.read_text().split("\n")[:-1]          # a line being appended right now is not one yet
    rows = [json.loads(line) for line in complete if line.strip()]
    return [(r["phase"], r["epoch"]) for r in rows if r["event"] == "epoch"]


def release_requeued(jid: str) -> None:
    """A requeued job waits ~2 minutes (SLURM's BeginTime); let it start sooner. Not at once:
    slurmd refuses a launch in the same second as the old attempt's revoked credential."""
    def pending():
        out = subprocess.run(["squeue", "-h", "-j", jid, "-o", "%T"], capture_output=True, text=True).stdout
        return out.strip() == "PENDING"
    wait_for(pending, 60, f"job {jid} to be requeued")
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], check=True)


# ---------------------------------------------------------------- without SLURM

def test_precedence_is_flag_then_env_then_config():
    from structgen.config import load_config
    from structgen.launch.slurm import resolve_resources

    cfg = load_config(None, ["slurm.partition=cfg-part", "slurm.account=cfg-acc", "slurm.qos=cfg-qos", "slurm.nodes=3"])
    env = {"STRUCTGEN_SLURM_ACCOUNT": "env-acc", "STRUCTGEN_SLURM_QOS": "env-qos"}
    res = resolve_resources(cfg.slurm, {"qos": "flag-qos", "nodes": None, "gpus_per_node": 4}, env)
    assert (res.partition, res.account, res.qos) == ("cfg-part", "env-acc", "flag-qos")
    assert res.nodes == 3 and res.tasks_per_node == 4          # one task per GPU
    assert resolve_resources(cfg.slurm, {}, {}).tasks_per_node == 1


def test_detect_layout_reads_torchrun_then_slurm_srun_steps_only():
    from structgen.launch.distributed import Layout, detect_layout, port_for_job

    torchrun = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h1", "MASTER_PORT": "1234",
                "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"}
    assert detect_layout(torchrun) == Layout("torchrun", 3, 8, 1, "h1", 1234)
    step = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
            "MASTER_ADDR": "node07"}
    assert detect_layout(step) == Layout("slurm", 5, 8, 1, "node07", port_for_job("4242"))
    batch_script = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "4242"}     # no srun step
    assert detect_layout(batch_script).world_size == 1
    assert port_for_job("4242") != port_for_job("4243")


def test_dry_run_shows_parameters_commands_and_trials(tmp_path, monkeypatch, capsys):
    from structgen.sweeps import expand_trials, load_sweep

    monkeypatch.setenv("STRUCTGEN_SLURM_PARTITION", "env-part")
    monkeypatch.chdir(tmp_path)
    sweep = REPO / "configs" / "sweeps" / "tree_small.yml"
    launch = load_launch()
    argv = ["--config", str(REPO / "configs" / "digits.yml"), "--sweep", str(sweep), "--set", "run.seed=7",
            "--set", "slurm.partition=cfg-part", "--account", "flag-acc", "--dry-run"]
    assert launch.main(argv) == 0
    out = capsys.readouterr().out
    assert "slurm_partition = 'env-part'" in out and "slurm_account = 'flag-acc'" in out
    trials = expand_trials(load_sweep(sweep), 7)
    assert f"job array of {len(trials)} tasks" in out
    for i, trial in enumerate(trials):
        assert f"trial {i}: " + ", ".join(f"{k}={v!r}" for k, v in trial.items()) in out
    assert launch.main(argv + ["--ray", "--nodes", "2", "--name", "tn"]) == 0
    out = capsys.readouterr().out
    assert "nodes = 2" in out and "slurm_use_srun = False" in out
    assert f"-m structgen.launch.tune_main --config {tmp_path / 'runs' / 'slurm-configs' / 'tn.yml'} --sweep {sweep} " \
           f"--address <head>:<port> --name tn" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "slurm_logs").exists()   # a dry run writes nothing
    assert launch.main(["--stage", "tree", "--ray", "--dry-run"]) == 2                   # --ray needs --sweep


# ---------------------------------------------------------------- on SLURM

@pytest.fixture(scope="module")
def reference(slurm_cluster, tmp_path_factory):
    """One uninterrupted tree job (with evaluation): the single-job test and the requeue baseline."""
    from structgen.launch.slurm import plan_submission

    runs = tmp_path_factory.mktemp("slurm-runs")
    sub = plan_submission("tree", None, SMALL + [f"run.runs_dir={runs}"], name="reference",
                          flags={**TINY_JOB, "folder": str(runs / "logs" / "%j")})
    job, = sub.submit()
    try:
        return runs, sub, job, result_of(job)
    except BaseException:
        subprocess.run(["scancel", job.job_id], capture_output=True)
        raise


def test_single_job_returns_its_result(reference):
    runs, sub, job, result = reference
    run_dir = runs / "synthetic" / "reference"
    assert result["run_dir"] == str(run_dir) and result["job_id"] == job.job_id
    assert (run_dir / "checkpoints" / "final.pt").is_file()
    assert not result["resumed"] and result["restarts"] == 0 and result["world_size"] == 1
    assert result["report"]["n_test"] == 100 and 0.0 <= result["report"]["acc"] <= 1.0


def test_sweep_runs_as_a_job_array(slurm_cluster, tmp_path, cancel_unfinished):
    from structgen.config import load_config
    from structgen.launch.slurm import plan_submission

    sweep = tmp_path / "sweep.yml"
    sweep.write_text("stage: tree\nnum_samples: 3\nmax_concurrent: 2\n"
                     "params:\n  training.decay_kl: {uniform: [0.05, 0.2]}\n")
    fast = SYNTHETIC_FAST + ["data.train_subset=200", "data.test_subset=50", "training.num_epochs=1",
                             "training.grow=false", "training.num_epochs_finetuning=0", "run.threads=1",
                             f"run.runs_dir={tmp_path}"]
    sub = plan_submission(None, None, fast, sweep=str(sweep), evaluate=False,
                          flags={**TINY_JOB, "folder": str(tmp_path / "logs" / "%j")})
    jobs = sub.submit()
    cancel_unfinished.extend(jobs)
    array_id = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{array_id}_{i}" for i in range(3)]
    for i, (job, trial) in enumerate(zip(jobs, sub.trials)):
        result = result_of(job)
        run_dir = Path(result["run_dir"])
        assert run_dir == tmp_path / "synthetic" / f"slurm-{array_id}_{i}"
        assert load_config(run_dir / "config.yml").training.decay_kl == trial["training.decay_kl"]
    assert len({t["training.decay_kl"] for t in sub.trials}) == 3


def test_requeued_job_resumes_and_matches_an_uninterrupted_run(reference, cancel_unfinished, monkeypatch):
    """Requeued twice: its process SIGKILLed mid-run (as on a node failure) and the job requeued
    by SLURM (it learns that from SLURM_RESTART_COUNT), then preempted with USR2 (submitit's
    handler: checkpoint() -> resume=True, scontrol requeue). It ends with the same tree and
    weights as the uninterrupted reference."""
    from structgen.api import load_model
    from structgen.launch.slurm import plan_submission

    runs, _, _, _ = reference
    victim = runs / "synthetic" / "victim"
    # structgen.runtime.fault: rank 0 SIGKILLs itself once, right after this epoch's checkpoint. A
    # plain `scontrol requeue` or `scancel` sends SIGTERM first, which submitit ignores, so the run
    # would train on for SLURM's KillWait seconds; this tiny run could be over by then.
    marker = runs / "victim.killed"
    monkeypatch.setenv("STRUCTGEN_FAULT_AT", "subtree-1:1:0")
    monkeypatch.setenv("STRUCTGEN_FAULT_MARKER", str(marker))     # sbatch hands the job this environment
    sub = plan_submission("tree", None, SMALL + [f"run.runs_dir={runs}"], name="victim", evaluate=False,
                          flags={**TINY_JOB, "folder": str(runs / "logs" / "%j")})
    job, = sub.submit()
    cancel_unfinished.append(job)

    def log() -> str:
        return "".join(p.read_text() for p in (runs / "logs" / job.job_id).glob("*_log.*"))

    wait_for(marker.exists, 120, "the injected SIGKILL after subtree-1 epoch 1")
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    release_requeued(job.job_id)
    wait_for(lambda: "resuming" in log(), 120, "the first resume")
    wait_for(lambda: ("subtree-2", 1) in epochs(victim), 120, "subtree-2 epoch 1 after the first requeue")
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    release_requeued(job.job_id)
    result = result_of(job)

    assert result["resumed"] and result["restarts"] == 2
    assert "Caught signal SIGUSR2" in log() and log().count("resuming") == 2
    ref_model, _ = load_model(runs / "synthetic" / "reference")
    got_model, _ = load_model(victim)
    assert got_model.tree == ref_model.tree
    ref_state, got_state = ref_model.state_dict(), got_model.state_dict()
    assert ref_state.keys() == got_state.keys()
    for key in ref_state:
        assert torch.allclose(ref_state[key].float(), got_state[key].float(), atol=1e-5), key
    assert epochs(victim) == epochs(runs / "synthetic" / "reference")      # no epoch lost or logged twice


def test_two_slurm_tasks_form_a_gloo_group_and_train_one_tree(slurm_cluster, tmp_path):
    """init_distributed in an `srun -n2` step: a gloo group whose collectives add up, then the
    tree stage job trained as 2 DDP ranks that agree on one run folder."""
    fast = SYNTHETIC_FAST + ["data.train_subset=200", "data.test_subset=50", "training.num_epochs=2",
                             "training.grow=false", "training.num_epochs_finetuning=1", "run.threads=1",
                             f"run.runs_dir={tmp_path}"]
    script = tmp_path / "two_ranks.py"
    script.write_text(
        "import json, sys, torch, torch.distributed as dist\n"
        "from structgen.launch.distributed import detect_layout, init_distributed\n"
        "from structgen.launch.slurm import StageJob\n"
        "layout = detect_layout()\n"
        "ctx = init_distributed('cpu')\n"
        "total = ctx.all_reduce_sum(torch.tensor([float(ctx.rank + 1)]))\n"
        "ranks = ctx.all_gather_cat(torch.tensor([ctx.rank]))\n"
        "print(json.dumps({'rank': ctx.rank, 'world': ctx.world_size, 'total': total.item(), 'ranks': ranks.tolist(),\n"
        "                  'backend': dist.get_backend(), 'source': layout.source}), flush=True)\n"
        f"result = StageJob('tree', None, {fast!r}, name='ddp', evaluate=False)()\n"
        "if result: print('RESULT ' + json.dumps(result))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    out = subprocess.run(["srun", "-n2", "-c1", "--mem=2G", "-t", "5", sys.executable, str(script)], env=env,
                         capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    rows.sort(key=lambda r: r["rank"])
    assert [r["rank"] for r in rows] == [0, 1]
    for row in rows:
        assert row["world"] == 2 and row["total"] == 3.0 and row["ranks"] == [0, 1]
        assert row["backend"] == "gloo" and row["source"] == "slurm"
    results = [json.loads(line[len("RESULT "):]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 1 and results[0]["world_size"] == 2               # rank 0 alone reports
    assert (tmp_path / "synthetic" / "ddp" / "checkpoints" / "final.pt").is_file()


def test_ddpm_stage_job_trains_on_the_tree_run(reference):
    """The ddpm wiring, called in this process as a job would call it (SLURM itself is covered above)."""
    from structgen.config import load_config
    from structgen.launch.slurm import StageJob

    runs, _, _, _ = reference
    # one optimiser step per epoch on a small UNet: this checks the wiring, not the model
    tiny = ["data.dataset=synthetic", "data.train_subset=16", "data.test_subset=32", "run.progress=plain",
            "run.threads=1", "diffusion.dim=8", "diffusion.dim_mults=[1,2]", "diffusion.n_heads=2",
            "diffusion.n_residual=1", "diffusion.attn_resolutions=[]", "diffusion.batch_size=16", "diffusion.epochs=1",
            "diffusion.warmup_steps=4", "diffusion.n_timesteps=100", "diffusion.sample_every=0", f"run.runs_dir={runs}"]
    vae = runs / "synthetic" / "reference"
    result = StageJob("ddpm", None, tiny, name="ddpm", vae=str(vae))()
    run_dir = runs / "synthetic" / "ddpm"
    assert result["run_dir"] == str(run_dir) and result["stage"] == "ddpm" and not result["resumed"]
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert load_config(run_dir / "config.yml").diffusion.vae_run == str(vae)
    events = [json.loads(line)["event"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events.count("ddpm_epoch") == 1
    # a requeued job (resume=True) continues that run instead of refusing the existing folder
    longer = [s.replace("diffusion.epochs=1", "diffusion.epochs=2") for s in tiny]
    again = StageJob("ddpm", None, longer, name="ddpm", vae=str(vae)).checkpoint().function()
    assert again["resumed"]
    events = [json.loads(line)["event"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events.count("ddpm_epoch") == 2


def test_ray_tune_sweep_inside_one_allocation(slurm_cluster, tmp_path, monkeypatch, cancel_unfinished):
    """--ray: a Ray head started with srun inside the job, ray_jobs/tune.py run against it, all stopped."""
    from structgen.config import load_config
    from structgen.launch.slurm import plan_submission, ray_port_for_job

    monkeypatch.setenv("RAY_AUTH_MODE", "token")             # token authentication on, as the README says
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    sweep = tmp_path / "sweep.yml"
    sweep.write_text("stage: tree\nnum_samples: 2\nscheduler: fifo\n"
                     "params:\n  training.decay_kl: {uniform: [0.05, 0.2]}\n")
    fast = SYNTHETIC_FAST + ["data.train_subset=200", "data.test_subset=64", "training.num_epochs=1",
                             "training.grow=false", "training.num_epochs_finetuning=0", "evaluation.baselines=false",
                             "run.threads=1", f"run.runs_dir={tmp_path}"]
    sub = plan_submission(None, None, fast, sweep=str(sweep), ray=True, name="raysweep",
                          flags={**TINY_JOB, "cpus_per_task": 2, "folder": str(tmp_path / "logs" / "%j")})
    job, = sub.submit()
    cancel_unfinished.append(job)
    result = result_of(job, timeout=200)
    assert result["name"] == "raysweep" and len(result["nodes"]) == 1
    assert result["address"].endswith(f":{ray_port_for_job(job.job_id)}")
    assert load_config(result["config"]).data.train_subset == 200         # the --set reached the driver
    rows = (tmp_path / "tune" / "raysweep" / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 and (tmp_path / "tune" / "raysweep" / "best.yml").is_file()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"--port={ray_port_for_job(job.job_id)}" not in ps, "the job's Ray head outlived it"


def test_generate_through_the_local_executor(reference, capsys):
    runs, _, _, _ = reference
    launch = load_launch()
    rc = launch.main(["--stage", "generate", "--run", str(runs / "synthetic" / "reference"), "--n", "4", "--local",
                      "--wait", "--folder", str(runs / "local-logs" / "%j")])
    assert rc == 0
    assert "'stage': 'generate'" in capsys.readouterr().out
    samples = np.load(runs / "synthetic" / "reference" / "samples" / "vae_samples" / "samples.npz")
    assert samples["images"].shape[0] == 4


def test_status_and_logs_of_a_finished_job(reference, capsys):
    runs, sub, job, _ = reference
    launch = load_launch()
    assert launch.main(["--status", job.job_id]) == 0
    assert "COMPLETED" in capsys.readouterr().out
    assert launch.main(["--logs", job.job_id, "--folder", sub.folder]) == 0
    assert f"run folder: {runs / 'synthetic' / 'reference'}" in capsys.readouterr().out


def test_a_job_trains_on_a_users_image_folder_given_by_a_relative_path(slurm_cluster, tmp_path, monkeypatch,
                                                                      cancel_unfinished):
    """data.dataset=folder through SLURM: the relative data.path is pinned to the submitting
    folder, so the job finds the images wherever it starts, and the run records where they were."""
    from user_images import digits_pngs

    from structgen.config import load_config
    from structgen.launch.slurm import plan_submission

    digits_pngs(tmp_path / "my_images", n=80)
    monkeypatch.chdir(tmp_path)
    fast = ["data.dataset=folder", "data.path=my_images", "model.encoder=cnn1", "training.batch_size=16",
            "training.num_epochs=1", "training.grow=false", "training.prune=false",
            "training.num_epochs_finetuning=0", "evaluation.baselines=false", "run.threads=1", "run.progress=plain", f"run.runs_dir={tmp_path / 'runs'}"]
    sub = plan_submission("tree", None, fast, name="mine",
                          flags={**TINY_JOB, "folder": str(tmp_path / "logs" / "%j")})
    job, = sub.submit()
    cancel_unfinished.append(job)
    result = result_of(job)
    run_dir = Path(result["run_dir"])
    assert run_dir == tmp_path / "runs" / "folder" / "mine"
    recorded = load_config(run_dir / "config.yml").data
    assert recorded.path == str(tmp_path / "my_images") and recorded.fingerprint.startswith("80 files")
    assert result["report"]["labelled"] is False and result["report"]["n_leaves"] == 2
