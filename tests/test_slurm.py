"""The SLURM launcher against a real SLURM of two nodes on this machine (slurm-local.sh, started
here as root, made two nodes by slurm/local_nodes.sh): one job, a job array from a sweep, one
tree trained over two nodes (a DDP rank on each, gloo), that job with the second node's task
killed and then preempted mid-run ending with the same tree and weights as the uninterrupted
one, a Ray Tune sweep on a Ray cluster over both nodes of one allocation, status and logs;
without SLURM: precedence of settings, rank detection, the dry run, the ddpm wiring, the local
executor."""
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
from conftest import SYNTHETIC_FAST, load_script

REPO = Path(__file__).resolve().parents[1]
SMALL = SYNTHETIC_FAST + ["data.train_subset=400", "data.test_subset=100", "training.num_epochs=2",
                          "training.num_epochs_smalltree=3", "training.num_epochs_finetuning=1", "run.threads=1",
                          "evaluation.baselines=false"]
# A share of the 2-core test machine; timeout_min > 10 so that a USR2 counts as a preemption,
# not as a time-out (submitit only calls it a time-out past 80% of the limit or limit - 10 min).
TINY_JOB = {"cpus_per_task": 1, "mem_gb": 1, "timeout_min": 15}


def load_launch():
    return load_script(REPO / "slurm" / "launch.py", "slurm_launch")


def slurm_script() -> Path:
    shared = Path(os.environ["STRUCTGEN_SHARED"]) if os.environ.get("STRUCTGEN_SHARED") else REPO.parent / "shared"
    return shared / "tools" / "slurm-local.sh"


def slurm_is_up() -> bool:
    if not shutil.which("scontrol"):
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    return ping.returncode == 0 and "UP" in ping.stdout


def host_env() -> dict:
    """The environment for the scripts that size the SLURM nodes with `nproc`, which reports
    OMP_NUM_THREADS when it is set (as conftest sets it under pytest-xdist): the machine's cores."""
    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


def local_nodes(action: str) -> None:
    out = subprocess.run(["bash", str(REPO / "slurm" / "local_nodes.sh"), action], capture_output=True, text=True,
                         timeout=120, env=host_env())
    assert out.returncode == 0, f"slurm/local_nodes.sh {action} failed:\n{out.stderr[-3000:]}"


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running SLURM with accounting, two nodes for these tests and one again after them;
    started (and at the end stopped) only if it was not up. Yields the two node names."""
    started = False
    if not slurm_is_up():
        script = slurm_script()
        if not script.is_file():
            pytest.skip(f"no SLURM running and no {script} to start one (set STRUCTGEN_SHARED)")
        if os.geteuid() != 0:
            pytest.skip("no SLURM running, and slurm-local.sh must run as root to start one")
        t0 = time.time()
        up = subprocess.run(["bash", str(script), "up"], env={**host_env(), "SLURM_SMOKE": "0"},
                            capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, f"slurm-local.sh up failed:\n{up.stderr[-3000:]}"
        started = True
        print(f"\n[test_slurm] SLURM started in {time.time() - t0:.1f} s", file=sys.stderr)
    local_nodes("up")
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True).stdout.split()
    assert len(set(nodes)) == 2, nodes
    yield sorted(set(nodes))
    local_nodes("down")
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


def finished(job) -> bool:
    """submitit's job.done() waits for every task's result file; the Ray launcher's second task
    never runs and writes none, and then done() asks sacct only every minute or so: ask it now."""
    return job.done() or job.watcher.is_done(job.job_id, mode="force")


def result_of(job, timeout: float = 300):
    from structgen.launch.slurm import job_result

    wait_for(lambda: finished(job), timeout, f"job {job.job_id} to finish", poll=1)
    return job_result(job)


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


@pytest.fixture(scope="module")
def two_node_tree(slurm_cluster, tmp_path_factory):
    """`slurm/launch.py --stage tree --nodes 2`: one tree trained by a DDP rank on each node."""
    from structgen.launch.slurm import plan_submission

    runs = tmp_path_factory.mktemp("two-node-runs")
    sub = plan_submission("tree", None, SMALL + [f"run.runs_dir={runs}"], name="two-nodes", evaluate=False,
                          flags={**TINY_JOB, "nodes": 2, "folder": str(runs / "logs" / "%j")})
    job, = sub.submit()
    try:
        return runs, result_of(job, timeout=300)
    except BaseException:
        subprocess.run(["scancel", job.job_id], capture_output=True)
        raise


def test_one_tree_trains_over_two_nodes(slurm_cluster, two_node_tree):
    from structgen.launch.worker_record import read_workers

    runs, result = two_node_tree
    run_dir = runs / "synthetic" / "two-nodes"
    assert result["run_dir"] == str(run_dir) and result["world_size"] == 2       # rank 0 alone reports
    assert (run_dir / "checkpoints" / "final.pt").is_file()
    workers = read_workers(run_dir)
    assert sorted((w["rank"], w["host"]) for w in workers) == [(0, slurm_cluster[0]), (1, slurm_cluster[1])]
    assert all(w["world_size"] == 2 for w in workers)


def test_two_node_job_resumes_after_losing_a_nodes_task_and_a_preemption(slurm_cluster, two_node_tree,
                                                                         cancel_unfinished, monkeypatch):
    """The two-node tree job, requeued twice: the second node's task SIGKILLed mid-run (as when
    that host fails) and the job requeued, then preempted with USR2 (submitit's handler:
    checkpoint() -> resume=True, scontrol requeue). Both ranks resume from the last checkpoint,
    and the run ends with the same tree, weights and epoch log as the uninterrupted one."""
    from structgen.api import load_model
    from structgen.launch.slurm import plan_submission
    from structgen.launch.worker_record import read_workers

    runs, _ = two_node_tree
    victim = runs / "synthetic" / "victim"
    # structgen.runtime.fault: rank 1 (the task on the second node) SIGKILLs itself once, right
    # after this epoch's checkpoint; rank 0 then waits in its next collective until the requeue.
    marker = runs / "victim.killed"
    monkeypatch.setenv("STRUCTGEN_FAULT_AT", "subtree-1:1:1")
    monkeypatch.setenv("STRUCTGEN_FAULT_MARKER", str(marker))     # sbatch hands the job this environment
    sub = plan_submission("tree", None, SMALL + [f"run.runs_dir={runs}"], name="victim", evaluate=False,
                          flags={**TINY_JOB, "nodes": 2, "folder": str(runs / "logs" / "%j")})
    job, = sub.submit()
    cancel_unfinished.append(job)

    def log() -> str:
        return "".join(p.read_text() for p in (runs / "logs" / job.job_id).glob("*_log.*"))

    wait_for(marker.exists, 180, "the injected SIGKILL after subtree-1 epoch 1")
    assert "subtree-1:1:1" in marker.read_text()
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    release_requeued(job.job_id)
    wait_for(lambda: "resuming" in log(), 180, "the first resume")
    wait_for(lambda: ("subtree-2", 1) in epochs(victim), 180, "subtree-2 epoch 1 after the first requeue")
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    release_requeued(job.job_id)
    # Not job.done(): the first attempt's rank 0 lost its peer and left an error result behind,
    # which counts as "done" for submitit until the last attempt overwrites it.
    wait_for(lambda: job.watcher.get_state(job.job_id, mode="force") == "COMPLETED", 300,
             f"job {job.job_id} to complete", poll=1)
    result = result_of(job)

    assert result["resumed"] and result["restarts"] == 2 and result["world_size"] == 2
    assert "Caught signal SIGUSR2" in log()
    workers = read_workers(victim)
    assert {w["host"] for w in workers} == set(slurm_cluster)
    assert sorted(w["rank"] for w in workers if w["restored"]) == [0, 0, 1, 1]      # both ranks, both restarts
    ref_model, _ = load_model(runs / "synthetic" / "two-nodes")
    got_model, _ = load_model(victim)
    assert got_model.tree == ref_model.tree
    ref_state, got_state = ref_model.state_dict(), got_model.state_dict()
    assert ref_state.keys() == got_state.keys()
    for key in ref_state:
        assert torch.allclose(ref_state[key].float(), got_state[key].float(), atol=1e-5), key
    assert epochs(victim) == epochs(runs / "synthetic" / "two-nodes")      # no epoch lost or logged twice


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


def test_ray_tune_sweep_over_both_nodes_of_one_allocation(slurm_cluster, tmp_path, monkeypatch, cancel_unfinished):
    """--ray --nodes 2: a Ray head on the first node and a Ray node on the second, started with srun
    inside the job, ray_jobs/tune.py run against them (two trials of 2 CPUs: one per node), all stopped."""
    from structgen.launch.worker_record import read_workers
    from structgen.config import load_config
    from structgen.launch.slurm import plan_submission, ray_port_for_job

    monkeypatch.setenv("RAY_AUTH_MODE", "token")             # token authentication on, as the README says
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    sweep = tmp_path / "sweep.yml"
    sweep.write_text("stage: tree\nnum_samples: 2\nscheduler: fifo\nmax_concurrent: 2\nreuse_actors: false\n"
                     "params:\n  training.decay_kl: {uniform: [0.05, 0.2]}\n")
    fast = SYNTHETIC_FAST + ["data.train_subset=200", "data.test_subset=64", "training.num_epochs=1",
                             "training.grow=false", "training.num_epochs_finetuning=0", "evaluation.baselines=false",
                             "run.threads=1", "ray.cpus_per_worker=2", f"run.runs_dir={tmp_path}"]
    sub = plan_submission(None, None, fast, sweep=str(sweep), ray=True, name="raysweep",
                          flags={**TINY_JOB, "cpus_per_task": 2, "nodes": 2, "folder": str(tmp_path / "logs" / "%j")})
    job, = sub.submit()
    cancel_unfinished.append(job)
    result = result_of(job, timeout=400)
    assert result["name"] == "raysweep" and result["nodes"] == slurm_cluster
    assert result["address"].endswith(f":{ray_port_for_job(job.job_id)}")
    assert load_config(result["config"]).data.train_subset == 200         # the --set reached the driver
    rows = (tmp_path / "tune" / "raysweep" / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 and (tmp_path / "tune" / "raysweep" / "best.yml").is_file()
    trial_hosts = [read_workers(run)[0]["host"] for run in (tmp_path / "tune" / "raysweep" / "runs").iterdir()]
    assert sorted(trial_hosts) == slurm_cluster
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"--port={ray_port_for_job(job.job_id)}" not in ps, "the job's Ray head outlived it"
    # its nodes kept to a temp dir of the job's own, so the machine's /tmp/ray cannot point at them
    temp_dir = Path(result["ray_temp_dir"])
    recorded = (temp_dir / "ray_current_cluster").read_text().strip()      # its host as Ray resolved it
    assert recorded.rsplit(":", 1)[1] == str(ray_port_for_job(job.job_id))
    shutil.rmtree(temp_dir)


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
