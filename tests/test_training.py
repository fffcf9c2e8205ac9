"""Growth end to end on `synthetic`, the artefacts of a run, and failure handling."""
import json
import re
import threading

import numpy as np
import pytest
import torch
from conftest import SYNTHETIC_FAST, TINY_VAE
from PIL import Image

from structgen.api import export_tree, generate, load_model, train_tree
from structgen.config import load_config
from structgen.errors import CheckpointError
from structgen.runs import RunError
from structgen.runtime.metrics_log import read_metrics
from structgen.runtime.tree_checkpoint import load_checkpoint
from structgen.train.phase import NonFiniteLossError


def test_growth_recovers_the_two_level_hierarchy(trained_run):
    run_dir, report = trained_run
    model, _ = load_model(run_dir)
    leaves = model.tree.leaves()
    assert len(leaves) >= 3
    assert report["nmi"] > 0.7 and report["acc"] > 0.7, report
    # The first split is the coarse one: every superclass goes (mostly) one way at the root.
    from structgen.data import load_split
    test = load_split("synthetic", "test", seed=42)
    probs = model.predict(torch.from_numpy(test.images).float() / 255)
    side = np.array([leaves[i][1] for i in probs.argmax(1).numpy()])       # '0' or '1' below the root
    for sc in (0, 1):
        share = max(np.mean(side[test.superclass == sc] == "0"), np.mean(side[test.superclass == sc] == "1"))
        assert share > 0.9, f"superclass {sc} is split across the root ({share:.2f})"


def test_run_folder_has_every_artefact(trained_run):
    run_dir, report = trained_run
    assert (run_dir / "config.yml").exists() and (run_dir / "checkpoints" / "final.pt").exists()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    records = read_metrics(run_dir)
    events = {r["event"] for r in records}
    assert {"epoch", "phase_end", "split", "grow_check", "evaluation"} <= events
    epochs = [(r["phase"], r["epoch"]) for r in records if r["event"] == "epoch"]
    assert len(epochs) == len(set(epochs))
    cfg = load_config(run_dir / "config.yml")
    finetune = [epoch for phase, epoch in epochs if phase == "finetune"]
    assert finetune == list(range(1, cfg.training.num_epochs_finetuning + 1)), "the final finetuning must run"
    assert epochs[-1][0] == "finetune"
    # Every epoch records the process's peak resident memory: a high-water mark, so it never falls.
    peaks = [r["peak_rss_mb"] for r in records if r["event"] == "epoch"]
    assert peaks[0] > 50 and peaks == sorted(peaks)
    # ...and where the mass went: every leaf of the tree (a sub-tree: its two new children).
    for r in (r for r in records if r["event"] == "epoch"):
        mass = r["leaf_mass"]
        assert sum(mass.values()) == pytest.approx(1.0, abs=1e-3) and min(mass.values()) >= 0, r
        if r["kind"] == "subtree":
            assert sorted(mass) == [r["leaf"] + "0", r["leaf"] + "1"]
        else:
            assert len(mass) == r["n_leaves"]
    ev = [r for r in records if r["event"] == "evaluation"][-1]
    for key in ("acc", "nmi", "ari", "leaf_purity", "dendrogram_purity", "elbo", "leaf_histograms", "baselines"):
        assert key in ev
    assert set(ev["baselines"]) >= {"kmeans", "ward"}
    tree_png = Image.open(run_dir / "figures" / "tree.png")
    assert tree_png.size[0] > 300 and tree_png.size[1] > 300
    # the resolved config re-launches as is
    assert load_config(run_dir / "config.yml").data.dataset == "synthetic"


def test_generate_writes_per_leaf_grids_and_arrays(trained_run):
    from structgen.cli import main
    run_dir, _ = trained_run
    n_leaves = len(load_model(run_dir)[0].tree.leaves())
    for mode in ("vae_samples", "vae_recons"):
        assert main(["generate", str(run_dir), "--mode", mode, "--n", "8"]) == 0
        out = run_dir / "samples" / mode
        assert len(list(out.glob("leaf*.png"))) == n_leaves
        arrays = np.load(out / ("samples.npz" if mode == "vae_samples" else "recons.npz"))
        assert arrays["images"].shape[:2] == (8, n_leaves)
        assert np.allclose(arrays["leaf_probs"].sum(1), 1, atol=1e-5)


def test_evaluate_command_prints_table_and_appends_metrics(trained_run, capsys):
    from structgen.cli import main
    run_dir, _ = trained_run
    before = len(read_metrics(run_dir))
    assert main(["evaluate", str(run_dir), "--set", "evaluation.compute_ll=true", "--set", "evaluation.ll_samples=3"]) == 0
    out = capsys.readouterr().out
    assert "CNN-TreeVAE (test)" in out and "kmeans (pixels)" in out and "log-likelihood (IW, K=3)" in out
    records = read_metrics(run_dir)
    assert len(records) == before + 1 and records[-1]["ll_samples"] == 3
    assert records[-1]["log_likelihood"] >= records[-1]["elbo"] - 5


def test_api_calls_keep_the_callers_torch_thread_count(tmp_path):
    """`run.threads` holds for the call's own work only: a caller (a notebook, this test session)
    that trains one run on one thread gets its own thread count back, not one thread ever after."""
    from structgen.runtime.context import Context

    callers = torch.get_num_threads()
    seen = []
    torch.set_num_threads(3)
    try:
        ctx = Context(run_dir=tmp_path, on_epoch_end=lambda record: seen.append(torch.get_num_threads()))
        run_dir, _ = train_tree(load_config(None, TINY_VAE + [f"run.runs_dir={tmp_path}"]), ctx=ctx, evaluate=False)
        assert seen and set(seen) == {1} and torch.get_num_threads() == 3
        generate(run_dir, "vae_samples", n=2, overrides=["run.threads=1"])
        assert torch.get_num_threads() == 3
        export_tree(run_dir, tmp_path / "export")          # reads the run's config, run.threads=1
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(callers)


def small_cfg(tmp_path, *extra):
    return load_config(None, SYNTHETIC_FAST + ["data.train_subset=300", "data.test_subset=100",
                                               "training.num_epochs=2", "training.num_epochs_smalltree=1",
                                               "training.num_epochs_finetuning=1", "evaluation.baselines=false",
                                               f"run.runs_dir={tmp_path}", *extra])


def test_min_batches_per_epoch_gives_a_small_set_and_every_sub_tree_that_many_steps(tmp_path, one_torch_thread,
                                                                                     capsys):
    def epoch_images(*extra) -> list[int]:
        run_dir, _ = train_tree(small_cfg(tmp_path, "training.num_clusters_tree=3", *extra), evaluate=False)
        epochs = [r for r in read_metrics(run_dir) if r["event"] == "epoch"]
        assert {r["kind"] for r in epochs} == {"full", "subtree"}
        return [r["images"] for r in epochs]

    # 300 training images at batch 64: 4 steps a pass, fewer for a sub-tree's share
    assert all(images < 6 * 64 for images in epoch_images("run.name=one-pass"))
    assert "passes over its images" not in capsys.readouterr().out
    assert all(images >= 6 * 64 and images % 64 == 0
               for images in epoch_images("run.name=six", "training.min_batches_per_epoch=6"))
    assert re.search(r"subtree-1: [2-9] passes over its images an epoch, \d+ batches", capsys.readouterr().out)


def test_non_finite_loss_names_phase_epoch_term_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    import structgen.models.objective as objective
    real = objective.tree_terms
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 4:          # the second epoch (4 batches of 64 per epoch)
            terms["kl_nodes"] = terms["kl_nodes"] * float("nan")
        return terms

    monkeypatch.setattr(objective, "tree_terms", poisoned)
    cfg = small_cfg(tmp_path, "run.name=nan")
    writers_before = set(tensorboard_writer_threads())
    with pytest.raises(NonFiniteLossError, match=r"phase 'initial', epoch 2: term\(s\) kl_nodes"):
        train_tree(cfg)
    kept = load_checkpoint(tmp_path / "synthetic" / "nan" / "checkpoints" / "last.pt")
    assert kept["growth"]["phase"]["name"] == "initial" and kept["growth"]["phase"]["epoch"] == 1
    # The failed run had opened TensorBoard (epoch 1 was logged) and closed it on the way out.
    assert list((tmp_path / "synthetic" / "nan" / "tensorboard").glob("events.out.tfevents.*"))
    assert set(tensorboard_writer_threads()) <= writers_before


def tensorboard_writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if type(t).__name__ == "_AsyncWriterThread" and t.is_alive()]


def test_bad_checkpoints_and_run_folders_fail_clearly(tmp_path):
    cfg = small_cfg(tmp_path, "run.name=a", "training.grow=false", "training.num_epochs_finetuning=0")
    run_dir, _ = train_tree(cfg, evaluate=False)
    with pytest.raises(RunError, match="already holds a run"):
        train_tree(cfg)
    with pytest.raises(CheckpointError, match=r"config differs .*training.lr"):
        train_tree(small_cfg(tmp_path, "run.name=a", "training.grow=false", "training.num_epochs_finetuning=0",
                             "training.lr=0.5"), resume=True)
    ckpt = run_dir / "checkpoints" / "last.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a structgen TreeVAE checkpoint"):
        load_model(foreign)
    state = torch.load(ckpt, weights_only=True)
    state["tree"] = {"format": "structgen.tree/1", "nodes": ["r", "r0", "r1", "r00", "r01"]}
    torch.save(state, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="mismatch.pt: incompatible checkpoint"):
        load_model(tmp_path / "mismatch.pt")
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["event"] == "epoch"


def test_a_leaf_the_finetuning_empties_is_pruned_and_logged_across_a_restart(tmp_path, capsys, one_torch_thread):
    """A branch alive before the final finetuning is starved in it (its parent's q-router is
    forced to send it nothing). The run must end without that leaf and say why, once, also when
    it is killed between the finetuning and that prune and resumed."""
    from structgen.runtime.context import Context

    class Killed(Exception):
        pass

    # 1,000 images and 4 epochs: enough for the root to split them about evenly, so both leaves live
    cfg = small_cfg(tmp_path, "run.name=dead", "training.grow=false", "data.train_subset=1000",
                    "training.num_epochs=4", "run.threads=1")
    seen = {}

    def on_checkpoint(state, path):
        growth = state["growth"]
        if growth["stage"] == "finetune":                 # written once, right after the first prune
            seen["before"] = growth["before_finetuning"]
        if growth["stage"] == "final_prune" and growth["phase"] is None and "killed" not in seen:
            seen["killed"] = True                         # the finetuning is over, its leaves not yet judged
            raise Killed

    def on_epoch_end(record):
        if record["phase"] != "finetune" or record["epoch"] != record["epochs"]:
            return
        model, before = ctx.model, seen["before"]
        leaf = max((p for p in before if model.tree.kind(p[:-1]) == "internal"), key=lambda p: before[p]["share"])
        seen["leaf"] = leaf
        last = model.router_q[leaf[:-1]].mlp[-1]
        with torch.no_grad():                             # q(left) = 1 starves the right child, 0 the left
            last.weight.zero_()
            last.bias.fill_(50.0 if leaf.endswith("1") else -50.0)

    ctx = Context(run_dir=tmp_path, on_checkpoint=on_checkpoint, on_epoch_end=on_epoch_end)
    with pytest.raises(Killed):
        train_tree(cfg, ctx=ctx, evaluate=False)
    run_dir = tmp_path / "synthetic" / "dead"
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["growth"]["stage"] == "final_prune"
    train_tree(cfg, resume=run_dir, evaluate=False)

    leaf, before = seen["leaf"], seen["before"][seen["leaf"]]
    assert before["share"] >= cfg.training.prune_threshold
    model, state = load_model(run_dir)
    assert leaf not in model.tree and state["growth"]["stage"] == "done"
    records = [r for r in read_metrics(run_dir) if r["event"] == "prune_after_finetuning" and r["leaf"] == leaf]
    assert len(records) == 1
    record = records[0]
    assert record["share"] == 0.0 and record["mass"] < 1e-6 and record["threshold"] == cfg.training.prune_threshold
    assert (record["share_before"], record["mass_before"]) == (before["share"], before["mass"])
    assert leaf not in record["tree"]
    assert f"== pruned {leaf}, emptied by the final finetuning" in capsys.readouterr().out


def train_starving_the_settles_split(cfg, tmp_path) -> dict:
    """Train ``cfg``, forcing the q-router of the one split below the root to send every image left
    at the end of the settle (q(left) = 1: its right child gets nothing); returns {"leaf": that child}."""
    from structgen.runtime.context import Context

    starved = {}

    def on_epoch_end(record):
        if record["phase"] != "settle-1" or record["epoch"] != record["epochs"]:
            return
        model = ctx.model
        parent = next(p for p in model.tree.bfs() if p != "r" and model.tree.kind(p) == "internal")
        starved["leaf"] = parent + "1"
        last = model.router_q[parent].mlp[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(50.0)

    ctx = Context(run_dir=tmp_path, on_epoch_end=on_epoch_end)
    train_tree(cfg, ctx=ctx, evaluate=False)
    return starved


def test_settling_grows_again_where_the_full_tree_empties_a_branch(tmp_path, capsys, one_torch_thread):
    """training.settle_rounds: once growth is over, the full tree is retrained before the
    finetuning; a branch that retrain empties (here: its parent's q-router forced to send it
    nothing at the end of it) is replaced by growing again, and growth does not settle past the
    configured rounds."""
    cfg = small_cfg(tmp_path, "run.name=settle", "data.train_subset=1000", "training.num_epochs=4",
                    "training.num_clusters_tree=3", "training.settle_rounds=1", "run.threads=1")
    starved = train_starving_the_settles_split(cfg, tmp_path)
    run_dir = tmp_path / "synthetic" / "settle"
    records = [r for r in read_metrics(run_dir) if r["event"] != "epoch"]
    phases = [r["phase"] for r in records if r["event"] == "phase_end"]
    assert phases == ["initial", "subtree-1", "settle-1", "subtree-2", "finetune"], phases
    settled = next(i for i, r in enumerate(records) if r.get("phase") == "settle-1")
    check = next(r for r in records[settled:] if r["event"] == "grow_check")
    assert check["n_effective"] == 2                      # the starved leaf no longer counts
    regrown = next(r for r in records[settled:] if r["event"] == "split")
    assert regrown["leaf"] != starved["leaf"]
    model, state = load_model(run_dir)
    assert starved["leaf"] not in model.tree
    assert any(r["event"] == "prune" and r["leaf"] == starved["leaf"] for r in records)
    assert state["growth"]["settles"] == 1
    assert not any(r["event"] == "undo_split" for r in records)    # training.young_split_keep is off by default
    assert "settling the full tree before the finetuning (round 1 of 1)" in capsys.readouterr().out


def test_a_young_split_the_full_tree_undoes_is_pruned_at_once_and_growth_goes_on(tmp_path, capsys, one_torch_thread):
    """training.young_split_keep: the child of the split made before the settle loses its mass
    in it (its parent's q-router forced to send it nothing at the end of it); it is pruned as
    soon as the settle is over, before growth looks for leaves to split, and growth splits again."""
    cfg = small_cfg(tmp_path, "run.name=undo", "data.train_subset=1000", "training.num_epochs=4",
                    "training.num_clusters_tree=3", "training.settle_rounds=1", "training.young_split_keep=0.5",
                    "run.threads=1")
    starved = train_starving_the_settles_split(cfg, tmp_path)
    run_dir = tmp_path / "synthetic" / "undo"
    records = [r for r in read_metrics(run_dir) if r["event"] != "epoch"]
    phases = [r["phase"] for r in records if r["event"] == "phase_end"]
    assert phases == ["initial", "subtree-1", "settle-1", "subtree-2", "finetune"], phases
    settled = next(i for i, r in enumerate(records) if r.get("phase") == "settle-1")
    undo = records[settled + 1]
    assert undo["event"] == "undo_split" and undo["leaf"] == starved["leaf"], undo
    assert undo["mass_before"] > 0.05 and undo["mass_after"] < 0.5 * undo["mass_before"]
    assert undo["survivor"] == starved["leaf"][:-1] + "0" and undo["survivor_expandable"]
    assert starved["leaf"] not in undo["tree"]
    check = records[settled + 2]
    assert check["event"] == "grow_check" and len(check["leaves"]) == 2 and check["n_effective"] == 2
    assert records[settled + 3]["event"] == "split"
    assert not any(r["event"] == "prune" and r["leaf"] == starved["leaf"] for r in records)
    model, state = load_model(run_dir)
    assert starved["leaf"] not in model.tree
    assert state["growth"]["young_mass"] == {} and state["growth"]["young_splits"] == [records[settled + 3]["leaf"]]
    assert f"== pruned {starved['leaf']}, a young split the full tree undid" in capsys.readouterr().out
