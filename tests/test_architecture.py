"""The layering ARCHITECTURE.md draws stays true: no package imports one of a higher layer.

Imports are read from the source (module level and inside functions alike), so a lazy import
that reaches upwards fails here too.
"""
import ast
from pathlib import Path

import structgen

# Lowest first. A package may import its own layer and the ones below it.
LAYERS = [
    ("foundation", {"errors", "tree", "nn", "config", "data", "runs", "run_lock", "torch_threads"}),
    ("process objects", {"models", "viz"}),
    ("loops and runtime", {"runtime", "train"}),
    ("stages", {"eval", "scoring", "diffusion"}),
    ("orchestration", {"api", "ddpm_api", "stages", "sweeps"}),
    ("launchers", {"launch"}),
    ("entry points", {"commands", "cli"}),
]
RANK = {package: rank for rank, (_, packages) in enumerate(LAYERS) for package in packages}
ROOT = Path(structgen.__file__).parent


def package_of(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    return parts[0] if len(parts) > 1 else Path(parts[0]).stem


def structgen_imports(path: Path) -> set[str]:
    """Top-level structgen packages imported anywhere in the file at ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "structgen" else [])
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("structgen.")}
    return found


def modules():
    return [p for p in sorted(ROOT.rglob("*.py")) if p != ROOT / "__init__.py"]


def test_every_package_has_a_layer():
    assert {package_of(p) for p in modules()} <= set(RANK), "place the new package in LAYERS and ARCHITECTURE.md"


def test_no_package_imports_a_higher_layer():
    upward = []
    for path in modules():
        here = package_of(path)
        for target in structgen_imports(path):
            if RANK.get(target, -1) > RANK[here]:
                upward.append(f"{path.relative_to(ROOT.parent)} ({LAYERS[RANK[here]][0]}) imports structgen.{target} "
                              f"({LAYERS[RANK[target]][0]})")
    assert not upward, "\n".join(upward)


def test_the_checker_sees_lazy_and_package_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import structgen.models.treevae\n"
                      "def f():\n    from structgen.launch import ray_train\n"
                      "from structgen import api, runs\n")
    assert structgen_imports(module) == {"models", "launch", "api", "runs"}
