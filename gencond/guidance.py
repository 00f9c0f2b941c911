"""Self-guidance energies: functions of the denoised estimate x0_hat whose gradient steers sampling.

An energy maps x0_hat (B, ...) to one value per sample (B,). The sampler differentiates it with
respect to x_t through the network and corrects the noise prediction (see gencond.sampling). An
energy that also names ``cond`` or ``t`` among its parameters receives the condition and the
timesteps (B,) of the step; one that names ``rows`` (a slice of the batch) can be evaluated on those
rows alone, which the sampler's ``micro_batch`` needs; one that names ``step_size`` receives how far the
step's guidance moves each sample's x0 estimate per unit of grad_{x0_hat} E, a tensor (B,)
(gencond.sampling.guidance_step_size; None where the scheduler gives none). With micro-batches on several CPU
threads the sampler calls an energy from its worker threads at once, on different rows: it must not keep
state from call to call.
"""
from __future__ import annotations

from typing import Protocol

import torch


class Energy(Protocol):
    def __call__(self, x0_hat: torch.Tensor) -> torch.Tensor: ...  # optionally also cond=..., t=...


class ObservationGuidance:
    """Energy tying x0_hat to observed values: mean-square or quantile (pinball) loss, summed over
    the entries where ``mask`` is 1. Used by TSDiff to forecast (the future is unobserved) and for
    any inpainting-like conditioning of an unconditional model.

    ``quantiles`` (one per sample, shape (B,)) selects the pinball loss max(q·e, (q−1)·e) with
    e = observation − x0_hat; without it the energy is the squared error.

    ``proximal`` (default) and a ``step_size`` λ from the sampler (a number, or one per sample): the loss is replaced by its Moreau
    envelope at λ, whose gradient step of size λ is the loss's proximal step — it moves an entry to its
    observation at most, never past it. The pinball loss becomes quadratic within λ·q above and λ·(1 − q)
    below the observation (gradient clamp(e / λ, q − 1, q)), the squared error is divided by 1 + 2λ. A coarse
    sampler step (large λ) then no longer overshoots the observations and jitters around them; as λ → 0 (or
    with no step size, or ``proximal=False``: TSDiff's own guidance) it is the loss itself.
    """

    def __init__(self, observation: torch.Tensor, mask: torch.Tensor, quantiles: torch.Tensor | None = None,
                 proximal: bool = True):
        if observation.shape != mask.shape:
            raise ValueError(f"observation shape {tuple(observation.shape)} != mask shape {tuple(mask.shape)}")
        self.observation = torch.nan_to_num(observation)  # NaNs are never observed
        self.mask = mask.to(observation.dtype) * torch.isfinite(observation)
        self.quantiles = quantiles
        self.proximal = proximal

    def __call__(self, x0_hat: torch.Tensor, rows: slice = slice(None),
                 step_size: float | torch.Tensor | None = None) -> torch.Tensor:
        observation, mask = self.observation[rows], self.mask[rows]
        if x0_hat.shape != observation.shape:
            raise ValueError(f"x0_hat shape {tuple(x0_hat.shape)} != observation shape {tuple(observation.shape)}")
        err = observation - x0_hat
        lam = None
        if self.proximal and step_size is not None:
            lam = torch.as_tensor(step_size, dtype=err.dtype, device=err.device)
            lam = lam.reshape(-1, *([1] * (err.ndim - 1))) if lam.ndim else lam  # one per sample
            lam = lam if bool((lam > 0).any()) else None
        if self.quantiles is None:
            loss = err.square() if lam is None else err.square() / (1 + 2 * lam)
        else:
            q = self.quantiles[rows].reshape(-1, *([1] * (err.ndim - 1))).to(err)
            loss = 0.0
            if lam is not None:  # the quadratic part: err within λ(1 − q) below and λq above the observation
                near = torch.minimum(torch.maximum(err, -lam * (1 - q)), lam * q)
                err, loss = err - near, near.square() / (2 * lam).clamp_min(torch.finfo(err.dtype).tiny)
            loss = loss + torch.maximum(q * err, (q - 1) * err)
        return (loss * mask).flatten(1).sum(1)


def evenly_spaced_quantiles(n: int) -> torch.Tensor:
    """TSDiff's per-sample quantile levels: sample i of n uses q_i = i / (n + 1), i = 1..n."""
    return torch.arange(1, n + 1, dtype=torch.float32) / (n + 1)

