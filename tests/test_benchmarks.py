"""Benchmark scripts run end to end on a tiny schedule (what they measure at full size is in the
README; here only that they work and report what they claim)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script

from structgen.runtime.metrics_log import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY_GROWTH = ["data.dataset=synthetic", "data.train_subset=512", "data.test_subset=256", "training.batch_size=64",
               "training.num_epochs=2", "training.num_epochs_smalltree=1", "training.num_epochs_finetuning=2",
               "training.num_epochs_intermediate_fulltrain=1", "training.max_grow_iterations=2",
               "training.num_clusters_tree=3"]


@pytest.mark.slow
def test_finetune_study_reruns_the_finetuning_from_one_checkpoint_per_variant(tmp_path):
    sets = [arg for key in TINY_GROWTH for arg in ("--set", key)]
    out = subprocess.run([sys.executable, "benchmarks/finetune_study.py", "--config", "configs/digits.yml", *sets,
                          "--set", f"run.runs_dir={tmp_path / 'runs'}", "--out", str(tmp_path / "study"),
                          "--set", "training.finetune_lr_factor=1",       # the digits profile's is 0.3
                          "--variant", "slow=training.finetune_lr_factor=0.25"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [json.loads(line[len("RESULT "):]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert [r["variant"] for r in rows] == ["reference", "slow"]
    assert all(len(r["emptiest_per_epoch"]) == 2 and r["leaves"] >= 1 for r in rows)
    study = tmp_path / "study" / "seed42"
    assert (study / "before_finetuning.pt").exists()
    rates = {name: [r["lr"] for r in read_metrics(study / name) if r["event"] == "epoch"]
             for name in ("reference", "slow")}
    assert rates == {"reference": [1e-3, 1e-3], "slow": [2.5e-4, 2.5e-4]}     # the finetuning's rate, scaled


def test_gpu_check_reports_equivalence_and_transfers_on_cpu(tmp_path):
    """benchmarks/gpu_check.py is the prepared script for a lent GPU; on CPU its parts run small
    (its DDP part repeats what tests/test_ray_train.py checks, and is left out here)."""
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--out",
                          str(tmp_path), "--parts", "equivalence", "transfers"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = report["equivalence"]["on_device"]
    assert rows["fp32"]["loss_rel_gap"] == 0.0 and rows["fp32+channels_last"]["grad_cosine"] > 0.9999
    assert all(rows[k]["grad_cosine"] > 0.95 for k in ("bf16", "bf16+channels_last", "fp16"))   # fp16 finite too
    assert report["transfers"]["pinned_non_blocking_equal"] and report["transfers"]["loader_batch_equal"]


def test_the_mean_minutes_per_part_name_every_part_of_any_run():
    """A part one seed's run lacks (seed 42 did not settle, seed 0 did) is still printed, its
    mean counting the run without it as 0: it was left out of the table when the first run lacked it."""
    mnist_quality = load_script(ROOT / "benchmarks" / "mnist_quality.py", "mnist_quality")
    runs = [{"phase_minutes": {"initial": 3.0, "finetune": 6.0}},
            {"phase_minutes": {"initial": 2.0, "settle": 2.0, "finetune": 5.0}}]
    assert mnist_quality.mean_part_minutes(runs) == {"initial": 2.5, "finetune": 5.5, "settle": 1.0}
