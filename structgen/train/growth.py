"""The growth schedule (algorithm.md §3.2): initial tree -> grow loop (sub-trees, intermediate
full-trains) -> prune -> finetune -> final prune, as a resumable state machine.

`GrowthState` is plain data and goes into every checkpoint; `TreeTrainer.run()` continues from
whatever state it is given, so a killed run resumes at the same phase and epoch. All decisions
come from statistics gathered over every rank (`runtime.leaf_probabilities`) and are broadcast
from rank 0 as a guard, so every rank holds the same topology.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from structgen.config import config_to_dict
from structgen.data.loaders import run_loaders
from structgen.models.treevae import ModelSpec, SubTree, TreeVAE
from structgen.runs import last_checkpoint
from structgen.runtime.checkpoint_io import rng_state, save_checkpoint, set_rng_state
from structgen.runtime.context import Context
from structgen.runtime.tree_checkpoint import FORMAT as TREE_FORMAT
from structgen.train.annealing import finetune_decay, refit_finetune_ramp
from structgen.train.budget import (GrowthShape, StepCosts, finetuning_epochs, finetuning_length,
                                    intermediate_seconds, plan_schedule, split_seconds)
from structgen.runtime.leaf_probabilities import leaf_probabilities
from structgen.train.parallel_round import train_round
from structgen.train.phase import Phase, PhaseRunner, PhaseState
from structgen.train.undone_splits import may_split_again, sibling, undone_children
from structgen.tree.topology import Tree

STAGES = ("initial", "grow", "prune", "finetune", "final_prune", "done")


@dataclass
class GrowthState:
    stage: str = "initial"
    phases_started: int = 0
    splits: int = 0
    grow_iterations: int = 0
    intermediate_done_at: list[int] = field(default_factory=list)   # split counts already retrained at
    settles: int = 0                                                 # training.settle_rounds used
    young_splits: list[str] = field(default_factory=list)   # leaves split since the last full-tree retrain
    young_mass: dict = field(default_factory=dict)          # their children's mass when that retrain began
    unexpandable: list[str] = field(default_factory=list)
    epochs_done: int = 0                                             # across phases: the TensorBoard step
    phase: dict | None = None
    before_finetuning: dict = field(default_factory=dict)   # leaf -> {"share", "mass"} when finetuning began
    round: list[dict] | None = None    # parallel growth: the sub-tree phases of the round under way
    epochs: dict | None = None         # training.budget_minutes: the planned epoch counts by key
    decay_kl: float | None = None      # ... and the growth phases' alpha per epoch (budget_scales_kl)
    growth_deadline: float | None = None   # ... and the seconds_trained at which growth must be over
    step_costs: dict | None = None         # ... and the measured StepCosts it predicts growth with
    seconds_trained: float = 0.0       # wall seconds of this run so far, counted at every checkpoint


class TreeTrainer:
    def __init__(self, cfg, ctx: Context, data, log, progress, resume: dict | None = None):
        self.cfg, self.ctx, self.data, self.log, self.progress = cfg, ctx, data, log, progress
        if resume is None:
            torch.manual_seed(cfg.run.seed)
            np.random.seed(cfg.run.seed % 2**32)
            spec = ModelSpec.from_config(cfg.model, data.image_shape, contrastive=self._contrastive)
            self.model = TreeVAE(spec, Tree.complete(cfg.training.initial_depth)).to(ctx.device)
            self.state = GrowthState()
            self._saved_phase = None
        else:
            self.model = TreeVAE.from_state(resume).to(ctx.device)
            self.state = GrowthState(**resume["growth"])
            self._saved_phase = resume.get("phase_state")
            self._resume_rng = resume["rng"]
            set_rng_state(self._resume_rng)
        ctx.model = self.model
        self.loaders = run_loaders(cfg)
        self.runner = PhaseRunner(cfg.training, cfg.run, ctx, self.model, data.train.images, data.train.labels,
                                  self.loaders, log, progress, self._checkpoint)
        self._clock = time.monotonic()
        self._phase_clock = (self._clock, 0)     # when the phase under way started here, and its epochs then
        if resume is None and cfg.training.budget_minutes > 0:
            self._plan_budget()

    @property
    def _contrastive(self) -> bool:
        t = self.cfg.training
        return t.augment and "instancewise_full" in t.augmentation_method

    @property
    def checkpoint_path(self) -> Path:
        return last_checkpoint(self.ctx.run_dir)

    def _plan_budget(self) -> None:
        """Epoch counts scaled to training.budget_minutes and growth's deadline, planned once (a
        resumed run keeps them)."""
        plan = plan_schedule(self.cfg, self.ctx, self.model.spec, self.data.train.images, self.data.train.labels,
                             self.loaders)
        plan = self.ctx.broadcast_object(plan)          # the ranks timed their own steps: use rank 0's
        self.log_event("budget_plan", **plan)
        if self.ctx.is_main:
            e = plan["epochs"]
            self.progress.line(
                f"budget {plan['budget_minutes']:g} min: epochs {e['num_epochs']}/{e['num_epochs_smalltree']}/"
                f"{e['num_epochs_intermediate_fulltrain']}/{e['num_epochs_finetuning']} (initial/sub-tree/"
                f"intermediate/finetuning), predicted {plan['predicted_total_minutes']:.1f} min of training"
                + (f"; decay_kl {plan['decay_kl']:.4g} per epoch, scaled with them"
                   if self.cfg.training.budget_scales_kl else ""))
        self.state.epochs = plan["epochs"]
        self.state.decay_kl = plan["decay_kl"]
        self.state.growth_deadline = plan["growth_deadline_minutes"] * 60
        self.state.step_costs = plan["seconds_per_image"]

    def _budget_ends_growth(self, subsets: list[int] | None = None) -> bool:
        """True when the grow loop's next step, the intermediate full-train due (``subsets``
        None) or the sub-trees of the chosen leaves on subsets of these sizes, is predicted to end
        past growth's deadline, taking from the finetuning its planned share of the budget (rank 0
        decides)."""
        s = self.state
        if s.growth_deadline is None:
            return False
        self._count_time()
        costs, leaves = StepCosts(**s.step_costs), len(self.model.tree.leaves())
        shape = GrowthShape.of_run(self.cfg.training, len(self.data.train.images), self.ctx.world_size)
        if subsets is None:
            step, needed = "intermediate full-train", intermediate_seconds(s.epochs, costs, shape, leaves)
        else:
            step, needed = "split", split_seconds(s.epochs, costs, subsets, self.ctx.world_size, shape)
        late = self.ctx.broadcast_object(s.seconds_trained + needed > s.growth_deadline)
        if late:
            self.log_event("budget_stop", minutes_trained=round(s.seconds_trained / 60, 2), next_step=step,
                           next_step_minutes=round(needed / 60, 2), deadline_minutes=round(s.growth_deadline / 60, 2),
                           leaves=leaves, splits=s.splits)
            if self.ctx.is_main:
                self.progress.line(f"budget: growth ends at {leaves} leaves after {s.splits} splits, "
                                   f"{s.seconds_trained / 60:.1f} min in: the next {step} ({needed / 60:.1f} min) "
                                   f"would end past growth's deadline ({s.growth_deadline / 60:.1f} min), "
                                   f"the rest is the finetuning's")
        return late

    def _budget_refits_finetuning(self, phase: Phase, pstate: PhaseState) -> None:
        """The finetuning's length, refitted after each of its epochs to as many as fit the
        budget at the pace of its epochs so far, and its KL ramp re-aimed to reach 1 by the new
        last epoch. Its first fit is timed on a few steps of a copy, and this machine's speed
        drifts both ways: FMNIST trained 175 s per epoch where the steps said 144 (3 min over a
        43-minute budget), MNIST about 180 s where they said 260 (6 min left unused). So the
        budget is both a ceiling and a target. Rank 0 decides."""
        s = self.state
        if phase.name != "finetune" or s.growth_deadline is None:
            return
        self._count_time()
        started, epochs_then = self._phase_clock
        epoch_s = (time.monotonic() - started) / (phase.epoch - epochs_then)
        left = self.cfg.training.budget_minutes * 60 - s.seconds_trained
        epochs = self.ctx.broadcast_object(finetuning_length(phase.epoch, phase.epochs, epoch_s, left))
        if epochs == phase.epochs:
            return
        self.log_event("budget_refit_finetuning", epochs_done=phase.epoch, epochs_before=phase.epochs, epochs=epochs,
                       minutes_trained=round(s.seconds_trained / 60, 2), epoch_minutes=round(epoch_s / 60, 3),
                       budget_minutes=self.cfg.training.budget_minutes)
        if self.ctx.is_main:
            now = (f"ends after {phase.epoch} of {phase.epochs} epochs" if epochs == phase.epoch
                   else f"takes {epochs} epochs, not {phase.epochs}")
            # printed before the epoch's own line, which already shows the new length: say which epoch
            self.progress.line(f"budget: after finetuning epoch {phase.epoch}, {s.seconds_trained / 60:.1f} min in, at "
                               f"{epoch_s / 60:.2f} min per epoch the finetuning {now}, to end within the budget "
                               f"({self.cfg.training.budget_minutes:g} min)")
        phase.epochs = epochs
        if epochs > phase.epoch:
            refit_finetune_ramp(pstate.annealer, epochs)

    def _replan_finetuning(self) -> None:
        """Fit the finetuning to what growth left of the budget (it fills or gives back the
        difference between the plan's prediction and what growth really took)."""
        self._count_time()
        left = self.cfg.training.budget_minutes * 60 - self.state.seconds_trained
        fit = finetuning_epochs(self.cfg, self.ctx, self.model, self.data.train.images, self.data.train.labels,
                                self.loaders, left)
        fit = self.ctx.broadcast_object(fit)
        planned = self.state.epochs["num_epochs_finetuning"]
        self.state.epochs["num_epochs_finetuning"] = fit["epochs"]
        self.log_event("budget_replan", planned=planned, **fit)
        if self.ctx.is_main:
            self.progress.line(f"budget: {fit['minutes_left']:.1f} min left, {fit['epoch_seconds'] / 60:.2f} min per "
                               f"epoch of the {fit['leaves']}-leaf tree: {fit['epochs']} finetuning epochs "
                               f"(planned {planned})")

    def _count_time(self) -> None:
        now = time.monotonic()
        self.state.seconds_trained += now - self._clock
        self._clock = now

    def epochs(self, key: str) -> int:
        """Epochs of the phase behind training.<key>: the budget's plan, else the config's."""
        return self.state.epochs[key] if self.state.epochs else getattr(self.cfg.training, key)

    @property
    def decay_kl(self) -> float:
        """The growth phases' alpha per epoch: the budget's plan (a plan from before
        budget_scales_kl has none), else training.decay_kl."""
        return self.cfg.training.decay_kl if self.state.decay_kl is None else self.state.decay_kl

    # ---- the schedule ----------------------------------------------------------------------
    def run(self) -> TreeVAE:
        t = self.cfg.training
        # A stage is set when the phase it follows starts, so the phase may still be running.
        # Checkpoints from before the final prune say "done" during the finetuning and end there.
        while self.state.stage != "done" or self.state.phase is not None:
            if self.state.phase is not None:
                self._run_phase()
            elif self.state.round is not None:
                self._run_round()
            elif self.state.stage == "initial":
                self._start(Phase("initial", "full", 0, self.epochs("num_epochs"), t.kl_start, self.decay_kl),
                            next_stage="grow")
            elif self.state.stage == "grow":
                self._grow_step()
            elif self.state.stage == "prune":
                self.state.before_finetuning = self._prune() if t.prune else {}
                self.state.stage = "finetune"
                self._checkpoint(None, None)
            elif self.state.stage == "finetune":
                if self.state.epochs and self.state.epochs["num_epochs_finetuning"] > 0:
                    self._replan_finetuning()
                e = self.epochs("num_epochs_finetuning")
                self._start(Phase("finetune", "full", 0, e, t.kl_start, finetune_decay(e),
                                  warmup_epochs=t.retrain_warmup_epochs, lr_factor=t.finetune_lr_factor),
                            next_stage="final_prune")
            elif self.state.stage == "final_prune":
                # The finetuning can starve a branch that held real mass before it (MNIST: two
                # leaves went from 9.4 % and 8.1 % to 0.0 %); such a leaf must not stay in the tree.
                if t.prune and t.prune_after_finetuning and self.epochs("num_epochs_finetuning") > 0:
                    self._prune(after_finetuning=True)
                self.state.stage = "done"
                self._checkpoint(None, None)
        self._checkpoint(None, None)
        return self.model

    def _start(self, phase: Phase, next_stage: str | None = None) -> None:
        phase.index = self.state.phases_started
        self.state.phases_started += 1
        if next_stage:
            self.state.stage = next_stage
        if phase.epochs <= 0:
            return
        self.state.phase = phase.to_dict()
        if self.ctx.is_main:
            where = f" below {phase.leaf} on {len(phase.subset)} images" if phase.leaf else ""
            self.progress.line(f"== phase {phase.name}: {phase.epochs} epochs{where}; tree has "
                               f"{len(self.model.tree.leaves())} leaves")

    def _run_phase(self) -> None:
        phase = Phase(**self.state.phase)
        if self._saved_phase is not None:
            pstate = self.runner.new_state(phase, self._saved_phase)
            set_rng_state(self._resume_rng)     # building the sub-tree drew init weights: undo that
            self._saved_phase = None
        else:
            pstate = self.runner.new_state(phase)
            self._checkpoint(phase, pstate)     # fresh modules and optimiser: resumable from epoch 0
        self._phase_clock = (time.monotonic(), phase.epoch)
        self.runner.run(phase, pstate, on_epoch=self._count_epoch, refit=self._budget_refits_finetuning)
        if phase.kind == "subtree":
            self._attach_split(phase.leaf, pstate.subtree)
        self.log_event("phase_end", phase=phase.name, epochs=phase.epochs, n_leaves=len(self.model.tree.leaves()))
        self.state.phase = None
        self._checkpoint(None, None)

    def _attach_split(self, leaf: str, subtree, **fields) -> None:
        """Hang a trained sub-tree below `leaf`, count the split and keep it young until the next
        full-tree retrain judges it (training.young_split_keep)."""
        self.model.attach(leaf, subtree)
        self.state.splits += 1
        self.state.young_splits.append(leaf)
        self.log_event("split", leaf=leaf, splits=self.state.splits, tree=self.model.tree.bfs(), **fields)

    def _grow_step(self) -> None:
        t, s = self.cfg.training, self.state
        if s.young_mass:
            self._undo_young_splits()
        if not t.grow or s.grow_iterations >= t.max_grow_iterations:
            s.stage = "prune"
            return
        # Every 3 splits; a parallel round may step over a multiple of 3, so compare thirds.
        last_retrain = s.intermediate_done_at[-1] if s.intermediate_done_at else 0
        if (t.intermediate_fulltrain and s.splits // 3 > last_retrain // 3
                and self.epochs("num_epochs_intermediate_fulltrain") > 0):
            if self._budget_ends_growth():
                s.stage = "prune"
                return
            s.intermediate_done_at.append(s.splits)
            self._start_retrain(Phase(f"intermediate-{len(s.intermediate_done_at)}", "full", 0,
                                      self.epochs("num_epochs_intermediate_fulltrain"), t.kl_start, self.decay_kl,
                                      warmup_epochs=t.retrain_warmup_epochs))
            return
        chosen = self.ctx.broadcast_object(self._choose_leaves())
        if not chosen and self._settle_due(last_retrain):
            if self._budget_ends_growth():
                s.stage = "prune"
                return
            self._settle()
            return
        if not chosen or self._budget_ends_growth([len(subset) for _, subset in chosen]):
            s.stage = "prune"
            return
        phases = []
        for leaf, subset in chosen:
            s.grow_iterations += 1
            phases.append(Phase(f"subtree-{s.splits + len(phases) + 1}", "subtree", 0,
                                self.epochs("num_epochs_smalltree"),
                                t.kl_start, self.decay_kl, leaf=leaf, subset=subset))
        if len(phases) == 1:        # one leaf to split: every worker trains it, resumable by the epoch
            self._start(phases[0])
        else:
            self._start_round(phases)

    def _settle_due(self, last_retrain: int) -> bool:
        """Growth is over, but leaves split since the last full-tree retrain have only been
        trained as sub-trees; training.settle_rounds retrains the full tree first, so that a
        branch it empties (a class growth had split across two branches) is grown again rather
        than found dead after the finetuning."""
        t, s = self.cfg.training, self.state
        return (s.settles < t.settle_rounds and s.splits > last_retrain
                and self.epochs("num_epochs_intermediate_fulltrain") > 0)

    def _settle(self) -> None:
        s = self.state
        s.settles += 1
        s.intermediate_done_at.append(s.splits)
        if self.ctx.is_main:
            self.progress.line(f"== growth is over after {s.splits} splits; settling the full tree before the "
                               f"finetuning (round {s.settles} of {self.cfg.training.settle_rounds}), then growing "
                               f"again if it empties leaves")
        t = self.cfg.training
        self._start_retrain(Phase(f"settle-{s.settles}", "full", 0,
                                  self.epochs("num_epochs_intermediate_fulltrain"), t.kl_start, self.decay_kl,
                                  warmup_epochs=t.retrain_warmup_epochs))

    # ---- splits the full tree undoes ---------------------------------------------------------
    def _start_retrain(self, phase: Phase) -> None:
        """Start a full-tree retrain while growing (intermediate or settle); with
        training.young_split_keep, first measure the mass of the children of every split made
        since the last one, to judge after it whether the joint training kept them."""
        s = self.state
        if self.cfg.training.young_split_keep > 0 and s.young_splits:
            mass = {leaf: shares["mass"] for leaf, shares in self._leaf_shares().items()}
            s.young_mass = {child: mass[child] for parent in s.young_splits
                            for child in (parent + "0", parent + "1") if child in mass}
        s.young_splits = []
        self._start(phase)

    def _undo_young_splits(self) -> None:
        """training.young_split_keep, after a retrain: prune the young children it took most of the
        mass from (``undone_splits``); growth goes on where they counted as effective leaves."""
        before, self.state.young_mass = self.state.young_mass, {}
        after = {leaf: shares["mass"] for leaf, shares in self._leaf_shares().items()}
        undone = undone_children(before, after, self.cfg.training.young_split_keep)
        for child in self.ctx.broadcast_object(undone):
            self._undo_split(child, before[child], after[child])

    def _undo_split(self, child: str, mass_before: float, mass_after: float) -> None:
        survivor = sibling(child)
        self.model.prune(child)
        again = may_split_again(self.model.tree, child)
        if not again and survivor not in self.state.unexpandable:
            self.state.unexpandable.append(survivor)
        keep = self.cfg.training.young_split_keep
        self.log_event("undo_split", leaf=child, mass_before=mass_before, mass_after=mass_after, keep=keep,
                       survivor=survivor, survivor_expandable=again, tree=self.model.tree.bfs())
        if self.ctx.is_main:
            self.progress.line(f"== pruned {child}, a young split the full tree undid: {mass_before:.1%} of the mass "
                               f"before the retrain, {mass_after:.1%} after it (kept under {keep:.0%}); {survivor} "
                               + ("may be split again" if again else "is not split again (second undone split in "
                                                                     "a row)"))

    def _choose_leaves(self) -> list[tuple[str, list[int]]]:
        """The expandable leaves with the most assigned training samples, most first, as many
        as this round splits (one unless training.parallel_subtrees > 1); none when growth is
        over (§3.2 step 2).

        Unlike the reference (§8.10), a leaf at the depth limit is marked unexpandable and the
        next one is tried, and sample counts stay aligned with their leaves.
        """
        t, s = self.cfg.training, self.state
        probs = leaf_probabilities(self.model, self.data.train.images, self.ctx, self.cfg.evaluation.batch_size)
        leaves = self.model.tree.leaves()
        n = probs.shape[0]
        mass = probs.sum(0)
        n_eff = int((mass >= t.effective_leaf_threshold * n).sum())
        threshold = min(1.0 / max(n_eff, 1), 0.5)
        members = [torch.nonzero(probs[:, i] >= threshold).flatten() for i in range(len(leaves))]
        self.log_event("grow_check", n_effective=n_eff, leaves=leaves, mass=(mass / n).tolist(),
                       candidates=[len(m) for m in members])
        if n_eff >= t.num_clusters_tree:
            return []
        # each split adds at most one effective leaf: never split past num_clusters_tree
        wanted = min(t.parallel_subtrees, t.num_clusters_tree - n_eff, t.max_grow_iterations - s.grow_iterations)
        ranked = [(len(members[i]), i, leaf, members[i]) for i, leaf in enumerate(leaves) if leaf not in s.unexpandable]
        ranked.sort(key=lambda item: (-item[0], item[1]))
        chosen = []
        for size, _, leaf, subset in ranked:
            if len(chosen) == wanted:
                break
            if size < t.batch_size:
                continue
            if Tree.depth(leaf) >= self.cfg.depth_limit:
                s.unexpandable.append(leaf)
                continue
            chosen.append((leaf, subset.tolist()))
        return chosen

    # ---- parallel growth ---------------------------------------------------------------------
    def _start_round(self, phases: list[Phase]) -> None:
        for phase in phases:
            phase.index = self.state.phases_started
            self.state.phases_started += 1
        if phases[0].epochs <= 0:
            return
        self.state.round = [phase.to_dict() for phase in phases]
        if self.ctx.is_main:
            world = self.ctx.world_size
            self.progress.line(f"== round of {len(phases)} sub-trees: " + ", ".join(
                f"{p.name} below {p.leaf} on {len(p.subset)} images (worker {j % world})"
                for j, p in enumerate(phases)) + f"; tree has {len(self.model.tree.leaves())} leaves")
        self._checkpoint(None, None)      # a run stopped inside the round trains it again from here

    def _run_round(self) -> None:
        phases = [Phase(**p) for p in self.state.round]
        results = train_round(self, phases)
        for phase, result in zip(phases, results):
            self._replay(phase, result)
            subtree = SubTree(self.model, phase.leaf).to(self.ctx.device)
            subtree.load_state_dict(result["state"])
            self._attach_split(phase.leaf, subtree, worker=result["worker"], seconds=round(result["seconds"], 2))
            self.log_event("phase_end", phase=phase.name, epochs=phase.epochs,
                           n_leaves=len(self.model.tree.leaves()))
        self.state.round = None
        self._checkpoint(None, None)

    def _replay(self, phase: Phase, result: dict) -> None:
        """Log a sub-tree another process trained alone as if this run had trained it: its
        records with the run's epoch count as their step, and Tune's per-epoch hook on every rank."""
        for event, stepped, fields in result["records"]:
            step = self._count_epoch() if stepped else None
            if event == "epoch" and self.ctx.on_epoch_end is not None:
                self.ctx.on_epoch_end(fields)
            self.log_event(event, step=step, **fields)
        if self.ctx.is_main and result["worker"] != self.ctx.rank:
            last = [fields for event, _, fields in result["records"] if event == "epoch"][-1]
            masses = "/".join(f"{m:.1%}" for m in last["leaf_mass"].values())
            self.progress.line(f"   {phase.name} below {phase.leaf} trained by worker {result['worker']} in "
                               f"{result['seconds']:.0f} s: loss {last['loss']:.2f}, children {masses}")

    def _leaf_shares(self) -> dict[str, dict]:
        """Per leaf, in BFS order: its share of the training images whose most probable leaf it
        is (what pruning judges) and its share of the probability mass."""
        probs = leaf_probabilities(self.model, self.data.train.images, self.ctx, self.cfg.evaluation.batch_size)
        n = probs.shape[0]
        counts = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).double()
        return {leaf: {"share": (counts[i] / n).item(), "mass": (probs[:, i].double().sum() / n).item()}
                for i, leaf in enumerate(self.model.tree.leaves())}

    def _prune(self, after_finetuning: bool = False) -> dict[str, dict]:
        """Remove the smallest leaf while it holds under prune_threshold of the assignments
        (§3.2 step 3); returns the remaining leaves' shares. ``after_finetuning``: the same rule
        once the final finetuning is over, logged with each leaf's shares from before it."""
        t = self.cfg.training
        while True:
            shares = self._leaf_shares()
            leaf = min(shares, key=lambda p: shares[p]["share"])      # first of equal shares, as argmin
            share = shares[leaf]["share"]
            if len(shares) == 1 or share >= t.prune_threshold:
                return shares
            leaf = self.ctx.broadcast_object(leaf)
            self.model.prune(leaf)
            if after_finetuning:
                self._log_dead_leaf(leaf, shares[leaf])
            else:
                self.log_event("prune", leaf=leaf, share=share, tree=self.model.tree.bfs())
                if self.ctx.is_main:
                    self.progress.line(f"== pruned {leaf} ({share:.2%} of assignments)")

    def _log_dead_leaf(self, leaf: str, after: dict) -> None:
        before = self.state.before_finetuning.get(leaf, {})      # empty when resumed from an older checkpoint
        self.log_event("prune_after_finetuning", leaf=leaf, share=after["share"], mass=after["mass"],
                       share_before=before.get("share"), mass_before=before.get("mass"),
                       threshold=self.cfg.training.prune_threshold, tree=self.model.tree.bfs())
        if self.ctx.is_main:
            was = (f"{before['share']:.2%} of assignments ({before['mass']:.2%} of the mass) before it, "
                   if before else "")
            self.progress.line(f"== pruned {leaf}, emptied by the final finetuning: {was}{after['share']:.2%} "
                               f"({after['mass']:.2%}) after it, under prune_threshold "
                               f"{self.cfg.training.prune_threshold:.2%}")

    # ---- checkpoints and events -------------------------------------------------------------
    def _count_epoch(self) -> int:
        """Called after every training epoch; the running count is the TensorBoard step."""
        self.state.epochs_done += 1
        return self.state.epochs_done

    def log_event(self, event: str, step: int | None = None, **fields) -> None:
        if self.ctx.is_main:
            self.log.write(event, step=step, **fields)

    def _checkpoint(self, phase: Phase | None, pstate: PhaseState | None) -> None:
        if phase is not None:
            self.state.phase = phase.to_dict()
        self._count_time()
        state = {
            "format": TREE_FORMAT,
            "config": config_to_dict(self.cfg),
            **self.model.to_state(),                   # spec, tree, model
            "growth": asdict(self.state),
            "phase_state": None if pstate is None else {
                "optimizer": pstate.optimizer.state_dict(), "scheduler": pstate.scheduler.state_dict(),
                "annealer": pstate.annealer.state_dict(),
                "subtree": pstate.subtree.state_dict() if pstate.subtree is not None else None},
            "rng": rng_state(),
            "metrics_lines": self.log.lines,
            "loader": {"phase_index": phase.index, "epoch": phase.epoch} if phase is not None else None,
        }
        path = save_checkpoint(state, self.checkpoint_path) if self.ctx.is_main else None
        if self.ctx.on_checkpoint is not None:     # every rank: Ray's report() is a collective
            self.ctx.on_checkpoint(state, path)
        self.ctx.barrier()
