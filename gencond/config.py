"""Typed YAML configs: OmegaConf merged onto a dataclass schema, with one-line errors.

A config file names its ``task``; the task's registered dataclass is the schema. A file may
``extends: other.yaml`` (a path relative to itself) to start from another config. Overrides
are ``key.sub=value`` strings from the command line.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserError


class ConfigError(UserError):
    """A config that does not match its schema; the message names the key and the source."""


@dataclass
class DiffusionConfig:
    """The forward process and training objective."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # any diffusers beta_schedule: linear, scaled_linear, squaredcos_cap_v2
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"  # epsilon | v_prediction | sample
    loss: str = "l2"  # l2 | l1
    min_snr_gamma: Optional[float] = None  # min-SNR loss weighting (Hang et al.); None = off
    self_condition_prob: float = 0.0  # input self-conditioning (Chen et al.): chance of a first no-grad pass
    cond_drop_prob: float = 0.0  # condition dropout, for classifier-free guidance


@dataclass
class SamplingConfig:
    """How samples are drawn: any diffusers scheduler by name, with a number of steps."""

    scheduler: str = "ddpm"  # ddpm | ddim | dpm++ | dpm++sde | unipc | deis | a diffusers scheduler class name
    num_steps: Optional[int] = None  # None = the listed timesteps, else every training timestep
    eta: float = 0.0  # DDIM stochasticity
    timestep_spacing: Optional[str] = None  # leading | trailing | linspace (diffusers'); None = the scheduler's default
    timesteps: Optional[List[int]] = None  # training timesteps to step through, from T-1 down (ddpm, dpm++); num_steps wins
    cfg_scale: Optional[float] = None  # classifier-free guidance weight; None = off
    micro_batch: Optional[int] = None  # rows per network call (CPU cache; on several CPU threads the calls run side by side); None = the whole batch


@dataclass
class TrainConfig:
    """The optimisation loop (see gencond.training)."""

    max_steps: int = 1000
    max_minutes: Optional[float] = None  # wall-clock budget of training time (resumes add up)
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # any diffusers get_scheduler name: constant, cosine, linear, ...
    warmup_steps: int = 0
    grad_clip: Optional[float] = None
    grad_accum_steps: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    ema_decay: Optional[float] = None  # None = no EMA
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    validate_every: int = 0  # 0 = no periodic validation
    threads: Optional[int] = None  # torch CPU threads; None = torch's default
    num_workers: int = 0  # DataLoader worker processes making batches (costly data such as video clips)
    init_from: Optional[str] = None  # RUN_DIR[:best|last]: start from another run's weights (finetuning)
    trainable: Optional[List[str]] = None  # fnmatch patterns of parameter names to train; None = all


@dataclass
class RunConfig:
    """Fields every task's config has; a task's schema subclasses this and adds model/data."""

    task: str = "???"
    name: Optional[str] = None  # run name; defaults to the config file's stem
    runs_dir: str = "runs"
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # yaml errors are long; keep the first line
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base = _read_yaml((path.parent / parent), seen + (path.resolve(),))
    return OmegaConf.merge(base, raw)


def _schema_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items_ex(resolve=False):
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, DictConfig):
            keys += _schema_keys(v, full + ".")
    return keys


def _merge(base: DictConfig, other: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
        msg = str(getattr(e, "msg", e)).splitlines()[0]
        if "not in struct" in msg or "Key '" in msg and "not in" in msg:
            close = difflib.get_close_matches(str(key), _schema_keys(base), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}") from None
        raise ConfigError(f"{source}: bad value for '{key}': {msg}") from None


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """``["train.lr=1e-3", ...]`` as a config; a malformed item is a one-line error naming it."""
    merged = OmegaConf.create()
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except (OmegaConfBaseException, yaml.YAMLError) as e:
            problem = " ".join(str(getattr(e, "problem", "") or e).split())
            raise ConfigError(f"override '{item}': not a valid value ({problem}); quote strings, close brackets") from None
    return merged


def build_config(schema: type, raw: DictConfig, source: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Merge ``raw`` (from ``source``) and ``overrides`` onto ``schema``; fill ``name``."""
    cfg = _merge(OmegaConf.structured(schema), raw, source)
    if overrides:
        cfg = _merge(cfg, parse_overrides(overrides), "command-line override")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{source}: required key '{missing[0]}' has no value")
    if cfg.name is None:
        cfg.name = Path(source).stem
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Read a YAML config, validate it against its task's schema, apply overrides."""
    from .registry import get_task

    path = Path(path)
    raw = _read_yaml(path)
    task = raw.get("task")
    for item in overrides:  # a task override must pick the schema
        if item.startswith("task="):
            task = item.split("=", 1)[1]
    if not task:
        raise ConfigError(f"{path}: missing key 'task' (which task this config trains)")
    try:
        schema = get_task(str(task)).schema
    except KeyError as e:
        raise ConfigError(f"{path}: {e.args[0]}") from None
    return build_config(schema, raw, str(path), overrides)


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True))
