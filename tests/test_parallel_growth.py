"""Parallel growth (training.parallel_subtrees): a round splits several leaves at once, each
sub-tree trained alone by one worker; the grown tree must not depend on the number of workers,
and a run stopped inside a round must end as the uninterrupted one."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import SYNTHETIC_FAST
from test_torchrun import torchrun

from structgen.api import load_model
from structgen.runtime.metrics_log import read_metrics

pytestmark = pytest.mark.slow

# Two leaves that hold about half of the images each after the initial training, then one
# round that splits both.
ROUND = SYNTHETIC_FAST + ["data.train_subset=384", "data.test_subset=64", "training.batch_size=32",
                          "training.num_epochs=4", "training.num_epochs_smalltree=2",
                          "training.num_epochs_finetuning=0", "training.num_clusters_tree=6",
                          "training.max_grow_iterations=2", "training.parallel_subtrees=2", "run.threads=1"]


def sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def train(runs_dir, name: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    args = sets(ROUND + [f"run.runs_dir={runs_dir}", f"run.name={name}"])
    return subprocess.run([sys.executable, "-m", "structgen.cli", "train-tree", "--no-eval", *args, *extra],
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, capture_output=True, text=True,
                          timeout=600)


def assert_same_model(expected_dir, got_dir) -> None:
    (expected, _), (got, _) = load_model(expected_dir), load_model(got_dir)
    assert got.tree == expected.tree
    want, have = expected.state_dict(), got.state_dict()
    assert want.keys() == have.keys()
    for key in want:
        assert torch.allclose(want[key].float(), have[key].float(), atol=1e-6), key


def round_splits(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["event"] == "split"]


def test_a_round_over_two_workers_killed_and_resumed_on_one_grows_the_same_tree(tmp_path):
    """Two workers train one sub-tree each; the same run, killed inside the round, resumes in
    one process, trains the whole round again alone and ends with the two-worker tree."""
    out = torchrun("train-tree", "--no-eval", *sets(ROUND + [f"run.runs_dir={tmp_path}", "run.name=two"]),
                   port=29631)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    two = tmp_path / "synthetic" / "two"
    splits = round_splits(two)
    assert [s["worker"] for s in splits] == [0, 1], "each worker trains one sub-tree of the round"
    assert "== round of 2 sub-trees" in out.stdout and "trained by worker 1" in out.stdout
    # worker 1's sub-tree is logged by rank 0, once, epoch by epoch
    epochs = [(r["phase"], r["epoch"]) for r in read_metrics(two) if r["event"] == "epoch"]
    assert epochs[4:] == [("subtree-1", 1), ("subtree-1", 2), ("subtree-2", 1), ("subtree-2", 2)]

    marker = tmp_path / "fault.marker"        # worker 1 dies after its sub-tree's first epoch
    killed = torchrun("train-tree", "--no-eval", *sets(ROUND + [f"run.runs_dir={tmp_path}", "run.name=victim"]),
                      port=29632, env={"STRUCTGEN_FAULT_AT": "subtree-2:1:0", "STRUCTGEN_FAULT_MARKER": str(marker)})
    victim = tmp_path / "synthetic" / "victim"
    assert killed.returncode != 0 and marker.exists(), killed.stdout[-3000:] + killed.stderr[-3000:]
    assert not (victim / "checkpoints" / "final.pt").exists()
    assert not round_splits(victim), "nothing of an unfinished round is attached"

    resumed = train(tmp_path, "victim", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "a round of 2 sub-trees, trained again whole" in resumed.stdout
    assert [s["worker"] for s in round_splits(victim)] == [0, 0]
    assert_same_model(two, victim)
    assert epochs == [(r["phase"], r["epoch"]) for r in read_metrics(victim) if r["event"] == "epoch"], \
        "no epoch lost or logged twice"
