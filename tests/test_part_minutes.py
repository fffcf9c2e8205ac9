"""Minutes per part of a tree run, from its metrics.jsonl: a written log with known times here;
real runs in test_budget.py (a budgeted run with a refitted finetuning) and test_resume.py (a
killed and resumed run)."""
import json
import os
import subprocess
import sys

import pytest

from structgen.runtime.part_minutes import BEFORE_EVALUATION, part_minutes, part_table

START = 1_000_000.0
RECORDS = [                                        # (minutes after config.yml, record)
    (1.0, {"event": "epoch", "phase": "initial"}),
    (2.0, {"event": "phase_end", "phase": "initial"}),
    (2.5, {"event": "grow_check"}),
    (4.0, {"event": "phase_end", "phase": "subtree-1"}),
    (4.1, {"event": "split"}),
    (5.0, {"event": "resume"}),
    (6.0, {"event": "budget_refit_finetuning"}),
    (7.5, {"event": "phase_end", "phase": "finetune"}),
    (7.6, {"event": "something_new"}),
    (8.6, {"event": "evaluation", "seconds": 54.0, "baselines": {"kmeans": {"seconds": 6.0},
                                                                 "ward": {"seconds": 12.0}}}),
    (68.6, {"event": "evaluation", "seconds": 30.0,                         # `structgen evaluate` an hour later,
            "baselines": {"kmeans": {"seconds": 3.0}, "ward_subset": 10000}}),  # Ward on a subset: a count
]


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "config.yml").write_text("run: {}\n")
    os.utime(tmp_path / "config.yml", (START, START))
    with (tmp_path / "metrics.jsonl").open("w") as fh:
        for minutes, record in RECORDS:
            fh.write(json.dumps({**record, "time": START + 60 * minutes}) + "\n")
    return tmp_path


def test_each_interval_goes_to_the_part_its_record_names(run_dir):
    parts = part_minutes(run_dir)
    expected = {"initial": 2.0, "split selection": 0.5, "subtree": 1.6, "stopped (until the resume)": 0.9,
                "finetune": 2.5, "something_new": 0.1, BEFORE_EVALUATION: 0.1 + 59.5, "evaluation": 0.6 + 0.45,
                "kmeans": 0.1 + 0.05, "ward": 0.2}
    assert list(parts) == list(expected)             # in the order the parts first ran
    assert parts == pytest.approx(expected)
    assert sum(parts.values()) == pytest.approx(RECORDS[-1][0])


def test_without_config_yml_the_run_starts_at_its_first_record(run_dir):
    (run_dir / "config.yml").unlink()
    parts = part_minutes(run_dir)
    assert parts["initial"] == pytest.approx(1.0)
    assert sum(parts.values()) == pytest.approx(RECORDS[-1][0] - RECORDS[0][0])


def test_the_table_shows_shares_and_the_total(run_dir):
    table = part_table(part_minutes(run_dir))
    assert "finetune" in table and "2.50 min" in table
    assert table.splitlines()[-1].split() == ["total", "68.60", "min"]
    assert part_table({"initial": 1.0, "pruning": 0.001}).count("\n") == 1    # 0.00-minute parts left out


def test_info_prints_a_runs_parts_and_names_a_folder_that_is_not_one(run_dir, tmp_path_factory):
    cli = [sys.executable, "-m", "structgen.cli", "info", "--run"]
    shown = subprocess.run(cli + [str(run_dir)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "wall time per part of the schedule" in shown.stdout and "68.60 min" in shown.stdout
    empty = tmp_path_factory.mktemp("not-a-run")
    refused = subprocess.run(cli + [str(empty)], capture_output=True, text=True)
    assert refused.returncode != 0
    assert str(empty) in refused.stderr and "metrics.jsonl" in refused.stderr
