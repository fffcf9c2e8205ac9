"""Read a YAML config plus `--set a.b=c` overrides into a validated `Config`.

Every problem is found before any work starts and reported with where it came from (the file,
or `--set`), the dotted key, the value and what is allowed, and for an unknown key the closest
valid one.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml

from structgen.config.schema import Config
from structgen.errors import ConfigError, RunError
from structgen.runs import check_run_name

# Before `model.levels`, the model section gave the channels as one value per level, all equal.
CHANNEL_LISTS = ("latent_channels", "bottom_up_channels")


def upgrade_channel_lists(model: dict, source: str) -> dict:
    """A model section (plain data) with the old per-level channel lists as one value each plus
    `levels`; a ConfigError naming the key when a list's values differ or the lists' lengths do."""
    lists = {k: model[k] for k in CHANNEL_LISTS if isinstance(model.get(k), (list, tuple))}
    if not lists:
        return model
    for key, values in lists.items():
        if len(set(values)) > 1:
            raise ConfigError(f"{source}: model.{key} = {list(values)}: structgen builds every level with the same "
                              f"channels; give one value (model.{key}: {values[0]}) and the depth as model.levels")
    lengths = {len(v) for v in lists.values()} | ({model["levels"]} if "levels" in model else set())
    if len(lengths) > 1:
        got = ", ".join([f"model.{k} has {len(v)} levels" for k, v in lists.items()]
                        + ([f"model.levels = {model['levels']}"] if "levels" in model else []))
        raise ConfigError(f"{source}: {got}; they must agree (give model.levels alone, with one value per key)")
    return {**model, **{k: v[0] if v else v for k, v in lists.items()}, "levels": lengths.pop()}


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults <- YAML file <- overrides, validated."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
        _apply_mapping(cfg, data, prefix="", source=str(path))
    for item in overrides:
        key, value = parse_override(item)
        _apply_mapping(cfg, _nest(key, value), prefix="", source=f"--set {item}")
    check_consistency(cfg, source=str(path) if path else "defaults")
    return cfg


def config_from_dict(data: dict, source: str = "config dict") -> Config:
    """Rebuild and validate a Config from `config_to_dict` output (Ray's train_loop_config)."""
    cfg = Config()
    _apply_mapping(cfg, data, prefix="", source=source)
    check_consistency(cfg, source=source)
    return cfg


def apply_overrides(cfg: Config, values: dict, source: str = "overrides") -> Config:
    """Set dotted keys ({"training.lr": 3e-4, ...}) on a copy of ``cfg``, validated."""
    import copy

    cfg = copy.deepcopy(cfg)
    for key, value in values.items():
        _apply_mapping(cfg, _nest(key, value), prefix="", source=f"{source} {key}")
    check_consistency(cfg, source=source)
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. training.lr=3e-4")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nest(dotted: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _apply_mapping(obj: Any, data: dict, prefix: str, source: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            valid = [f"{prefix}{name}" for name in fields]
            raise ConfigError(f"{source}: unknown key '{dotted}'{_closest(dotted, valid, prefix)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' is a section; expected a mapping of its keys, "
                                  f"got {value!r}")
            if dotted == "model":
                value = upgrade_channel_lists(value, source)
            _apply_mapping(current, value, prefix=f"{dotted}.", source=source)
            continue
        setattr(obj, key, _coerce(value, hints[key], fields[key].metadata, dotted, source))


def _closest(key: str, valid: list[str], prefix: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    everywhere = list(all_keys())
    # A known key put in the wrong section is the likeliest mistake; then a typo in this
    # section; then a typo anywhere.
    match = ([k for k in everywhere if k.rsplit(".", 1)[-1] == leaf][:1]
             or difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
             or difflib.get_close_matches(key, everywhere, n=1, cutoff=0.6))
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys here: {', '.join(valid)}"


def all_keys(obj: Any = None, prefix: str = "") -> Iterable[str]:
    obj = Config() if obj is None else obj
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from all_keys(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, meta: dict, key: str, source: str) -> Any:
    def fail(allowed: str) -> ConfigError:
        return ConfigError(f"{source}: {key} = {value!r} is not allowed: expected {allowed}")

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], meta, key, source)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise fail(f"a list of {_describe(item_tp)}")
        if meta.get("min_len") and len(value) < meta["min_len"]:
            raise fail(f"a list of at least {meta['min_len']} items")
        return [_coerce(v, item_tp, meta, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise fail("an integer")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept any float literal.
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise fail("a number") from None
        value = float(value)
        if meta.get("finite", True) and not math.isfinite(value):
            # NaN passes every comparison below, and infinity every minimum
            raise fail("a finite number")
    elif tp is str:
        if not isinstance(value, str):
            raise fail("a string")
    choices, lo, hi, above = meta.get("choices"), meta.get("min"), meta.get("max"), meta.get("above")
    if choices and value not in choices:
        raise fail("one of " + ", ".join(map(str, choices)))
    if above is not None and isinstance(value, (int, float)) and not value > above:
        raise fail(f"> {above}" + (f" and <= {hi}" if hi is not None else ""))
    if lo is not None and isinstance(value, (int, float)) and value < lo:
        raise fail(f">= {lo}" + (f" and <= {hi}" if hi is not None else ""))
    if hi is not None and isinstance(value, (int, float)) and value > hi:
        raise fail(f"<= {hi}" + (f" and >= {lo}" if lo is not None else ""))
    return value


def check_consistency(cfg: Config, source: str) -> None:
    """Rules that involve several keys."""
    from structgen.config.model_family import choose_family, fits, sides_message
    from structgen.data.registry import dataset_shape

    m, t = cfg.model, cfg.training
    try:
        check_run_name(cfg.run.name)
    except RunError as err:
        raise ConfigError(f"{source}: {err}") from None
    if t.grow and t.num_epochs == 0:
        raise ConfigError(f"{source}: training.num_epochs = 0 with training.grow = true: growth splits the leaves "
                          f"of a trained initial tree; train it for at least 1 epoch (or set training.grow=false)")
    chain = m.levels - 1
    if t.max_depth > chain:
        raise ConfigError(f"{source}: training.max_depth = {t.max_depth} is deeper than the bottom-up chain "
                          f"allows ({chain} = model.levels - 1)")
    if t.initial_depth > cfg.depth_limit:
        raise ConfigError(f"{source}: training.initial_depth = {t.initial_depth} exceeds the depth limit "
                          f"{cfg.depth_limit}")
    if t.grow and t.num_epochs_smalltree == 0:
        # a sub-tree phase of 0 epochs trains the new children not at all, so the split it
        # attached is never judged and growth repeats its selection until max_grow_iterations
        raise ConfigError(f"{source}: training.num_epochs_smalltree = 0 with training.grow = true: growing needs "
                          f"at least 1 sub-tree epoch per split (or set training.grow=false)")
    for name in ("kl_clamp_sample", "kl_clamp_batch"):
        lo_hi = getattr(t, name)
        if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
            raise ConfigError(f"{source}: training.{name} = {lo_hi} must be [low, high] with low <= high")
    if cfg.data.dataset in ("folder", "arrays", "beton") and not cfg.data.path:
        what = "the .beton files' prefix, <path>-train.beton" if cfg.data.dataset == "beton" else \
            "the image folder, or the .npz / idx-ubyte file"
        raise ConfigError(f"{source}: data.dataset = {cfg.data.dataset} needs data.path ({what})")
    if cfg.data.dataset == "beton":
        subsets = [f"data.{k}" for k in ("train_subset", "test_subset", "num_clusters_data") if getattr(cfg.data, k)]
        if subsets:
            raise ConfigError(f"{source}: dataset beton reads its files as they are and takes no {', '.join(subsets)}; "
                              f"write the subset you want into the files")
    channels, height, width = dataset_shape(cfg.data.dataset, cfg.data)
    # `auto` becomes the family that fits, so the saved config.yml names the network it built.
    m.encoder = choose_family(m.encoder, (channels, height, width), m.representation_dim)
    if m.encoder == "cnn2" and not fits("cnn2", height, m.representation_dim):
        raise ConfigError(f"{source}: model.encoder = cnn2 cannot take {height}x{width} images: "
                          f"{sides_message('cnn2', m.representation_dim)} (set data.image_size to one of them, "
                          f"or model.encoder=cnn1)")
    if m.encoder == "cnn1" and not fits("cnn1", height, m.representation_dim):
        raise ConfigError(f"{source}: model.representation_dim = {m.representation_dim} must be smaller than "
                          f"the image side {height}: {sides_message('cnn1', m.representation_dim)}")
    if t.augment and t.batch_size % 2:
        raise ConfigError(f"{source}: training.batch_size = {t.batch_size} must be even with training.augment "
                          f"(it holds two views of each image)")
    d = cfg.diffusion
    if d.beta1 >= d.beta2:
        raise ConfigError(f"{source}: diffusion.beta1 = {d.beta1} must be below diffusion.beta2 = {d.beta2}")
