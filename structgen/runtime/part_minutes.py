"""Where a tree run's wall time went: minutes per part of the schedule, read from metrics.jsonl.

Every record outside a phase closes the interval since the record before it, and that interval
belongs to the part the record names (a phase's end names its phase; a split its sub-tree; the
first record's interval starts when config.yml was written). Nothing goes uncounted: a record
not named below closes an interval under its own name. An evaluation record carries its own
seconds: they are the evaluation's part, less the pixel baselines' seconds (parts of their own),
and the rest of its interval goes to ``BEFORE_EVALUATION`` (in a run that evaluates itself, the
seconds after its last phase: the check for leaves the finetuning emptied, the final checkpoint;
before a later `structgen evaluate` of a finished run, maybe days of waiting).
"""
from __future__ import annotations

from pathlib import Path

# The part of the schedule whose interval each event closes.
PART_OF_EVENT = {"grow_check": "split selection", "budget_stop": "split selection", "split_init": "subtree",
                 "split": "subtree", "prune": "pruning", "prune_after_finetuning": "pruning",
                 "undo_split": "pruning", "budget_plan": "budget timing", "budget_replan": "budget timing",
                 "evaluation": "evaluation", "resume": "stopped (until the resume)"}
# Events logged while a phase runs: they close no interval (the finetuning's refit after an
# epoch would otherwise cut its epochs so far out of every part).
INSIDE_A_PHASE = {"epoch", "budget_refit_finetuning"}
BEFORE_EVALUATION = "before the evaluation"
TITLE = "wall time per part of the schedule"     # the heading over part_table, wherever it prints


def part_minutes(run_dir: str | Path) -> dict[str, float]:
    """Wall minutes per part, in the order the parts first ran; they add up to the time from
    config.yml's writing (without it, the first record) to the last record."""
    from structgen.runtime.metrics_log import read_metrics

    parts: dict[str, float] = {}

    def add(name: str, minutes: float) -> None:
        parts[name] = parts.get(name, 0.0) + minutes

    records = read_metrics(run_dir)
    config = Path(run_dir) / "config.yml"
    last = config.stat().st_mtime if config.exists() else (records[0]["time"] if records else 0.0)
    for record in records:
        kind = record["event"]
        if kind in INSIDE_A_PHASE:
            continue
        minutes = (record["time"] - last) / 60
        last = record["time"]
        if kind == "evaluation" and "seconds" in record:
            own = min(minutes, record["seconds"] / 60)
            add(BEFORE_EVALUATION, minutes - own)
            baselines = {}
            for method, result in (record.get("baselines") or {}).items():
                if isinstance(result, dict):                 # not "ward_subset", a count beside them
                    baselines[method] = min(own, result.get("seconds", 0.0) / 60)
                    own -= baselines[method]
            add("evaluation", own)
            for method, baseline in baselines.items():
                add(method, baseline)
        elif kind == "phase_end":
            add(record["phase"].split("-")[0], minutes)   # subtree-3 -> subtree, intermediate-1 -> intermediate
        else:
            add(PART_OF_EVENT.get(kind, kind), minutes)
    return parts


def part_table(parts: dict[str, float]) -> str:
    """The parts as aligned lines with their share of the whole (those under 0.005 min left out),
    and the total."""
    total = sum(parts.values())
    lines = [f"  {name:<28}{minutes:8.2f} min  {100 * minutes / total if total else 0:5.1f} %"
             for name, minutes in parts.items() if minutes >= 0.005]     # not a line of 0.00 min
    return "\n".join(lines + [f"  {'total':<28}{total:8.2f} min"])
