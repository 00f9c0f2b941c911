"""One sampling loop for every domain: any diffusers scheduler, self-guidance, classifier-free
guidance and input self-conditioning.

Guidance is a classifier-guidance-style correction of the noise prediction,
eps <- eps + s * w_t * grad_{x_t} E(x0_hat(x_t)), applied the same way for every scheduler. The
weight w_t is sqrt(1 - abar_t) (the score correction; TSDiff's DDIM variant) except for DDPM, where
w_t = (1 - abar_prev) sqrt(alpha_t) / sqrt(1 - abar_t) so that the posterior mean moves by exactly
-s * sigma_t^2 * grad E, TSDiff's DDPM update.
"""
from __future__ import annotations

import inspect
from typing import Any, Optional

import diffusers
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from .config import ConfigError, SamplingConfig
from .diffusion import DiffusionProcess
from .guidance import Energy

SCHEDULER_ALIASES = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "deis": "DEISMultistepScheduler",
}


def make_sampling_scheduler(process: DiffusionProcess, name: str) -> SchedulerMixin:
    """A diffusers scheduler (alias or class name) on the process's noise schedule, fed epsilon."""
    cls = getattr(diffusers, SCHEDULER_ALIASES.get(name.lower(), name), None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ConfigError(
            f"unknown scheduler '{name}'; use one of {sorted(SCHEDULER_ALIASES)} or a diffusers scheduler class name"
        )
    sched = cls.from_config(process.scheduler.config, prediction_type="epsilon")
    if float(getattr(sched, "init_noise_sigma", 1.0)) != 1.0:
        raise ConfigError(f"scheduler '{name}' works in sigma space; use a variance-preserving one: {sorted(SCHEDULER_ALIASES)}")
    return sched


def guidance_weight(sched: SchedulerMixin, t: int) -> float:
    """w_t of the module docstring for timestep ``t`` of ``sched``."""
    abar = sched.alphas_cumprod[t].double()
    if isinstance(sched, DDPMScheduler):
        prev = sched.previous_timestep(t)
        abar_prev = sched.alphas_cumprod[prev].double() if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        return float((1 - abar_prev) * (abar / abar_prev).sqrt() / (1 - abar).sqrt())
    return float((1 - abar).sqrt())


def denoise(
    model: torch.nn.Module,
    process: DiffusionProcess,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: Any = None,
    self_cond: Optional[torch.Tensor] = None,
    cfg_scale: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from one network evaluation (two, batched, with classifier-free guidance)."""
    if cfg_scale is None or cond is None:
        out = model(x_t, t, cond=cond, self_cond=self_cond)
    else:
        null = model.null_condition(cond)
        sc = None if self_cond is None else torch.cat([self_cond, self_cond])
        both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), cond=torch.cat([cond, null]), self_cond=sc)
        on, off = both.chunk(2)
        out = off + cfg_scale * (on - off)
    return process.x0_and_eps(x_t, out, t)


def sample(
    model: torch.nn.Module,
    process: DiffusionProcess,
    shape: tuple[int, ...],
    sampling: SamplingConfig,
    *,
    cond: Any = None,
    guidance: Optional[Energy] = None,
    guidance_scale: float = 0.0,
    generator: Optional[torch.Generator] = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """Draw samples of ``shape`` from ``model``; returns the final x0 (B, ...)."""
    sched = make_sampling_scheduler(process, sampling.scheduler)
    sched.set_timesteps(sampling.num_steps or process.num_timesteps, device="cpu")
    step_kwargs = {"generator": generator}
    if "eta" in inspect.signature(sched.step).parameters:
        step_kwargs["eta"] = sampling.eta
    x = torch.randn(shape, generator=generator, device="cpu").to(device)
    self_cond = None
    carry_self_cond = process.cfg.self_condition_prob > 0
    was_training = model.training
    frozen = [p for p in model.parameters() if p.requires_grad]  # guidance needs input gradients only
    model.eval().requires_grad_(False)
    try:
        for t in tqdm(sched.timesteps, desc="sampling", disable=not progress, leave=False):
            tt = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
            x_in = sched.scale_model_input(x, t)
            if guidance is not None and guidance_scale != 0:
                with torch.enable_grad():
                    x_req = x_in.detach().requires_grad_(True)
                    x0, eps = denoise(model, process, x_req, tt, cond, self_cond, sampling.cfg_scale)
                    energy = guidance(x0).sum()
                    (grad,) = torch.autograd.grad(energy, x_req)
                eps = eps.detach() + guidance_scale * guidance_weight(sched, int(t)) * grad
                x0 = x0.detach()
            else:
                with torch.no_grad():
                    x0, eps = denoise(model, process, x_in, tt, cond, self_cond, sampling.cfg_scale)
            if carry_self_cond:
                self_cond = x0
            x = sched.step(eps, t, x, **step_kwargs).prev_sample.detach()
    finally:
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(True)
    return x
