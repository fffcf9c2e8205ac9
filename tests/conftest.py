"""Shared fixtures: one small trained run on `synthetic`, reused by the tests that only read it."""
import os
import sys
from pathlib import Path

import pytest

# As the README tells users: a process that joins a running Ray cluster by address sends the
# cluster's token only in token mode, and Ray reads the mode once, when it is first imported.
os.environ.setdefault("RAY_AUTH_MODE", "token")

# A fast schedule that still grows, prunes and finetunes: synthetic has 4 classes in 2
# superclasses, so 4 effective leaves is the target tree.
SYNTHETIC_FAST = [
    "data.dataset=synthetic", "training.batch_size=64", "training.num_epochs=8",
    "training.num_epochs_smalltree=5", "training.num_epochs_intermediate_fulltrain=2",
    "training.num_epochs_finetuning=4", "training.num_clusters_tree=4", "training.kl_start=0.1",
    "training.decay_kl=0.1", "evaluation.samples_per_leaf=4", "run.progress=plain",
]


# A TreeVAE small enough to train in seconds, for tests that need a run to condition on or to open.
TINY_DATA = ["data.dataset=synthetic", "data.train_subset=128", "data.test_subset=32", "run.progress=plain",
             "run.threads=1"]
TINY_VAE = TINY_DATA + ["training.batch_size=64", "training.num_epochs=1", "training.initial_depth=2",
                        "training.grow=false", "training.prune=false", "training.num_epochs_finetuning=0"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """A runs folder shared by one test module."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def vae_run(runs_dir):
    """A tiny trained TreeVAE run (depth 2, 4 leaves) in the module's runs folder."""
    from structgen.api import train_tree
    from structgen.config import load_config

    run_dir, _ = train_tree(load_config(None, TINY_VAE + [f"run.runs_dir={runs_dir}", "run.name=vae"]), evaluate=False)
    return run_dir


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared 2-core machine two OpenMP threads per process
    spin-wait each other into 10x slowdowns. Restored afterwards for the rest of the session."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    from structgen.api import train_tree
    from structgen.config import load_config

    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, SYNTHETIC_FAST + [f"run.runs_dir={runs}", "run.name=shared"])
    run_dir, report = train_tree(cfg)
    return Path(run_dir), report


# The session's verdict is final once pytest has reported it. Leave without the interpreter's
# teardown: there torch, Ray and numba (FFCV) free their native state in no set order, and once
# (CI, 2026-11-30) that crashed the process after "460 passed", which CI read as a failure. The
# CLI processes that tests start are judged by their own exit codes, which this does not touch.
_verdict: dict[str, int] = {}


def pytest_sessionfinish(session, exitstatus):
    _verdict["exit"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if "exit" in _verdict:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_verdict["exit"])
