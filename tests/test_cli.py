"""The `structgen` command: help, exit codes, data verification, and a cheap import."""
import subprocess
import sys

import pytest

from structgen.cli import EXIT_BAD_INPUT, main

import importlib

from structgen.commands import COMMANDS

SUBCOMMANDS = [importlib.import_module(f"structgen.commands.{m}").NAME for m in COMMANDS]


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_every_subcommand_has_help(sub, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([sub, "--help"])
    assert exit_.value.code == 0
    assert "usage: structgen " + sub in capsys.readouterr().out


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "structgen.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("structgen ")


def test_info_lists_datasets(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "mnist" in out and "found" in out


def test_prepare_data_summarises_real_mnist(capsys):
    assert main(["prepare-data", "--dataset", "mnist"]) == 0
    out = capsys.readouterr().out
    assert "60000" in out and "10000" in out and "mnist: OK" in out


def test_bad_inputs_exit_2_with_a_message(tmp_path, capsys):
    assert main(["prepare-data", "--dataset", "mnits"]) == EXIT_BAD_INPUT
    assert "mnist" in capsys.readouterr().err
    assert main(["prepare-data", "--dataset", "mnist", "--data-dir", str(tmp_path / "none")]) == EXIT_BAD_INPUT
    assert "none" in capsys.readouterr().err
    assert main(["train-tree", "--set", "training.lr=fast"]) == EXIT_BAD_INPUT
    assert "training.lr" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "no checkpoints" in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "a failed command must not write anything"


def test_config_command_prints_resolved_values(capsys):
    assert main(["config", "--set", "training.lr=0.25"]) == 0
    assert "lr: 0.25  # Adam learning rate" in capsys.readouterr().out


def test_import_is_cheap_and_pulls_in_no_cluster_stack():
    code = ("import sys, structgen, structgen.config, structgen.tree; "
            "light = [m for m in ('torch', 'ray', 'ffcv', 'submitit') if m in sys.modules]; "
            "import structgen.api, structgen.data, structgen.models, structgen.train.growth; "
            "heavy = [m for m in ('ray', 'ffcv', 'submitit') if m in sys.modules]; print(light, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"
