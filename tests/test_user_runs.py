"""TreeVAE runs on the user's own images: a flat unlabelled PNG folder, an .npz, the CIFAR
JPEG class-folder tree; the report and figure without labels; resume refused on changed data.

Models and schedules are synthetic-size (seconds per run on one thread)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from structgen.api import train_tree
from structgen.config import load_config
from structgen.errors import CheckpointError
from user_images import CIFAR_JPEG, cifar_tree, digits_npz, digits_pngs

# Three levels of 8 channels, 2 epochs, one split: a tree of 3 leaves in a few seconds.
TINY = ["model.latent_channels=4", "model.bottom_up_channels=8", "model.levels=3", "training.batch_size=16",
        "training.num_epochs=2", "training.num_epochs_smalltree=1", "training.num_epochs_intermediate_fulltrain=0",
        "training.num_epochs_finetuning=1", "training.num_clusters_tree=3", "training.max_grow_iterations=1",
        "training.prune=false", "evaluation.samples_per_leaf=4", "evaluation.real_per_leaf=4",
        "run.progress=plain", "run.threads=1"]


def tiny_cfg(tmp_path, path, *extra, dataset="folder"):
    return load_config(None, TINY + [f"data.dataset={dataset}", f"data.path={path}",
                                     f"run.runs_dir={tmp_path / 'runs'}", *extra])


@pytest.fixture(scope="module")
def unlabelled_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unlabelled")
    root = digits_pngs(tmp / "pngs", n=60)
    cfg = tiny_cfg(tmp, root, "run.name=u")
    run_dir, report = train_tree(cfg)
    return tmp, root, run_dir, report


def test_unlabelled_folder_trains_and_reports_without_label_metrics(unlabelled_run, capsys):
    _, root, run_dir, report = unlabelled_run
    assert report["labelled"] is False
    for key in ("acc", "nmi", "ari", "leaf_purity", "dendrogram_purity", "leaf_histograms", "train"):
        assert key not in report
    assert np.isfinite(report["elbo"]) and report["depth"] >= 1 and sum(report["leaf_sizes"]) == report["n_test"]
    assert abs(sum(report["leaf_mass"]) - 1) < 1e-4
    assert all("sizes" in report["baselines"][k] for k in ("kmeans", "ward"))
    assert (run_dir / "figures" / "tree.png").stat().st_size > 5000
    saved = (run_dir / "config.yml").read_text()
    assert "fingerprint: 60 files, " in saved and f"path: {root}" in saved
    evaluation = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                  if '"evaluation"' in line][-1]
    assert "acc" not in evaluation


def test_unlabelled_report_text(unlabelled_run):
    from structgen.eval.evaluate import format_report

    text = format_report(unlabelled_run[3])
    assert "unlabelled test images" in text and "kmeans (pixels)" in text and "cluster sizes" in text
    assert "acc" not in text.lower().split("elbo")[0]


def test_resume_on_changed_data_is_refused(unlabelled_run):
    tmp, root, run_dir, _ = unlabelled_run
    changed = tmp / "changed"
    changed.mkdir()
    for f in root.iterdir():
        (changed / f.name).write_bytes(f.read_bytes())
    (changed / "digit_000.png").write_bytes((root / "digit_001.png").read_bytes())
    cfg = tiny_cfg(tmp, changed, "run.name=u")
    with pytest.raises(CheckpointError, match=r"data.fingerprint: checkpoint '60 files, .*' vs now '60 files, "):
        train_tree(cfg, resume=run_dir)


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("npz")
    return train_tree(tiny_cfg(tmp, digits_npz(tmp / "d.npz", n=80), dataset="arrays"))


def test_npz_run_is_labelled(npz_run):
    run_dir, report = npz_run
    assert report["labelled"] and 0 <= report["acc"] <= 1 and len(report["leaf_histograms"]) == report["n_leaves"]
    assert (run_dir / "figures" / "tree.png").exists()


@pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason=f"{CIFAR_JPEG} absent")
def test_cifar_jpeg_class_tree_trains_with_cnn2(tmp_path):
    root = cifar_tree(tmp_path / "cifar", per_class=16)
    cfg = tiny_cfg(tmp_path, root, "data.channels=3", "data.image_size=16")
    assert cfg.model.encoder == "cnn2"
    run_dir, report = train_tree(cfg)
    assert report["labelled"] and "nmi" in report
    assert "encoder: cnn2" in (run_dir / "config.yml").read_text()


# ---- assign and export-tree ---------------------------------------------------------------------
def _predicted(run_dir, cfg_overrides=()):
    """{source: leaf index} from TreeVAE.predict on the run's own train and test arrays."""
    import torch

    from structgen.api import load_model
    from structgen.config import load_config as load
    from structgen.data.run_data import load_run_data

    model, _ = load_model(run_dir)
    data = load_run_data(load(run_dir / "config.yml"))
    out = {}
    for ds in (data.train, data.test):
        pred = model.predict(torch.from_numpy(ds.images).float() / 255).argmax(1).tolist()
        out.update(zip(ds.sources, pred))
    return out


def test_assign_gives_one_row_per_image_agreeing_with_predict(unlabelled_run, tmp_path, capsys):
    import csv

    from structgen.api import assign
    from structgen.cli import main

    _, root, run_dir, _ = unlabelled_run
    table = assign(run_dir, root, batch_size=7)
    assert len(table) == 60 and table.probs.shape == (60, len(table.leaves))
    assert np.allclose(table.probs.sum(1), 1, atol=1e-5)
    expected = _predicted(run_dir)
    assert dict(zip(table.names, table.leaf.tolist())) == expected
    assert main(["assign", str(run_dir), "--images", str(root), "--out", str(tmp_path / "a.csv"),
                 "--batch-size", "16", "--latents"]) == 0
    assert "assigned 60 images" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    assert len(rows) == 60 and {r["file"] for r in rows} == set(expected)
    assert all(r["leaf"] == table.leaves[expected[r["file"]]] for r in rows)
    assert all(r["path"].startswith("r/") and r["path"].endswith(r["leaf"]) for r in rows)
    assert all(f"p_{leaf}" in rows[0] for leaf in table.leaves)
    latents = np.load(tmp_path / "a.latents.npy")
    assert latents.shape[0] == 60 and np.isfinite(latents).all()
    # top-k, the run's own data by name, and arrays in memory
    assert main(["assign", str(run_dir), "--dataset", "--split", "test", "--top-k", "2",
                 "--out", str(tmp_path / "t.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert len(rows) == 12 and set(rows[0]) >= {"top1_leaf", "top2_probability"} and "p_r0" not in rows[0]
    from structgen.data import load_split
    from structgen.config import load_config as load
    test = load_split("folder", "test", data_cfg=load(run_dir / "config.yml").data)
    arrays = assign(run_dir, test.images[:, 0])
    assert arrays.leaf.tolist() == [expected[s] for s in test.sources]


def test_assign_on_images_the_run_never_saw(unlabelled_run, tmp_path):
    from PIL import Image

    from structgen.api import assign

    _, _, run_dir, _ = unlabelled_run
    new = tmp_path / "new"
    new.mkdir()
    Image.new("RGB", (50, 40), (200, 10, 10)).save(new / "red.JPG")
    Image.new("L", (8, 8), 255).save(new / "white.bmp")
    table = assign(run_dir, new)
    assert table.names == [str(new / "red.JPG"), str(new / "white.bmp")] and table.probs.shape[0] == 2


def test_export_tree_round_trips_the_topology(unlabelled_run, npz_run, tmp_path, capsys):
    from scipy.cluster.hierarchy import is_valid_linkage, to_tree

    from structgen.api import load_model
    from structgen.cli import main
    from structgen.eval.tree_export import parse_newick, tree_from_document

    for run_dir in (unlabelled_run[2], npz_run[0]):
        out = tmp_path / run_dir.name
        assert main(["export-tree", str(run_dir), "--out", str(out)]) == 0
        model, _ = load_model(run_dir)
        tree = model.tree
        doc = json.loads((out / "tree.json").read_text())
        assert tree_from_document(doc) == tree
        assert parse_newick((out / "tree.nwk").read_text()) == {n: tree.parent(n) for n in tree.bfs()}
        nodes = {n["name"]: n for n in doc["nodes"]}
        assert abs(nodes["r"]["mass"] - 1) < 1e-4
        assert all(nodes[n]["leaf"] == (tree.kind(n) == "leaf") and nodes[n]["depth"] == tree.depth(n)
                   for n in tree.bfs())
        z = np.array(doc["linkage"])
        assert is_valid_linkage(z) and to_tree(z).get_count() == len(tree.leaves())
        labelled = "class_histogram" in nodes[tree.leaves()[0]]
        assert labelled == (run_dir == npz_run[0])
    assert doc["class_names"] == [str(k) for k in range(10)]


def test_a_tree_trains_on_mixed_formats_and_sizes_with_a_corrupt_file_skipped(tmp_path):
    """The issue's "a TreeVAE trains on each": mixed formats, sizes and modes, a corrupt JPEG
    left out by data.on_bad_image=skip, plus the digits PNGs for enough images to batch."""
    from user_images import corrupt_jpeg, mixed_folder

    root = mixed_folder(tmp_path / "mixed")
    digits_pngs(root / "more", n=40)
    corrupt_jpeg(root / "broken.jpg")
    cfg = tiny_cfg(tmp_path, root, "data.labels=none", "data.on_bad_image=skip", "run.name=mixed")
    run_dir, report = train_tree(cfg)
    assert report["labelled"] is False and report["n_test"] == 10      # 48 decodable images, 20 % held out
    assert load_config(run_dir / "config.yml").data.fingerprint.startswith("49 files")   # 8 + 40 + the broken one
    assert (run_dir / "figures" / "tree.png").exists()
