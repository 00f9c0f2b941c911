"""The forward process and training objective, as a thin layer over a diffusers scheduler.

Noising, training targets for epsilon / v / sample prediction, the denoised estimate x0_hat,
min-SNR loss weighting, input self-conditioning and condition dropout all live here; the
scheduler's own ``add_noise`` and ``get_velocity`` do the arithmetic they already do.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from diffusers import DDPMScheduler

from .conditions import Condition, condition_batch_size, null_condition_of, select_condition
from .config import ConfigError, DiffusionConfig

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def expand_like(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector (B,) so that it broadcasts against ``x`` (B, ...)."""
    return values.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


class DiffusionProcess:
    """A variance-preserving diffusion defined by a diffusers ``DDPMScheduler`` config."""

    def __init__(self, cfg: DiffusionConfig):
        if cfg.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"diffusion.prediction_type '{cfg.prediction_type}' is not one of {PREDICTION_TYPES}")
        if cfg.loss not in ("l1", "l2"):
            raise ConfigError(f"diffusion.loss '{cfg.loss}' is not one of ('l1', 'l2')")
        self.cfg = cfg
        try:
            self.scheduler = DDPMScheduler(
                num_train_timesteps=cfg.num_train_timesteps,
                beta_schedule=cfg.beta_schedule,
                beta_start=cfg.beta_start,
                beta_end=cfg.beta_end,
                prediction_type=cfg.prediction_type,
                clip_sample=False,
            )
        except NotImplementedError as e:
            raise ConfigError(f"diffusion.beta_schedule: {e}") from None
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(torch.float64)

    @property
    def num_timesteps(self) -> int:
        return self.cfg.num_train_timesteps

    def _abar(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return expand_like(self.alphas_cumprod.to(t.device)[t.long()], x)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        return self.scheduler.add_noise(x0, noise, t)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output at (x0, noise, t)."""
        kind = self.cfg.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return x0
        return self.scheduler.get_velocity(x0, noise, t)

    def x0_and_eps(self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoised estimate x0_hat and the implied noise, from a network output."""
        abar = self._abar(t, x_t)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        kind = self.cfg.prediction_type
        if kind == "epsilon":
            return (x_t - s * output) / a, output
        if kind == "sample":
            return output, (x_t - a * output) / s
        return a * x_t - s * output, s * x_t + a * output  # v-prediction

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod.to(t.device)[t.long()]
        return abar / (1 - abar)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weight: min-SNR-gamma expressed for the prediction type, else ones."""
        gamma = self.cfg.min_snr_gamma
        if gamma is None:
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        snr = self.snr(t)
        clipped = torch.clamp(snr, max=gamma)
        weight = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}
        return weight[self.cfg.prediction_type].float()

    def training_loss(
        self,
        model: torch.nn.Module,
        x0: torch.Tensor,
        *,
        cond: Condition = None,
        mask: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Denoising loss on a batch; ``mask`` (broadcastable to x0) marks entries that count.

        With ``self_condition_prob`` p > 0, a first no-grad pass produces x0_hat that is fed back as
        ``self_cond`` on a fraction p of batches; with ``cond_drop_prob`` the condition is replaced
        by ``model.null_condition(cond)`` per sample.
        """
        b = x0.shape[0]
        dev = x0.device
        t = torch.randint(0, self.num_timesteps, (b,), generator=generator, device="cpu").to(dev)
        noise = torch.randn(x0.shape, generator=generator, device="cpu", dtype=x0.dtype).to(dev)
        x_t = self.add_noise(x0, noise, t)
        if cond is not None and self.cfg.cond_drop_prob > 0:
            drop = torch.rand(b, generator=generator, device="cpu").to(dev) < self.cfg.cond_drop_prob
            cond = drop_condition(model, cond, drop)
        self_cond = None
        if self.cfg.self_condition_prob > 0:
            use = torch.rand((), generator=generator, device="cpu").item() < self.cfg.self_condition_prob
            if use:
                with torch.no_grad():
                    first = model(x_t, t, cond=cond, self_cond=None)
                    self_cond = self.x0_and_eps(x_t, first, t)[0].detach()
        output = model(x_t, t, cond=cond, self_cond=self_cond)
        if output.shape != x0.shape:
            raise ValueError(f"model output shape {tuple(output.shape)} != data shape {tuple(x0.shape)}")
        err = (output - self.target(x0, noise, t)).float()
        err = err.square() if self.cfg.loss == "l2" else err.abs()
        if mask is None:
            mask = torch.ones_like(err)
        mask = mask.expand_as(err).float()
        per_sample = (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)
        loss = (per_sample * self.loss_weight(t)).mean()
        return loss, {"loss": loss.item()}


    @torch.no_grad()
    def condition_losses(self, model: torch.nn.Module, x0: torch.Tensor, conds: dict[str, Condition],
                         timesteps: Sequence[int], seed: int = 0) -> dict[str, dict[int, float]]:
        """The mean squared error of the training target on ``x0`` at each of ``timesteps`` under each named
        condition, with the same noise for all: what differs between the conditions (real vs. shuffled vs.
        empty) is what the model uses, and the gap says how much. {name: {t: loss}}."""
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(x0.device)
        out: dict[str, dict[int, float]] = {name: {} for name in conds}
        for step in timesteps:
            t = torch.full((x0.shape[0],), int(step), dtype=torch.long, device=x0.device)
            x_t, target = self.add_noise(x0, noise, t), self.target(x0, noise, t)
            for name, cond in conds.items():
                out[name][int(step)] = float((model(x_t, t, cond=cond) - target).float().square().mean())
        return out

def drop_condition(model: torch.nn.Module, cond: Condition, drop: torch.Tensor) -> Condition:
    """Replace the condition of the samples where ``drop`` (B,) is True by the model's null
    condition; with a dict, only the keys the null condition changes are replaced."""
    if condition_batch_size(cond) != drop.shape[0]:
        raise ValueError(f"condition batch {condition_batch_size(cond)} != data batch {drop.shape[0]}")
    return select_condition(drop.bool(), null_condition_of(model, cond), cond)
