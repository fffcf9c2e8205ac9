"""Checkpoints never run code (issue #12): every loader reads with torch.load(weights_only=True).

Real files throughout: a tiny TreeVAE run, a tiny DDPM run on it and a classifier file; copies
of them with a pickled os.system payload must be refused by every loader without the payload
running; format /1 files (NumPy RNG state as an ndarray) still load, converted; RNG states
round-trip exactly.
"""
import os
import random
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_DATA, TINY_VAE

from structgen.api import evaluate_run, generate, load_model, train_tree
from structgen.config import load_config
from structgen.diffusion import ddpm_checkpoint as ddpm_ckpt
from structgen.ddpm_api import load_ddpm, sample, train_ddpm
from structgen.errors import CheckpointError
from structgen.runtime import tree_checkpoint as tree_ckpt
from structgen.runtime.checkpoint_io import read_checkpoint, rng_state, save_checkpoint, set_rng_state
from structgen.runtime.tree_checkpoint import load_checkpoint
from structgen.scoring.classifier import SmallResNet, load_classifier, save_classifier

DATA = TINY_DATA
TINY_DDPM = DATA + ["diffusion.dim=16", "diffusion.n_heads=4", "diffusion.n_residual=1", "diffusion.attn_resolutions=[]",
                    "diffusion.batch_size=32", "diffusion.epochs=1", "diffusion.warmup_steps=2",
                    "diffusion.n_timesteps=50", "diffusion.sampler=ddim", "diffusion.n_steps=2",
                    "diffusion.sample_every=0", "diffusion.n_samples=2", "diffusion.checkpoint_every_steps=2"]
REFUSED = r"refused: the file contains objects that are not allowed.*never executes code"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


# ---- real runs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddpm_run(vae_run, runs_dir):
    return train_ddpm(load_config(None, TINY_DDPM + [f"run.runs_dir={runs_dir}", "run.name=ddpm"]), vae_run)


@pytest.fixture(scope="module")
def classifier_file(runs_dir):
    torch.manual_seed(0)
    model = SmallResNet(1, 4, (8, 16), mean=[0.2], std=[0.3])
    return save_classifier(model, runs_dir / "classifiers" / "synthetic.pt", dataset="synthetic",
                           class_names=range(4), image_shape=(1, 28, 28), test_accuracy=np.float64(0.5),
                           epochs=np.int64(1))


def _poison(state: dict, path, marker, legacy_zip: bool) -> None:
    """``state`` plus the payload, written over ``path`` the way torch.save writes any file."""
    torch.save({**state, "extra": [1, {"nested": Payload(marker)}]}, path,
               _use_new_zipfile_serialization=not legacy_zip)


def _copy_run(run_dir, dest, marker, legacy_zip):
    shutil.copytree(run_dir, dest)
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    for name in ("last.pt", "final.pt"):
        _poison(state, dest / "checkpoints" / name, marker, legacy_zip)
    return dest


# ---- a crafted file is refused everywhere and runs nothing ---------------------------------------------
@pytest.mark.parametrize("legacy_zip", [False, True], ids=["zip", "legacy"])
def test_a_crafted_checkpoint_is_refused_by_every_loader(vae_run, ddpm_run, classifier_file, runs_dir, tmp_path,
                                                          legacy_zip):
    marker = tmp_path / "PAYLOAD-RAN"
    evil_vae = _copy_run(vae_run, tmp_path / "synthetic" / "evil-vae", marker, legacy_zip)
    evil_ddpm = _copy_run(ddpm_run, tmp_path / "synthetic" / "evil-ddpm", marker, legacy_zip)
    evil_clf = tmp_path / "classifier.pt"
    _poison(torch.load(classifier_file, weights_only=True), evil_clf, marker, legacy_zip)

    # Pickle really would run it: the same file through a plain unpickler creates the marker.
    probe = tmp_path / "probe-marker"
    torch.save(Payload(probe), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.exists()

    vae_last = evil_vae / "checkpoints" / "last.pt"
    vae_cfg = load_config(evil_vae / "config.yml", [f"run.runs_dir={tmp_path}"])
    ddpm_cfg = load_config(evil_ddpm / "config.yml", [f"run.runs_dir={tmp_path}"])
    fresh_ddpm = load_config(None, TINY_DDPM + [f"run.runs_dir={tmp_path}", "run.name=on-evil-vae"])
    loaders = {
        "load_checkpoint": lambda: load_checkpoint(vae_last),
        "load_model": lambda: load_model(evil_vae),
        "evaluate": lambda: evaluate_run(evil_vae),
        "generate": lambda: generate(evil_vae, "vae_samples", n=2),
        "train-tree --resume": lambda: train_tree(vae_cfg, resume=evil_vae, evaluate=False),
        "resume_checkpoint (Ray)": lambda: train_tree(vae_cfg, run_dir=tmp_path / "ray-trial",
                                                      resume_checkpoint=vae_last, evaluate=False),
        "train-ddpm --vae": lambda: train_ddpm(fresh_ddpm, evil_vae),
        "ddpm load": lambda: ddpm_ckpt.load(evil_ddpm),
        "load_ddpm": lambda: load_ddpm(evil_ddpm),
        "sample": lambda: sample(evil_ddpm, "sample", n=2),
        "train-ddpm --resume": lambda: train_ddpm(ddpm_cfg, resume=evil_ddpm),
        "classifier": lambda: load_classifier(evil_clf),
    }
    for what, load in loaders.items():
        with pytest.raises(CheckpointError, match=REFUSED) as err:
            load()
        assert ".pt: refused" in str(err.value), what
        assert "(posix.system)" in str(err.value) or "(nt.system)" in str(err.value), what   # names it
        assert not marker.exists(), f"{what}: the payload ran"
    assert not (tmp_path / "synthetic" / "on-evil-vae" / "checkpoints").exists()

    # The CLI: a one-line error, exit status 2, and still nothing ran, even with torch's opt-out variable set.
    out = subprocess.run([sys.executable, "-m", "structgen.cli", "evaluate", str(evil_vae)], capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                  "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert out.returncode == 2 and "not allowed" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not marker.exists()


def test_saving_refuses_what_would_not_load(tmp_path):
    save_checkpoint({"format": tree_ckpt.FORMAT, "n": np.float64(1.5), "k": [np.int64(3)], "t": torch.zeros(2)},
                    tmp_path / "ok.pt")
    state = load_checkpoint(tmp_path / "ok.pt")
    assert type(state["n"]) is float and state["n"] == 1.5 and state["k"] == [3]
    for bad in (np.zeros(3), Payload(tmp_path / "m"), {1, 2}):
        with pytest.raises(TypeError, match=r"checkpoint\['x'\]\[0\]: a .* cannot go into a checkpoint"):
            save_checkpoint({"x": [bad]}, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists() and not (tmp_path / "m").exists()


# ---- what the files hold ---------------------------------------------------------------------------
def test_every_checkpoint_needs_no_allow_list(vae_run, ddpm_run, classifier_file, runs_dir):
    """Today's files hold tensors and plain values only: no global beyond torch's own list."""
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint
    mid = {}

    def keep_first(state, path):
        if path is not None and not mid:
            mid["unsafe"] = unsafe(path)
            mid["phase_state"] = state["phase_state"]

    from structgen.runtime.context import Context
    cfg = load_config(None, TINY_VAE + [f"run.runs_dir={runs_dir}", "run.name=mid", "training.num_epochs=2"])
    train_tree(cfg, ctx=Context(run_dir=runs_dir / "synthetic" / "mid", on_checkpoint=keep_first), evaluate=False)
    assert mid["phase_state"] is not None and mid["unsafe"] == []      # mid-phase: optimiser, scheduler, RNG
    for path in (vae_run / "checkpoints" / "last.pt", ddpm_run / "checkpoints" / "last.pt", classifier_file):
        assert unsafe(path) == [], path
    assert load_checkpoint(vae_run / "checkpoints" / "last.pt")["format"] == "structgen.treevae-checkpoint/2"
    assert ddpm_ckpt.load(ddpm_run)["format"] == "structgen.ddpm-checkpoint/2"


# ---- format /1 ------------------------------------------------------------------------------------
def _as_v1(state: dict, fmt: str) -> dict:
    """What structgen wrote before format /2: NumPy's get_state() tuple and Python's getstate() tuple."""
    rng = state["rng"]
    numpy_tuple = (rng["numpy"]["bit_generator"], rng["numpy"]["key"].numpy().astype(np.uint32),
                   rng["numpy"]["pos"], rng["numpy"]["has_gauss"], rng["numpy"]["cached_gaussian"])
    python_tuple = (rng["python"]["version"], tuple(rng["python"]["internal"]), rng["python"]["gauss_next"])
    return {**state, "format": fmt, "rng": {**rng, "numpy": numpy_tuple, "python": python_tuple}}


def _same_rng(a: dict, b: dict) -> None:
    assert torch.equal(a["torch"], b["torch"])
    assert a["numpy"]["bit_generator"] == b["numpy"]["bit_generator"] and torch.equal(a["numpy"]["key"],
                                                                                     b["numpy"]["key"])
    assert [a["numpy"][k] for k in ("pos", "has_gauss", "cached_gaussian")] == \
        [b["numpy"][k] for k in ("pos", "has_gauss", "cached_gaussian")]
    assert a["python"] == b["python"]


def test_format_1_files_load_converted(vae_run, ddpm_run, tmp_path):
    for run, load, v1 in ((vae_run, load_checkpoint, "structgen.treevae-checkpoint/1"),
                          (ddpm_run, ddpm_ckpt.load, "structgen.ddpm-checkpoint/1")):
        now = load(run / "checkpoints" / "last.pt")
        old = tmp_path / f"{run.name}-v1.pt"
        torch.save(_as_v1(now, v1), old)                 # exactly the old writer's torch.save
        assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(old)
        with pytest.raises(Exception, match="Weights only load failed"):
            torch.load(old, weights_only=True)          # needs the allow-list: it really is a /1 file
        got = load(old)
        assert got["format"] == now["format"] and got["format"].endswith("/2")
        _same_rng(got["rng"], now["rng"])
        assert got["model"].keys() == now["model"].keys()

    # The converted state drives the real loaders and resume.
    dest = tmp_path / "synthetic" / "old-vae"
    shutil.copytree(vae_run, dest)
    for name in ("last.pt", "final.pt"):
        shutil.copyfile(tmp_path / "vae-v1.pt", dest / "checkpoints" / name)
    model, state = load_model(dest)
    assert state["format"] == "structgen.treevae-checkpoint/2"
    cfg = load_config(dest / "config.yml", [f"run.runs_dir={tmp_path}"])
    train_tree(cfg, resume=dest, evaluate=False)         # a finished run: resumes straight to its end
    assert load_checkpoint(dest / "checkpoints" / "last.pt")["format"] == "structgen.treevae-checkpoint/2"

    # Written by NumPy 1.x: the array reconstructor under its old module name, legacy torch format.
    old_np = tmp_path / "numpy1.pt"
    state = _as_v1(load_checkpoint(vae_run / "checkpoints" / "last.pt"), "structgen.treevae-checkpoint/1")
    import io
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=False, pickle_protocol=2)
    raw = buf.getvalue()
    assert raw.count(b"cnumpy._core.multiarray\n_reconstruct\n") == 1
    old_np.write_bytes(raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    _same_rng(load_checkpoint(old_np)["rng"], load_checkpoint(vae_run / "checkpoints" / "last.pt")["rng"])


def test_the_format_1_allow_list_admits_only_the_rng_array(vae_run, tmp_path):
    state = _as_v1(load_checkpoint(vae_run / "checkpoints" / "last.pt"), "structgen.treevae-checkpoint/1")
    for extra in (np.float64(1.0), np.zeros(3), np.arange(3, dtype=np.int64)):
        torch.save({**state, "extra": extra}, tmp_path / "more.pt")
        with pytest.raises(CheckpointError, match=REFUSED):
            load_checkpoint(tmp_path / "more.pt")


def test_other_formats_are_refused_naming_the_version(vae_run, ddpm_run, tmp_path):
    state = load_checkpoint(vae_run / "checkpoints" / "last.pt")
    torch.save({**state, "format": "structgen.treevae-checkpoint/9"}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=r"future.pt: a structgen TreeVAE checkpoint in format "
                                              r"'structgen.treevae-checkpoint/9'.* reads 'structgen.treevae-checkpoint/2', "
                                              r"'structgen.treevae-checkpoint/1'"):
        load_model(tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=r"not a structgen DDPM checkpoint .*train-ddpm --vae"):
        ddpm_ckpt.load(vae_run)
    with pytest.raises(CheckpointError, match="not a structgen TreeVAE checkpoint"):
        load_model(ddpm_run)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt: not a readable checkpoint"):
        read_checkpoint(tmp_path / "garbage.pt", kind="TreeVAE", current=tree_ckpt.FORMAT)


# ---- RNG state ---------------------------------------------------------------------------------------
def _draws():
    return (torch.rand(4), torch.randn(3), np.random.rand(4), np.random.randn(), random.random(), random.gauss(0, 1))


def test_rng_state_round_trips_exactly(tmp_path):
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    np.random.randn(3)          # odd count: NumPy holds a cached Gaussian (has_gauss = 1)
    random.gauss(0, 1)          # Python holds gauss_next
    saved = rng_state()
    assert saved["numpy"]["has_gauss"] == 1 and saved["python"]["gauss_next"] is not None
    save_checkpoint({"format": tree_ckpt.FORMAT, "rng": saved}, tmp_path / "rng.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "rng.pt") == []
    expected = _draws()
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = _draws()
    for a, b in zip(expected, got):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
        else:
            assert np.array_equal(a, b)
    # and the restored generators are in exactly the saved state
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = rng_state()
    assert np.array_equal(np.random.get_state()[1], saved["numpy"]["key"].numpy().astype(np.uint32))
    _same_rng(again, saved)
