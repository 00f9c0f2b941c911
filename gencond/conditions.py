"""The denoiser contract and structured conditions.

A condition is None, a tensor, or a dict of tensors (``{"first_frame": ..., "text": ...,
"text_mask": ..., "previous_plan": ...}``), every tensor batched on its first dimension. A model
that supports classifier-free guidance has ``null_condition(cond)``: the same structure with the
keys it can drop replaced by their null values (a key it returns unchanged is never dropped).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, Union, runtime_checkable

import torch

Condition = Union[None, torch.Tensor, dict[str, torch.Tensor]]


@runtime_checkable
class Denoiser(Protocol):
    """``model(x_t, t, cond=None, self_cond=None) -> output`` (epsilon, v or x0, as trained);
    ``self_cond`` is input self-conditioning's previous x0 estimate, or None."""

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition = None,
                 self_cond: Optional[torch.Tensor] = None) -> torch.Tensor: ...


@runtime_checkable
class GuidableDenoiser(Denoiser, Protocol):
    """A denoiser that can drop its condition: classifier-free guidance and condition dropout."""

    def null_condition(self, cond: Condition) -> Condition: ...


def map_condition(fn: Callable[..., torch.Tensor], *conds: Condition) -> Condition:
    """Apply ``fn`` to the tensors of one or more conditions of the same structure, key by key."""
    first = conds[0]
    if first is None:
        return None
    if isinstance(first, dict):
        return {k: fn(*(c[k] for c in conds)) for k in first}
    return fn(*conds)


def cat_conditions(*conds: Condition) -> Condition:
    """Conditions stacked along the batch (for one network call on conditional and null inputs)."""
    return map_condition(lambda *ts: torch.cat(ts), *conds)


def select_condition(mask: torch.Tensor, when_true: Condition, when_false: Condition) -> Condition:
    """Per sample: ``when_true`` where ``mask`` (B,) is True, else ``when_false``."""
    def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        m = mask.to(a.device).reshape(-1, *([1] * (a.ndim - 1)))
        return torch.where(m, a, b)

    return map_condition(pick, when_true, when_false)


def condition_batch_size(cond: Condition) -> Optional[int]:
    if cond is None:
        return None
    if isinstance(cond, dict):
        return next(iter(cond.values())).shape[0] if cond else None
    return cond.shape[0]


def unwrap(model: Any) -> Any:
    """The model inside a distributed or compiled wrapper (where ``null_condition`` lives)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, (DataParallel, DistributedDataParallel)):
        model = model.module
    return getattr(model, "_orig_mod", model)


def null_condition_of(model: Any, cond: Condition) -> Condition:
    """The model's null condition for ``cond``, or a one-line error if it has none."""
    null = getattr(unwrap(model), "null_condition", None)
    if null is None:
        from .config import ConfigError

        raise ConfigError(f"{type(unwrap(model)).__name__} has no null_condition(cond); "
                          "set diffusion.cond_drop_prob=0 and sampling.cfg_scale=null, or add one")
    return null(cond)
