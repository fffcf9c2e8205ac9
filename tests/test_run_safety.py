"""Issue #12: run names stay inside runs_dir, one writer per run folder (racing processes, stale
locks), non-finite and meaningless values fail before a folder exists, unreadable inputs and
unwritable run roots give exit-2 messages, and `evaluate --set` cannot rewrite what was trained."""
import dataclasses
import json
import multiprocessing
import os
import socket
import typing

import pytest

from conftest import SYNTHETIC_FAST
from structgen.cli import main
from structgen.config import ConfigError, load_config
from structgen.config.schema import Config
from structgen.run_lock import LOCK_NAME, OWNER_ENV, RunLock, claim_run_dir
from structgen.runs import RunError, check_run_name

TINY = SYNTHETIC_FAST + ["data.train_subset=256", "data.test_subset=64", "training.num_epochs=1",
                         "training.grow=false", "training.num_epochs_finetuning=0", "evaluation.baselines=false",
                         "run.threads=1"]


# ---- run names --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "..", ".hidden", "-flag", "sp ace", "x" * 129,
                                  "new\nline", ""])
def test_unsafe_run_names_are_refused_with_the_rule(name, tmp_path):
    with pytest.raises(RunError, match="letter or digit"):
        check_run_name(name)
    with pytest.raises(ConfigError, match=r"run.name .* is not a valid run name"):
        load_config(None, [f"run.runs_dir={tmp_path}", f"run.name={name!r}" if name else "run.name=''"])


def test_safe_run_names_pass():
    for name in ("run1", "seed-42_v2.0", "A" * 128):
        assert check_run_name(name) == name


def test_launchers_refuse_a_traversing_name(tmp_path):
    from structgen.launch.slurm import plan_submission

    with pytest.raises(RunError, match="not a valid run name"):
        plan_submission("tree", None, [f"run.runs_dir={tmp_path}"], name="../../etc", local=True)
    assert main(["train-tree", "--set", f"run.runs_dir={tmp_path}", "--set", "run.name=../out"]) == 2
    assert not (tmp_path.parent / "out").exists()


# ---- non-finite and meaningless values, generated from the schema ----------------------------------
def _float_keys(obj=None, prefix=""):
    obj = Config() if obj is None else obj
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _float_keys(value, f"{prefix}{f.name}.")
        elif hints[f.name] is float or hints[f.name] == list[float]:
            yield f"{prefix}{f.name}", hints[f.name] is float


FLOAT_KEYS = list(_float_keys())


def test_the_schema_has_float_keys_to_check():
    assert len(FLOAT_KEYS) > 15 and ("training.lr", True) in FLOAT_KEYS


@pytest.mark.parametrize("key, scalar", FLOAT_KEYS)
@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf"])
def test_every_float_key_rejects_non_finite_values(key, scalar, text):
    value = text if scalar else f"[{text}, 1.0]"
    with pytest.raises(ConfigError, match="expected a finite number"):
        load_config(None, [f"{key}={value}"])


@pytest.mark.parametrize("override, fragment", [
    ("training.lr=0", "training.lr = 0.0 is not allowed: expected > 0.0"),
    ("diffusion.lr=0", "diffusion.lr = 0.0 is not allowed: expected > 0.0"),
    ("training.decay_lr=0", "expected > 0.0"),
])
def test_a_learning_rate_of_zero_is_refused(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [override])


def test_no_initial_epochs_with_growth_is_refused():
    with pytest.raises(ConfigError, match="num_epochs = 0 with training.grow = true"):
        load_config(None, ["training.num_epochs=0"])
    assert load_config(None, ["training.num_epochs=0", "training.grow=false"]).training.num_epochs == 0


def test_batch_larger_than_the_training_set_fails_before_a_run_folder(tmp_path, capsys):
    argv = ["train-tree"] + [a for s in TINY + [f"run.runs_dir={tmp_path}", "run.name=big",
                                                "training.batch_size=512"] for a in ("--set", s)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "training.batch_size asks for 512 images per batch but the training set holds only 256" in err
    assert not (tmp_path / "synthetic" / "big").exists()


# ---- unreadable inputs, unwritable roots -------------------------------------------------------
def test_runs_dir_that_is_a_file_is_a_clear_exit_2(tmp_path, capsys):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    argv = ["train-tree"] + [a for s in TINY + [f"run.runs_dir={blocker}"] for a in ("--set", s)]
    assert main(argv) == 2
    assert "cannot create the run folder" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


def test_a_data_file_that_cannot_be_read_is_named(tmp_path):
    from structgen.data import DataError, load_split

    folder = tmp_path / "mnist"
    folder.mkdir(parents=True)
    (folder / "train-images-idx3-ubyte.gz").mkdir()      # unreadable as a file (root reads chmod-000 files)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: cannot read"):
        load_split("mnist", "train", tmp_path)


# ---- one writer per run folder -------------------------------------------------------------
def test_a_live_lock_refuses_a_second_claim_and_names_its_owner(tmp_path):
    run = tmp_path / "r"
    with RunLock(run):
        with pytest.raises(RunError) as err:
            claim_run_dir(run, fresh=True)
        assert f"in use by pid {os.getpid()} on host {socket.gethostname()}" in str(err.value)
    assert not (run / LOCK_NAME).exists()                     # released on leaving the block
    claim_run_dir(run, fresh=True).release()


def test_a_stale_lock_of_a_dead_process_is_named_and_taken_over(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    proc = multiprocessing.get_context("fork").Process(target=os.getpid)
    proc.start()
    proc.join()                                                # a pid that no longer runs
    (run / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": proc.pid, "since": "earlier"}))
    notes = []
    lock = claim_run_dir(run, fresh=True, note=notes.append)
    assert any("stale lock" in n and f"pid {proc.pid}" in n and "no longer runs" in n for n in notes)
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_lock_on_another_host_is_not_guessed_stale(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "since": "t"}))
    with pytest.raises(RunError, match="in use by pid 1 on host node-elsewhere.*delete the lock file"):
        claim_run_dir(run, fresh=False)


def test_the_same_job_after_a_restart_takes_its_lock_over(tmp_path, monkeypatch):
    run = tmp_path / "r"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "owner": "slurm:77"}))
    monkeypatch.delenv(OWNER_ENV, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "77")                  # a requeued SLURM job, maybe on another node
    notes = []
    claim_run_dir(run, fresh=False, note=notes.append).release()
    assert "belongs to this job (slurm:77)" in notes[0]


def _train_named(runs_dir: str, start, results):
    from structgen.api import train_tree

    cfg = load_config(None, TINY + [f"run.runs_dir={runs_dir}", "run.name=race"])
    start.wait()
    try:
        train_tree(cfg, evaluate=False)
        results.put("trained")
    except RunError as err:
        results.put(f"refused: {err}")


def test_two_processes_racing_for_one_name_never_share_the_folder(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_train_named, args=(str(tmp_path), start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    outcomes = sorted(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert outcomes[1] == "trained", outcomes
    assert outcomes[0].startswith("refused:") and ("in use by pid" in outcomes[0]
                                                   or "already holds a run" in outcomes[0]), outcomes
    run = tmp_path / "synthetic" / "race"
    events = [json.loads(line)["event"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert events.count("epoch") == 1            # one run's single epoch: a shared folder would log two
    assert not (run / LOCK_NAME).exists()


# ---- evaluate --set ---------------------------------------------------------------------------
def test_evaluate_refuses_keys_that_shaped_the_model(trained_run, capsys):
    run_dir, _ = trained_run
    before = (run_dir / "metrics.jsonl").read_text()
    assert main(["evaluate", str(run_dir), "--set", "training.lr=0.5"]) == 2
    assert "'training.lr' shaped the trained model" in capsys.readouterr().err
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_evaluate_on_other_data_writes_its_own_files(trained_run, capsys):
    run_dir, _ = trained_run
    before = (run_dir / "metrics.jsonl").read_text()
    tree_png = (run_dir / "figures" / "tree.png").read_bytes()
    assert main(["evaluate", str(run_dir), "--set", "data.test_subset=50", "--set", "evaluation.baselines=false"]) == 0
    out = run_dir / "evaluations" / "test_subset-50"
    assert "the run's own metrics.jsonl and figures are untouched" in capsys.readouterr().out
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["n_test"] == 50
    assert (out / "figures" / "tree.png").exists()
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert (run_dir / "figures" / "tree.png").read_bytes() == tree_png


def test_evaluate_on_data_of_another_shape_is_refused(trained_run, capsys):
    run_dir, _ = trained_run
    assert main(["evaluate", str(run_dir), "--set", "data.dataset=cifar10"]) == 2
    assert "but the run's TreeVAE takes" in capsys.readouterr().err
