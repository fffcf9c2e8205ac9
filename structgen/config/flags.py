"""Command-line flags made from config keys: a launcher's `--num-workers` is `ray.num_workers`,
with the schema's type, choices and help, so the flags never drift from the config.

    add_key_flags(parser, "ray", ["num_workers", "use_gpu"])
    cfg = load_config(path, overrides + key_flag_overrides(args, "ray", ["num_workers", "use_gpu"]))

A flag left out stays None and leaves the config alone; one given becomes an override, checked
like any `--set` (a bad value fails naming the key before anything starts).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Iterable

from structgen.config.schema import Config


def add_set_argument(p, help: str | None = None) -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides``: any config key."""
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def _fields(section: str) -> dict[str, tuple[type, dict]]:
    cls = typing.get_type_hints(Config)[section]
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], dict(f.metadata)) for f in dataclasses.fields(cls)}


def _scalar(tp):
    """The type a flag parses: Optional[X] -> X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def add_key_flags(group, section: str, keys: Iterable[str]) -> None:
    """One flag per ``section.key``, typed, restricted and described as the schema says."""
    fields = _fields(section)
    for key in keys:
        tp, meta = fields[key]
        tp = _scalar(tp)
        help_text = f"{meta['help']} (config {section}.{key})".replace("%", "%%")   # argparse formats help
        if tp is bool:
            group.add_argument(_flag_name(key), dest=key, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            group.add_argument(_flag_name(key), dest=key, type=tp, default=None, choices=meta["choices"],
                               help=help_text)


def _key_flag_values(args: argparse.Namespace, keys: Iterable[str]) -> dict:
    """The flags that were given, by key."""
    return {key: getattr(args, key) for key in keys if getattr(args, key, None) is not None}


def key_flag_overrides(args: argparse.Namespace, section: str, keys: Iterable[str]) -> list[str]:
    """The given flags as `--set` overrides (values JSON-quoted, which YAML reads back exactly)."""
    return [f"{section}.{key}={json.dumps(value)}" for key, value in _key_flag_values(args, keys).items()]
