"""`torchrun --nproc_per_node 2 -m structgen.cli train-tree ...`: the plain commands join the
process group torchrun describes (gloo on CPU), and rank 0 alone picks the run folder."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SYNTHETIC_FAST

from structgen.api import load_model
from structgen.launch.worker_record import read_workers
from structgen.runtime.metrics_log import read_metrics

pytestmark = pytest.mark.slow
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
TINY = SYNTHETIC_FAST + ["data.train_subset=256", "data.test_subset=64", "training.num_epochs=2",
                         "training.num_epochs_smalltree=1", "training.num_epochs_finetuning=1",
                         "training.num_clusters_tree=3", "run.threads=1"]


def torchrun(*args: str, port: int, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([TORCHRUN, "--nnodes=1", "--nproc_per_node=2", f"--master_port={port}",
                           "-m", "structgen.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_train_tree_under_torchrun_writes_one_run(tmp_path):
    sets = [a for s in TINY + [f"run.runs_dir={tmp_path}"] for a in ("--set", s)]
    out = torchrun("train-tree", "--no-eval", *sets, port=29611)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = list((tmp_path / "synthetic").iterdir())
    assert len(runs) == 1, f"every rank must use rank 0's run folder, found {runs}"
    run_dir = runs[0]
    assert (run_dir / "checkpoints" / "final.pt").exists()
    epochs = [(r["phase"], r["epoch"]) for r in read_metrics(run_dir) if r["event"] == "epoch"]
    assert epochs and len(epochs) == len(set(epochs)), "only rank 0 writes metrics.jsonl"
    assert {"initial", "finetune"} <= {phase for phase, _ in epochs}
    workers = read_workers(run_dir)                     # each rank's line: where it ran
    assert sorted(w["rank"] for w in workers) == [0, 1] and len({w["pid"] for w in workers}) == 2
    load_model(run_dir)                                 # the final checkpoint loads

    # A DDPM of 0 epochs still leaves a loadable run: its one checkpoint is a collective that
    # every rank must join (rank 0 alone would wait forever in the barrier).
    ddpm = ["diffusion.dim=16", "diffusion.n_heads=4", "diffusion.n_residual=1", "diffusion.attn_resolutions=[]",
            "diffusion.batch_size=16", "diffusion.epochs=0", "diffusion.sample_every=0"]
    sets += [a for s in ddpm for a in ("--set", s)]
    out = torchrun("train-ddpm", "--vae", str(run_dir), *sets, port=29613, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert len(list((tmp_path / "synthetic").glob("ddpm-*/checkpoints/final.pt"))) == 1


def test_a_rank0_error_stops_every_rank(tmp_path):
    """--resume with nothing to resume: rank 0 raises, and rank 1 must exit too, not hang."""
    sets = [a for s in TINY + [f"run.runs_dir={tmp_path}"] for a in ("--set", s)]
    out = torchrun("train-tree", "--resume", *sets, port=29612)
    assert out.returncode != 0
    assert out.stderr.count("no TreeVAE run with a checkpoint") >= 2, out.stderr[-3000:]
    assert not (tmp_path / "synthetic").exists() or not any((tmp_path / "synthetic").iterdir())
