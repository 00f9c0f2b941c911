"""The run directory: its layout, its lock, and how a run is found, resumed or removed.

``gencond train CONFIG`` writes ``<runs_dir>/<name>/`` holding ``config.yaml``, ``checkpoints/``,
``metrics.jsonl``, ``model/`` (last weights, EMA if any) and ``best/`` (best validated weights).
Every other place asks this module (or, below it, :mod:`gencond.layout`) for those names.
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
from .layout import (BEST_WEIGHTS, CHECKPOINTS, CONFIG, LAST_WEIGHTS, LOCK, METRICS, WEIGHTS, default_runs_dir,  # noqa: F401
                     is_run_dir, run_weights_folder)


def output_dir(model_dir: str | Path) -> Path:
    """Where a verb writes the outputs of a model folder by default: inside a run, but never inside an
    export (a shipped model stays as it was): ``<runs_dir>/exports/<name>/`` for those."""
    from .export import is_export

    model_dir = Path(model_dir)
    return Path(default_runs_dir()) / "exports" / model_dir.resolve().name if is_export(model_dir) else model_dir


NAME_MAX = 255  # bytes in a file name on Linux and macOS file systems


def check_run_name(name: str) -> str:
    """A run name is a plain folder name inside runs_dir: no path separators, not '.' or '..', not too long."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip() or "\0" in name:
        raise UserError(f"run name '{name}' must be a plain folder name (no '/', not '.' or '..'); "
                        "choose where runs go with runs_dir=PATH")
    if len(name.encode()) > NAME_MAX:
        raise UserError(f"run name '{name[:40]}…' is {len(name.encode())} bytes long; file systems allow at most "
                        f"{NAME_MAX}: choose a shorter name=")
    return name


def _removal_refused(run_dir: Path) -> Optional[str]:
    """Why ``--restart`` must not empty ``run_dir`` (None when it may): only a real folder holding a
    gencond run is emptied, never the target of a symlink."""
    if run_dir.is_symlink():
        return (f"--restart would delete the folder that the symlink {run_dir} points to ({os.path.realpath(run_dir)}); "
                "--restart empties only a run folder itself: remove the link, or that folder, yourself")
    if not run_dir.exists():
        return None
    if not run_dir.is_dir():
        return f"--restart: {run_dir} is a file, not a run folder; remove it yourself or choose another name="
    leftovers = [p for p in run_dir.iterdir() if p.name != LOCK]
    if leftovers and not is_run_dir(run_dir):
        return (f"--restart would delete {run_dir}, which is not a gencond run (no {CONFIG} and "
                f"{CHECKPOINTS}/); remove it yourself or choose another name=")
    return None


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0))


def check_run_folder(run_dir: str | Path, restart: bool = False) -> None:
    """Refuse, before anything is written, a run folder that training cannot use: under a runs_dir that
    is a file, a dangling symlink, a file, a folder (or files in it) that cannot be written, and with
    ``restart`` one that ``--restart`` may not empty (see :func:`remove_run`)."""
    run_dir = Path(run_dir)
    if restart:
        why = _removal_refused(run_dir)
        if why:
            raise UserError(why)
    if run_dir.is_symlink() and not run_dir.exists():
        raise UserError(f"{run_dir} is a symlink to {os.readlink(run_dir)}, which does not exist; "
                        "remove the link or recreate its target")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a run folder; choose another name= (or runs_dir=)")
    ancestor = run_dir
    while not ancestor.exists():
        if ancestor.is_symlink():
            raise UserError(f"{ancestor} is a symlink to {os.readlink(ancestor)}, which does not exist")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"runs_dir: {ancestor} is a file, not a folder; choose runs_dir=PATH of a folder")
    entries = [run_dir, *(run_dir / n for n in (CHECKPOINTS, LAST_WEIGHTS, BEST_WEIGHTS, METRICS, CONFIG, LOCK))]
    if run_dir.exists() and (run_dir / CHECKPOINTS).is_dir():
        entries += list((run_dir / CHECKPOINTS).iterdir())
    blocked = [p for p in entries if p.exists() and not _writable(p)] if run_dir.exists() else (
        [] if _writable(ancestor) else [ancestor])
    if blocked:
        raise UserError(f"cannot write to {blocked[0]} (permission denied or read-only): training would fail at its "
                        "first checkpoint; fix the permissions, or train a copy elsewhere (name=, runs_dir=)")


def remove_run(run_dir: Path) -> None:
    """Delete a run's contents (``--restart``), refusing any folder that is not a gencond run and any
    symlink (the folder it points to is not this run's to delete)."""
    run_dir = Path(run_dir)
    why = _removal_refused(run_dir)
    if why:
        raise UserError(why)
    if not run_dir.exists():
        return
    leftovers = [p for p in run_dir.iterdir() if p.name != LOCK]
    if not leftovers:
        return
    print(f"--restart: removing {run_dir.resolve()} ({len(leftovers)} entries)")
    for p in leftovers:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


class RunLock:
    """An exclusive lock on a run directory, held while one process trains it.

    ``flock`` is released by the kernel when the process dies (even by ``kill -9``), so a lock
    never outlives its trainer; the file records who holds it for the error message. A process that
    holds the lock may take it again (the CLI locks before writing the config, the trainer again).
    """

    _held: dict[str, int] = {}  # lock files this process holds -> how many times taken

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self._fd: Optional[int] = None
        self._key: Optional[str] = None

    def __enter__(self) -> "RunLock":
        key = os.path.realpath(self.path)
        if RunLock._held.get(key):
            RunLock._held[key] += 1
            self._key = key
            return self
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
        self._fd, self._key = fd, key
        RunLock._held[key] = 1
        return self

    def __exit__(self, *exc) -> None:
        key, self._key = self._key, None
        if key is None:
            return
        RunLock._held[key] -= 1
        if RunLock._held[key]:
            return  # an outer `with` still holds it
        del RunLock._held[key]
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


def claim_output(path: Path, identity: dict, what: str) -> None:
    """Write ``identity`` (JSON) to ``path``, or refuse if it already holds another: the results beside
    it (chunks, episodes) are resumed only by the same job. ``what`` names that job in the error."""
    path, identity = Path(path), json.loads(json.dumps(identity))
    if path.exists():
        try:
            old = json.loads(path.read_text(errors="replace"))
        except ValueError:
            old = None
        if not isinstance(old, dict):
            raise UserError(f"{path} is damaged (not a JSON object), so the results beside it cannot be told to be "
                            f"of this {what}; delete {path.parent} to start over, or use another --out")
        changed = sorted(k for k in old.keys() | identity.keys() if old.get(k) != identity.get(k))
        if changed:
            diff = "; ".join(f"{k} {old.get(k)!r} -> {identity.get(k)!r}" for k in changed)
            raise UserError(f"{path.parent} holds another {what} ({diff}); use another --out or delete the folder")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=1))


def read_resume_log(path: str | Path, keys: tuple[str, ...] = (), say=print) -> list[dict]:
    """The records of a JSON-lines log that a verb resumes from (one line per finished item). Damaged lines
    (torn by an interruption, not an object, lacking ``keys``) are dropped from the file, so that their
    items are redone and the next record does not join a torn line, and ``say`` tells which."""
    path = Path(path)
    if not path.exists():
        return []
    records, kept, damaged = [], [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and all(k in record for k in keys):
            records.append(record)
            kept.append(line)
        else:
            damaged.append(number)
    if damaged:
        say(f"{path}: dropping damaged line(s) {', '.join(map(str, damaged[:5]))} (redone)")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return records


def read_arrays(path: str | Path, keys: tuple[str, ...], say=print) -> Optional[dict]:
    """The arrays ``keys`` of a saved ``.npz`` result, or None (saying so) when it is damaged: truncated,
    not an npz file, or lacking a key; the caller then computes it again."""
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        say(f"{path} is damaged ({type(e).__name__}); computing it again")
        return None


def prepare_output(out: str | Path, results: tuple[str, ...] = (), identity: Optional[Path] = None,
                   overwrite: bool = False) -> Path:
    """Make a verb's output folder, refusing one it cannot use: a file, a dangling symlink, a place it cannot
    write, or a folder already holding ``results`` (file names) that this job did not write. Only a resume of the
    same job (its ``identity`` file exists; :func:`claim_output` then checks it is the same) or ``overwrite``
    (``--overwrite``) writes over them."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise UserError(f"--out {out} is a symlink to {os.readlink(out)}, which does not exist")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder (it is created if missing)")
    found = [name for name in results if (out / name).exists()]
    if found and not overwrite and not (identity is not None and Path(identity).is_file()):
        raise UserError(f"{out} already holds {', '.join(found)} that this command did not write; pass --overwrite "
                        "to replace them, or another --out")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"--out {out}: {ancestor} is a file, not a folder")
    if not _writable(ancestor):
        raise UserError(f"cannot write to {ancestor} (permission denied or read-only); pass --out DIR of a folder you can write")
    out.mkdir(parents=True, exist_ok=True)
    return out


def weights_folder(run_dir: Path, which: str = "best") -> Path:
    """The folder of a run's ``best`` (validated; the last when the run kept none) or ``last`` weights;
    an export's only weights, once its files are checked."""
    from .export import check_export, is_export

    if which not in WEIGHTS:
        raise UserError(f"unknown weights '{which}'; use 'best' or 'last'")
    if is_export(run_dir):
        check_export(run_dir)
        return Path(run_dir) / LAST_WEIGHTS
    return run_weights_folder(run_dir, which)


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
    """The task a run or an export was trained for (read from its config, without validating it)."""
    from omegaconf import OmegaConf

    from .export import EXPORT, check_export, is_export

    if is_export(run_dir):
        return check_export(run_dir)["task"]
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory or an exported model (no {CONFIG}, no {EXPORT}); "
                        "pass the folder `gencond train` or `gencond export` wrote")
    return str(OmegaConf.load(path).get("task"))


def load_run(run_dir: str | Path, weights: str = "best", task: str | tuple[str, ...] | None = None,
             needed_by: str = "this command"):
    """(cfg, model in eval mode) of a trained run or an export, through the registry of its task.

    ``task``: the task(s) the caller can use; a model of another task is a one-line error."""
    from .config import load_config
    from .export import check_export, is_export
    from .registry import get_task

    run_dir = Path(run_dir)
    export = check_export(run_dir) if is_export(run_dir) else None  # the files are hashed once per load
    found = export["task"] if export else run_task(run_dir)
    wanted = (task,) if isinstance(task, str) else task
    if wanted and found not in wanted:
        raise UserError(f"{run_dir} is a '{found}' {'export' if export else 'run'}; {needed_by} needs a "
                        + " or ".join(f"'{t}'" for t in wanted) + " run")
    folder = run_dir / LAST_WEIGHTS if export else weights_folder(run_dir, weights)
    cfg = load_config(run_dir / CONFIG)
    loader = get_task(cfg.task).load_model
    if loader is None:
        raise UserError(f"task '{cfg.task}' does not say how to load its weights (register_task(load_model=...))")
    model = loader(folder)
    if export and export.get("dtype", "float32") != "float32":
        model.float()  # stored in half precision, computed in float32
    return cfg, model.eval()
