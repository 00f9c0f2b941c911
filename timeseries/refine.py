"""Refining another forecaster's predictions with a trained TSDiff as an implicit prior (TSDiff §4.2).

The energy of a window y is the denoising loss at a fixed diffusion step τ,
||ε − ε_θ(√ᾱ_τ·y + √(1−ᾱ_τ)·ε, τ)||² with fresh noise ε at every iteration, plus λ times a prior
tying y's future to the base forecast: mean-square, or the pinball loss at sample i's quantile
q_i = i/(N+1). Sample i starts from the base forecast's q_i-quantile at each time step. Langevin
Monte Carlo (LMC) takes y ← y − η∇E + √(2η)·σ·ξ (σ = 0.1); maximum likelihood (ML) takes gradient
steps y ← y − η∇E. Only the unknown values (the future, and missing context) move.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from gencond.diffusion import DiffusionProcess
from gencond.errors import UserError
from gencond.guidance import ObservationGuidance, evenly_spaced_quantiles
from gencond.sampling import frozen

from .config import REFINERS
from .data import WindowBuilder

DIVERGED = 1e3  # scaled values beyond this mean the step size is too large


class RefinementDiverged(UserError):
    """Refined samples became non-finite or exploded."""


def best_diffusion_step(model: torch.nn.Module, process: DiffusionProcess, x: torch.Tensor, mask: torch.Tensor,
                        seed: int = 0) -> int:
    """TSDiff's τ: the step whose denoising loss on a batch of real windows is closest to the mean
    loss over all steps."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    losses = []
    with torch.no_grad():
        for t in range(process.num_timesteps):
            tt = torch.full((len(x),), t, dtype=torch.long, device=x.device)
            err = (model(process.add_noise(x, noise, tt), tt) - process.target(x, noise, tt)).square()
            losses.append(float((err * mask).sum() / mask.sum()))
    losses = np.array(losses)
    return int(np.abs(losses - losses.mean()).argmin())


class Refiner:
    """Refines base forecast samples with a trained (unconditional) TSDiff denoiser."""

    def __init__(self, model: torch.nn.Module, process: DiffusionProcess, builder: WindowBuilder, *, tau: int,
                 method: str = "lmc", prior: str = "quantile", step_size: float = 0.1, iterations: int = 20,
                 prior_weight: float = 1.0, noise_scale: float = 0.1, num_samples: int = 100, batch_size: int = 200,
                 seed: int = 0, device: torch.device | str = "cpu", progress: bool = True):
        if f"{method}-{prior}" not in REFINERS:
            raise UserError(f"unknown refiner '{method}-{prior}'; use one of {', '.join(REFINERS)}")
        if getattr(model, "cond_channels", 0):
            raise UserError("refinement needs an unconditional TSDiff; this run is TSDiff-Cond")
        if step_size < 0 or iterations < 0:
            raise UserError(f"step size and iterations must be ≥ 0, got {step_size} and {iterations}")
        if not 0 <= tau < process.num_timesteps:
            raise UserError(f"tau must be a diffusion step in 0..{process.num_timesteps - 1}, got {tau}")
        self.model, self.process, self.builder, self.tau = model, process, builder, tau
        self.method, self.prior, self.step_size, self.iterations = method, prior, step_size, iterations
        self.prior_weight, self.noise_scale, self.num_samples = prior_weight, noise_scale, num_samples
        self.batch_size, self.seed, self.device, self.progress = batch_size, seed, device, progress

    @property
    def name(self) -> str:
        return f"{self.method}-{self.prior}"

    def energy(self, y: torch.Tensor, prior: ObservationGuidance, noise: torch.Tensor) -> torch.Tensor:
        """Per-window energy (B,): denoising loss at τ plus λ times the prior."""
        t = torch.full((len(y),), self.tau, dtype=torch.long, device=y.device)
        x_tau = self.process.add_noise(y, noise, t)
        denoising = (self.model(x_tau, t) - self.process.target(y, noise, t)).square().flatten(1).sum(1)
        return denoising + self.prior_weight * prior(y)

    def refine_windows(self, y: torch.Tensor, free: torch.Tensor, prior: ObservationGuidance,
                       generator: torch.Generator, bar: Optional[tqdm] = None) -> torch.Tensor:
        """Run the chain on scaled windows ``y`` (B, L, C); only entries where ``free`` is 1 move."""
        with frozen(self.model):
            for k in range(self.iterations):
                noise = torch.randn(y.shape, generator=generator).to(y.device)
                with torch.enable_grad():
                    y_req = y.detach().requires_grad_(True)
                    (grad,) = torch.autograd.grad(self.energy(y_req, prior, noise).sum(), y_req)
                step = -self.step_size * grad
                if self.method == "lmc":
                    xi = torch.randn(y.shape, generator=generator).to(y.device)
                    step = step + (2 * self.step_size) ** 0.5 * self.noise_scale * xi
                y = y + step * free
                peak = float(y.abs().max())
                if not np.isfinite(peak) or peak > DIVERGED:
                    raise RefinementDiverged(
                        f"{self.name} refinement diverged at iteration {k + 1} (values reached {peak:.3g} in scaled units) "
                        f"with step size {self.step_size:g}; lower the step size (e.g. --step-size {self.step_size / 10:g})"
                    )
                if bar is not None:
                    bar.update(1)
        return y

    def refine(self, pasts: Sequence[np.ndarray], base: Sequence[np.ndarray]) -> np.ndarray:
        """Refined samples (S, num_samples, prediction_length) from S raw pasts and their base
        forecast samples (each (N_base, prediction_length), raw values)."""
        b, n, pl = self.builder, self.num_samples, self.builder.prediction_length
        if len(pasts) != len(base):
            raise UserError(f"{len(pasts)} series but {len(base)} base forecasts")
        q = evenly_spaced_quantiles(n)
        starts = []
        for s in base:
            s = np.asarray(s, dtype=np.float32)
            if s.ndim != 2 or s.shape[1] != pl or not np.isfinite(s).all():
                raise UserError(f"a base forecast must be finite samples of shape (N, {pl}), got {s.shape}")
            starts.append(np.quantile(s, q.numpy(), axis=0))  # sample i starts at the base q_i-quantile
        generator = torch.Generator().manual_seed(self.seed)
        per_batch = max(1, self.batch_size // n)
        chunks = range(0, len(pasts), per_batch)
        out = []
        bar = tqdm(total=len(chunks) * self.iterations, desc=f"refine {self.name}", unit="it", disable=not self.progress)
        for start in chunks:
            idx = range(start, min(start + per_batch, len(pasts)))
            raw = [b.past_window(np.asarray(pasts[i], dtype=np.float32)) for i in idx]
            x, mask, scale = b.features(np.stack([v for v, _ in raw]), np.stack([o for _, o in raw]))
            x, mask = x.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
            init = torch.from_numpy(np.concatenate([starts[i] for i in idx])) / scale.repeat_interleave(n)[:, None]
            y = x.clone()
            y[:, b.context_length:, 0] = init
            future = torch.zeros_like(mask)
            future[:, b.context_length:, 0] = 1
            quantiles = q.repeat(len(idx)) if self.prior == "quantile" else None
            prior = ObservationGuidance(y.clone().to(self.device), future.to(self.device), quantiles)
            y = self.refine_windows(y.to(self.device), (1 - mask).to(self.device), prior, generator, bar)
            refined = y[:, b.context_length:, 0].float().cpu().reshape(len(idx), n, pl)
            out.append((refined * scale[:, None, None]).numpy())
        bar.close()
        return np.concatenate(out)

    def predict(self, entries: Sequence[dict], base_forecasts: Sequence, freq: str):
        """GluonTS ``SampleForecast``s: the refined base forecasts of entries whose target is the past."""
        from gluonts.model.forecast import SampleForecast

        from .baselines import forecast_samples

        samples = self.refine([e["target"] for e in entries], forecast_samples(base_forecasts, self.builder.prediction_length))
        return [SampleForecast(s, start_date=pd.Period(e["start"], freq) + len(e["target"]), item_id=e.get("item_id"))
                for e, s in zip(entries, samples)]


def choose_tau(model, process: DiffusionProcess, builder: WindowBuilder, series: Sequence[dict],
               num_windows: int = 64, seed: int = 0, tau: Optional[int] = None) -> int:
    """``tau`` if given, else TSDiff's choice on ``num_windows`` random training windows."""
    if tau is not None:
        return tau
    from .data import TrainingWindows

    x, mask, _ = TrainingWindows(series, builder).sample(num_windows, torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    return best_diffusion_step(model, process, x.to(device), mask.to(device), seed)
