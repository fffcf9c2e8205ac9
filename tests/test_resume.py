"""Kill a real `structgen train-tree` process mid-growth, re-run it with --resume, and get the
same tree and weights as an uninterrupted run with the same seed."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SYNTHETIC_FAST

from structgen.api import load_model
from structgen.runtime.metrics_log import read_metrics
from structgen.runtime.part_minutes import part_minutes

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
    # the time per part the run prints: the stop is a part of its own, and the parts are the run
    assert "wall time per part of the schedule" in resumed.stdout
    parts, records = part_minutes(victim), read_metrics(victim)
    assert parts["stopped (until the resume)"] > 0 and min(parts.values()) >= 0
    assert parts.keys() - {"stopped (until the resume)"} == part_minutes(reference).keys()
    started = (victim / "config.yml").stat().st_mtime
    assert sum(parts.values()) * 60 == pytest.approx(records[-1]["time"] - started)


def test_resume_without_a_name_picks_the_newest_run_of_its_own_kind(tmp_path):
    """TreeVAE and DDPM runs share runs/<dataset>/: `train-tree --resume` must not pick a newer
    DDPM run, nor `train-ddpm --resume` a TreeVAE run. (Folders with a checkpoint file stand in
    for runs: this checks the lookup only; the real resume is the test above.)"""
    from structgen.config import load_config
    from structgen.runs import DDPM_PREFIX, RunError, latest_run_dir

    cfg = load_config(None, ["data.dataset=synthetic", f"run.runs_dir={tmp_path}"])
    with pytest.raises(RunError, match="no TreeVAE run with a checkpoint"):
        latest_run_dir(cfg)
    for i, name in enumerate(["20260101-000000-aaaaa", f"{DDPM_PREFIX}20260101-000001-bbbbb",
                              "20260101-000002-ccccc", f"{DDPM_PREFIX}20260101-000003-ddddd"]):
        ckpt = tmp_path / "synthetic" / name / "checkpoints" / "last.pt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"x")
        os.utime(ckpt, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / "synthetic" / "20260101-000002-ccccc" / "checkpoints" / "last.pt").touch()   # newest of all
    assert latest_run_dir(cfg).name == "20260101-000002-ccccc"
    assert latest_run_dir(cfg, "ddpm").name == f"{DDPM_PREFIX}20260101-000003-ddddd"
