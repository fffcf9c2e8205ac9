"""`training.budget_minutes`: the configured schedule scaled to a wall-clock budget."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import SYNTHETIC_FAST

import structgen.train.growth as growth_module
import structgen.train.phase as phase_module
from structgen.api import train_tree
from structgen.config import load_config
from structgen.errors import ConfigError
from structgen.runtime.metrics_log import read_metrics
from structgen.runtime.part_minutes import INSIDE_A_PHASE, part_minutes
from structgen.runtime.tree_checkpoint import load_model
from structgen.train.annealing import finetune_decay
from structgen.train.budget import (EPOCH_KEYS, GrowthShape, StepCosts, fit_factor, intermediate_seconds,
                                    predicted_seconds, scale_epochs, split_seconds)
from structgen.train.growth import TreeTrainer


REFERENCE = dict(zip(EPOCH_KEYS, (150, 150, 80, 200)))
COSTS = StepCosts(full_first=1e-3, full_last=3e-3, subtree=5e-4, routing=1e-4)
SHAPE = GrowthShape(images=60000, first_leaves=2, last_leaves=10, splits=8, intermediates=True)


def total(epochs, shape=SHAPE):
    return sum(predicted_seconds(epochs, COSTS, shape).values())


def test_scaling_keeps_the_proportions_at_least_one_epoch_and_phases_that_are_off():
    assert scale_epochs(REFERENCE, 0.034) == dict(zip(EPOCH_KEYS, (5, 5, 3, 7)))
    off = {**REFERENCE, "num_epochs_intermediate_fulltrain": 0}
    assert scale_epochs(off, 0.0) == dict(zip(EPOCH_KEYS, (1, 1, 0, 1)))


def test_the_prediction_follows_the_growth_schedule():
    one = dict.fromkeys(EPOCH_KEYS, 1)
    parts = predicted_seconds(one, COSTS, SHAPE)
    assert parts["initial"] == pytest.approx(60000 * 1e-3)
    assert parts["finetuning"] == pytest.approx(60000 * 3e-3)
    # retrained after splits 3 and 6: at 5 and 8 leaves, full-tree cost linear in the leaves
    assert parts["intermediate"] == pytest.approx(60000 * ((1e-3 + 3 / 8 * 2e-3) + (1e-3 + 6 / 8 * 2e-3)))
    assert parts["split selection"] == pytest.approx(9 * 60000 * 1e-4)
    assert 0 < parts["subtrees"] < 8 * 60000 * 5e-4       # each sub-tree sees part of the images
    no_growth = GrowthShape(images=60000, first_leaves=2, last_leaves=2, splits=0, intermediates=True)
    assert predicted_seconds(one, COSTS, no_growth)["subtrees"] == 0
    assert predicted_seconds(one, COSTS, no_growth)["intermediate"] == 0


def test_a_growth_steps_prediction_is_its_sub_trees_or_its_intermediate_full_train():
    epochs = dict(zip(EPOCH_KEYS, (1, 2, 3, 4)))
    assert split_seconds(epochs, COSTS, [6001], 2, SHAPE) == pytest.approx(2 * 3001 * 5e-4)   # the ranks share it
    # a round: sub-tree j trained alone by rank j mod 2, so the slower rank holds subsets 0 and 2
    assert split_seconds(epochs, COSTS, [4000, 3000, 1000], 2, SHAPE) == pytest.approx(2 * 5000 * 5e-4)
    assert intermediate_seconds(epochs, COSTS, SHAPE, 6) == pytest.approx(3 * 60000 * (1e-3 + 4 / 8 * 2e-3))
    # the schedule's prediction is the sum of its steps
    parts = predicted_seconds(epochs, COSTS, SHAPE)
    assert parts["subtrees"] == pytest.approx(
        sum(split_seconds(epochs, COSTS, [round(min(1, 1.5 / m) * 60000)], 1, SHAPE) for m in range(2, 10)))
    assert parts["intermediate"] == pytest.approx(sum(intermediate_seconds(epochs, COSTS, SHAPE, m) for m in (5, 8)))


def test_the_prediction_counts_the_passes_min_batches_per_epoch_adds_to_a_small_set():
    one = dict.fromkeys(EPOCH_KEYS, 1)
    small = GrowthShape(images=300, first_leaves=2, last_leaves=4, splits=2, intermediates=True, batch=64,
                        min_batches=6)
    plain = GrowthShape(images=300, first_leaves=2, last_leaves=4, splits=2, intermediates=True, batch=64)
    assert (small.epoch_images(300), plain.epoch_images(300), small.epoch_images(384)) == (600, 300, 384)
    with_passes, one_pass = predicted_seconds(one, COSTS, small), predicted_seconds(one, COSTS, plain)
    assert with_passes["initial"] == pytest.approx(2 * one_pass["initial"])
    assert with_passes["finetuning"] == pytest.approx(2 * one_pass["finetuning"])
    # the sub-trees' subsets of 225 and 150 images: two and three passes
    assert with_passes["subtrees"] == pytest.approx((2 * 225 + 3 * 150) * 5e-4)
    assert one_pass["subtrees"] == pytest.approx((225 + 150) * 5e-4)
    # a parallel round's sub-tree is trained by one rank alone, at the whole batch: 384 images a pass
    # serve 3 batches of 128, so 6 batches take two passes
    round_shape = GrowthShape(images=150, first_leaves=2, last_leaves=4, splits=2, intermediates=True, batch=64,
                              alone_batch=128, min_batches=6)
    assert split_seconds(one, COSTS, [384, 384], 2, round_shape) == pytest.approx(2 * 384 * 5e-4)
    assert split_seconds(one, COSTS, [768], 2, round_shape) == pytest.approx(384 * 5e-4)


@pytest.mark.parametrize("minutes", [20, 45, 300])
def test_the_fitted_schedule_is_the_largest_of_its_proportions_that_fits(minutes):
    budget = minutes * 60
    epochs = scale_epochs(REFERENCE, fit_factor(REFERENCE, budget, COSTS, SHAPE))
    # walking the factor up in small steps, the fitted schedule is the last one that fits
    fitting = [e for e in (scale_epochs(REFERENCE, i / 10_000) for i in range(5000)) if total(e) <= budget]
    assert epochs == fitting[-1]
    assert total(epochs) > 0.8 * budget


def test_a_budget_below_one_epoch_per_phase_is_refused_before_training():
    with pytest.raises(ConfigError, match=r"training.budget_minutes: 0.50 min to train in, and one epoch of every "
                                          r"phase is predicted to take \d+\.\d min"):
        fit_factor(REFERENCE, 30, COSTS, SHAPE)


def test_a_run_whose_budget_fits_no_schedule_stops_before_training(tmp_path, one_torch_thread):
    with pytest.raises(ConfigError, match=r"training.budget_minutes = 0.001, less \d+ s of timed steps: -?\d+\.\d\d "
                                          r"min to train in"):
        train_tree(budget_cfg(tmp_path, "run.name=tiny", "training.budget_minutes=0.001"), evaluate=False)
    assert not list(tmp_path.rglob("*.pt"))           # no checkpoint: no phase began


# minutes: the 6-7 s of timed steps leave every phase at least one epoch (at 0.2 on 2026-12-03
# one epoch per phase was predicted at 0.1 min with 0.08-0.10 min left, and the plan refused to start)
BUDGET = 0.3


def budget_cfg(tmp_path, *extra):
    return load_config(None, SYNTHETIC_FAST + ["data.train_subset=300", "data.test_subset=100",
                                               "evaluation.baselines=false", f"run.runs_dir={tmp_path}", *extra])


def phase_epochs(run_dir) -> dict[str, int]:
    return {r["phase"]: r["epochs"] for r in read_metrics(run_dir) if r["event"] == "epoch"}


def planned(run_dir) -> tuple[dict, dict]:
    """The run's budget_plan record and the epochs it trained: the plan's, with the finetuning's
    re-fitted when it began (budget_replan)."""
    records = read_metrics(run_dir)
    plans = [r for r in records if r["event"] == "budget_plan"]
    replans = [r for r in records if r["event"] == "budget_replan"]
    assert len(plans) == 1 and len(replans) == 1
    assert replans[0]["planned"] == plans[0]["epochs"]["num_epochs_finetuning"] and replans[0]["epochs"] >= 1
    return plans[0], {**plans[0]["epochs"], "num_epochs_finetuning": replans[0]["epochs"]}


def clock_hooks_off(monkeypatch) -> None:
    """Growth and the finetuning keep to their plan whatever this machine's clock says: whether they
    meet the budget is tested on its own below (on a loaded machine growth has ended before its
    first split: CI)."""
    monkeypatch.setattr(TreeTrainer, "_budget_ends_growth", lambda self, subsets=None: False)
    monkeypatch.setattr(TreeTrainer, "_budget_refits_finetuning", lambda self, phase, pstate: None)


def test_a_budgeted_run_trains_its_plan_exactly_as_the_same_epochs_set_by_hand(tmp_path, monkeypatch,
                                                                              one_torch_thread):
    clock_hooks_off(monkeypatch)
    run_dir, _ = train_tree(budget_cfg(tmp_path, "run.name=budget", f"training.budget_minutes={BUDGET}"),
                            evaluate=False)
    plan, epochs = planned(run_dir)
    assert set(plan["predicted_minutes"]) == {"initial", "subtrees", "split selection", "intermediate", "finetuning"}
    assert plan["predicted_total_minutes"] <= BUDGET and plan["configured"]["num_epochs"] == 8
    ran = phase_epochs(run_dir)
    assert ran["initial"] == epochs["num_epochs"] and ran["finetune"] == epochs["num_epochs_finetuning"]
    assert {e for p, e in ran.items() if p.startswith("subtree")} == {epochs["num_epochs_smalltree"]}
    assert {e for p, e in ran.items() if p.startswith("intermediate")} <= {epochs["num_epochs_intermediate_fulltrain"]}

    by_hand = [f"training.{k}={v}" for k, v in epochs.items()]
    hand_dir, _ = train_tree(budget_cfg(tmp_path, "run.name=hand", *by_hand), evaluate=False)
    budgeted, manual = load_model(run_dir)[0], load_model(hand_dir)[0]
    assert budgeted.tree == manual.tree
    for (name, a), b in zip(budgeted.state_dict().items(), manual.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_budget_that_scales_the_kl_ramp_trains_as_that_ramp_given_by_hand(tmp_path, monkeypatch, one_torch_thread):
    """training.budget_scales_kl: decay_kl is divided by the budget's epoch factor (the plan
    records both), every growth phase raises alpha at that rate, and the run is the same run as
    its epochs and that decay_kl set by hand."""
    clock_hooks_off(monkeypatch)
    run_dir, _ = train_tree(budget_cfg(tmp_path, "run.name=scaled", f"training.budget_minutes={BUDGET}",
                                       "training.budget_scales_kl=true"), evaluate=False)
    plan, epochs = planned(run_dir)
    decay = plan["decay_kl"]
    assert plan["factor"] > 0 and decay == pytest.approx(0.1 / plan["factor"]) and decay != 0.1
    growth = [r for r in read_metrics(run_dir) if r["event"] == "epoch" and r["phase"] != "finetune"]
    assert {r["phase"].split("-")[0] for r in growth} >= {"initial", "subtree"}
    for r in growth:
        assert r["alpha"] == pytest.approx(min(1.0, 0.1 + (r["epoch"] - 1) * decay)), r

    by_hand = [f"training.{k}={v}" for k, v in epochs.items()] + [f"training.decay_kl={decay!r}"]
    hand_dir, _ = train_tree(budget_cfg(tmp_path, "run.name=hand", *by_hand), evaluate=False)
    scaled, manual = load_model(run_dir)[0], load_model(hand_dir)[0]
    assert scaled.tree == manual.tree
    for (name, a), b in zip(scaled.state_dict().items(), manual.state_dict().values()):
        assert torch.equal(a, b), name


def test_growth_ends_when_its_next_step_would_take_the_finetunings_share(tmp_path, monkeypatch, one_torch_thread):
    real = TreeTrainer._count_time

    def initial_phase_ran_long(self):         # the clock of a machine slower than the plan assumed
        real(self)
        if self.state.stage == "grow" and self.state.splits == 0:
            self.state.seconds_trained = max(self.state.seconds_trained, self.state.growth_deadline - 1e-3)

    monkeypatch.setattr(TreeTrainer, "_count_time", initial_phase_ran_long)
    run_dir, _ = train_tree(budget_cfg(tmp_path, "run.name=late", f"training.budget_minutes={BUDGET}"), evaluate=False)
    records = read_metrics(run_dir)
    plan = next(r for r in records if r["event"] == "budget_plan")
    stop = [r for r in records if r["event"] == "budget_stop"]
    assert len(stop) == 1 and stop[0]["next_step"] == "split" and stop[0]["splits"] == 0
    assert stop[0]["minutes_trained"] + stop[0]["next_step_minutes"] > stop[0]["deadline_minutes"]
    # Both logged figures are rounded to 0.01 min, so they may differ by up to 0.01 plus float error.
    assert stop[0]["deadline_minutes"] == pytest.approx(
        plan["budget_minutes"] - plan["predicted_minutes"]["finetuning"], abs=0.011)
    ran = phase_epochs(run_dir)
    assert not any(p.startswith(("subtree", "intermediate")) for p in ran) and ran["finetune"] >= 1
    assert len(load_model(run_dir)[0].tree.leaves()) <= 2


def test_settling_the_grown_tree_keeps_to_growths_deadline(tmp_path, monkeypatch, one_torch_thread):
    real = TreeTrainer._count_time

    def first_split_ran_long(self):             # on time until the first split, then late
        real(self)
        if self.state.stage == "grow":
            self.state.seconds_trained = 0.0 if self.state.splits == 0 else self.state.growth_deadline - 1e-3

    monkeypatch.setattr(TreeTrainer, "_count_time", first_split_ran_long)
    run_dir, _ = train_tree(budget_cfg(tmp_path, "run.name=settle", f"training.budget_minutes={BUDGET}",
                                       "training.num_clusters_tree=3", "training.settle_rounds=1"), evaluate=False)
    stop = [r for r in read_metrics(run_dir) if r["event"] == "budget_stop"]
    assert len(stop) == 1 and stop[0]["next_step"] == "intermediate full-train" and stop[0]["splits"] == 1
    ran = phase_epochs(run_dir)
    assert not any(p.startswith("settle") for p in ran) and ran["finetune"] >= 1


class FinetuningClock:
    """growth.py's clock: stopped while the tree grows (growth takes none of the budget), then
    ``epoch_s`` per finetuning epoch; and the finetuning's first fit, ``guess`` epochs, in place
    of the few timed steps whose error the refit after every epoch corrects."""

    def __init__(self, monkeypatch, epoch_s: float, guess: int):
        self.now = 1000.0
        monkeypatch.setattr(growth_module, "time", SimpleNamespace(monotonic=lambda: self.now))
        monkeypatch.setattr(growth_module, "finetuning_epochs",
                            lambda *args, **kwargs: {"epochs": guess, "minutes_left": 0.0, "epoch_seconds": epoch_s,
                                                     "leaves": 0})
        real_count_epoch = TreeTrainer._count_epoch

        def count_epoch(trainer):
            if trainer.state.stage == "final_prune":      # set when the finetuning starts
                self.now += epoch_s
            return real_count_epoch(trainer)

        monkeypatch.setattr(TreeTrainer, "_count_epoch", count_epoch)


def finetuning_records(run_dir) -> tuple[list[tuple], list[dict], int]:
    """The finetuning's refits as (epochs done, before, after), its epoch records, its length."""
    records = read_metrics(run_dir)
    refits = [(r["epochs_done"], r["epochs_before"], r["epochs"]) for r in records
              if r["event"] == "budget_refit_finetuning"]
    trained = [r for r in records if r["event"] == "epoch" and r["phase"] == "finetune"]
    length = next(r["epochs"] for r in records if r["event"] == "phase_end" and r["phase"] == "finetune")
    return refits, trained, length


def assert_parts_count_the_whole_run(run_dir) -> None:
    """The minutes per part of a budgeted run (structgen.runtime.part_minutes, which the train
    command and benchmarks/mnist_quality.py print) add up to the run (the budget's timing probes
    included), and its finetuning's part holds the epochs trained before a refit as well as after
    (the refit's record once cut them out: 1.8 of 20 minutes shown)."""
    parts, records = part_minutes(run_dir), read_metrics(run_dir)
    assert {"budget timing", "finetune"} <= parts.keys()
    start = (Path(run_dir) / "config.yml").stat().st_mtime
    assert sum(parts.values()) * 60 == pytest.approx(records[-1]["time"] - start)
    end = next(r["time"] for r in records if r["event"] == "phase_end" and r["phase"] == "finetune")
    first_epoch = next(i for i, r in enumerate(records) if r["event"] == "epoch" and r["phase"] == "finetune")
    began = [r["time"] for r in records[:first_epoch] if r["event"] not in INSIDE_A_PHASE][-1]
    assert parts["finetune"] * 60 == pytest.approx(end - began)


def planned_ramp(cfg, epochs: int) -> list[float]:
    """α per epoch of a finetuning planned with ``epochs`` epochs from the start."""
    return [min(1.0, cfg.training.kl_start + e * finetune_decay(epochs)) for e in range(epochs)]


# With 4.5 epochs' time in the budget (the half keeps the divisions off integers) 4 fit, from every epoch's end.
@pytest.mark.parametrize("guess", [2, 4, 6])
def test_the_finetuning_is_refitted_to_the_budget_at_its_own_pace(tmp_path, monkeypatch, one_torch_thread, guess):
    FinetuningClock(monkeypatch, epoch_s=BUDGET * 60 / 4.5, guess=guess)
    cfg = budget_cfg(tmp_path, "run.name=refit", f"training.budget_minutes={BUDGET}")
    run_dir, _ = train_tree(cfg, evaluate=False)
    refits, trained, length = finetuning_records(run_dir)
    assert refits == ([] if guess == 4 else [(1, guess, 4)]) and length == 4
    assert [r["epoch"] for r in trained] == [1, 2, 3, 4] and trained[-1]["epochs"] == 4
    # the KL ramp of a finetuning planned with 4 epochs: it ends at alpha = 1 whether lengthened or shortened
    assert [r["alpha"] for r in trained] == pytest.approx(planned_ramp(cfg, 4))
    if guess == 4:
        return
    assert_parts_count_the_whole_run(run_dir)
    # ... and trains exactly as that finetuning would: same weights as the same epochs set by hand
    _, epochs = planned(run_dir)
    by_hand = [f"training.{k}={v}" for k, v in {**epochs, "num_epochs_finetuning": 4}.items()]
    monkeypatch.setattr(TreeTrainer, "_budget_ends_growth", lambda self, subsets=None: False)
    hand_dir, _ = train_tree(budget_cfg(tmp_path, "run.name=hand", *by_hand), evaluate=False)
    refitted, manual = load_model(run_dir)[0], load_model(hand_dir)[0]
    assert refitted.tree == manual.tree
    for (name, a), b in zip(refitted.state_dict().items(), manual.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_finetuning_is_lengthened_with_half_an_epoch_to_spare_or_at_its_end(tmp_path, monkeypatch,
                                                                               one_torch_thread):
    # 5.3 epochs' time: after epoch 1 a fifth would fit with 0.3 to spare (too little, while epochs are to
    # come); at the end of the fourth it fits, and nothing is left to flip back
    FinetuningClock(monkeypatch, epoch_s=BUDGET * 60 / 5.3, guess=4)
    cfg = budget_cfg(tmp_path, "run.name=spare", f"training.budget_minutes={BUDGET}")
    refits, trained, length = finetuning_records(train_tree(cfg, evaluate=False)[0])
    assert refits == [(4, 4, 5)] and length == 5
    assert [r["alpha"] for r in trained] == pytest.approx(planned_ramp(cfg, 4) + [1.0])


def test_the_finetuning_ends_when_its_next_epoch_would_end_past_the_budget(tmp_path, monkeypatch, one_torch_thread):
    FinetuningClock(monkeypatch, epoch_s=BUDGET * 60 / 1.5, guess=3)
    run_dir, _ = train_tree(budget_cfg(tmp_path, "run.name=cut", f"training.budget_minutes={BUDGET}"), evaluate=False)
    refits, trained, length = finetuning_records(run_dir)
    assert refits == [(1, 3, 1)] and length == 1
    assert [r["epoch"] for r in trained] == [1] and trained[-1]["epochs"] == 1
    refit = next(r for r in read_metrics(run_dir) if r["event"] == "budget_refit_finetuning")
    assert refit["minutes_trained"] + refit["epoch_minutes"] > refit["budget_minutes"]
    # the run ends as every run does: checkpointed, finished, loadable
    assert load_model(run_dir)[0].tree.leaves()


def stopped_and_resumed(cfg, monkeypatch, stop_phase: str, stop_epoch: int):
    """The run stopped (as by Ctrl-C) after that epoch of that phase, then resumed; its folder."""
    real = phase_module.maybe_die

    def stop_there(phase, epoch, rank):
        if phase == stop_phase and epoch == stop_epoch:
            raise KeyboardInterrupt
        real(phase, epoch, rank)

    monkeypatch.setattr(phase_module, "maybe_die", stop_there)
    with pytest.raises(KeyboardInterrupt):
        train_tree(cfg, evaluate=False)
    monkeypatch.setattr(phase_module, "maybe_die", real)
    return train_tree(cfg, resume=True, evaluate=False)[0]


def test_a_finetuning_refitted_and_resumed_keeps_its_length_and_ramp(tmp_path, monkeypatch, one_torch_thread):
    FinetuningClock(monkeypatch, epoch_s=BUDGET * 60 / 4.5, guess=2)
    cfg = budget_cfg(tmp_path, "run.name=again", f"training.budget_minutes={BUDGET}")
    run_dir = stopped_and_resumed(cfg, monkeypatch, "finetune", 2)
    refits, trained, length = finetuning_records(run_dir)
    assert refits == [(1, 2, 4)] and length == 4
    assert [r["epoch"] for r in trained] == [1, 2, 3, 4]
    assert [r["alpha"] for r in trained] == pytest.approx(planned_ramp(cfg, 4))


def test_a_resumed_budgeted_run_keeps_its_plan(tmp_path, monkeypatch, one_torch_thread):
    clock_hooks_off(monkeypatch)
    cfg = budget_cfg(tmp_path, "run.name=stop", f"training.budget_minutes={BUDGET}")
    run_dir = stopped_and_resumed(cfg, monkeypatch, "subtree-1", 1)
    _, epochs = planned(run_dir)
    ran = phase_epochs(run_dir)
    assert ran["initial"] == epochs["num_epochs"] and ran["subtree-1"] == epochs["num_epochs_smalltree"]
    assert ran["finetune"] == epochs["num_epochs_finetuning"]
    with pytest.raises(Exception, match="training.budget_minutes"):
        train_tree(budget_cfg(tmp_path, "run.name=stop", "training.budget_minutes=0.5"), resume=True)


def test_the_finetuning_is_refitted_on_a_copy_of_the_grown_tree(tmp_path, one_torch_thread):
    from structgen.data.loaders import run_loaders
    from structgen.data.run_data import load_run_data
    from structgen.runtime.context import Context
    from structgen.train.budget import finetuning_epochs

    cfg = budget_cfg(tmp_path)
    data = load_run_data(cfg)
    model = load_model(train_tree(budget_cfg(tmp_path, "run.name=grown", "training.num_epochs=1",
                                             "training.num_epochs_smalltree=1", "training.num_epochs_finetuning=0",
                                             "training.num_epochs_intermediate_fulltrain=0"), evaluate=False)[0])[0]
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    args = (cfg, Context(run_dir=tmp_path), model, data.train.images, data.train.labels, run_loaders(cfg))
    torch.manual_seed(5)
    nothing_left = finetuning_epochs(*args, seconds_left=0.0)
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(1), after)                      # the random state is put back
    assert nothing_left["epochs"] == 1 and nothing_left["leaves"] == len(model.tree.leaves())
    hour = finetuning_epochs(*args, seconds_left=3600.0)
    assert hour["epochs"] == pytest.approx(3600 / hour["epoch_seconds"], rel=0.01)
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name
