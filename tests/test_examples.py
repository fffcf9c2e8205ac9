"""Code shown in the README runs as shown."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("example, expected", [
    ("process_object.py", ["tree: ['r', 'r0', 'r1', 'r10', 'r11']", "generated (4, 3, 1, 28, 28)"]),
    ("diffusion_process.py", ["sampled (4, 1, 28, 28)", "guidance changes the samples: True"]),
])
def test_example_runs(example, expected):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / example)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in expected:
        assert line in out.stdout
