"""A config field: default, one-line help, and the allowed values, in one place.

The help text is what the shipped YAML files carry as their per-key comment and what
`structgen config --explain` prints; the bounds are what validation enforces.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: Sequence | None = None,
           min: float | None = None, max: float | None = None, default_factory: Any = dataclasses.MISSING,
           min_len: int | None = None, above: float | None = None, finite: bool = True):
    """``min``/``max`` bound inclusively, ``above`` exclusively (a learning rate of 0 trains
    nothing); float values must be finite unless ``finite=False``."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "min": min, "max": max,
            "min_len": min_len, "above": above, "finite": finite}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
