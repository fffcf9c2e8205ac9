"""Shared fixtures: one small trained run on `synthetic`, reused by the tests that only read it."""
from pathlib import Path

import pytest

# A fast schedule that still grows, prunes and finetunes: synthetic has 4 classes in 2
# superclasses, so 4 effective leaves is the target tree.
SYNTHETIC_FAST = [
    "data.dataset=synthetic", "training.batch_size=64", "training.num_epochs=8",
    "training.num_epochs_smalltree=5", "training.num_epochs_intermediate_fulltrain=2",
    "training.num_epochs_finetuning=4", "training.num_clusters_tree=4", "training.kl_start=0.1",
    "training.decay_kl=0.1", "evaluation.samples_per_leaf=4", "run.progress=plain",
]


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
