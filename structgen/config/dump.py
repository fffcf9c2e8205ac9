"""Write a resolved config as YAML with one comment per key (the shipped files and run folders)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from structgen.config.schema import Config


def _scalar(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def config_to_yaml(cfg: Config, header: str = "") -> str:
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        lines.append(f"{section.name}:")
        for f in dataclasses.fields(sub):
            comment = f.metadata.get("help", "")
            lines.append(f"  {f.name}: {_scalar(getattr(sub, f.name))}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines) + "\n"


def save_config(cfg: Config, path: str | Path, header: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_to_yaml(cfg, header))
    return path


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
