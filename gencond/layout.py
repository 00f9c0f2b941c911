"""The names inside a run folder and where runs go; imports nothing of gencond's but its errors.

``gencond train CONFIG`` writes ``<runs_dir>/<name>/`` holding ``config.yaml``, ``checkpoints/``,
``metrics.jsonl``, ``model/`` (last weights, EMA if any) and ``best/`` (best validated weights).
:mod:`gencond.runs` (the run folder's behaviour) offers the same names; the modules it builds on (config,
checkpoints, export) read them here, so that none of them imports ``runs`` back.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
LAST_WEIGHTS = "model"
BEST_WEIGHTS = "best"
LOCK = ".lock"
WEIGHTS = {"best": (BEST_WEIGHTS, LAST_WEIGHTS), "last": (LAST_WEIGHTS,)}  # --weights -> folders tried in order


def default_runs_dir() -> str:
    """Where runs go unless a config says ``runs_dir``: ``$GENCOND_RUNS_DIR``, else ``runs``."""
    return os.environ.get("GENCOND_RUNS_DIR") or "runs"


def is_run_dir(path: str | Path) -> bool:
    """True for a folder that ``gencond train`` wrote (its config and checkpoints folder)."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path / CHECKPOINTS).is_dir()


def run_weights_folder(run_dir: str | Path, which: str = "best") -> Path:
    """The folder of a training run's ``best`` (validated; the last when the run kept none) or ``last``
    weights (an export's: :func:`gencond.runs.weights_folder`)."""
    if which not in WEIGHTS:
        raise UserError(f"unknown weights '{which}'; use 'best' or 'last'")
    if not (Path(run_dir) / CONFIG).is_file():
        raise UserError(f"{run_dir} is not a run directory (no {CONFIG}); pass the directory `gencond train` wrote")
    for sub in WEIGHTS[which]:
        if (Path(run_dir) / sub / "config.json").is_file() or any((Path(run_dir) / sub).glob("*.safetensors")):
            return Path(run_dir) / sub
    raise UserError(f"{run_dir} has no trained weights yet (no {LAST_WEIGHTS}/ or {BEST_WEIGHTS}/); "
                    f"run `gencond train {run_dir}` to finish training")
