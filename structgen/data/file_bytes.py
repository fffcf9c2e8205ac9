"""Read one stored data file as bytes: whole or in ``.partNN`` pieces, gzip or plain.

Large files are kept in the repository as byte-level pieces (``split -b ... -d``), e.g.
``train-images-idx3-ubyte.gz.part00``, ``.part01``, ...; they are joined in memory, never on
disk. The same name without ``.gz`` is accepted as an uncompressed copy.
"""
from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

from structgen.errors import DataError

_PART = re.compile(r"\.part(\d+)$")


def _find_parts(folder: Path, name: str, dataset: str) -> list[Path]:
    """Pieces ``name.partNN`` sorted by number; a gap in the numbering is an error."""
    numbered = []
    for p in folder.glob(f"{name}.part*"):
        m = _PART.search(p.name)
        if m and p.name[: m.start()] == name:
            numbered.append((int(m.group(1)), p))
    if not numbered:
        return []
    numbered.sort()
    numbers = [n for n, _ in numbered]
    expected = list(range(numbers[-1] + 1))
    if numbers != expected:
        width = len(_PART.search(numbered[0][1].name).group(1))
        missing = sorted(set(expected) - set(numbers))
        duplicate = len(numbers) != len(set(numbers))
        problem = (
            f"duplicate part numbers {numbers}" if duplicate
            else "missing " + ", ".join(f"{name}.part{n:0{width}d}" for n in missing)
        )
        raise DataError(f"{dataset}: {folder / name}: stored in pieces, but the sequence is broken: {problem}")
    return [p for _, p in numbered]


def _read(path: Path, dataset: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:                      # permission denied, a folder in its place, I/O error
        raise DataError(f"{dataset}: {path}: cannot read ({e.strerror or e})") from None


def find_stored(folder: Path, name: str, dataset: str) -> tuple[Path, list[Path]] | None:
    """Where ``folder/name`` (``name`` without ``.gz``) is stored: ``(path, files)`` with ``files``
    [path] or its ``.partNN`` pieces. Tries ``name.gz`` first, then plain ``name``; None if neither."""
    for path in (folder / (name + ".gz"), folder / name):
        files = [path] if path.exists() else _find_parts(folder, path.name, dataset)
        if files:
            return path, files
    return None


def read_stored(path: Path, files: list[Path], dataset: str) -> tuple[bytes, str]:
    """The content of ``path``, stored as ``files`` (itself or its pieces), gunzipped when the
    name ends in ``.gz``, and a path for messages."""
    raw = b"".join(_read(p, dataset) for p in files)
    shown = str(path) if files == [path] else f"{path} (joined from {files[0].name} .. {files[-1].name})"
    if not path.name.endswith(".gz"):
        return raw, shown
    try:
        return gzip.decompress(raw), shown
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        raise DataError(
            f"{dataset}: {shown}: corrupt or truncated gzip data "
            f"({type(e).__name__}: {e}); {len(raw)} compressed bytes read"
        ) from e


def read_file_bytes(folder: Path, name: str, dataset: str) -> tuple[bytes, str]:
    """Decompressed content of ``folder/name`` (``name`` without ``.gz``) and a path for messages.

    Tries ``name.gz``, its ``.partNN`` pieces, then plain ``name`` and its pieces.
    """
    found = find_stored(folder, name, dataset)
    if found is None:
        raise DataError(
            f"{dataset}: missing file: expected {folder / (name + '.gz')} (or its .partNN pieces, "
            f"or the uncompressed {folder / name})"
        )
    return read_stored(*found, dataset)
