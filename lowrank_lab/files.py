"""Writing and reading the lab's output files so that nothing half-written or non-standard is ever read back.

* Every write is atomic: the bytes go to a temporary file in the same folder, which then replaces the target
  (``os.replace``). An interrupted run leaves the old file or none, never a truncated one.
* JSON is strict: ``NaN`` and ``Infinity`` are not JSON, so writing them raises instead of producing a file
  other tools (``jq``, browsers, ``json.loads(..., parse_constant=...)``) reject. Callers turn a non-finite
  number into ``None`` plus a status that says why (:func:`finite_or_none`).
* A file that cannot be read gives a ``ValueError`` naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)`` and move the result onto ``path`` in one step (same folder, same fs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    """Atomically write ``data`` as strict JSON (a NaN or an infinity raises ``ValueError`` naming the file)."""
    try:
        text = json.dumps(data, indent=indent, sort_keys=True, allow_nan=False)
    except ValueError as err:
        raise ValueError(f"refusing to write non-finite numbers into {path}: {err}") from None
    return write_text(path, text + "\n")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def read_json(path: str | Path) -> Any:
    """Read a strict-JSON file; a missing file is ``FileNotFoundError``, anything else wrong a ``ValueError``
    naming the file (truncated, not UTF-8, not JSON, or holding ``NaN``/``Infinity``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except UnicodeDecodeError as err:
        raise ValueError(f"cannot read {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"cannot read {path}: {err}") from None


def replace_section(text: str, start: str, end: str, body: str, where: str = "the text") -> str:
    """``text`` with whatever lies between the marker lines ``start`` and ``end`` replaced by ``body`` (the
    generated parts of a README); a missing or repeated marker is a ``ValueError`` naming it and ``where``."""
    for marker in (start, end):
        if text.count(marker) != 1:
            raise ValueError(f"{where} must hold the marker {marker!r} exactly once, found {text.count(marker)}")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{body}\n{end}{tail}"


def section(text: str, start: str, end: str) -> str | None:
    """What lies between the marker lines ``start`` and ``end`` (without the newlines next to them), or None."""
    if start not in text or end not in text.split(start, 1)[1]:
        return None
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def finite_or_none(value):
    """``value`` if it is a finite number (or not a number at all), else ``None``: what strict JSON can hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def check_writable_folder(path: str | Path) -> None:
    """Raise ``ValueError`` unless ``path`` is (or can be created as) a folder this process can write into.

    Nothing is left behind: the nearest existing ancestor is probed with a temporary file that is removed,
    and no folder is created. Called before anything is loaded, so an unwritable ``--out`` costs no training.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == path else f"lies under the file {str(probe)!r}"
        raise ValueError(f"output folder {str(path)!r} {what}; choose a folder path")
    try:
        handle, temporary = tempfile.mkstemp(prefix=".lowrank-lab-write-test.", dir=probe)
    except OSError as err:
        raise ValueError(f"output folder {str(path)!r} is not writable ({str(probe)!r}: "
                         f"{err.strerror or err})") from None
    os.close(handle)
    os.unlink(temporary)
