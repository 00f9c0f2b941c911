"""The run directory: its layout, its lock, and how a run is found, resumed or removed.

``gencond train CONFIG`` writes ``<runs_dir>/<name>/`` holding ``config.yaml``, ``checkpoints/``,
``metrics.jsonl``, ``model/`` (last weights, EMA if any) and ``best/`` (best validated weights).
Every other place asks this module for those names.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

from .errors import UserError

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
LAST_WEIGHTS = "model"
BEST_WEIGHTS = "best"
LOCK = ".lock"


def is_run_dir(path: str | Path) -> bool:
    """True for a folder that ``gencond train`` wrote (its config and checkpoints folder)."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path / CHECKPOINTS).is_dir()


def check_run_name(name: str) -> str:
    """A run name is a plain folder name inside runs_dir: no path separators, not '.' or '..'."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
        raise UserError(f"run name '{name}' must be a plain folder name (no '/', not '.' or '..'); "
                        "choose where runs go with runs_dir=PATH")
    return name


def remove_run(run_dir: Path) -> None:
    """Delete a run's contents (``--restart``), refusing any folder that is not a gencond run."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    leftovers = [p for p in run_dir.iterdir() if p.name != LOCK]
    if not leftovers:
        return
    if not is_run_dir(run_dir):
        raise UserError(f"--restart would delete {run_dir}, which is not a gencond run (no {CONFIG} and "
                        f"{CHECKPOINTS}/); remove it yourself or choose another name=")
    print(f"--restart: removing {run_dir.resolve()} ({len(leftovers)} entries)")
    for p in leftovers:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


class RunLock:
    """An exclusive lock on a run directory, held while one process trains it.

    ``flock`` is released by the kernel when the process dies (even by ``kill -9``), so a lock
    never outlives its trainer; the file records who holds it for the error message.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self._fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                holder = json.loads(self.path.read_text())
                who = f"process {holder['pid']} on {holder['host']} (since {holder['since']})"
            except (OSError, ValueError, KeyError):
                who = "another process"
            raise UserError(f"{self.path.parent} is being trained by {who}; wait for it to finish or stop it "
                            "(Ctrl-C checkpoints), then run again") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def truncate_metrics(run_dir: str | Path, step: int) -> int:
    """Drop the log lines after ``step`` (steps replayed after a crash) and any torn last line;
    returns how many lines were dropped."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            keep = json.loads(line)["step"] <= step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return dropped


WEIGHTS = {"best": (BEST_WEIGHTS, LAST_WEIGHTS), "last": (LAST_WEIGHTS,)}


def claim_output(path: Path, identity: dict, what: str) -> None:
    """Write ``identity`` (JSON) to ``path``, or refuse if it already holds another: the results beside
    it (chunks, episodes) are resumed only by the same job. ``what`` names that job in the error."""
    path, identity = Path(path), json.loads(json.dumps(identity))
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in old.keys() | identity.keys() if old.get(k) != identity.get(k))
        if changed:
            diff = "; ".join(f"{k} {old.get(k)!r} -> {identity.get(k)!r}" for k in changed)
            raise UserError(f"{path.parent} holds another {what} ({diff}); use another --out or delete the folder")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=1))


def weights_folder(run_dir: Path, which: str = "best") -> Path:
    """The folder of a run's ``best`` (validated; the last when the run kept none) or ``last`` weights."""
    if which not in WEIGHTS:
        raise UserError(f"unknown weights '{which}'; use 'best' or 'last'")
    if not (Path(run_dir) / CONFIG).is_file():
        raise UserError(f"{run_dir} is not a run directory (no {CONFIG}); pass the directory `gencond train` wrote")
    for sub in WEIGHTS[which]:
        if (Path(run_dir) / sub / "config.json").is_file() or any((Path(run_dir) / sub).glob("*.safetensors")):
            return Path(run_dir) / sub
    raise UserError(f"{run_dir} has no trained weights yet (no {LAST_WEIGHTS}/ or {BEST_WEIGHTS}/); "
                    f"run `gencond train {run_dir}` to finish training")


def weights_fingerprint(folder: Path) -> str:
    """The first 12 hex digits of a SHA-256 over the folder's weight files (which weights a result used)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def run_task(run_dir: str | Path) -> str:
    """The task a run was trained for (read from its config, without validating it)."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no {CONFIG}); pass the directory `gencond train` wrote")
    return str(OmegaConf.load(path).get("task"))


def load_run(run_dir: str | Path, weights: str = "best", task: str | tuple[str, ...] | None = None,
             needed_by: str = "this command"):
    """(cfg, model in eval mode) of a trained run, through the registry of its task.

    ``task``: the task(s) the caller can use; a run of another task is a one-line error."""
    from .config import load_config
    from .registry import get_task

    run_dir = Path(run_dir)
    found = run_task(run_dir)
    wanted = (task,) if isinstance(task, str) else task
    if wanted and found not in wanted:
        raise UserError(f"{run_dir} is a '{found}' run; {needed_by} needs a "
                        + " or ".join(f"'{t}'" for t in wanted) + " run")
    folder = weights_folder(run_dir, weights)
    cfg = load_config(run_dir / CONFIG)
    loader = get_task(cfg.task).load_model
    if loader is None:
        raise UserError(f"task '{cfg.task}' does not say how to load its weights (register_task(load_model=...))")
    return cfg, loader(folder).eval()


def add_sampling_arguments(p, sampler: bool = True) -> None:
    """The flags every verb that loads a run shares (``sampler``: also --scheduler and --steps)."""
    from .cli import non_negative_float, positive_int, timestep_ranges

    p.add_argument("--weights", default="best", choices=sorted(WEIGHTS),
                   help="validated best weights (the last when the run kept none) or the last weights; default best")
    if sampler:
        p.add_argument("--scheduler", help="ddpm, ddim, dpm++, ... (default: the config's sampling.scheduler)")
        p.add_argument("--steps", type=positive_int, help="sampling steps (default: the config's sampling.num_steps)")
        p.add_argument("--timesteps", type=timestep_ranges, help="the DDPM (or dpm++) steps as ranges FIRST:LAST:STRIDE "
                       "joined by +, from the last training timestep down, e.g. 99:52:12+50:26:2+25:0:1 "
                       "(sampling.timesteps; --steps wins when both are given)")
        p.add_argument("--eta", type=non_negative_float, help="DDIM stochasticity, 0 deterministic to 1 ancestral "
                       "(default: the config's sampling.eta)")
        p.add_argument("--micro-batch", type=positive_int, help="rows per network call (on several CPU threads the calls run "
                       "side by side): the same samples, faster when a call's activations fit a core's caches (default: the config's "
                       "sampling.micro_batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: the run's train.threads)")


def apply_sampling_arguments(cfg, args, **more) -> None:
    """Put the sampling flags (and ``more`` sampling keys) into ``cfg.sampling``; set the threads."""
    import torch
    from omegaconf import OmegaConf

    threads = getattr(args, "threads", None) or cfg.train.threads
    if threads:
        torch.set_num_threads(threads)
    chosen = {"scheduler": getattr(args, "scheduler", None), "num_steps": getattr(args, "steps", None),
              "timesteps": getattr(args, "timesteps", None), "eta": getattr(args, "eta", None),
              "micro_batch": getattr(args, "micro_batch", None), **more}
    chosen = {k: v for k, v in chosen.items() if v is not None}
    if "timesteps" in chosen and "num_steps" not in chosen:
        chosen["num_steps"] = None  # the config's num_steps would win over the listed steps asked for
    cfg.sampling = OmegaConf.merge(cfg.sampling, chosen)
