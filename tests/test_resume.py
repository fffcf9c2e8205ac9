"""Kill a real `structgen train-tree` process mid-growth, re-run it with --resume, and get the
same tree and weights as an uninterrupted run with the same seed."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from structgen.api import load_model
from structgen.train.metrics_log import read_metrics

from conftest import SYNTHETIC_FAST

STRUCTGEN = [sys.executable, "-m", "structgen.cli"]


def command(runs: Path, name: str) -> list[str]:
    sets = SYNTHETIC_FAST + ["data.train_subset=400", "data.test_subset=100", "training.num_epochs=3",
                             "training.num_epochs_smalltree=3", "training.num_epochs_finetuning=2",
                             "run.threads=1", f"run.runs_dir={runs}", f"run.name={name}"]
    return STRUCTGEN + ["train-tree", "--no-eval"] + [a for s in sets for a in ("--set", s)]


def epochs(run_dir: Path) -> list[tuple[str, int]]:
    return [(r["phase"], r["epoch"]) for r in read_metrics(run_dir) if r["event"] == "epoch"]


def test_kill_and_resume_gives_the_same_tree(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(command(tmp_path, "reference"), check=True, env=env, capture_output=True)
    reference = tmp_path / "synthetic" / "reference"

    victim = tmp_path / "synthetic" / "victim"
    proc = subprocess.Popen(command(tmp_path, "victim"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(phase == "subtree-1" and epoch >= 2 for phase, epoch in epochs(victim)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (victim / "checkpoints" / "final.pt").exists()

    resumed = subprocess.run(command(tmp_path, "victim") + ["--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout + resumed.stderr

    ref_model, _ = load_model(reference)
    got_model, _ = load_model(victim)
    assert got_model.tree == ref_model.tree
    ref_state, got_state = ref_model.state_dict(), got_model.state_dict()
    assert ref_state.keys() == got_state.keys()
    for key in ref_state:
        assert torch.allclose(ref_state[key].float(), got_state[key].float(), atol=1e-5), key
    # metrics.jsonl: no duplicate and no missing epochs
    assert epochs(victim) == epochs(reference)
