"""benchmarks/diffusion_study.py on tiny models: the conditioning ablation (none / leaf / path
trained for the same steps on one TreeVAE) scored over guidance weights, with its tables and figures."""
import csv
import json
import sys
from pathlib import Path

import pytest
from conftest import load_script
from test_diffusion_train import TINY_DDPM

from structgen.cli import main
from structgen.config import load_config
from structgen.ddpm_api import load_ddpm, train_ddpm
from structgen.diffusion import ddpm_checkpoint as ddpm_ckpt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    """The script's main(argv), run in this process (its module as .module): it imports its sibling
    diffusion_quality.py as it does when run from benchmarks/."""
    module = load_script(ROOT / "benchmarks" / "diffusion_study.py", "diffusion_study")

    def run(argv):
        saved = sys.argv
        sys.argv = ["diffusion_study.py", *argv]
        try:
            module.main()
        finally:
            sys.argv = saved
    run.module = module
    return run


@pytest.mark.slow
def test_the_ablation_trains_three_signals_alike_and_scores_them_over_guidance(study, vae_run, runs_dir, tmp_path,
                                                                               capsys):
    clf = tmp_path / "synthetic.pt"
    assert main(["train-classifier", "--dataset", "synthetic", "--epochs", "1", "--out", str(clf)]) == 0
    sets = [a for s in TINY_DDPM + [f"run.runs_dir={runs_dir}", "run.threads=1"] for a in ("--set", s)]
    out = tmp_path / "study"
    study(["--ablation", "--vae", str(vae_run), "--config", "configs/digits.yml", *sets, "--name", "abl",
           "--weights", "0", "2", "--strengths", "1", "0.5", "--seeds", "0", "--n", "8", "--per-leaf", "2",
           "--classifier", str(clf),
           "--out", str(out)])
    printed = capsys.readouterr().out
    runs = {kind: runs_dir / "synthetic" / f"abl-{kind}" for kind in ("none", "leaf", "path")}
    states = {kind: ddpm_ckpt.load(run) for kind, run in runs.items()}
    assert {kind: s["signal"]["kind"] for kind, s in states.items()} == {k: k for k in runs}
    assert {s["step"] for s in states.values()} == {16}                   # the same steps for each signal
    assert len({s["vae"]["source"] for s in states.values()}) == 1        # on the same TreeVAE
    rows = list(csv.DictReader(open(out / "study.csv")))
    assert len(rows) == 3 * 2 * 2 * 2                             # runs x weights x strengths x {vae, diffusion}
    # Every run and weight starts from the same root samples: the TreeVAE column agrees.
    assert len({round(float(r["cfd"]), 6) for r in rows if r["model"] == "vae"}) == 1
    study = json.loads((out / "study.json").read_text())
    table = study["table"]
    diffusion = [t for t in table if t["model"] == "diffusion"]
    assert len(diffusion) == 3 * 2 * 2 and all(t["seeds"] == 1 and t["cfd_spread"] == 0 for t in diffusion)
    assert sum(t["model"] == "vae" for t in table) == 3                  # one TreeVAE row per run
    # how much each model leans on its condition: ε-loss with it present and dropped, 4 quarters + all
    for use in study["conditioning_use"].values():
        assert len(use["conditioned"]) == len(use["dropped"]) == 5 and min(use["dropped"]) > 0
    n_leaves = load_ddpm(runs["leaf"])[1].n_leaves
    assert "leaf_purity" not in rows[0]                                  # a list: in study.json, not the CSV
    for t in table:
        assert 0 <= t["purity"] <= 1 and t["agreement"] is not None and 0 <= t["agreement"] <= 1
        assert t["leaf_purity"] and all(0 <= p <= 1 for p in t["leaf_purity"])
        assert len(t["leaf_purity"]) == n_leaves
        assert t["cfd"] >= 0 and t["cfd_spread"] >= 0
    # guidance and the start strength change what a model draws from the same noise
    leaf = {(t["guidance"], t["strength"]): t for t in diffusion if t["conditioning"] == "leaf"}
    assert (leaf[0.0, 1.0]["cfd"], leaf[0.0, 1.0]["purity"]) != (leaf[2.0, 1.0]["cfd"], leaf[2.0, 1.0]["purity"])
    assert leaf[0.0, 1.0]["cfd"] != leaf[0.0, 0.5]["cfd"]
    assert "purity" in printed and "agreement" in printed
    for figure in ("guidance.png", "strength.png", "compare_ddpm.png"):
        assert (out / figure).stat().st_size > 10_000, figure


def test_class_kept_is_all_kept_when_sampling_starts_at_the_vae_image(study, vae_run, runs_dir, tmp_path):
    """At a strength of 0.01 the DDPM walks only t = 0 from its own VAE image: every sample keeps
    the VAE image's class, for posterior and prior conditions alike; from pure noise the tiny
    model does not."""
    clf = tmp_path / "synthetic.pt"
    assert main(["train-classifier", "--dataset", "synthetic", "--epochs", "1", "--out", str(clf)]) == 0
    run = train_ddpm(load_config(None, TINY_DDPM + [f"run.runs_dir={runs_dir}", "run.name=kept"]), vae_run)
    near = study.module.class_kept(run, clf, n=16, seed=0, guidance=0.0, strength=0.01)
    far = study.module.class_kept(run, clf, n=16, seed=0, guidance=0.0, strength=1.0)
    for kind in ("posterior", "prior"):
        assert near[kind]["kept"] == 1.0 and far[kind]["kept"] < 1.0
        assert 0.0 < near[kind]["vae_confidence"] <= 1.0
        assert near[kind]["vae_confidence"] == far[kind]["vae_confidence"]      # the same VAE images


def test_rows_over_seeds_become_mean_and_half_range_with_one_treevae_row_per_run(study):
    rows = [{"run": "a", "conditioning": "leaf", "model": model, "guidance": w, "strength": 1.0, "seed": seed,
             "purity": p, "agreement": None, "cfd": c, "leaf_purity": leaves}
            for model, w, seed, p, c, leaves in [("vae", 0.0, 0, 0.5, 50.0, [0.5, 0.5]),
                                                 ("diffusion", 0.0, 0, 0.3, 20.0, [0.2, 0.6]),
                                                 ("vae", 0.0, 1, 0.7, 54.0, [0.7, 0.7]),
                                                 ("diffusion", 0.0, 1, 0.4, 30.0, [0.4, 0.8]),
                                                 ("vae", 2.0, 0, 0.5, 50.0, [0.5, 0.5]),
                                                 ("diffusion", 2.0, 0, 0.6, 24.0, [0.9, 0.3])]]
    table = {(t["model"], t["guidance"]): t for t in study.module.summarise(rows)}
    assert set(table) == {("vae", None), ("diffusion", 0.0), ("diffusion", 2.0)}
    assert table["vae", None]["purity"] == pytest.approx(0.6) and table["vae", None]["purity_spread"] == pytest.approx(0.1)
    assert table["diffusion", 0.0]["cfd"] == 25.0 and table["diffusion", 0.0]["cfd_spread"] == 5.0
    assert table["diffusion", 2.0]["seeds"] == 1 and table["diffusion", 2.0]["agreement"] is None
    assert table["diffusion", 0.0]["leaf_purity"] == pytest.approx([0.3, 0.7])     # each leaf's mean over seeds
    assert table["diffusion", 2.0]["leaf_purity"] == pytest.approx([0.9, 0.3])


def test_the_study_refuses_bad_input_before_any_work(study, tmp_path, capsys):
    for args, message in (([], "--ablation --vae"), (["--ddpm", str(tmp_path / "no-such-run")],
                                                     "no-such-run: no such run folder"),
                          (["--ablation", "--vae", str(tmp_path / "no-tree")], "no-tree: no such run folder")):
        with pytest.raises(SystemExit) as stopped:
            study([*args, "--out", str(tmp_path / "o")])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
