"""Checkpoint files: one holds everything a run needs to continue (design.md, "Tree topology").

Writes are atomic (temporary file + rename), so a kill at any moment leaves either the old or
the new checkpoint, never a torn one.

Reads never run code from the file. Every structgen checkpoint (TreeVAE, DDPM, classifier) is
read by `read_checkpoint`, with ``torch.load(weights_only=True)``: PyTorch's restricted
unpickler, which builds tensors and plain containers (dict, list, tuple, str, int, float, bool,
None) and refuses any other class or function. So checkpoints hold nothing else: RNG states are
stored as tensors and plain values (`rng_state`), and `save_checkpoint` checks a state before
writing it. Format /1 files (structgen 0.x before this change) held NumPy's RNG state as a NumPy
array; they are read with exactly the NumPy globals that array needs added to the allow-list
(`LEGACY_NUMPY_GLOBALS`, still inside the restricted unpickler) and converted on load.
"""
from __future__ import annotations

import copy
import os
import pickle
import random
import re
import subprocess
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

import structgen
from structgen.errors import CheckpointError


# ---- RNG state as plain data ------------------------------------------------------------------
def rng_state() -> dict:
    """Torch, NumPy (legacy global MT19937), Python and CUDA generator states, as tensors and
    plain values only, so they load with ``weights_only=True``; `set_rng_state` restores them
    exactly."""
    return {"torch": torch.get_rng_state(), "numpy": _plain_numpy_rng(*np.random.get_state()),
            "python": _plain_python_rng(*random.getstate()),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _plain_numpy_rng(kind, key, pos, has_gauss, gauss) -> dict:
    return {"bit_generator": str(kind), "key": torch.from_numpy(np.asarray(key).astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}


def _plain_python_rng(version, internal, gauss_next) -> dict:
    return {"version": int(version), "internal": [int(v) for v in internal],
            "gauss_next": None if gauss_next is None else float(gauss_next)}


def _numpy_rng_tuple(state) -> tuple:
    """np.random.set_state's tuple from our plain dict (or from a legacy tuple, unchanged)."""
    if isinstance(state, dict):
        key = state["key"]
        key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
        return (state["bit_generator"], key.astype(np.uint32), int(state["pos"]), int(state["has_gauss"]),
                float(state["cached_gaussian"]))
    return tuple(state)


def _python_rng_tuple(state) -> tuple:
    if isinstance(state, dict):
        return int(state["version"]), tuple(int(v) for v in state["internal"]), state["gauss_next"]
    version, internal, gauss = state
    return version, tuple(internal), gauss


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_rng_tuple(state["numpy"]))
    random.setstate(_python_rng_tuple(state["python"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain_rng(state: dict) -> dict:
    """An RNG state of format /1 (NumPy's tuple with an ndarray, Python's tuple) in today's form."""
    return {**state, "numpy": _plain_numpy_rng(*_numpy_rng_tuple(state["numpy"])),
            "python": _plain_python_rng(*_python_rng_tuple(state["python"]))}


def upgrade_v1(state: dict, new_format: str) -> dict:
    """A format /1 TreeVAE or DDPM checkpoint as format /2: only the RNG state changed."""
    state = {**state, "format": new_format}
    if state.get("rng") is not None:
        state["rng"] = plain_rng(state["rng"])
    return state


# ---- writing ----------------------------------------------------------------------------------------
_PLAIN_TYPES = (str, int, float, bool, bytes, type(None), torch.Size)   # + tensors, dtypes, devices


def plain_state(value, where: str = "checkpoint"):
    """``value`` with NumPy scalars turned into Python numbers; a TypeError naming the key for
    anything else that ``torch.load(weights_only=True)`` would refuse. Containers are copied only
    where something changed (state dicts keep their OrderedDict and ``_metadata``)."""
    if isinstance(value, np.generic):
        return value.item()
    if type(value) in (dict, OrderedDict):
        for k in value:
            if plain_state(k, f"{where} key {k!r}") is not k:
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; use a plain key")
        changed = {k: plain_state(v, f"{where}[{k!r}]") for k, v in value.items()}
        if all(changed[k] is value[k] for k in value):
            return value
        out = copy.copy(value)          # keeps an OrderedDict's attributes (a state dict's _metadata)
        out.update(changed)
        return out
    if type(value) in (list, tuple):
        items = [plain_state(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value if all(a is b for a, b in zip(items, value)) else type(value)(items)
    if type(value) in _PLAIN_TYPES or isinstance(value, (torch.Tensor, torch.dtype, torch.device)):
        return value
    raise TypeError(f"{where}: a {type(value).__module__}.{type(value).__qualname__} cannot go into a checkpoint "
                    "(checkpoints hold tensors and plain values only, so that they load with weights_only=True)")


def git_sha() -> str | None:
    try:
        root = Path(structgen.__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def save_checkpoint(state: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = plain_state({"version": structgen.__version__, "git_sha": git_sha(), **state})
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


# ---- reading: the one place a checkpoint file is unpickled -------------------------------------
def _legacy_numpy_globals() -> list:
    """What a pickled ``np.random.get_state()`` needs, and nothing more: the array
    reconstructor (under NumPy 2's and NumPy 1's module name), ndarray, dtype and the uint32
    dtype class its BUILD step sets state on. None of them runs code of the file's choosing."""
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    return [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"),
            (reconstruct, "numpy._core.multiarray._reconstruct"),
            np.ndarray, np.dtype, type(np.dtype(np.uint32))]


LEGACY_NUMPY_GLOBALS = _legacy_numpy_globals()
_LEGACY_NUMPY_NAMES = {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                       "numpy.ndarray", "numpy.dtype", "numpy.dtypes.UInt32DType"}


def _not_allowed(path: Path, message: str) -> str:
    """" (name, ...)" of the globals in the file beyond the allow-list, "" when none can be named."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)   # scans opcodes, runs nothing
    except Exception:  # not a zip checkpoint (torch's legacy format): name the one the unpickler stopped at
        names = re.findall(r"GLOBAL (\S+?)[ .]*(?:whose|was|$)", _unpickler_reason(message))
    names = [n for n in names if n not in _LEGACY_NUMPY_NAMES]
    return f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else ""


# What torch's restricted unpickler says when a file names a class or function beyond the
# allow-list (torch/_weights_only_unpickler.py), as opposed to a pickle it cannot parse at all.
_REFUSAL_SIGNS = ("GLOBAL", "allowlisted", "unrecognized function", "persistent")
_BOILERPLATE = ("Check the documentation", "(1)", "(2)", "Please file an issue")


def _unpickler_reason(message: str) -> str:
    """The restricted unpickler's own sentence out of torch's long 'Weights only load failed' text."""
    tail = message.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in message \
        else "\n".join(message.splitlines()[1:])
    lines = [line.strip() for line in tail.splitlines() if line.strip() and not line.strip().startswith(_BOILERPLATE)]
    return lines[0] if lines else message.splitlines()[0] if message else "?"


def _refused_object(message: str) -> bool:
    return message.startswith("Weights only load failed") and any(s in _unpickler_reason(message)
                                                                    for s in _REFUSAL_SIGNS)


def read_checkpoint(path: str | Path, *, kind: str, current: str,
                    upgrades: Mapping[str, Callable[[dict], dict]] | None = None,
                    hint: Callable[[str | None], str] | None = None, readable_as: str = "checkpoint") -> dict:
    """The checkpoint dict at ``path`` in format ``current``, read with weights_only=True.

    ``upgrades`` maps older formats this version converts on load to their converters; any other
    format is refused naming it. ``hint(found_format)`` may add a sentence to that refusal.
    A file that needs any class or function beyond tensors, plain values and the NumPy arrays
    of format /1 RNG states is refused: structgen never executes code from a checkpoint.
    """
    path, upgrades = Path(path), dict(upgrades or {})
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(LEGACY_NUMPY_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _refused_object(str(err)):  # a pickle the restricted unpickler cannot parse: garbage, truncated
            raise CheckpointError(f"{path}: not a readable {readable_as} ({type(err).__name__}: "
                                  f"{_unpickler_reason(str(err))})") from None
        raise CheckpointError(
            f"{path}: refused: the file contains objects that are not allowed in a structgen checkpoint"
            f"{_not_allowed(path, str(err))}. structgen reads checkpoints with torch.load(weights_only=True) and never "
            "executes code from them; its own checkpoints hold only tensors and plain values, so this file was "
            "written by something else or altered. Do not load it with weights_only=False unless you trust "
            "whoever wrote it.") from None
    except Exception as err:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"{path}: not a readable {readable_as} ({type(err).__name__}: {err})") from None
    found = state.get("format") if isinstance(state, dict) else type(state).__name__
    if found == current:
        return state
    if found in upgrades:
        try:
            return upgrades[found](state)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise CheckpointError(f"{path}: a structgen {kind} checkpoint in format {found!r} that could not be "
                                  f"converted to {current!r} ({type(err).__name__}: {err})") from None
    family = current.rsplit("/", 1)[0] + "/"
    if isinstance(found, str) and found.startswith(family):
        known = ", ".join(repr(f) for f in [current, *upgrades])
        raise CheckpointError(f"{path}: a structgen {kind} checkpoint in format {found!r}, which this version of "
                              f"structgen ({structgen.__version__}) cannot read; it reads {known}")
    extra = hint(found) if hint is not None else ""
    raise CheckpointError(f"{path}: not a structgen {kind} checkpoint (format {found!r}, expected {current!r}){extra}")
