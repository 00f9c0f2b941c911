"""Exported models: a trained run as a self-contained folder (``gencond export``).

An export holds ``config.yaml`` (the run's), ``model/`` (the EMA weights, or the only weights when the run
kept no EMA), ``raw/model.safetensors`` (the training weights, when EMA is on and the last weights are
exported, so that training can go on from them), ``export.json`` (task, step, dtype, sha256 of every file)
and a generated ``MODEL_CARD.md``. No optimizer state, nothing pickled. Every verb that takes a run takes an
export: :func:`check_export` compares each file with ``export.json`` before anything is loaded.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from .errors import UserError
from .layout import BEST_WEIGHTS, CONFIG, LAST_WEIGHTS, METRICS, WEIGHTS, is_run_dir, run_weights_folder

EXPORT = "export.json"
CARD = "MODEL_CARD.md"
RAW = "raw"
FORMAT = 1
ALLOWED_SUFFIXES = {".safetensors", ".json", ".yaml", ".md", ".txt"}  # no pickles, no code


def is_export(path: str | Path) -> bool:
    """True for a folder written by ``gencond export`` (it has ``export.json``)."""
    return (Path(path) / EXPORT).is_file()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` but the manifest and the card, as sorted relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() or p.is_symlink() if p.name not in (EXPORT, CARD) or p.parent != folder)


def read_manifest(folder: str | Path) -> dict:
    """``export.json`` of an export, checked for its fields (a one-line error when it is damaged)."""
    path = Path(folder) / EXPORT
    try:
        manifest = json.loads(path.read_text())
        ok = (isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)
              and isinstance(manifest.get("step"), int) and isinstance(manifest.get("task"), str))
    except (OSError, ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise UserError(f"{path} is not a valid export manifest (needs task, step and files); "
                        "export the run again with `gencond export RUN_DIR --out ...`")
    return manifest


def check_export(folder: str | Path) -> dict:
    """Refuse an export whose files are not exactly the ones ``export.json`` lists with their sha256
    (corrupt or edited weights, a pickle or any other file placed in it); returns the manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    present = _files(folder)
    foreign = [f for f in present if Path(f).suffix not in ALLOWED_SUFFIXES or (folder / f).is_symlink()]
    if foreign:
        raise UserError(f"{folder} holds {foreign[0]}, which an export never contains (only safetensors, JSON, "
                        "YAML and text; nothing is unpickled or run); remove it. Nothing was loaded")
    unlisted = sorted(set(present) - set(manifest["files"]))
    missing = sorted(set(manifest["files"]) - set(present))
    if unlisted or missing:
        what = f"{unlisted[0]} is not listed in {EXPORT}" if unlisted else f"{missing[0]} is missing"
        raise UserError(f"{folder}: {what}; restore the export (e.g. `git checkout {folder}`) or export the run again")
    for name, expected in manifest["files"].items():
        if sha256(folder / name) != expected:
            raise UserError(f"{folder / name}: sha256 differs from {EXPORT} (corrupt or edited); restore it "
                            f"(e.g. `git checkout {folder}`) or export the run again. Nothing was loaded")
    return manifest


def _best_step(run_dir: Path) -> Optional[int]:
    """The step of the run's best validated weights: the last logged line that improved ``best_*``."""
    best, step = None, None
    path = run_dir / METRICS
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        for key, value in row.items():
            if key.startswith("best_") and value is not None and value != best:
                best, step = value, row.get("step")
    return step


def _training_state(run_dir: Path) -> dict:
    from .checkpoints import STATE, latest_checkpoint

    last = latest_checkpoint(run_dir)
    if last is None or not (last / STATE).is_file():
        raise UserError(f"{run_dir} has no complete checkpoint; let `gencond train {run_dir}` write one first")
    state = json.loads((last / STATE).read_text())
    return {"checkpoint": last, "step": int(state["step"]), "elapsed_s": float(state.get("elapsed_s", 0.0)),
            "machine": state.get("machine"), "ema": "ema" in state}


def _copy_weights(src: Path, dst: Path, dtype: Optional[str]) -> None:
    """Copy a weights folder's safetensors (and JSON), casting floating tensors to ``dtype`` if given."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.suffix == ".json":
            shutil.copyfile(path, dst / path.name)
        elif path.suffix == ".safetensors":
            if dtype is None:
                shutil.copyfile(path, dst / path.name)
                continue
            import torch

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            cast = getattr(torch, dtype)
            tensors = {k: v.to(cast) if v.is_floating_point() else v for k, v in tensors.items()}
            save_file(tensors, str(dst / path.name), metadata=meta)


def machine_description() -> str:
    """The machine a training ran on, in words (processor, cores, accelerator, threads)."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {device}, torch {torch.__version__.split('+')[0]} on {torch.get_num_threads()} threads"


def _out_inside_model(out: Path) -> Optional[Path]:
    for parent in out.resolve().parents:
        if is_export(parent) or is_run_dir(parent):
            return parent
    return None


def export_run(run_dir: str | Path, out: str | Path, weights: str = "best", dtype: Optional[str] = None,
               overwrite: bool = False, card: Optional[dict] = None) -> Path:
    """Write the export of ``run_dir`` to ``out`` (atomically); returns ``out``.

    ``card``: what the model card says beyond the run's own facts (``description``, ``data``,
    ``train_command``, ``metrics`` {name: value}, ``measured_by`` (command), ``notes``)."""
    from omegaconf import OmegaConf

    run_dir, out = Path(run_dir), Path(out)
    _check_request(run_dir, out, weights, dtype)
    dtype = None if dtype == "float32" else dtype
    config = OmegaConf.load(run_dir / CONFIG)
    _check_out(out, config, overwrite)
    folder = run_weights_folder(run_dir, weights)
    state = _training_state(run_dir)
    used_best = folder.name == BEST_WEIGHTS
    step = (_best_step(run_dir) or state["step"]) if used_best else state["step"]
    raw = state["ema"] and not used_best
    manifest = {"format": FORMAT, "task": str(config.get("task")), "name": out.name, "step": step,
                "weights": "best" if used_best else "last", "ema": state["ema"], "raw_weights": raw,
                "dtype": dtype or "float32", "trained_steps": state["step"],
                "training_wall_s": round(state["elapsed_s"], 1), "machine": state["machine"],
                "source": str(run_dir.resolve()), "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
                **{k: v for k, v in (card or {}).items() if v},
                "files": {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_export(tmp, run_dir, folder, state["checkpoint"] if raw else None, dtype, manifest)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_request(run_dir: Path, out: Path, weights: str, dtype: str | None) -> None:
    """One-line errors for an export that cannot be made: not a run, unknown settings, ``out`` inside a model."""
    if is_export(run_dir):
        raise UserError(f"{run_dir} is already an export; copy the folder instead")
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir} is not a run directory (no {CONFIG} and checkpoints/); pass the folder "
                        "`gencond train` wrote")
    if weights not in WEIGHTS:
        raise UserError(f"unknown --weights '{weights}'; use 'best' or 'last'")
    if dtype not in (None, "float32", "float16", "bfloat16"):
        raise UserError(f"unknown --dtype '{dtype}'; use float32, float16 or bfloat16")
    host = _out_inside_model(out)
    if host is not None:
        raise UserError(f"--out {out} lies inside the model folder {host}; choose a folder outside it")


def _check_out(out: Path, config, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, a folder of other files, or (without ``overwrite``) another model's export."""
    from omegaconf import OmegaConf

    if not out.exists():
        return
    if out.is_file() or out.is_symlink():
        raise UserError(f"--out {out} is a file; give a folder")
    if is_export(out) and not overwrite:
        old = read_manifest(out)
        if old.get("task") != config.get("task") or OmegaConf.load(out / CONFIG).get("model") != config.get("model"):
            raise UserError(f"{out} holds another model (task '{old.get('task')}', other model settings); "
                            "pass --overwrite to replace it, or choose another --out")
    elif any(out.iterdir()) and not is_export(out):
        raise UserError(f"--out {out} is a folder with other files; choose a new or empty folder")


def _write_export(tmp: Path, run_dir: Path, folder: Path, checkpoint: Path | None, dtype: str | None,
                  manifest: dict) -> None:
    """The export's files into ``tmp``: the config, the weights of ``folder`` (and the training weights of
    ``checkpoint``, if given, under ``raw/``), the manifest with every file's sha256, and the model card."""
    from omegaconf import OmegaConf

    exported_config = OmegaConf.load(run_dir / CONFIG)
    exported_config.pop("runs_dir", None)  # where the run lived; users' runs go to their own runs_dir
    (tmp / CONFIG).write_text(OmegaConf.to_yaml(exported_config))
    _copy_weights(folder, tmp / LAST_WEIGHTS, dtype)
    if checkpoint is not None:
        _copy_weights_file(checkpoint / "model.safetensors", tmp / RAW / "model.safetensors", dtype)
    manifest["files"] = {name: sha256(tmp / name) for name in _files(tmp)}
    (tmp / EXPORT).write_text(json.dumps(manifest, indent=1) + "\n")
    (tmp / CARD).write_text(model_card(manifest, OmegaConf.load(tmp / CONFIG)))


def _copy_weights_file(src: Path, dst: Path, dtype: Optional[str]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copyfile(src, Path(scratch) / src.name)
        _copy_weights(Path(scratch), dst.parent, dtype)


def model_card(manifest: dict, config) -> str:
    """The MODEL_CARD.md text of an export, from its manifest and config."""
    from omegaconf import OmegaConf

    name = manifest["name"]
    wall = manifest["training_wall_s"]
    wall = f"{wall / 3600:.1f} h" if wall >= 5400 else f"{wall / 60:.0f} min"
    data = {k: v for k, v in OmegaConf.to_container(config.get("data", {}), resolve=True).items() if v is not None}
    lines = [f"# {name}", "", manifest.get("description") or f"A gencond `{manifest['task']}` model.", "",
             "| | |", "|---|---|", f"| task | `{manifest['task']}` |",
             f"| weights | {'EMA' if manifest['ema'] else 'trained'} weights, {manifest['weights']} "
             f"(step {manifest['step']} of {manifest['trained_steps']}), {manifest['dtype']} |",
             f"| training | {manifest['trained_steps']} steps, {wall} of training"
             + (f" on {manifest['machine']}" if manifest.get("machine") else "") + " |",
             f"| data | {manifest.get('data') or ', '.join(f'{k}: {v}' for k, v in data.items())} |"]
    if manifest.get("raw_weights"):
        lines.append("| continue training | `raw/` holds the training weights; `train.init_from=THIS train.init_continue=true` "
                     "goes on from its step (the optimizer starts fresh) |")
    lines += ["", "## Use", "", "Any verb that takes a run takes this folder, e.g. "
              f"`gencond sample pretrained/{name} --help`; `train.init_from=pretrained/{name}` finetunes from it.", ""]
    lines += ["## How it was trained", "", "```bash",
              manifest.get("train_command") or f"gencond train pretrained/{name}/config.yaml name={name}",
              "```", "", f"`config.yaml` is the run's full resolved config ({manifest['trained_steps']} steps).", ""]
    if manifest.get("metrics"):
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in manifest["metrics"].items()]
        if manifest.get("measured_by"):
            lines += ["", f"Measured by `{manifest['measured_by']}`."]
        lines.append("")
    if manifest.get("notes"):
        lines += ["## Notes", "", manifest["notes"], ""]
    lines += ["## Files", "", f"Checked against `{EXPORT}` at every load.", "", "| file | sha256 |", "|---|---|"]
    lines += [f"| `{f}` | `{h}` |" for f, h in manifest["files"].items()]
    return "\n".join(lines) + "\n"


def _metric(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"must be NAME=VALUE, got '{text}'")
    return key.strip(), value.strip()


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory written by `gencond train`")
    p.add_argument("--out", required=True, help="the export folder to write, e.g. pretrained/NAME")
    p.add_argument("--weights", default="best", choices=sorted(WEIGHTS),
                   help="validated best weights (the last when the run kept none) or the last; default best")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="store the weights in this precision (loaded back as float32); default float32")
    p.add_argument("--overwrite", action="store_true", help="replace an export of another model at --out")
    p.add_argument("--description", help="one paragraph for the model card: what the model does")
    p.add_argument("--data", help="for the card: the data and how to rebuild it")
    p.add_argument("--train-command", help="for the card: the command(s) that trained the run")
    p.add_argument("--metric", type=_metric, action="append", default=[], metavar="NAME=VALUE",
                   help="a headline metric for the card (repeat for several)")
    p.add_argument("--measured-by", help="for the card: the command that measured the metrics")
    p.add_argument("--notes", help="for the card: anything else a user should know")


def export_command(args: argparse.Namespace) -> Path:
    card = {"description": args.description, "data": args.data, "train_command": args.train_command,
            "metrics": dict(args.metric), "measured_by": args.measured_by, "notes": args.notes}
    out = export_run(args.run_dir, args.out, weights=args.weights, dtype=args.dtype,
                     overwrite=args.overwrite, card=card)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"exported {args.run_dir} to {out} ({total / 1e6:.1f} MB); see {out / CARD}", file=sys.stdout)
    return out
