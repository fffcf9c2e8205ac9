"""Two Ray nodes on this machine: a head and a second node, each its own `ray start` (its own
raylet), on loopback with token authentication, as the README's "Several nodes" shows. A spread
2-worker growth job, submitted with `ray job submit`, puts one rank on each node and trains the
tree that the same job trains with both ranks on one node; a 2-worker DDPM job likewise; a sweep's
two trials run one on each node; losing the second node mid-growth (its raylet killed) restarts
the worker group on the head from the last checkpoint with no epoch lost or repeated. (The
one-node module test_ray_train.py keeps what needs no second node: one DDP step equals one
process's, a stopped job resumes when re-run.) Its cluster takes fixed ports and loses a node on
purpose, so no other test's local cluster may be up meanwhile: conftest keeps every such test on
one pytest-xdist worker, one after another."""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_VAE
from test_ray_train import TINY

from structgen.api import train_tree
from structgen.config import load_config
from structgen.launch.worker_record import read_workers
from structgen.runtime.tree_checkpoint import load_model
from structgen.runtime.metrics_log import read_metrics

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")
ROOT = Path(__file__).resolve().parents[1]
HEAD, DASHBOARD = "127.0.0.1:6392", 8279
DEFAULT_AGENT_PORT = 52365      # Ray's, for every node's dashboard agent


def _env() -> dict:
    """The ray CLI's environment: token mode (it sends the token `ray start` saved), and this venv
    first on PATH, where a job's `python` entry point is looked up."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def _ray(*args, timeout=120):
    return subprocess.run([RAY, *args], env=_env(), check=True, capture_output=True, text=True, timeout=timeout)


def _held(port: int) -> socket.socket:
    """That port bound on all addresses by this process until closed (left as it is when another
    process here holds it already)."""
    holder = socket.socket()
    try:
        holder.bind(("0.0.0.0", port))
        holder.listen()
    except OSError:
        pass
    return holder


@pytest.fixture(scope="module")
def two_nodes():
    """(head node id, second node id) of a running 2-node cluster the test process is connected to,
    2 CPUs each: room for both workers of a job on either node, or for one 2-CPU trial. Each node
    is a `ray start --block` of this process's, stopped by process group, not by `ray stop`, which
    would also end the clusters of tests running beside this module (test_slurm's Ray sweep)."""
    import ray

    from structgen.launch.ray_nodes import AGENT_PORT_OF_ITS_OWN, cluster_temp_dir, start_node, stop_node

    assert os.environ.get("RAY_AUTH_MODE") == "token", "conftest sets it before Ray is imported"
    temp_dir = cluster_temp_dir()        # test_slurm's Ray, started beside it, shares /tmp/ray
    # Held while this module runs (test_slurm's cluster may run beside it), so that the job tests
    # below show the head's agent never needs it (ray_nodes.AGENT_PORT_OF_ITS_OWN).
    agents_default_port = _held(DEFAULT_AGENT_PORT)
    node = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--temp-dir", temp_dir,
            "--object-store-memory", str(300 * 2**20), AGENT_PORT_OF_ITS_OWN]
    nodes = []
    try:
        nodes.append(start_node(
            [RAY, "start", "--head", "--port", HEAD.split(":")[1], "--resources", '{"head_node": 1}',
             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(DASHBOARD), "--disable-usage-stats", *node],
            env=_env(), ready_timeout_s=120))
        nodes.append(start_node([RAY, "start", "--address", HEAD, "--resources", '{"second_node": 1}', *node],
                                env=_env(), ready_timeout_s=120))
        from structgen.launch.ray_cluster import init_ray
        init_ray(HEAD, extra_pythonpath=[str(Path(__file__).parent)])
        ids = {}
        for _ in range(60):
            ids = {name: n["NodeID"] for n in ray.nodes() if n["Alive"]
                   for name in ("head_node", "second_node") if name in n["Resources"]}
            if len(ids) == 2:
                break
            time.sleep(1)
        assert len(ids) == 2, f"the second node never joined: {ray.nodes()}"
        # Ray Train pins its controller to the driver's node; only the second node may be lost.
        assert ray.get_runtime_context().get_node_id() == ids["head_node"], "the driver joined the second node"
        yield ids["head_node"], ids["second_node"]
    finally:
        ray.shutdown()
        for started in reversed(nodes):
            stop_node(started, grace_s=2)
        shutil.rmtree(temp_dir, ignore_errors=True)
        agents_default_port.close()


GROWTH = TINY + ["data.train_subset=256", "training.num_epochs=1"]   # 1 epoch for 2 leaves, 2 per sub-tree


def _job(tmp_path, name, placement, **spec):
    """A 2-worker growth job run from this process."""
    from structgen.launch.ray_train import JobSpec, run_job

    cfg = load_config(None, GROWTH + [f"run.runs_dir={tmp_path}"])
    run_dir, result = run_job(cfg, JobSpec(num_workers=2, name=name, placement_strategy=placement,
                                           storage_path=str(tmp_path / "ray"), **spec), evaluate=False)
    assert result.error is None, result.error
    return run_dir


def _checkout_copy(dest: Path) -> Path:
    """What a user's clone holds (git's tracked files, as edited), as the job's --working-dir:
    not this checkout, whose ignored folders (runs, caches) change while other tests run beside
    this one."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


# What `ray job submit` prints when it should try again: the job agent is not up yet (it comes up
# a few seconds after the head), or the second node lost the race for the uploaded working dir
# (Ray's "Failed to download runtime_env file package ... from the GCS", seen once in ~10 runs).
RETRY_SUBMISSION = ("No available agent", "Failed to download runtime_env file package")


def _submitted_job(tmp_path, name, placement):
    """The same job through `ray job submit` to the head's job API, as a user submits it; checks
    that `ray job status` reports it succeeded and that the run evaluated its tree."""
    api = f"http://127.0.0.1:{DASHBOARD}"
    sets = [a for s in GROWTH + [f"run.runs_dir={tmp_path}"] for a in ("--set", s)]
    checkout = _checkout_copy(tmp_path / "checkout")
    for attempt in range(30):
        job_id = f"{name}-{attempt}"
        # A package of its own per attempt: Ray names packages by content, and a re-submitted
        # unchanged folder would reuse the one that failed to download.
        (checkout / "SUBMISSION").write_text(f"{job_id}\n")
        submit = subprocess.run(
            [RAY, "job", "submit", "--address", api, "--working-dir", str(checkout), "--submission-id", job_id,
             "--", "python", "ray_jobs/train_treevae.py", "--name", job_id, "--num-workers", "2",
             "--placement-strategy", placement, "--storage-path", str(tmp_path / "ray"), *sets],
            env=_env(), capture_output=True, text=True, timeout=600)
        if not any(reason in submit.stdout + submit.stderr for reason in RETRY_SUBMISSION):
            break
        time.sleep(2)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    status = _ray("job", "status", "--address", api, job_id)
    assert "succeeded" in (status.stdout + status.stderr).lower()
    run_dir = tmp_path / "synthetic" / job_id       # a failed attempt's folder stays beside it
    assert read_metrics(run_dir)[-1]["event"] == "evaluation"
    return run_dir


def _nodes_by_rank(run_dir, restored=False) -> dict[int, str]:
    return {w["rank"]: w["node_id"] for w in read_workers(run_dir) if w["restored"] == restored}


def _same_weights(a: Path, b: Path) -> None:
    one, two = (torch.load(p, map_location="cpu", weights_only=True)["model"] for p in (a, b))
    assert one.keys() == two.keys()
    for key in one:
        if torch.is_tensor(one[key]):
            assert torch.allclose(one[key].float(), two[key].float(), atol=1e-6), key


def test_a_submitted_spread_growth_uses_both_nodes_and_trains_the_one_node_tree(two_nodes, tmp_path):
    head, second = two_nodes
    spread = _submitted_job(tmp_path, "spread", "SPREAD")
    packed = _job(tmp_path, "packed", "PACK")
    assert set(_nodes_by_rank(spread).values()) == {head, second}
    assert len(set(_nodes_by_rank(packed).values())) == 1
    _same_weights(spread / "checkpoints" / "final.pt", packed / "checkpoints" / "final.pt")
    # ... and it grows the tree one process grows (2 DDP ranks take one process's steps)
    single, _ = train_tree(load_config(None, GROWTH + [f"run.runs_dir={tmp_path}", "run.name=one"]), evaluate=False)
    two_tree, one_tree = load_model(spread)[0].tree, load_model(single)[0].tree
    assert sorted(map(len, two_tree.leaves())) == sorted(map(len, one_tree.leaves()))


def test_spread_ddpm_uses_both_nodes_and_trains_the_one_node_weights(two_nodes, tmp_path):
    """The diffusion stage under DDP. The loop checks at every checkpoint (the last one included)
    that every rank's EMA equals rank 0's and raises otherwise, so each finished job proves it."""
    from structgen.launch.ray_train import JobSpec, run_job

    head, second = two_nodes
    vae_dir, _ = train_tree(load_config(None, TINY_VAE + [f"run.runs_dir={tmp_path}", "run.name=vae"]), evaluate=False)
    cfg = load_config(None, TINY + [f"run.runs_dir={tmp_path}", "data.train_subset=128", "diffusion.dim=16",
                                    "diffusion.dim_mults=[1,2]",
                                    "diffusion.n_residual=1", "diffusion.attn_resolutions=[14]", "diffusion.n_heads=4",
                                    "diffusion.epochs=1", "diffusion.batch_size=32", "diffusion.sample_every=0",
                                    "diffusion.n_timesteps=50"])
    dirs = {}
    for placement in ("SPREAD", "PACK"):
        dirs[placement], result = run_job(cfg, JobSpec(num_workers=2, name=f"ddpm-{placement}", stage="ddpm",
                                                       vae_run=str(vae_dir), placement_strategy=placement,
                                                       storage_path=str(tmp_path / "ray")))
        assert result.error is None, result.error
        assert any(r["event"] == "ddpm_epoch" for r in read_metrics(dirs[placement])), "no epoch logged"
    assert set(_nodes_by_rank(dirs["SPREAD"]).values()) == {head, second}
    assert len(set(_nodes_by_rank(dirs["PACK"]).values())) == 1
    _same_weights(dirs["SPREAD"] / "checkpoints" / "last.pt", dirs["PACK"] / "checkpoints" / "last.pt")


def test_a_jobs_processes_on_either_node_are_told_their_cluster(two_nodes):
    """RAY_ADDRESS in every process of a job that joined by address, the second node's too: what
    Ray's state API (Ray Train's controller asks it) reads before the machine's last `ray start`."""
    import ray

    @ray.remote(resources={"second_node": 0.01})
    def address_seen() -> tuple[str, str | None]:
        return ray.get_runtime_context().get_node_id(), os.environ.get("RAY_ADDRESS")

    assert ray.get(address_seen.remote(), timeout=120) == (two_nodes[1], HEAD)


def test_a_sweeps_trials_run_on_both_nodes(two_nodes, tmp_path):
    """Two concurrent trials of 2 CPUs each fit only one per node. Each in an actor of its own
    (reuse_actors off): these trials take a second, so a reused actor would run both one after the
    other on one node before the other node's actor had started."""
    from test_tune import write_sweep

    from structgen.launch.tune_sweep import run_sweep
    from structgen.sweeps import load_sweep

    sweep = load_sweep(write_sweep(tmp_path, {"training.decay_kl": {"grid": [0.05, 0.2]}}, num_samples=1,
                                   scheduler="fifo", max_concurrent=2, reuse_actors=False))
    cfg = load_config(None, TINY_VAE + [f"run.runs_dir={tmp_path}", "evaluation.baselines=false"])
    experiment, results = run_sweep(cfg, sweep, "two-node-sweep", tmp_path / "tune", cpus_per_trial=2)
    assert len(results) == 2 and not results.errors
    trial_nodes = [read_workers(run)[0]["node_id"] for run in sorted((experiment / "runs").iterdir())]
    assert sorted(trial_nodes) == sorted(two_nodes)


def test_losing_a_node_mid_growth_resumes_on_the_rest(two_nodes, tmp_path):
    """Last in the module: the second node stays down."""
    import ray

    head, second = two_nodes
    marker = tmp_path / "node-lost.marker"
    worker_tmp = tmp_path / "worker_tmp"                  # where the workers' temporary files go
    worker_tmp.mkdir()
    # The rank that SPREAD put on the second node kills that node's raylet after subtree-1 epoch 1.
    fault = {"STRUCTGEN_FAULT_AT": "subtree-1:1:*", "STRUCTGEN_FAULT_KILL": "node", "STRUCTGEN_FAULT_NODE": second,
             "STRUCTGEN_FAULT_MARKER": str(marker), "TMPDIR": str(worker_tmp)}
    first = _job(tmp_path, "lost", "SPREAD", max_failures=1, env=fault)
    assert marker.exists() and "killed node" in marker.read_text(), "the node was never killed"
    assert set(_nodes_by_rank(first).values()) == {head, second}, "the job did not start on both nodes"
    assert set(_nodes_by_rank(first, restored=True).values()) == {head}, "the restarted ranks are not on the head"
    assert second not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert (first / "checkpoints" / "final.pt").exists()
    epochs = [(r["phase"], r["epoch"]) for r in read_metrics(first) if r["event"] == "epoch"]
    assert len(epochs) == len(set(epochs)), "an epoch was repeated"
    by_phase: dict[str, list[int]] = {}
    for phase, epoch in epochs:
        by_phase.setdefault(phase, []).append(epoch)
    for phase, seen in by_phase.items():
        assert seen == list(range(1, len(seen) + 1)), f"an epoch of {phase} was lost: {seen}"
    assert by_phase["subtree-1"] == [1, 2]
    assert not list(worker_tmp.glob("structgen-ckpt-*")), "a restarted rank left its restored checkpoint behind"
