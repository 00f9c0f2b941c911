"""Typed YAML configs: OmegaConf merged onto a dataclass schema, with one-line errors.

A config file names its ``task``; the task's registered dataclass is the schema. A file may
``extends: other.yaml`` (a path relative to itself) to start from another config. Overrides
are ``key.sub=value`` strings from the command line.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from .errors import UserError
from .layout import default_runs_dir


class ConfigError(UserError):
    """A config that does not match its schema; the message names the key and the source."""


@dataclass(frozen=True)
class Domain:
    """The values a config field accepts beyond its type, checked at load (:func:`check_values`);
    ``allowed`` says them in errors (e.g. "≥ 1", "one of ddpm, ddim")."""

    allowed: str
    ok: Callable[[Any], bool]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def at_least(low: float) -> Domain:
    return Domain(f"≥ {low}", lambda v: _finite(v) and v >= low)


def above(low: float) -> Domain:
    return Domain(f"> {low}", lambda v: _finite(v) and v > low)


def between(low: float, high: float, high_open: bool = False) -> Domain:
    """``low ≤ v ≤ high`` (``< high`` when ``high_open``)."""
    return Domain(f"in [{low}, {high}{')' if high_open else ']'}",
                  lambda v: _finite(v) and low <= v and (v < high if high_open else v <= high))


def one_of(*choices) -> Domain:
    return Domain("one of " + ", ".join(map(str, choices)), lambda v: v in choices)


def ranged(default: Any = dataclasses.MISSING, domain: Optional[Domain] = None, *,
           factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose values must lie in ``domain`` (for a list: each item)."""
    return field(default=default, default_factory=factory, metadata={"domain": domain})


# Fields that declare no domain get their type's: integers and numbers are finite and ≥ 0 (negative counts,
# sizes, rates and probabilities mean nothing here); a field that needs more says so with ranged(...).
TYPE_DOMAINS = {int: Domain("≥ 0", lambda v: _finite(v) and v >= 0), float: Domain("≥ 0", lambda v: _finite(v) and v >= 0),
                str: Domain("a string", lambda v: isinstance(v, str))}
TYPE_WORDS = {int: "an integer ", float: "a finite number "}


def _unwrap(hint) -> tuple[Any, bool]:
    """(the type inside Optional[...] / List[...], whether it is a list)."""
    if typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) in (list, List):
        return typing.get_args(hint)[0], True
    return hint, False


def check_values(schema: type, cfg: DictConfig, source: str, overridden: dict[str, str] | None = None,
                 prefix: str = "") -> None:
    """Check every field of ``cfg`` against its domain in ``schema`` (and that interpolations resolve): a one-line
    error names the key, the value, what is allowed, and where the value came from (``overridden``: key -> item)."""
    overridden = overridden or {}
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = prefix + f.name
        where = f"override '{overridden[key]}'" if key in overridden else source
        try:
            value = cfg[f.name]
            if isinstance(value, (DictConfig, ListConfig)):
                OmegaConf.to_container(value, resolve=True)
        except MissingMandatoryValue as e:
            raise ConfigError(f"{source}: required key '{getattr(e, 'full_key', None) or key}' has no value") from None
        except OmegaConfBaseException as e:
            msg = (str(getattr(e, "msg", e)).splitlines() or [""])[0]
            raise ConfigError(f"{where}: '{getattr(e, 'full_key', None) or key}' cannot be resolved: {msg}") from None
        kind, is_list = _unwrap(hints[f.name])
        if value is None:
            continue
        if dataclasses.is_dataclass(kind):
            for i, item in enumerate(value) if is_list else [(None, value)]:
                check_values(kind, item, source, overridden, key + ("." if i is None else f"[{i}]."))
            continue
        domain = f.metadata.get("domain") or TYPE_DOMAINS.get(kind)
        for item in (list(value) if is_list else [value]):
            if domain is not None and not domain.ok(item):
                which = f"item {item!r} of {list(value)!r}" if is_list else repr(item)
                raise ConfigError(f"{where}: bad value for '{key}': {which}; allowed: "
                                  f"{TYPE_WORDS.get(kind, '')}{domain.allowed}")


NON_EMPTY = Domain("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip()))
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")  # diffusers' DDPMScheduler
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
                "piecewise_constant")  # diffusers.optimization.SchedulerType
SCHEDULER_ALIAS_NAMES = ("ddpm", "ddim", "dpm++", "dpmsolver", "dpm++sde", "unipc", "deis")  # gencond.sampling's aliases
SCHEDULER_NAMES = Domain(f"one of {', '.join(SCHEDULER_ALIAS_NAMES)} or a diffusers class name ending in Scheduler",
                         lambda v: str(v).lower() in SCHEDULER_ALIAS_NAMES or str(v).endswith("Scheduler"))


@dataclass
class DiffusionConfig:
    """The forward process and training objective."""

    num_train_timesteps: int = ranged(1000, at_least(2))
    beta_schedule: str = ranged("linear", one_of(*BETA_SCHEDULES))  # diffusers' beta_schedule
    beta_start: float = ranged(1e-4, between(0, 1, high_open=True))
    beta_end: float = ranged(0.02, between(0, 1, high_open=True))
    prediction_type: str = ranged("epsilon", one_of("epsilon", "v_prediction", "sample"))
    loss: str = ranged("l2", one_of("l2", "l1"))
    min_snr_gamma: Optional[float] = ranged(None, above(0))  # min-SNR loss weighting (Hang et al.); None = off
    self_condition_prob: float = ranged(0.0, between(0, 1))  # input self-conditioning (Chen et al.): chance of a first no-grad pass
    cond_drop_prob: float = ranged(0.0, between(0, 1))  # condition dropout, for classifier-free guidance


@dataclass
class SamplingConfig:
    """How samples are drawn: any diffusers scheduler by name, with a number of steps."""

    scheduler: str = ranged("ddpm", SCHEDULER_NAMES)  # ddpm | ddim | dpm++ | dpm++sde | unipc | deis | a diffusers scheduler class name
    num_steps: Optional[int] = ranged(None, at_least(1))  # None = the listed timesteps, else every training timestep
    eta: float = ranged(0.0, between(0, 1))  # DDIM stochasticity
    timestep_spacing: Optional[str] = ranged(None, one_of("leading", "trailing", "linspace"))  # diffusers'; None = the scheduler's default
    timesteps: Optional[List[int]] = None  # training timesteps to step through, from T-1 down (ddpm, dpm++); num_steps wins
    cfg_scale: Optional[float] = None  # classifier-free guidance weight; None = off
    micro_batch: Optional[int] = ranged(None, at_least(1))  # rows per network call (CPU cache; on several CPU threads the calls run side by side); None = the whole batch


@dataclass
class ParamGroupConfig:
    """One optimizer group of ``train.param_groups``: the trainable parameters whose names match ``pattern``
    (fnmatch) train at their own lr and weight decay (e.g. gates faster than the layers they open)."""

    pattern: str = ranged("???", NON_EMPTY)
    lr: float = ranged("???", above(0))
    weight_decay: Optional[float] = None  # None = train.weight_decay


@dataclass
class TrainConfig:
    """The optimisation loop (see gencond.training)."""

    max_steps: int = 1000  # 0: no step, the initial (or train.init_from) weights are saved
    max_minutes: Optional[float] = ranged(None, above(0))  # wall-clock budget of training time (resumes add up)
    batch_size: int = ranged(64, at_least(1))
    lr: float = ranged(1e-3, above(0))
    weight_decay: float = 0.0
    lr_schedule: str = ranged("constant", one_of(*LR_SCHEDULES))  # diffusers' get_scheduler names
    warmup_steps: int = 0
    grad_clip: Optional[float] = ranged(None, above(0))
    grad_accum_steps: int = ranged(1, at_least(1))
    mixed_precision: str = ranged("no", one_of("no", "fp16", "bf16"))
    ema_decay: Optional[float] = ranged(None, between(0, 1, high_open=True))  # None (or 0) = no EMA
    log_every: int = ranged(50, at_least(1))
    checkpoint_every: int = ranged(500, at_least(1))  # (a checkpoint is also saved when training stops)
    keep_checkpoints: int = ranged(2, at_least(1))
    validate_every: int = 0  # 0 = no periodic validation
    threads: Optional[int] = ranged(None, at_least(1))  # torch CPU threads; None = torch's default
    num_workers: int = 0  # DataLoader worker processes making batches (costly data such as video clips)
    init_from: Optional[str] = None  # RUN_DIR[:best|last] or an export: start from its weights (finetuning)
    init_continue: bool = False  # with init_from: go on from its step (lr schedule, max_minutes); the optimizer starts fresh
    trainable: Optional[List[str]] = None  # fnmatch patterns of parameter names to train; None = all
    param_groups: Optional[List[ParamGroupConfig]] = None  # own lr / weight decay per name pattern; the rest: lr, weight_decay


@dataclass
class RunConfig:
    """Fields every task's config has; a task's schema subclasses this and adds model/data."""

    task: str = "???"
    name: Optional[str] = None  # run name; defaults to the config file's stem
    runs_dir: str = ranged(domain=NON_EMPTY, factory=default_runs_dir)  # $GENCOND_RUNS_DIR, else runs
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


def _section_given_a_value(base: DictConfig, other: DictConfig, prefix: str = "") -> Optional[tuple[str, Any, str]]:
    """(key, value, what the key holds) of the first section of ``base`` that ``other`` sets to a plain value,
    or list of ``base`` that it sets to a mapping, if any."""
    for k, v in other.items_ex(resolve=False):
        node = base._get_node(k) if k in base else None
        if isinstance(node, DictConfig):
            if isinstance(v, DictConfig):
                found = _section_given_a_value(base[k], v, f"{prefix}{k}.")
                if found:
                    return found
            elif v is not None:
                return f"{prefix}{k}", v, "a section (a mapping of keys to values)"
        elif isinstance(node, ListConfig) and isinstance(v, DictConfig):
            return f"{prefix}{k}", OmegaConf.to_container(v), "a list"
    return None


def _full_key(node, leaf: str, prefix: str = "") -> Optional[str]:
    """The first dotted path (list items as [i]) in ``node`` that ends in ``leaf``, if any."""
    if isinstance(node, DictConfig):
        items = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in node.items_ex(resolve=False)]
    elif isinstance(node, ListConfig):
        items = [(f"{prefix}[{i}]", v) for i, v in enumerate(node._iter_ex(resolve=False))]
    else:
        return None
    for path, value in items:
        if path == leaf or path.endswith("." + leaf):
            return path
        found = _full_key(value, leaf, path)
        if found:
            return found
    return None


def _merge(base: DictConfig, other: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except (OmegaConfBaseException, TypeError) as e:  # TypeError: a mapping merged onto a list
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
        msg = (str(getattr(e, "msg", e)).splitlines() or [""])[0]
        section = _section_given_a_value(base, other) if key == "?" else None
        if section:
            raise ConfigError(f"{source}: '{section[0]}' is {section[2]}, not {section[1]!r}") from None
        key = _full_key(other, str(key)) or key  # in a list's item, omegaconf names only the leaf
        if "not in struct" in msg or "Key '" in msg and "not in" in msg:
            close = difflib.get_close_matches(str(key), _schema_keys(base), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}") from None
        raise ConfigError(f"{source}: bad value for '{key}': {msg}") from None


def check_diffusion_steps(cfg: DictConfig, source: str) -> None:
    """The checks that span fields: sampling steps within the training timesteps, beta_start < beta_end."""
    d, s = cfg.diffusion, cfg.sampling
    if d.beta_start >= d.beta_end:
        raise ConfigError(f"{source}: diffusion.beta_start ({d.beta_start}) must be below diffusion.beta_end ({d.beta_end})")
    if (s.num_steps or 0) > d.num_train_timesteps:
        raise ConfigError(f"{source}: sampling.num_steps ({s.num_steps}) is more than diffusion.num_train_timesteps "
                          f"({d.num_train_timesteps})")
    late = [t for t in s.timesteps or () if t >= d.num_train_timesteps]
    if late:
        raise ConfigError(f"{source}: sampling.timesteps holds {late[0]}; training timesteps are 0.."
                          f"{d.num_train_timesteps - 1} (diffusion.num_train_timesteps)")


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


def _moved(tree: dict, old: str, new: str, source: str) -> None:
    """Move the value at dotted key ``old`` of ``tree`` (nested dicts) to ``new``, if it is there."""
    *path, leaf = old.split(".")
    node = tree
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        return
    *path, new_leaf = new.split(".")
    target = tree
    for part in path:
        target = target.setdefault(part, {})
    if new_leaf in target:
        raise ConfigError(f"{source}: '{old}' is the old name of '{new}'; give '{new}' only")
    warnings.warn(f"{source}: config key '{old}' is now '{new}' (the old name still loads; rename it)",
                  FutureWarning, stacklevel=4)
    target[new_leaf] = node.pop(leaf)


def renamed_keys(schema: type, raw: DictConfig, overrides: Sequence[str], source: str) -> tuple[DictConfig, list[str]]:
    """``raw`` and ``overrides`` with the old key names a schema lists in its ``RENAMED_KEYS`` class attribute
    (old dotted key -> new) replaced by the new ones, each with a one-line deprecation warning."""
    renames = getattr(schema, "RENAMED_KEYS", {})
    if not renames:
        return raw, list(overrides)
    tree = OmegaConf.to_container(raw, resolve=False)
    for old, new in renames.items():
        _moved(tree, old, new, source)
    items = []
    for item in overrides:
        key, eq, value = item.partition("=")
        for old, new in renames.items():
            if key == old or key.startswith(old + "."):
                warnings.warn(f"command-line override '{item}': config key '{old}' is now '{new}' (the old name "
                              "still works; rename it)", FutureWarning, stacklevel=3)
                key = new + key[len(old):]
        items.append(key + eq + value)
    return OmegaConf.create(tree), items


def build_config(schema: type, raw: DictConfig, source: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Merge ``raw`` (from ``source``) and ``overrides`` onto ``schema``; fill ``name``. Old key names
    (the schema's ``RENAMED_KEYS``) load as the new ones, with a deprecation warning."""
    raw, overrides = renamed_keys(schema, raw, overrides, source)
    cfg = _merge(OmegaConf.structured(schema), raw, source)
    overridden = {}
    if overrides:
        parsed = parse_overrides(overrides)
        cfg = _merge(cfg, parsed, "command-line override")
        overridden = {key: item for item in overrides for key in _schema_keys(OmegaConf.from_dotlist([item]))}
    check_values(schema, cfg, source, overridden)
    check_diffusion_steps(cfg, source)
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
