"""Scales, devices, seeding and environment report: the one mechanism every lesson, test and CLI run uses.

Three scales select how much work a run does:

* ``smoke`` - CI, seconds, tiny data; always on CPU so numbers are reproducible.
* ``cpu``   - a laptop, minutes, real models on a few thousand examples.
* ``full``  - a GPU, the paper-like preset.

Precedence: an explicit value (a notebook's ``SCALE`` parameter, the CLI ``--scale``) beats the
``LOWRANK_LAB_SCALE`` environment variable, which beats auto-detection (CUDA -> ``full``, else ``cpu``; on Google
Colab always ``cpu``: a free Colab GPU session is too short for the ``full`` preset, so it runs only when asked for).
"""

from __future__ import annotations

import os
import platform
import random
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

SCALES = ("smoke", "cpu", "full")
SCALE_ENV = "LOWRANK_LAB_SCALE"
CACHE_ENV = "LOWRANK_LAB_CACHE"
RUNS_ENV = "LOWRANK_LAB_RUNS"


def in_colab() -> bool:
    """Whether this runs in a Google Colab kernel."""
    return "google.colab" in sys.modules


def get_scale(override: str | None = None) -> str:
    """Return the active scale: ``override`` > ``$LOWRANK_LAB_SCALE`` > ``full`` with CUDA (not on Colab) else ``cpu``."""
    scale = override or os.environ.get(SCALE_ENV) or ("full" if torch.cuda.is_available() and not in_colab() else "cpu")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES} (argument or ${SCALE_ENV}), got {scale!r}")
    return scale


def get_device(scale: str | None = None) -> torch.device:
    """``smoke`` always runs on CPU (determinism); otherwise CUDA > MPS > CPU."""
    if get_scale(scale) == "smoke":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed python, numpy and torch (CPU and CUDA); return a torch Generator seeded the same way.

    Same seed, same numbers on CPU: every random choice in lowrank_lab goes through these generators.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)


def cache_dir() -> Path:
    """Where converted models are cached (``$LOWRANK_LAB_CACHE``, default ``~/.cache/lowrank_lab``)."""
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lowrank_lab")
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir(*parts: str) -> Path:
    """A folder under ``runs/`` (gitignored), or under ``$LOWRANK_LAB_RUNS`` when set: the only place lessons write.
    ``lessons --execute`` points it at an empty folder, so an executed copy never reuses an earlier run."""
    path = Path(os.environ.get(RUNS_ENV) or "runs").joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_label(path: Path) -> str:
    """``path`` as a reader should see it: ``runs/...`` relative to the runs root (``$LOWRANK_LAB_RUNS`` or
    ``runs``), never the absolute path of the machine that ran it (an executed copy is read elsewhere)."""
    root = Path(os.environ.get(RUNS_ENV) or "runs")
    try:
        return "runs/" + Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(path).name


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def lab_version() -> str:
    """The installed lowrank-lab version (what a run's record says made it)."""
    return _version("lowrank-lab")


def environment_report(scale: str | None = None) -> dict:
    """Versions, device, threads and scale as a dict (printed by :func:`print_env`)."""
    scale = get_scale(scale)
    report = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "scale": scale,
        "device": str(get_device(scale)),
        "torch_threads": torch.get_num_threads(),
    }
    for dist in ("lowrank-lab", "torch", "transformers", "datasets", "safetensors", "peft", "matplotlib"):
        report[dist] = _version(dist)
    return report


def full_scale_note(scale: str | None = None) -> str:
    """On Colab with a GPU at a smaller scale: one line on what asking for ``full`` runs instead (read from the
    presets, so it cannot drift from them); empty elsewhere."""
    if not (in_colab() and torch.cuda.is_available()) or get_scale(scale) == "full":
        return ""
    from lowrank_lab import presets  # presets imports runtime: a late import keeps the import graph acyclic

    preset = presets.TRAIN_PRESETS["full"]["classification"]
    cpu = presets.TRAIN_PRESETS["cpu"]["classification"]
    return (f"Colab GPU found; this lesson stays at scale {get_scale(scale)!r}. SCALE = 'full' in the parameters cell "
            f"runs the GPU preset: {preset['epochs']} epochs over all the training data (cpu: {cpu['max_steps']} "
            f"steps), batch {preset['batch_size']}, length {preset['max_length']}: many times the cpu scale's work")


def print_env(scale: str | None = None) -> dict:
    report = environment_report(scale)
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    note = full_scale_note(scale)
    if note:
        print(note)
    return report


def progress_enabled() -> bool:
    """Whether progress bars are drawn: not when ``LOWRANK_LAB_NO_PROGRESS=1`` (the executed lesson copies set it,
    since a bar saved into a static notebook shows a frozen "0%")."""
    return os.environ.get("LOWRANK_LAB_NO_PROGRESS", "") in ("", "0")


def widgets_enabled() -> bool:
    """Whether a lesson should build its ipywidgets controls: inside a live Jupyter kernel, and not under CI,
    pytest/nbmake or ``LOWRANK_LAB_NO_WIDGETS=1`` (headless runs keep only the static figures; a widget
    callback executing under nbclient is not needed there and has hung it)."""
    headless = os.environ.get("CI") or os.environ.get("PYTEST_CURRENT_TEST") or os.environ.get("LOWRANK_LAB_NO_WIDGETS")
    return "ipykernel" in sys.modules and not headless
