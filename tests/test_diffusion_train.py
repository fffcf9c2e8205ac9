"""Stage 2 end to end on `synthetic`: a tiny TreeVAE, tiny DDPMs (dim 16) for a few dozen steps,
every sampling mode, exact resume, the CLI and its errors."""
import json

import numpy as np
import pytest
import torch
from conftest import TINY_DATA

from structgen.cli import main
from structgen.config import ConfigError, load_config
from structgen.diffusion import ddpm_checkpoint as ddpm_ckpt
from structgen.ddpm_api import load_ddpm, sample, train_ddpm
from structgen.diffusion.loop import DDPMTrainer, lr_factor
from structgen.diffusion.schedule import NoiseSchedule
from structgen.train.phase import NonFiniteLossError

DATA = TINY_DATA
# 128 images / batch 16 = 8 steps per epoch.
TINY_DDPM = DATA + ["diffusion.dim=16", "diffusion.n_heads=4", "diffusion.n_residual=1",
                    "diffusion.attn_resolutions=[]",
                    "diffusion.batch_size=16", "diffusion.epochs=2", "diffusion.warmup_steps=4",
                    "diffusion.n_timesteps=100", "diffusion.sampler=ddim", "diffusion.n_steps=4",
                    "diffusion.sample_every=0", "diffusion.n_samples=4", "diffusion.cfg_rate=0.2"]
MODES = ("recons", "recons_all_leaves", "sample", "sample_all_leaves")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sets(*overrides):
    return [a for s in overrides for a in ("--set", s)]


def ddpm_cfg(runs_dir, *extra):
    return load_config(None, TINY_DDPM + [f"run.runs_dir={runs_dir}", *extra])


@pytest.fixture(scope="module")
def leaf_run(vae_run, runs_dir):
    return train_ddpm(ddpm_cfg(runs_dir, "diffusion.conditioning=leaf", "diffusion.sample_every=2"), vae_run)


def test_training_writes_a_complete_run_folder(leaf_run, vae_run):
    assert leaf_run.name.startswith("ddpm-") and leaf_run.parent.name == "synthetic"
    cfg = load_config(leaf_run / "config.yml")
    assert cfg.diffusion.vae_run == str(vae_run.resolve())
    records = [json.loads(line) for line in (leaf_run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "ddpm_epoch"]
    assert [(r["epoch"], r["steps"], r["images"]) for r in epochs] == [(1, 8, 128), (2, 16, 128)]
    for r in epochs:
        assert 0 < r["loss"] < 1.2 and all(np.isfinite(r[f"loss_q{i}"]) for i in range(4))
    assert any((leaf_run / "tensorboard").iterdir())
    assert (leaf_run / "samples" / "train" / "epoch00002.png").exists()
    state = ddpm_ckpt.load(leaf_run)
    assert state["step"] == 16 and state["epoch"] == 2 and state["ema"]["updates"] == 16
    assert state["vae_run"] == str(vae_run.resolve()) and state["signal"]["kind"] == "leaf"
    assert {"model", "optimizer", "lr_schedule", "rng", "config", "unet_spec", "vae"} <= set(state)
    # The EMA moved away from the weights it started from, but not all the way to the online ones.
    ema, online = state["ema"]["shadow"], state["model"]
    key = "unet.out.2.weight"                                   # zero at initialisation
    assert ema[key].abs().sum() > 0 and not torch.equal(ema[key], online[key])


def test_every_mode_writes_grids_figures_and_arrays(leaf_run):
    model, conditioner, _, _ = load_ddpm(leaf_run)
    n_leaves = conditioner.n_leaves
    results = {}
    for mode in MODES:
        written = sample(leaf_run, mode, n=3, sampler="ddim", steps=3)
        assert all(p.exists() for p in written)
        data = np.load(written[-1])
        per = (3, n_leaves, 1, 28, 28) if mode.endswith("_all_leaves") else (3, 1, 28, 28)
        assert data["images"].shape == per and data["vae"].shape == per
        assert data["leaf_probs"].shape == (3, n_leaves)
        assert 0 <= data["images"].min() and data["images"].max() <= 1
        assert (data["originals"].shape == (3, 1, 28, 28)) if mode.startswith("recons") else "originals" not in data
        assert str(data["meta_sampler"]) == "ddim3q"
        if mode.endswith("_all_leaves"):
            assert (written[0].parent / "all_leaves.png").exists()
        else:
            assert data["leaf"].tolist() == data["leaf_probs"].argmax(1).tolist()     # --leaf-choice max
        results[mode] = data
    # Leaves share x_T: the single-leaf modes equal the all-leaves modes at the most probable leaf.
    for single, every in (("sample", "sample_all_leaves"), ("recons", "recons_all_leaves")):
        best = results[single]["leaf"]
        assert np.allclose(results[every]["images"][np.arange(3), best], results[single]["images"], atol=1e-4)
    # Different leaves of one root sample get different conditioning, hence different images.
    imgs = results["sample_all_leaves"]["images"]
    assert not np.allclose(imgs[:, 0], imgs[:, 1], atol=1e-3)
    drawn = sample(leaf_run, "sample", n=3, sampler="ddim", steps=3, leaf_choice="sample", guidance=1.0, seed=7)
    assert drawn[-1].parent.name == "sample-ddim3q-w1"
    ancestral = sample(leaf_run, "recons", n=2, sampler="ddpm")
    assert ancestral[-1].parent.name == "recons-ddpm100" and np.load(ancestral[-1])["images"].shape == (2, 1, 28, 28)


def test_a_partial_strength_starts_near_the_leafs_vae_image(leaf_run):
    """--strength s < 1 denoises the leaf's VAE image noised to s·(T-1): the lower s, the closer
    the output stays to that image; the input image never enters (recons modes)."""
    def distance(strength):
        written = sample(leaf_run, "sample_all_leaves", n=4, sampler="ddim", steps=20, strength=strength, seed=3)
        data = np.load(written[-1])
        assert float(data["meta_strength"]) == strength
        return written[-1].parent.name, float(np.abs(data["images"] - data["vae"]).mean())

    (folder, far), (_, mid), (near_folder, near) = distance(1.0), distance(0.5), distance(0.05)
    assert folder == "sample_all_leaves-ddim20q" and near_folder == "sample_all_leaves-ddim20q-s0.05"
    assert near < mid < far and near < 0.1
    recons = np.load(sample(leaf_run, "recons", n=2, sampler="ddim", steps=20, strength=0.05, seed=3)[-1])
    assert np.abs(recons["images"] - recons["vae"]).mean() < np.abs(recons["images"] - recons["originals"]).mean()


def test_lr_factor_warms_up_then_holds_or_decays_to_zero():
    assert [lr_factor(s, 4, 16, "none") for s in (0, 3, 4, 15, 40)] == [0.25, 1.0, 1.0, 1.0, 1.0]
    cosine = [lr_factor(s, 4, 16, "cosine") for s in range(17)]
    assert cosine[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert cosine[10] == pytest.approx(0.5) and cosine[16] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(cosine[4:], cosine[5:]))
    assert lr_factor(99, 4, 16, "cosine") == pytest.approx(0.0)      # past the end: stays at 0
    assert lr_factor(0, 0, 16, "cosine") == 1.0                      # no warm-up


def test_cosine_lr_decay_ends_the_run_at_zero(vae_run, runs_dir):
    run = train_ddpm(ddpm_cfg(runs_dir, "diffusion.lr_decay=cosine", "run.name=cosine"), vae_run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["event"] == "ddpm_epoch"]
    base = load_config(run / "config.yml").diffusion.lr
    assert lrs[0] == pytest.approx(base * 0.75) and lrs[1] == pytest.approx(0.0, abs=1e-12)   # 8 of 16 steps; 16


@pytest.mark.parametrize("decay", ["none", "cosine"])
def test_an_interrupted_run_resumes_to_the_same_weights(vae_run, runs_dir, monkeypatch, decay):
    extra = ("diffusion.checkpoint_every_steps=3", f"diffusion.lr_decay={decay}")
    straight = train_ddpm(ddpm_cfg(runs_dir, *extra, f"run.name=straight-{decay}"), vae_run)

    real_step = DDPMTrainer.train_step

    def crash_at_step_10(self, x01):
        if self.step == 10:
            raise KeyboardInterrupt
        return real_step(self, x01)

    monkeypatch.setattr(DDPMTrainer, "train_step", crash_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        train_ddpm(ddpm_cfg(runs_dir, *extra, f"run.name=crashed-{decay}"), vae_run)
    crashed = runs_dir / "synthetic" / f"crashed-{decay}"
    saved = ddpm_ckpt.load(crashed / "checkpoints" / "last.pt")
    assert (saved["step"], saved["epoch"], saved["batch_in_epoch"]) == (9, 1, 1)    # mid-epoch
    monkeypatch.setattr(DDPMTrainer, "train_step", real_step)
    resumed = train_ddpm(ddpm_cfg(runs_dir, *extra), resume=crashed)
    a, b = ddpm_ckpt.load(straight), ddpm_ckpt.load(resumed)
    assert b["step"] == a["step"] == 16 and b["ema"]["updates"] == 16
    for key, value in a["ema"]["shadow"].items():
        assert torch.allclose(value, b["ema"]["shadow"][key], atol=1e-6), key
    for key, value in a["model"].items():
        assert torch.allclose(value, b["model"][key], atol=1e-6), key
    records = [json.loads(line) for line in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["event"] == "ddpm_epoch"] == [1, 2]
    with pytest.raises(Exception, match="diffusion.dim"):
        train_ddpm(ddpm_cfg(runs_dir, *extra, "diffusion.dim=32"), resume=crashed)


def test_non_finite_loss_stops_with_the_step_and_exit_code_3(vae_run, runs_dir, monkeypatch, capsys):
    monkeypatch.setattr(NoiseSchedule, "q_sample", lambda self, x0, t, noise: x0 * float("nan"))
    with pytest.raises(NonFiniteLossError, match="step 1 "):
        train_ddpm(ddpm_cfg(runs_dir), vae_run)
    args = ["train-ddpm", "--vae", str(vae_run)] + sets(*TINY_DDPM, f"run.runs_dir={runs_dir}")
    assert main(args) == 3
    assert "non-finite DDPM loss = nan at step 1" in capsys.readouterr().err


def test_bad_input_fails_with_exit_code_2_and_a_clear_message(vae_run, leaf_run, runs_dir, capsys):
    base = sets(*TINY_DDPM, f"run.runs_dir={runs_dir}")
    cases = [
        (["train-ddpm"] + base, "--vae RUN_DIR"),
        (["train-ddpm", "--vae", str(vae_run)] + base + sets("diffusion.attn_resolutions=[7]"), "never occur"),
        (["train-ddpm", "--vae", str(vae_run)] + base + sets("data.dataset=digits"), "trained on 'synthetic'"),
        (["sample", str(vae_run), "--mode", "sample"], "TreeVAE run: pass it to train-ddpm --vae"),
        (["sample", str(leaf_run), "--mode", "sample", "--sampler", "ddpm", "--steps", "5"], "--sampler ddim"),
        (["sample", str(leaf_run), "--mode", "sample", "--steps", "500"], "1 <= steps <= T = 100"),
        (["compare-ddpm", str(leaf_run)], "at least two"),
        (["sample", str(leaf_run), "--mode", "sample", "--strength", "0"], "--strength must lie in (0, 1]"),
        (["score-ddpm", str(leaf_run), "--strength", "1.5"], "--strength must lie in (0, 1]"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        assert message in capsys.readouterr().err, args


def test_compare_ddpm_shows_none_leaf_and_path_on_the_same_root_samples(vae_run, leaf_run, runs_dir, capsys):
    one_epoch = sets(*TINY_DDPM, f"run.runs_dir={runs_dir}", "diffusion.epochs=1")
    assert main(["train-ddpm", "--vae", str(vae_run)] + one_epoch + sets("diffusion.conditioning=none")) == 0
    none_run = capsys.readouterr().out.strip().splitlines()[-1].split("DDPM run: ")[1]
    path_run = train_ddpm(ddpm_cfg(runs_dir, "diffusion.conditioning=path", "diffusion.epochs=1"), vae_run)
    out = runs_dir / "compare.png"
    assert main(["compare-ddpm", none_run, str(leaf_run), str(path_run), "--n", "2", "--steps", "3",
                 "--out", str(out)]) == 0
    assert out.exists()
    data = np.load(out.with_suffix(".npz"))
    assert data["labels"].tolist() == ["none", "leaf", "path"]
    n_leaves = len(data["leaves"])
    for i in range(3):
        assert data[f"images_{i}"].shape == (2, n_leaves, 1, 28, 28)
    assert not np.allclose(data["images_1"], data["images_2"], atol=1e-3)
    # The sample command draws the same root samples for every run with the same seed.
    a = np.load(sample(none_run, "sample_all_leaves", n=2, steps=3)[-1])
    assert np.allclose(a["vae"], data["vae"], atol=1e-6)


def test_score_ddpm_compares_vae_and_diffusion_samples(leaf_run, runs_dir, tmp_path, capsys):
    clf = tmp_path / "synthetic.pt"
    assert main(["train-classifier", "--dataset", "synthetic", "--epochs", "1", "--out", str(clf)]) == 0
    out = tmp_path / "scores"
    assert main(["score-ddpm", str(leaf_run), "--classifier", str(clf), "--n", "16", "--per-leaf", "3",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "TreeVAE samples" in printed and "diffusion samples" in printed and "training images" in printed
    scores = json.loads((out / "scores.json").read_text())
    n_leaves = len(scores["leaves"])
    assert scores["n"] == 16 and scores["conditioning"] == "leaf" and scores["step"] == 16
    for model in ("vae", "diffusion"):
        assert np.isfinite(scores[model]["cfd"]) and scores[model]["cfd"] >= 0
        assert 0.25 - 1e-9 <= scores[model]["purity"] <= 1.0           # synthetic has 4 classes
        assert np.allclose(np.sum(scores[model]["histograms"], axis=1), 1.0)
        assert len(scores[model]["histograms"]) == n_leaves
        assert (out / f"generation_{model}.png").stat().st_size > 1000
        # agreement: each leaf's images against the class of the test images routed to it
        assert 0.0 <= scores[model]["agreement"] <= 1.0 and len(scores[model]["leaf_agreement"]) == n_leaves
        known = [a for a in scores[model]["leaf_agreement"] if a is not None]
        assert known and all(0 <= a <= p + 1e-9 for a, p in zip(scores[model]["leaf_agreement"],
                                                                scores[model]["leaf_purity"]) if a is not None)
    assert len(scores["leaf_classes"]) == n_leaves and max(scores["leaf_classes"]) < 4
    assert "agreement" in printed
    assert scores["vae"]["histograms"] != scores["diffusion"]["histograms"] or \
        scores["vae"]["cfd"] != scores["diffusion"]["cfd"], "the two columns must come from different images"
    assert 0 <= scores["train_floor_cfd"] < max(scores["vae"]["cfd"], scores["diffusion"]["cfd"])


def test_guidance_is_refused_for_a_model_trained_without_guidance_dropout(vae_run, runs_dir, capsys):
    with pytest.raises(ConfigError, match="needs diffusion.cfg_rate > 0"):
        train_ddpm(ddpm_cfg(runs_dir, "diffusion.cfg_rate=0", "diffusion.guidance_weight=1"), vae_run)
    plain = train_ddpm(ddpm_cfg(runs_dir, "diffusion.cfg_rate=0", "diffusion.epochs=1", "run.name=no-cfg"), vae_run)
    assert main(["sample", str(plain), "--mode", "sample", "--n", "2", "--guidance", "1"]) == 2
    assert "trained with diffusion.cfg_rate = 0" in capsys.readouterr().err
    assert not (plain / "samples").exists()
    assert sample(plain, "sample", n=2, steps=2)                       # without guidance it samples


def test_score_ddpm_rejects_bad_input_before_sampling(leaf_run, vae_run, tmp_path, capsys):
    assert main(["score-ddpm", str(leaf_run), "--classifier", str(tmp_path / "none.pt")]) == 2
    assert "classifier checkpoint not found" in capsys.readouterr().err
    assert main(["score-ddpm", str(leaf_run), "--n", "1"]) == 2
    assert "--n must be >= 2" in capsys.readouterr().err
    assert main(["score-ddpm", str(vae_run)]) == 2
    assert "not a structgen DDPM checkpoint" in capsys.readouterr().err
    assert not (leaf_run / "scores").exists()
