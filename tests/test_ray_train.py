"""Ray Train on a real local Ray cluster with 2 CPU workers: DDP equivalence of one step, a
stopped job on a user's image folder resumed by re-running it. (Growth over two workers against one
process's tree, diffusion under DDP, `ray job submit` against `ray start --head`, and recovery
from a lost node are in test_ray_two_nodes.py, which must not run while this module's cluster
is up: conftest keeps both on one pytest-xdist worker.)"""
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SYNTHETIC_FAST
from ray_helpers import equivalence_worker, one_step

from structgen.config import load_config
from structgen.runtime.metrics_log import read_metrics

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY = SYNTHETIC_FAST + ["data.train_subset=512", "data.test_subset=128", "training.num_epochs=2",
                         "training.num_epochs_smalltree=2", "training.num_epochs_finetuning=1",
                         "training.num_clusters_tree=3", "evaluation.baselines=false"]


@pytest.fixture(scope="module")
def ray_session():
    from structgen.launch.ray_cluster import init_ray
    ray = init_ray(num_cpus=4, extra_pythonpath=[str(Path(__file__).parent)])
    yield ray
    ray.shutdown()


def test_a_local_cluster_binds_its_dashboard_to_loopback_and_demands_the_token(ray_session):
    """What ray_cluster.py and the README promise: the dashboard (job API) on 127.0.0.1 only,
    and token authentication on, so a request without the token is refused."""
    import socket
    import urllib.error
    import urllib.request

    node = ray_session._private.worker._global_node
    host, port = node.webui_url.rsplit(":", 1)
    assert host == "127.0.0.1"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://{node.webui_url}/api/jobs/", timeout=30)
    assert err.value.code == 401
    if node.node_ip_address != "127.0.0.1":        # not reachable on the machine's own address
        with socket.socket() as s:
            s.settimeout(5)
            assert s.connect_ex((node.node_ip_address, int(port))) != 0


def test_a_jobs_processes_ask_the_state_api_of_their_own_cluster(ray_session):
    """Ray Train's controller asks Ray's state API whether it is alive; unless told its cluster,
    that API takes the machine's last `ray start` (/tmp/ray/ray_current_cluster), which may be
    stopped (a 12-s stall at every job's end) or another cluster (then a running job loses its
    placement group). init_ray tells every process of the job where its own cluster's API is."""
    import os

    @ray_session.remote
    class Probe:
        def ask(self, actor_id: str):
            from ray.util.state import get_actor

            return os.environ.get("RAY_API_SERVER_ADDRESS"), get_actor(actor_id, timeout=20).state

    probe = Probe.remote()
    url, state = ray_session.get(probe.ask.remote(probe._actor_id.hex()), timeout=120)
    assert url == f"http://{ray_session._private.worker._global_node.webui_url}"
    assert state == "ALIVE"


def test_two_workers_take_the_same_step_as_one(ray_session, tmp_path):
    """A full-tree, a sub-tree and a UNet step, each by 2 DDP workers and by one process."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    kinds = ["full", "subtree", "unet"]
    TorchTrainer(equivalence_worker, train_loop_config={"kinds": kinds, "out": str(tmp_path)},
                 scaling_config=ScalingConfig(num_workers=2),
                 run_config=RunConfig(name="equiv", storage_path=str(tmp_path / "ray"))).fit()
    for kind in kinds:
        two = torch.load(tmp_path / f"{kind}.pt")
        one = one_step(kind, rank=0, world=1)
        assert two.keys() == one.keys(), kind
        for key in one:
            diff = (one[key].float() - two[key].float()).abs().max().item()
            # Float rounding only: the 1-thread workers and this process sum in other orders
            # (up to 1.04e-5 seen after the lr-0.1 step); a missing all-reduce or global
            # BatchNorm moves weights by orders of magnitude more.
            assert diff < 5e-5, f"{kind} {key}: max difference {diff}"
        before = one_step(kind, rank=0, world=1, lr=0.0)
        moved = sum(int(not torch.equal(before[k], one[k])) for k in one)
        assert moved > 10, f"the {kind} step must actually change the parameters"


def test_rerun_with_the_same_name_resumes_a_stopped_run_on_a_users_image_folder(ray_session, tmp_path, monkeypatch):
    """A job that dies with no restarts left (max_failures=0) leaves its run folder; running the
    same job again under the same --name continues from its last checkpoint instead of
    starting over, and the finished metrics.jsonl reads like one uninterrupted run. The data is
    a user's unlabelled image folder given relative to the driver's folder (data.dataset=folder):
    the workers, which start elsewhere, read the same images, and the run reports no labels.
    (One test for both: each Ray Train job costs ~40 CPU-seconds of start-up on this machine.)"""
    import ray.train
    from user_images import digits_pngs

    from structgen.launch.ray_train import JobSpec, run_job

    digits_pngs(tmp_path / "my_images", n=256)
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "stopped.marker"
    fault = {"STRUCTGEN_FAULT_AT": "subtree-1:1:0", "STRUCTGEN_FAULT_MARKER": str(marker)}
    cfg = load_config(None, TINY + ["data.dataset=folder", "data.path=my_images", "data.train_subset=0",
                                    "data.test_subset=0", f"run.runs_dir={tmp_path / 'runs'}"])
    spec = dict(num_workers=2, name="stopped", storage_path=str(tmp_path / "ray"))
    with pytest.raises(ray.train.TrainingFailedError):
        run_job(cfg, JobSpec(**spec, env=fault), evaluate=False)
    assert marker.exists(), "the fault was never injected"
    run_dir = tmp_path / "runs" / "folder" / "stopped"
    assert not (run_dir / "checkpoints" / "final.pt").exists()
    before = [(r["phase"], r["epoch"]) for r in read_metrics(run_dir) if r["event"] == "epoch"]
    assert ("subtree-1", 1) in before and ("subtree-1", 2) not in before

    _, resumed = run_job(cfg, JobSpec(**spec))
    assert resumed.error is None, resumed.error
    assert (run_dir / "checkpoints" / "final.pt").exists()
    after = [(r["phase"], r["epoch"]) for r in read_metrics(run_dir) if r["event"] == "epoch"]
    assert after[:len(before)] == before, "the re-run rewrote epochs the stopped run had finished"
    assert len(after) == len(set(after)), "duplicate epochs in metrics.jsonl"
    assert ("subtree-1", 2) in after and after.count(("initial", 1)) == 1
    last = read_metrics(run_dir)[-1]
    assert last["event"] == "evaluation" and last["labelled"] is False and "acc" not in last
    assert load_config(run_dir / "config.yml").data.path == str(tmp_path / "my_images")


def test_ray_generate_splits_the_images_over_workers_and_checks_its_flags(ray_session, vae_run, capsys):
    """ray_jobs/generate.py: one Ray task per worker, each drawing its share into its own shard;
    the Ray flags are the run's config keys, checked before Ray is asked for anything."""
    from structgen.launch import ray_generate as generate

    assert generate.main(["--run", str(vae_run), "--mode", "vae_samples", "--n", "5", "--num-workers", "2"]) == 0
    shards = sorted((vae_run / "samples" / "ray-vae_samples").glob("shard*"))
    assert [s.name for s in shards] == ["shard0", "shard1"]
    counts = [len(np.load(next(s.rglob("*.npz")))["images"]) for s in shards]
    assert counts == [3, 2]
    assert generate.main(["--run", str(vae_run), "--mode", "vae_samples", "--num-workers", "0"]) == 2
    assert "ray.num_workers = 0 is not allowed" in capsys.readouterr().err
