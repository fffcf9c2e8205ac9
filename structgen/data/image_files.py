"""Finding the image files in a user's folder.

An image file is one whose extension (any case) names a format Pillow can open: PNG, JPEG,
BMP, TIFF, WebP, GIF, ... Hidden files and folders (a leading dot: .DS_Store, .git, editor
swap files) and everything else (notes, CSVs) are left out and counted, so a user can see that
nothing they meant to include was dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Lower-case extensions of every format this Pillow can decode."""
    from PIL import Image

    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


@dataclass
class Listing:
    files: list[Path] = field(default_factory=list)     # sorted, so the order never depends on the OS
    hidden: int = 0
    not_images: int = 0

    def note(self) -> str:
        parts = [f"{n} {what}" for n, what in ((self.hidden, "hidden"), (self.not_images, "non-image"))
                 if n]
        return f" (ignored: {', '.join(parts)} files)" if parts else ""


def list_images(folder: Path) -> Listing:
    """Every image file under ``folder``, recursively, sorted by relative path."""
    exts, out = image_extensions(), Listing()
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            if path.is_file():
                out.hidden += 1
            continue
        if not path.is_file():
            continue
        if path.suffix.lower() in exts:
            out.files.append(path)
        else:
            out.not_images += 1
    return out


def subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted: the candidate class folders."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
