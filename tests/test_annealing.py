"""How α and the learning rate move inside a phase: per-batch KL annealing and the warm-up of
the phases that retrain a grown tree (intermediate full-trains, final finetuning)."""
import pytest
from conftest import TINY_DATA

from structgen.api import train_tree
from structgen.config import load_config
from structgen.runtime.tree_checkpoint import load_checkpoint
from structgen.train.annealing import KLAnnealer, finetune_decay, refit_finetune_ramp
from structgen.train.phase import Phase, warmup_scale


def test_per_step_alpha_is_continuous_and_meets_the_per_epoch_values_at_epoch_starts():
    per_epoch, per_step = KLAnnealer(0.0, 0.5), KLAnnealer(0.0, 0.5, per_step=True)
    seen = []
    for _ in range(3):
        assert per_step.alpha_at(0.0) == per_epoch.alpha_at(0.5) == per_epoch.alpha
        seen += [per_step.alpha_at(i / 4) for i in range(4)]
        per_epoch.step()
        per_step.step()
    assert seen == [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.0, 1.0, 1.0]
    assert max(b - a for a, b in zip(seen, seen[1:])) == 0.125      # no jump larger than one batch's share


def test_annealer_state_round_trips_and_an_older_state_keeps_annealing_per_epoch():
    annealer = KLAnnealer(0.1, 0.2, per_step=True)
    annealer.step()
    assert KLAnnealer.from_state(annealer.state_dict()) == annealer
    old = KLAnnealer.from_state({"kl_start": 0.1, "decay": 0.2, "epochs_done": 1})   # written before per_step
    assert old.alpha_at(0.9) == old.alpha == pytest.approx(0.3)


def finetune_alphas(planned: int, refit_after: int, epochs: int, kl_start: float = 0.0) -> list[float]:
    """α per epoch of a finetune planned with ``planned`` epochs whose length became ``epochs``
    after ``refit_after`` of them (training.budget_minutes' refit)."""
    annealer, seen = KLAnnealer(kl_start, finetune_decay(planned)), []
    for epoch in range(epochs):
        if epoch == refit_after:
            refit_finetune_ramp(annealer, epochs)
        seen.append(annealer.alpha)
        annealer.step()
    return seen


@pytest.mark.parametrize("planned", [2, 6, 30])
@pytest.mark.parametrize("kl_start", [0.0, 0.5])
def test_a_finetune_refitted_after_its_first_epoch_ramps_as_one_planned_with_its_new_length(planned, kl_start):
    assert finetune_alphas(planned, 1, 5, kl_start) == pytest.approx(finetune_alphas(5, 5, 5, kl_start))


def test_a_finetune_refitted_later_ramps_on_from_its_last_alpha_and_ends_at_one():
    shortened = finetune_alphas(planned=7, refit_after=4, epochs=5)      # 0, 1/6, 2/6, 3/6: then straight to 1
    assert shortened[:4] == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6]) and shortened[4] == 1.0
    lengthened = finetune_alphas(planned=3, refit_after=2, epochs=10)    # 0, 0.5: then at a 10-epoch finetune's rate
    assert lengthened == pytest.approx([0, 0.5, 0.5 + 1 / 9, 0.5 + 2 / 9, 0.5 + 3 / 9, 0.5 + 4 / 9, 1, 1, 1, 1])
    assert all(b >= a for a, b in zip(lengthened, lengthened[1:]))
    assert finetune_alphas(planned=2, refit_after=2, epochs=6)[2:] == [1.0] * 4     # at 1 already: stays there


def test_warmup_rises_linearly_over_fractional_epochs_then_stays_at_one():
    phase = Phase("finetune", "full", 0, epochs=3, kl_start=0.0, decay_kl=0.5, warmup_epochs=1.5)
    scales = []
    for epoch in range(3):
        phase.epoch = epoch
        scales += [warmup_scale(phase, i, 4) for i in range(4)]
    assert scales[:6] == pytest.approx([k / 7 for k in range(1, 7)])
    assert scales[6:] == [1.0] * 6
    assert warmup_scale(Phase("initial", "full", 0, 3, 0.0, 0.1), 0, 4) == 1.0     # no warm-up asked


def _trace_run(tmp_path, monkeypatch, *extra):
    """Train grow=false with a 3-epoch finetune on 4 batches per epoch; return (α, lr) per batch
    of each phase, and the run folder."""
    import structgen.train.phase as phase_module
    from structgen.runtime.precision import StepPrecision

    steps = []
    real_loss, real_step = phase_module.total_loss, StepPrecision.step

    def loss(terms, alpha, aug=None):
        steps.append({"alpha": alpha})
        return real_loss(terms, alpha, aug)

    def step(self, optimizer):
        steps[-1]["lr"] = optimizer.param_groups[0]["lr"]
        return real_step(self, optimizer)

    monkeypatch.setattr(phase_module, "total_loss", loss)
    monkeypatch.setattr(StepPrecision, "step", step)
    cfg = load_config(None, TINY_DATA + [
        "data.train_subset=256", "training.batch_size=64", "training.grow=false", "training.prune=false",
        "training.num_epochs=1", "training.num_epochs_finetuning=3", "training.kl_start=0.1",
        "training.decay_kl=0.1", f"run.runs_dir={tmp_path}", "run.name=trace", *extra])
    run_dir, _ = train_tree(cfg, evaluate=False)
    return steps[:4], steps[4:], run_dir


def test_finetuning_warms_up_its_learning_rate_and_raises_alpha_batch_by_batch(tmp_path, monkeypatch):
    initial, finetune, run_dir = _trace_run(tmp_path, monkeypatch, "training.retrain_warmup_epochs=2",
                                            "training.kl_anneal=step")
    lr = 1e-3
    # The initial tree trains fresh weights: no warm-up; α rises within the epoch (decay 0.1).
    assert [s["lr"] for s in initial] == [lr] * 4
    assert [s["alpha"] for s in initial] == pytest.approx([0.1, 0.125, 0.15, 0.175])
    # The finetuning: lr from lr/9 up to lr over 2 epochs (8 batches), α 0.1 -> 1 (decay 0.5).
    assert len(finetune) == 12
    assert [s["lr"] for s in finetune] == pytest.approx([lr * k / 9 for k in range(1, 9)] + [lr] * 4)
    decay = finetune_decay(3)
    assert [s["alpha"] for s in finetune] == pytest.approx([min(1.0, 0.1 + i / 4 * decay) for i in range(12)])
    # What the checkpoint keeps is the scheduler's rate, never a warm-up-scaled one.
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["growth"]["stage"] == "done"
    from structgen.runtime.metrics_log import read_metrics
    epochs = [r for r in read_metrics(run_dir) if r["event"] == "epoch" and r["phase"] == "finetune"]
    assert [r["lr"] for r in epochs] == [lr] * 3
    assert [r["alpha"] for r in epochs] == pytest.approx([0.1, 0.6, 1.0])     # each epoch's first batch


def test_by_default_the_finetuning_is_the_references(tmp_path, monkeypatch):
    """No warm-up and α once per epoch: the gentler finetuning measured worse on MNIST (README)."""
    _, finetune, _ = _trace_run(tmp_path, monkeypatch)
    assert [s["lr"] for s in finetune] == [1e-3] * 12
    assert [s["alpha"] for s in finetune] == pytest.approx([0.1] * 4 + [0.6] * 4 + [1.0] * 4)
