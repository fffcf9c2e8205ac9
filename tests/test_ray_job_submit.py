"""`ray start --head` on loopback, `ray job submit` of the digits demo entry point, `ray job
status` reports success, `ray stop` — inside the test suite. Its own module: `ray stop` ends
every Ray cluster on the machine, so no other test's cluster may be up meanwhile."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SYNTHETIC_FAST

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY = SYNTHETIC_FAST + ["data.train_subset=512", "data.test_subset=128", "training.num_epochs=2",
                         "training.num_epochs_smalltree=2", "training.num_epochs_finetuning=1",
                         "training.num_clusters_tree=3", "evaluation.baselines=false"]


def test_ray_job_submit_against_a_started_head(tmp_path):
    # Token authentication on, as the README says: the ray CLI sends the token `ray start` saved
    # for this user when RAY_AUTH_MODE=token.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ray_bin = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray_bin, "start", "--head", "--num-cpus", "3", "--dashboard-host", "127.0.0.1",
                    "--node-ip-address", "127.0.0.1",
                    "--disable-usage-stats", "--port", "6390", "--dashboard-port", "8277"],
                   env=env, check=True, capture_output=True, timeout=120)
    try:
        sets = [a for s in TINY + [f"run.runs_dir={tmp_path}"] for a in ("--set", s)]
        for attempt in range(30):           # the dashboard's job agent comes up a few seconds after the head
            submit = subprocess.run(
                [ray_bin, "job", "submit", "--address", "http://127.0.0.1:8277", "--working-dir", str(ROOT),
                 "--submission-id", f"structgen-test-{attempt}", "--", "python", "ray_jobs/train_treevae.py",
                 "--config", "configs/digits.yml", "--name", "submitted", "--num-workers", "2", *sets],
                env=env, capture_output=True, text=True, timeout=900)
            if "No available agent" not in submit.stderr:
                break
            time.sleep(2)
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        status = subprocess.run([ray_bin, "job", "status", "--address", "http://127.0.0.1:8277",
                                 f"structgen-test-{attempt}"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert "succeeded" in (status.stdout + status.stderr).lower()
        run_dir = tmp_path / "synthetic" / "submitted"
        assert (run_dir / "checkpoints" / "final.pt").exists()
        assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["event"] == "evaluation"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
