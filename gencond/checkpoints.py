"""Training checkpoints without pickle: tensors in safetensors files, everything else in JSON.

A checkpoint folder ``step_XXXXXXXX/`` holds ``model.safetensors``, ``optimizer.safetensors``,
``ema.safetensors`` (when EMA is on), ``rng_<rank>.safetensors`` and, written last as the mark of a
complete checkpoint, ``trainer_state.json`` (counters, lr schedule, loss scaler, optimizer groups,
EMA settings). Loading reads every file before touching the model, so a truncated or corrupt
checkpoint is skipped as a whole and the next older one is used.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from .errors import UserError
from .layout import CHECKPOINTS

STATE = "trainer_state.json"
LEGACY_MARK = "complete"  # gencond < 0.2: accelerate's save_state, with pickled custom state
FORMAT = 1


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Every checkpoint folder that finished writing (new or legacy format), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    return sorted(p for p in root.glob("step_*") if (p / STATE).is_file() or (p / LEGACY_MARK).is_file())


def latest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def checkpoint_step(path: Path) -> int:
    """The training step a checkpoint folder was saved at (from its folder name)."""
    return int(Path(path).name.split("_", 1)[1])


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, per_param in sd["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: Path, *, model, optimizer, lr_scheduler, ema, scaler, counters: dict,
                    rank: int, is_main: bool) -> None:
    """Write one checkpoint; the main process writes the shared state, every rank its RNG state."""
    path.mkdir(parents=True, exist_ok=True)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(path / f"rng_{rank}.safetensors"))
    if not is_main:
        return
    save_model(model, str(path / "model.safetensors"))
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, str(path / "optimizer.safetensors"))
    state = {"format": FORMAT, **counters, "optimizer": opt_meta, "lr_scheduler": lr_scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None}
    if ema is not None:
        ema_sd = ema.state_dict()
        shadow = ema_sd.pop("shadow_params")
        save_file({str(i): p.detach().contiguous().cpu() for i, p in enumerate(shadow)}, str(path / "ema.safetensors"))
        state["ema"] = ema_sd
    tmp = path / (STATE + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path / STATE)  # last: the checkpoint is complete


@dataclass
class LoadedCheckpoint:
    path: Path
    state: dict
    optimizer: dict
    ema_shadow: Optional[list[torch.Tensor]]
    rng: Optional[dict[str, torch.Tensor]]


@dataclass
class ExpectedShapes:
    """What a checkpoint must hold to fit the objects it is loaded into: the model's tensors (name ->
    (shape, storage), tied tensors share a storage and are saved once), the shapes of the optimised
    parameters in the optimizer's order, and of all parameters (the EMA's shadow); ``groups``: the size of
    each optimizer parameter group (``train.param_groups``), None = not checked."""

    model: dict[str, tuple[tuple[int, ...], int]]
    params: list[tuple[int, ...]]
    ema: list[tuple[int, ...]]
    groups: Optional[list[int]] = None

    @classmethod
    def of(cls, model: torch.nn.Module, params, groups: Optional[list[int]] = None) -> "ExpectedShapes":
        return cls({k: (tuple(v.shape), v.untyped_storage().data_ptr()) for k, v in model.state_dict().items()},
                   [tuple(p.shape) for p in params], [tuple(p.shape) for p in model.parameters()], groups)


class WrongContents(ValueError):
    """A checkpoint whose files read but hold the wrong things."""


def _is_number(v, low: float = 0.0) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= low


def check_contents(path: Path, state, model: dict, optimizer: dict, ema: Optional[list], expect: Optional[ExpectedShapes]) -> None:
    """Raise ValueError when a well-formed checkpoint holds the wrong things: counters that are not
    numbers (or another step than its folder's), or tensors that do not fit ``expect``."""
    if not isinstance(state, dict):
        raise WrongContents(f"{STATE} holds {type(state).__name__}, not the trainer's state")
    if not (isinstance(state.get("step"), int) and _is_number(state["step"]) and _is_number(state.get("elapsed_s"))
            and (state.get("best") is None or _is_number(state["best"], float("-inf")))):
        raise WrongContents(f"{STATE} has no valid step, elapsed_s and best")
    if state["step"] != checkpoint_step(path):
        raise WrongContents(f"{STATE} says step {state['step']}, its folder step {checkpoint_step(path)}")
    meta = state.get("optimizer")
    if not (isinstance(meta, dict) and isinstance(meta.get("param_groups"), list)
            and isinstance(meta.get("scalars"), dict) and isinstance(state.get("lr_scheduler"), dict)):
        raise WrongContents(f"{STATE} has no valid optimizer and lr_scheduler state")
    if expect is None:
        return
    present = {ptr for name, (_, ptr) in expect.model.items() if name in model}
    for name, tensor in model.items():
        if name not in expect.model or tuple(tensor.shape) != expect.model[name][0]:
            raise WrongContents(f"model.safetensors does not fit the model ('{name}' {tuple(tensor.shape)} is "
                             + ("not one of its tensors)" if name not in expect.model else f"{expect.model[name][0]} in the model)"))
    missing = [name for name, (_, ptr) in expect.model.items() if name not in model and ptr not in present]
    if missing:
        raise WrongContents(f"model.safetensors lacks {missing[:3]} of the model")
    groups = sum(len(g.get("params", ())) for g in meta["param_groups"] if isinstance(g, dict))
    if groups != len(expect.params):
        raise WrongContents(f"the optimizer state is for {groups} parameters, this run trains {len(expect.params)}")
    sizes = [len(g.get("params", ())) if isinstance(g, dict) else 0 for g in meta["param_groups"]]
    if expect.groups is not None and sizes != expect.groups:
        raise WrongContents(f"the optimizer state has parameter groups of {sizes} parameters, this run's "
                            f"train.param_groups make {expect.groups}")
    for flat, tensor in optimizer.items():
        idx = flat.split(".", 1)[0]
        if not (idx.isdigit() and int(idx) < len(expect.params)) or (
                tensor.ndim and tuple(tensor.shape) != expect.params[int(idx)]):
            raise WrongContents(f"optimizer.safetensors does not fit the parameters ('{flat}' {tuple(tensor.shape)})")
    if ema is not None and [tuple(t.shape) for t in ema] != expect.ema:
        raise WrongContents("ema.safetensors does not fit the model's parameters")


def read_checkpoint(path: Path, rank: int, with_ema: bool, expect: Optional[ExpectedShapes] = None) -> LoadedCheckpoint:
    """Read and check every file of a checkpoint (with ``expect``: that its tensors fit); raises
    ValueError saying what is wrong."""
    if not (path / STATE).is_file():
        raise ValueError("written by gencond < 0.2 in accelerate's pickle format, which is never loaded "
                         "because unpickling a file can run code")
    try:
        state = json.loads((path / STATE).read_text())
        model_tensors = load_file(str(path / "model.safetensors"))  # checks the whole file before load_model
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        check_contents(path, state, model_tensors, opt_tensors, None, None)
        ema_shadow = None
        if with_ema:
            if not isinstance(state.get("ema"), dict):
                raise ValueError("it has no EMA weights but train.ema_decay is set")
            flat = load_file(str(path / "ema.safetensors"))
            ema_shadow = [flat[str(i)] for i in range(len(flat))]
        rng_file = path / f"rng_{rank}.safetensors"
        rng = load_file(str(rng_file)) if rng_file.exists() else None
        check_contents(path, state, model_tensors, opt_tensors, ema_shadow, expect)
    except FileNotFoundError as e:
        raise ValueError(f"{Path(e.filename).name} is missing") from None
    except WrongContents:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return LoadedCheckpoint(path, state, _unflatten_optimizer(opt_tensors, state["optimizer"]), ema_shadow, rng)


def apply_checkpoint(ckpt: LoadedCheckpoint, *, model, optimizer, lr_scheduler, ema, scaler) -> dict:
    """Load a read checkpoint into the training objects; returns its counters."""
    load_model(model, str(ckpt.path / "model.safetensors"))
    optimizer.load_state_dict(ckpt.optimizer)
    lr_scheduler.load_state_dict(ckpt.state["lr_scheduler"])
    if scaler is not None and ckpt.state.get("scaler"):
        scaler.load_state_dict(ckpt.state["scaler"])
    if ema is not None:
        ema.load_state_dict({**ckpt.state["ema"], "shadow_params": ckpt.ema_shadow})
    if ckpt.rng is not None:
        torch.set_rng_state(ckpt.rng["cpu"])
        cuda = [ckpt.rng[k] for k in sorted(ckpt.rng) if k.startswith("cuda_")]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return {k: ckpt.state[k] for k in ("step", "elapsed_s", "best")}


def newest_readable(run_dir: Path, rank: int, with_ema: bool, say=print,
                    expect: Optional[ExpectedShapes] = None) -> Optional[LoadedCheckpoint]:
    """The newest checkpoint that reads completely (and fits ``expect``); says which newer ones it skipped and why.

    None when the run has none; a one-line error when it has some and none of them reads."""
    dirs = checkpoint_dirs(run_dir)
    skipped = []
    for path in reversed(dirs):
        try:
            return read_checkpoint(path, rank, with_ema, expect)
        except ValueError as e:
            skipped.append(f"{path.name}: {e}")
            say(f"skipping checkpoint {path}: {e}")
    if skipped:
        raise UserError(f"no checkpoint of {run_dir} can be loaded ({'; '.join(skipped)}); "
                        "pass --restart to start over")
    return None


def remove_old(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints."""
    for old in checkpoint_dirs(run_dir)[: -max(1, keep)]:
        shutil.rmtree(old)
