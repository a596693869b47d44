"""Writing and reading the lab's output files so that nothing half-written or non-standard is ever read back.

* Every write is atomic: the bytes go to a temporary file in the same folder, which then replaces the target
  (``os.replace``). An interrupted run leaves the old file or none, never a truncated one. The file gets the mode
  any new file gets (``0o666`` less the umask), not the temporary file's private ``0o600``: a results folder
  shared with a group stays readable by it.
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
import threading
from pathlib import Path
from typing import Any, Callable


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (``/proc/self/status``); elsewhere
    set and restored under a lock (compare's threads write files too)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)`` and move the result onto ``path`` in one step (same folder, same fs).

    The result has the mode of any newly created file (``0o666 & ~umask``): ``mkstemp`` makes its file ``0o600``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~current_umask())  # after write: a writer may have replaced the file
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


NAME_MAX = 255  # bytes in one path component (Linux, macOS)
PATH_MAX = 4096  # bytes in a whole path, its final NUL included (Linux)
PATH_MARGIN = 256  # what the lab writes under an output folder: runs/<run folder>/.<file>.<random>.tmp


def _shown(text: str, keep: int = 60) -> str:
    return repr(text) if len(text) <= keep else repr(text[:keep]) + f"... ({len(text)} characters)"


def check_folder_path(path: str | Path) -> None:
    """Raise ``ValueError`` unless ``path`` names a folder the system can hold, with the lab's files under it: not
    empty, no NUL character, no component over ``NAME_MAX`` bytes, an absolute path at most ``PATH_MAX -
    PATH_MARGIN`` bytes. No file system call is made (a too-long name fails every one of them with ``OSError: File
    name too long``)."""
    if isinstance(path, str) and not path.strip():
        raise ValueError(f"output folder {path!r} is empty; name a folder (\".\" for the current one)")
    if "\0" in str(path):
        raise ValueError(f"output folder {_shown(str(path))} contains a NUL character, which no file name can hold")
    path = Path(path)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise ValueError(f"output folder {_shown(str(path))}: the name {_shown(part, 40)} is {size} bytes; "
                             f"a file or folder name is at most {NAME_MAX} bytes")
    size, limit = len(os.fsencode(os.path.abspath(path))), PATH_MAX - PATH_MARGIN
    if size > limit:
        raise ValueError(f"output folder {_shown(str(path))} is {size} bytes long as an absolute path; at most {limit} "
                         f"leaves room for the files written under it within the system's {PATH_MAX}-byte limit")


def check_writable_folder(path: str | Path) -> None:
    """Raise ``ValueError`` unless ``path`` is (or can be created as) a folder this process can write into.

    Nothing is left behind: the nearest existing ancestor is probed with a temporary file that is removed,
    and no folder is created. Called before anything is loaded, so an unwritable ``--out`` costs no training.
    A path the system cannot hold (:func:`check_folder_path`) is refused first.
    """
    check_folder_path(path)
    path = Path(path)
    probe = path
    try:
        while not probe.exists():
            if probe.parent == probe:
                break
            probe = probe.parent
    except OSError as err:  # e.g. a symlink loop
        raise ValueError(f"output folder {_shown(str(path))} cannot be used ({str(probe)!r}: "
                         f"{err.strerror or err})") from None
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
