"""`training.budget_minutes`: the configured schedule, scaled to fit a wall-clock budget.

The four epoch keys keep their proportions (the profiles carry the reference's 150/150/80/200)
and are multiplied by one factor, each rounded and at least 1, the largest factor whose
predicted training time fits the budget. The prediction comes from a few timed steps of
throwaway models built like the run's (the initial tree, a tree of `num_clusters_tree` leaves,
a sub-tree below its deepest leaf) on the run's own batches, so it holds for this machine,
thread count, precision and batch size. The random state is put back afterwards: a budgeted run
trains exactly as the same epochs set by hand would.

What it cannot know in advance is how growth goes; it assumes `num_clusters_tree` leaves are
reached one split at a time, each sub-tree training on about 1.5/m of the images when the tree
has m leaves (the largest leaf's members). The plan and its prediction per part go to
metrics.jsonl (`budget_plan`), so a run's real minutes can be held against them.

Growth can still run longer than planned (Fashion-MNIST: 12 splits where 8 were foreseen, when
new leaves stay under the effective-leaf threshold). So the plan also sets growth a deadline,
the budget less the planned finetuning, and the grow loop ends early (`budget_stop`) when what
it would do next (an intermediate full-train, or the sub-trees of the leaves it has chosen, on
their real subsets) is predicted to end past it: the finetuning keeps its planned share.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from structgen.data.memory_loader import passes_per_epoch
from structgen.errors import ConfigError
from structgen.models.treevae import SubTree, TreeVAE
from structgen.runtime.checkpoint_io import rng_state, set_rng_state
from structgen.runtime.leaf_probabilities import leaf_probabilities
from structgen.train.optimizer import adam
from structgen.train.phase import Phase, PhaseRunner, PhaseState, batch_per_rank
from structgen.tree.topology import Tree

EPOCH_KEYS = ("num_epochs", "num_epochs_smalltree", "num_epochs_intermediate_fulltrain", "num_epochs_finetuning")
SUBSET_SHARE = 1.5          # a split leaf's members, as a multiple of N / (leaves in the tree)
WARMUP_STEPS, TIMED_STEPS = 1, 3


@dataclass(frozen=True)
class StepCosts:
    """Seconds per training image on one rank."""
    full_first: float       # a full-tree step of the initial tree
    full_last: float        # a full-tree step with num_clusters_tree leaves
    subtree: float          # a sub-tree step below a leaf of the full-size tree
    routing: float          # a routing pass (split selection), no gradients

    def full(self, leaves: int, first: int, last: int) -> float:
        """A full-tree step at ``leaves``, linear between the two measured sizes."""
        if last <= first:
            return self.full_last
        share = (leaves - first) / (last - first)
        return self.full_first + share * (self.full_last - self.full_first)


@dataclass(frozen=True)
class GrowthShape:
    """What the schedule will do, as far as it can be told before it runs."""
    images: int             # training images per rank and epoch
    first_leaves: int       # leaves of the initial tree
    last_leaves: int        # num_clusters_tree
    splits: int             # sub-trees trained
    intermediates: bool     # training.intermediate_fulltrain
    batch: int = 1          # images per rank and step
    alone_batch: int = 1    # images per step of a sub-tree one rank trains alone (a parallel round's)
    min_batches: int = 0    # training.min_batches_per_epoch

    @classmethod
    def of_run(cls, t, images: int, world_size: int) -> "GrowthShape":
        first = 2 ** t.initial_depth
        splits = min(max(t.num_clusters_tree - first, 0), t.max_grow_iterations) if t.grow else 0
        return cls(images=-(-images // world_size), first_leaves=first, last_leaves=max(first + splits, first),
                   splits=splits, intermediates=t.intermediate_fulltrain, batch=max(1, batch_per_rank(t, world_size)),
                   alone_batch=max(1, batch_per_rank(t, 1)), min_batches=t.min_batches_per_epoch)

    def epoch_images(self, images: int, alone: bool = False) -> int:
        """Images one epoch trains on when a rank holds ``images`` (several passes over a small set)."""
        return images * passes_per_epoch(images, self.alone_batch if alone else self.batch, self.min_batches)


def predicted_seconds(epochs: dict[str, int], costs: StepCosts, shape: GrowthShape) -> dict[str, float]:
    """Seconds per part of the schedule for these epoch counts."""
    n, first, last = shape.images, shape.first_leaves, shape.last_leaves
    # a split leaf's members, as about SUBSET_SHARE / m of the images when the tree has m leaves
    subsets = [round(min(1.0, SUBSET_SHARE / m) * n) for m in range(first, first + shape.splits)]
    # the grow loop retrains the full tree after every third split (growth.py _grow_step)
    retrain_leaves = [first + 3 * j for j in range(1, shape.splits // 3 + 1)] if shape.intermediates else []
    return {
        "initial": epochs["num_epochs"] * shape.epoch_images(n) * costs.full(first, first, last),
        "subtrees": sum(split_seconds(epochs, costs, [size], 1, shape) for size in subsets),
        "split selection": (shape.splits + 1) * n * costs.routing if shape.splits else 0.0,
        "intermediate": sum(intermediate_seconds(epochs, costs, shape, m) for m in retrain_leaves),
        "finetuning": epochs["num_epochs_finetuning"] * shape.epoch_images(n) * costs.full_last,
    }


def intermediate_seconds(epochs: dict[str, int], costs: StepCosts, shape: GrowthShape, leaves: int) -> float:
    """An intermediate full-train of a tree of ``leaves`` leaves."""
    return (epochs["num_epochs_intermediate_fulltrain"] * shape.epoch_images(shape.images)
            * costs.full(leaves, shape.first_leaves, shape.last_leaves))


def split_seconds(epochs: dict[str, int], costs: StepCosts, subsets: list[int], world_size: int,
                  shape: GrowthShape) -> float:
    """Training the sub-trees of one growth step on subsets of these sizes: one sub-tree is
    trained by every rank on its share; a round's sub-tree j by rank j mod world_size alone."""
    if len(subsets) == 1:
        per_rank = shape.epoch_images(-(-subsets[0] // world_size))
    else:
        loads = [0] * world_size
        for j, size in enumerate(subsets):
            loads[j % world_size] += shape.epoch_images(size, alone=True)
        per_rank = max(loads)
    return epochs["num_epochs_smalltree"] * per_rank * costs.subtree


def scale_epochs(configured: dict[str, int], factor: float) -> dict[str, int]:
    """Each configured count times ``factor``, rounded, at least 1; a 0 stays 0 (the phase is off)."""
    return {k: max(1, round(v * factor)) if v > 0 else 0 for k, v in configured.items()}


def fit_factor(configured: dict[str, int], budget_s: float, costs: StepCosts, shape: GrowthShape,
               where: str = "training.budget_minutes") -> float:
    """The largest scale factor of the configured epochs whose predicted time fits ``budget_s``;
    ``where`` names the budget in the error when not even one epoch per phase fits."""
    def seconds(factor: float) -> float:
        return sum(predicted_seconds(scale_epochs(configured, factor), costs, shape).values())

    smallest = seconds(0.0)
    if smallest > budget_s:
        raise ConfigError(f"{where}: {budget_s / 60:.2f} min to train in, and one epoch of every phase is "
                          f"predicted to take {smallest / 60:.1f} min on this machine; raise the budget, or train on "
                          f"fewer images (data.train_subset) or a smaller tree (training.num_clusters_tree)")
    low, high = 0.0, 1.0
    while seconds(high) <= budget_s and high < 1e6:
        low, high = high, high * 2
    for _ in range(50):          # the time is a step function of the factor: bisect to its last step
        middle = (low + high) / 2
        low, high = (middle, high) if seconds(middle) <= budget_s else (low, middle)
    return low


def _grown_tree(first_depth: int, leaves: int, depth_limit: int) -> Tree:
    """A tree of ``leaves`` leaves grown from the initial one, shallowest leaf first."""
    tree = Tree.complete(first_depth)
    while len(tree.leaves()) < leaves:
        splittable = [leaf for leaf in tree.leaves() if Tree.depth(leaf) < depth_limit]
        if not splittable:
            break
        tree = tree.attach(min(splittable, key=lambda leaf: (Tree.depth(leaf), leaf)))
    return tree


def _seconds_per_image(runner: PhaseRunner, phase: Phase, subtree: SubTree | None = None) -> float:
    """Train steps of ``phase`` (warm-up, then timed), in the run's precision, on its batches."""
    trained = subtree if subtree is not None else runner.model
    state = PhaseState(adam(trained.parameters(), lr=runner.t.lr), None, None, subtree)
    objective = runner.objective(phase, state)
    runner.train_mode(phase, state)
    images, start = 0, time.perf_counter()
    for step, (x, _, _) in enumerate(runner.loader(phase)):
        if step == WARMUP_STEPS + TIMED_STEPS:      # min_batches_per_epoch may serve the probe more
            break
        if step == WARMUP_STEPS:
            images, start = 0, time.perf_counter()
        runner.train_step(phase, state, objective, x, alpha=0.5)
        images += x.shape[0] // (2 if runner.t.augment else 1)     # dataset images: a batch holds two views
    return (time.perf_counter() - start) / images


def _routing_seconds_per_image(model: TreeVAE, train_images, batch_size: int, ctx) -> float:
    images = train_images[:min(len(train_images), batch_size)]
    leaf_probabilities(model, images, ctx, batch_size)                # warm-up
    start = time.perf_counter()
    for _ in range(TIMED_STEPS):
        leaf_probabilities(model, images, ctx, batch_size)
    return (time.perf_counter() - start) / (TIMED_STEPS * len(images))


def _probe_subset(t, world_size: int, n_images: int) -> list[int]:
    return list(range(min(n_images, batch_per_rank(t, world_size) * (WARMUP_STEPS + TIMED_STEPS))))


def measure_step_costs(cfg, ctx, spec, train_images, train_labels, loaders) -> StepCosts:
    """Time a few steps of throwaway models built like the run's; the random state is kept.

    Every rank calls it (the routing pass gathers across ranks, as the real one does); the
    ranks' clocks differ, so the caller uses rank 0's plan."""
    t = cfg.training
    saved = rng_state()
    try:
        probe = _probe_subset(t, ctx.world_size, len(train_images))
        shape = GrowthShape.of_run(t, len(train_images), ctx.world_size)
        costs = {}
        for name, leaves in (("full_first", shape.first_leaves), ("full_last", shape.last_leaves)):
            model = TreeVAE(spec, _grown_tree(t.initial_depth, leaves, cfg.depth_limit)).to(ctx.device)
            runner = PhaseRunner(t, cfg.run, ctx, model, train_images, train_labels, loaders, None, None, None)
            costs[name] = _seconds_per_image(runner, Phase("probe", "full", 0, 1, 0.0, 0.0, subset=probe))
        deepest = max(model.tree.leaves(), key=lambda leaf: (Tree.depth(leaf), leaf))
        if Tree.depth(deepest) < cfg.depth_limit:
            subtree = SubTree(model, deepest).to(ctx.device)
            costs["subtree"] = _seconds_per_image(
                runner, Phase("probe", "subtree", 0, 1, 0.0, 0.0, leaf=deepest, subset=probe), subtree)
        else:          # nothing to split below the deepest leaf: no sub-tree would train there either
            costs["subtree"] = costs["full_first"]
        costs["routing"] = _routing_seconds_per_image(model, train_images, cfg.evaluation.batch_size, ctx)
        return StepCosts(**costs)
    finally:
        set_rng_state(saved)


def finetuning_epochs(cfg, ctx, model: TreeVAE, train_images, train_labels, loaders, seconds_left: float) -> dict:
    """The finetuning's epochs re-fitted to what is left of the budget, at least 1: growth may
    have taken more or less than predicted, and the grown tree's step is timed here on a copy
    of it (the model and the random state are left as they were)."""
    saved = rng_state()
    try:
        copy = TreeVAE.from_state(model.to_state()).to(ctx.device)
        runner = PhaseRunner(cfg.training, cfg.run, ctx, copy, train_images, train_labels, loaders, None, None, None)
        probe = _probe_subset(cfg.training, ctx.world_size, len(train_images))
        per_image = _seconds_per_image(runner, Phase("probe", "full", 0, 1, 0.0, 0.0, subset=probe))
    finally:
        set_rng_state(saved)
    shape = GrowthShape.of_run(cfg.training, len(train_images), ctx.world_size)
    epoch_s = per_image * shape.epoch_images(shape.images)
    return {"epochs": max(1, int(seconds_left // epoch_s)), "minutes_left": round(seconds_left / 60, 2),
            "epoch_seconds": round(epoch_s, 3), "leaves": len(model.tree.leaves())}


def finetuning_length(done: int, planned: int, epoch_s: float, left_s: float) -> int:
    """The finetuning's epochs, refitted after ``done`` of ``planned`` at ``epoch_s`` per epoch
    with ``left_s`` of the budget left: cut to as many as fit when the planned ones would end
    past it; longer when time is left, while epochs remain only with half an epoch to spare (the
    pace is noisy: without the margin the demo's count flipped 21 -> 22 -> 21)."""
    if (planned - done) * epoch_s > left_s:
        return done + int(max(0.0, left_s) // epoch_s)
    spare = epoch_s / 2 if done < planned else 0.0
    return max(planned, done + int(max(0.0, left_s - spare) // epoch_s))


def plan_schedule(cfg, ctx, spec, train_images, train_labels, loaders) -> dict:
    """The budgeted epochs (by key), the measured costs and the predicted minutes per part."""
    t = cfg.training
    start = time.perf_counter()
    costs = measure_step_costs(cfg, ctx, spec, train_images, train_labels, loaders)
    shape = GrowthShape.of_run(t, len(train_images), ctx.world_size)
    probe_s = time.perf_counter() - start
    configured = {k: getattr(t, k) for k in EPOCH_KEYS}
    factor = fit_factor(configured, t.budget_minutes * 60 - probe_s, costs, shape,
                        where=f"training.budget_minutes = {t.budget_minutes:g}, less {probe_s:.0f} s of timed steps")
    epochs = scale_epochs(configured, factor)
    predicted = predicted_seconds(epochs, costs, shape)
    # counted from the trainer's start, probe included, as GrowthState.seconds_trained is
    growth_deadline_s = t.budget_minutes * 60 - predicted["finetuning"]
    return {"epochs": epochs, "configured": configured, "budget_minutes": t.budget_minutes, "factor": factor,
            "decay_kl": t.decay_kl / factor if t.budget_scales_kl else t.decay_kl,
            "probe_minutes": round(probe_s / 60, 3), "seconds_per_image": asdict(costs),
            "growth_deadline_minutes": round(growth_deadline_s / 60, 3),
            "predicted_minutes": {k: round(v / 60, 2) for k, v in predicted.items()},
            "predicted_total_minutes": round(sum(predicted.values()) / 60 + probe_s / 60, 2)}
