"""Shared fixtures: one small trained run on `synthetic`, reused by the tests that only read it."""
import os
import sys
from pathlib import Path

import pytest

# As the README tells users: a process that joins a running Ray cluster by address sends the
# cluster's token only in token mode, and Ray reads the mode once, when it is first imported.
os.environ.setdefault("RAY_AUTH_MODE", "token")

# Ray Train's controller takes one worker report per poll, every 2 s by default; a tiny test job
# reports faster than that (every epoch and phase), so without this its end waits for the backlog
# (~10 s a job). Read by the controller when its cluster starts: set before any test starts one.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

# `make test` runs the suite on two pytest-xdist workers, one per core. Each worker and every
# process it starts (CLI runs, Ray and SLURM workers inherit the variable) then computes on one
# thread: two processes of two OpenMP threads each on two cores spin-wait each other into 10x
# slowdowns. Set before torch is first imported, which reads it then.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

def load_script(path: Path, name: str):
    """A script of this repository (slurm/launch.py, benchmarks/*.py) as a module, loaded with its
    own folder on sys.path, as when it runs from there (benchmarks import their siblings)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


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
# A short growth that splits, for tests of a faster path: run once as shipped and once with the
# plain procedure, the two must grow the same tree (`assert_same_growth`).
SHORT_GROWTH = TINY_DATA + ["training.batch_size=32", "training.num_epochs=2", "training.num_epochs_smalltree=2",
                            "training.num_epochs_finetuning=1", "training.num_clusters_tree=4",
                            "training.kl_start=0.1", "training.decay_kl=0.1", "training.prune=false"]


def assert_same_growth(first: Path, second: Path, first_epoch_rel: float) -> None:
    """Two run folders of SHORT_GROWTH hold the same tree, and epoch losses that agree to
    ``first_epoch_rel`` in the first epoch and to 1 % after it: the faster path rounds its sums
    in another order, and training amplifies that a little per step."""
    import json

    from structgen.runtime.tree_checkpoint import load_checkpoint
    from structgen.tree.topology import Tree

    trees = [Tree.from_dict(load_checkpoint(d / "checkpoints" / "last.pt")["tree"]) for d in (first, second)]
    assert trees[0].leaves() == trees[1].leaves()
    assert len(trees[0].leaves()) >= 3, "the growth must have split"
    losses = [[json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["event"] == "epoch"] for d in (first, second)]
    assert len(losses[0]) == len(losses[1]) > 5
    assert losses[0][0] == pytest.approx(losses[1][0], rel=first_epoch_rel)
    assert losses[0] == pytest.approx(losses[1], rel=1e-2)


TINY_VAE = TINY_DATA + ["training.batch_size=64", "training.num_epochs=1", "training.initial_depth=2",
                        "training.grow=false", "training.prune=false", "training.num_epochs_finetuning=0"]


# Which xdist worker runs what (`make test` passes `--dist loadgroup`): the suite is cut into
# units of whole modules, each run on one worker, handed out in the order FIRST_UNITS sets.
# - every module that starts a Ray cluster outside SLURM is in the unit "ray", the longest: they
#   must not overlap (the two-node module takes fixed ports and kills a node's raylet, the Tune
#   CLI test starts its own local cluster). test_slurm's Ray sweep may run beside them: its
#   cluster has its job's own port, lets its agents choose theirs, and is stopped by process group;
# - the modules that read the session's `trained_run` share a group, so it is trained once;
# - every other module is a group of its own, so its module fixtures are built once.
# xdist's own loadgroup reads `xdist_group` marks by rewriting node ids, which pytest 9 no longer
# lets it do, so the scheduler below groups by module name instead.
SUITE_GROUPS = {"test_ray_train": "ray", "test_ray_two_nodes": "ray", "test_tune": "ray", "test_user_pipelines": "ray",
                "test_training": "trained_run", "test_run_safety": "trained_run", "test_split_init": "trained_run"}


# The units handed out first: "ray", then the longest others (measured on two workers: test_slurm
# ~370 s, test_demo ~215 s, trained_run ~220 s, ...), so that the short ones fill the end on
# whichever worker is free instead of a long one starting last.
FIRST_UNITS = ("ray", "test_slurm", "test_demo", "trained_run", "test_parallel_growth", "test_torchrun", "test_resume")


def _scheduling_order(item) -> int:
    group = suite_group(item.nodeid)
    return FIRST_UNITS.index(group) if group in FIRST_UNITS else len(FIRST_UNITS)


def suite_group(nodeid: str) -> str:
    module = Path(nodeid.split("::", 1)[0]).stem
    return SUITE_GROUPS.get(module, module)


class SuiteScheduling:
    """The xdist hook, registered only where xdist runs (`-p no:xdist` does not know the hook)."""

    @staticmethod
    def pytest_xdist_make_scheduler(config, log):
        if config.getvalue("dist") != "loadgroup":
            return None
        from xdist.scheduler import LoadScopeScheduling

        class ByModuleGroup(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return suite_group(nodeid)

        config.option.loadscopereorder = False        # keep the order the workers sorted their items in
        return ByModuleGroup(config, log)


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(SuiteScheduling(), "structgen-suite-scheduling")


def pytest_collection_modifyitems(config, items):
    strays = sorted({item.module.__name__ for item in items
                     if "trained_run" in item.fixturenames and suite_group(item.nodeid) != "trained_run"})
    if strays:                                        # it would be trained once more on the other worker
        raise pytest.UsageError(f"conftest.py: add {', '.join(strays)} to the 'trained_run' group of SUITE_GROUPS")
    if hasattr(config, "workerinput"):                # an xdist worker: the order the scheduler sees
        items.sort(key=_scheduling_order)             # stable: the order within a module stays


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
    # SYNTHETIC_FAST's schedule shortened (8/5/4 -> 5/3/2 epochs): still 4 leaves, ACC and NMI 1.0
    # on its test split, in two thirds of the time (one thread, beside another run: 97 s vs 147 s).
    shorter = ["training.num_epochs=5", "training.num_epochs_smalltree=3", "training.num_epochs_finetuning=2"]
    cfg = load_config(None, SYNTHETIC_FAST + shorter + [f"run.runs_dir={runs}", "run.name=shared"])
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
