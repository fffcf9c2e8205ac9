"""`training.split_init: kmeans`: a new split's routers start fitted to a 2-means split."""
import numpy as np
import torch
from conftest import SYNTHETIC_FAST

from structgen.api import train_tree
from structgen.config import load_config
from structgen.data.run_data import load_run_data
from structgen.models.treevae import SubTree
from structgen.runtime.metrics_log import read_metrics
from structgen.runtime.tree_checkpoint import load_model
from structgen.train.split_init import bottom_up_and_latent, init_split, two_means


def test_both_routers_learn_the_two_means_split_of_the_leaf_images(trained_run):
    run_dir, _ = trained_run
    model, _ = load_model(run_dir)
    images = load_run_data(load_config(run_dir / "config.yml")).train.images
    indices = np.arange(len(images))
    leaf = model.tree.leaves()[0]
    torch.manual_seed(0)
    subtree = SubTree(model, leaf)
    untrained = [p.detach().clone() for p in subtree.router_q.parameters()]
    summary = init_split(model, subtree, images, indices, steps=100, seed=3, device="cpu")

    d, z = bottom_up_and_latent(model, images, indices, leaf, subtree.parent_level, "cpu")
    left = two_means(d, 3) == 0
    assert summary["images"] == len(images) and summary["left"] == int(left.sum())
    assert 0 < summary["left"] < len(images)
    assert summary["router_agrees"] >= 0.9
    subtree.eval()
    with torch.no_grad():
        q_says_left = (subtree.router_q(d) > 0).numpy()
        p_says_left = (subtree.router(z) > 0).numpy()
    assert (q_says_left == left).mean() == summary["router_agrees"]
    assert (p_says_left == left).mean() >= 0.8            # the prior router learns the same split
    assert any(not torch.equal(a, b) for a, b in zip(untrained, subtree.router_q.parameters()))
    assert not model.training                              # the frozen tree keeps its mode


def test_a_run_with_kmeans_split_init_records_every_split(tmp_path):
    cfg = load_config(None, SYNTHETIC_FAST + ["data.train_subset=384", "data.test_subset=128", "training.num_epochs=3",
                                              "training.num_epochs_smalltree=2", "training.num_epochs_finetuning=1",
                                              "evaluation.baselines=false", f"run.runs_dir={tmp_path}",
                                              "training.split_init=kmeans", "training.split_init_steps=20"])
    run_dir, _ = train_tree(cfg, evaluate=False)
    records = read_metrics(run_dir)
    subtrees = {r["phase"] for r in records if r["event"] == "epoch" and r["kind"] == "subtree"}
    inits = [r for r in records if r["event"] == "split_init"]
    assert subtrees and {r["phase"] for r in inits} == subtrees
    assert all(0 < r["left"] < r["images"] and 0 <= r["router_agrees"] <= 1 for r in inits)
