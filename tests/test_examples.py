"""Code shown in the README runs as shown."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_process_object_example_runs():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "process_object.py")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tree: ['r', 'r0', 'r1', 'r10', 'r11']" in out.stdout
    assert "generated (4, 3, 1, 28, 28)" in out.stdout
