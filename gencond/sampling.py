"""One sampling loop for every domain: any diffusers scheduler, self-guidance, classifier-free
guidance and input self-conditioning.

Guidance is a classifier-guidance-style correction of the noise prediction,
eps <- eps + s * w_t * grad_{x_t} E(x0_hat(x_t)), applied the same way for every scheduler. The
weight w_t is sqrt(1 - abar_t) (the score correction; TSDiff's DDIM variant) except for DDPM, where
it moves the posterior mean by exactly -s * V_t * grad E: TSDiff's DDPM update, with V_t = sigma_t^2
on every training timestep. A strided DDPM step (fewer sampling steps) jumps over several training
timesteps, and there V_t is the sum of their posterior variances, not the jump's own (smaller)
variance: the guidance a chain applies in all then adds up to that of the full chain, whatever the
number of steps (see :func:`guidance_weight`). Energies that take a step size (proximal guidance,
gencond.guidance) get, per sample, how far the step moves its x0 estimate: :func:`guidance_step_size`, and where
the signal dominates (abar_t / (1 - abar_t) >= 1) that times r^2, r the network's own shrinkage along the
guidance gradient measured at the sample's previous step (:func:`guidance_shrinkage`, from the backward already
done; no extra network evaluation).

``sampling.micro_batch`` rows go through the network (and the guidance gradient) at a time: the same samples
within float tolerance, and on a CPU faster (a call's activations stay in the core's cache). On a CPU with
several torch threads the calls are shared out among that many Python threads in contiguous groups, each
running its ops single-threaded (torch's intra-op threads split a 10-row call's small matmuls and FFTs poorly):
rows per call do not depend on the thread count, so the samples are the same on 1 thread or many.
"""
from __future__ import annotations

import inspect
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Optional, Protocol

import diffusers
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from .conditions import Condition, cat_conditions, map_condition, null_condition_of
from .config import ConfigError, SamplingConfig
from .diffusion import DiffusionProcess
from .guidance import Energy

class StepCallback(Protocol):
    """Sees each sampling step; returning True stops sampling early."""

    def __call__(self, step: int, t: int, x_t: torch.Tensor, x0_hat: torch.Tensor) -> Optional[bool]: ...


SCHEDULER_ALIASES = {  # name -> (diffusers class, options it is built with)
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "dpmsolver": ("DPMSolverMultistepScheduler", {}),
    "dpm++sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),  # stochastic, 2nd order
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
}


TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def make_sampling_scheduler(process: DiffusionProcess, name: str, timestep_spacing: Optional[str] = None) -> SchedulerMixin:
    """A diffusers scheduler (alias or class name) on the process's noise schedule, fed epsilon; with
    ``timestep_spacing``, how its fewer-than-training steps are placed (diffusers' option)."""
    cls_name, options = SCHEDULER_ALIASES.get(name.lower(), (name, {}))
    cls = getattr(diffusers, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ConfigError(
            f"unknown scheduler '{name}'; use one of {sorted(SCHEDULER_ALIASES)} or a diffusers scheduler class name"
        )
    if timestep_spacing is not None and timestep_spacing not in TIMESTEP_SPACINGS:
        raise ConfigError(f"unknown sampling.timestep_spacing '{timestep_spacing}'; use one of {list(TIMESTEP_SPACINGS)}")
    spacing = {} if timestep_spacing is None else {"timestep_spacing": timestep_spacing}
    sched = cls.from_config(process.scheduler.config, prediction_type="epsilon", **options, **spacing)
    if float(getattr(sched, "init_noise_sigma", 1.0)) != 1.0:
        raise ConfigError(f"scheduler '{name}' works in sigma space; use a variance-preserving one: {sorted(SCHEDULER_ALIASES)}")
    return sched


def listed_timesteps(sampling: SamplingConfig) -> Optional[list[int]]:
    """The listed ``sampling.timesteps`` the sampler steps through; None when ``num_steps`` is set (it wins)
    or nothing is listed."""
    if sampling.num_steps or not sampling.timesteps:
        return None
    return [int(t) for t in sampling.timesteps]


def set_sampling_timesteps(sched: SchedulerMixin, sampling: SamplingConfig, num_train_timesteps: int) -> None:
    """Give ``sched`` the config's steps: ``num_steps`` of them placed by the scheduler's spacing when set,
    else ``sampling.timesteps`` as listed, else every training timestep."""
    listed = listed_timesteps(sampling)
    if listed is None:
        sched.set_timesteps(sampling.num_steps or num_train_timesteps, device="cpu")
        return
    if any(not 0 <= t < num_train_timesteps for t in listed) or any(a <= b for a, b in zip(listed, listed[1:])):
        raise ConfigError(f"sampling.timesteps must decrease strictly through training timesteps 0..{num_train_timesteps - 1}, "
                          f"got {listed}")
    if listed[0] != num_train_timesteps - 1:  # a list made for another number of training timesteps, say
        raise ConfigError(f"sampling.timesteps must start at the last training timestep {num_train_timesteps - 1} "
                          f"(pure noise), got {listed[0]}; list steps for this process or set sampling.timesteps=null")
    if "timesteps" not in inspect.signature(sched.set_timesteps).parameters:
        raise ConfigError(f"scheduler '{sampling.scheduler}' takes no sampling.timesteps; use ddpm or dpm++, or give "
                          "a number of steps (sampling.num_steps, --steps)")
    if sampling.timestep_spacing is not None:
        raise ConfigError("sampling.timestep_spacing places sampling.num_steps steps; with listed sampling.timesteps "
                          "and no num_steps it must be null")
    sched.set_timesteps(timesteps=listed, device="cpu")


def _ddpm_jump(sched: DDPMScheduler, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(abar_t, abar_prev, V_t) of a DDPM step from t to the scheduler's previous timestep, in float64; V_t
    sums the one-step posterior variances of timesteps prev+1 .. t."""
    abar_all = sched.alphas_cumprod.double()
    prev = int(sched.previous_timestep(t))
    one = torch.ones((), dtype=torch.float64)
    before = torch.cat([one.reshape(1), abar_all[:-1]])  # abar_{u-1}, with abar_{-1} = 1
    spanned = slice(prev + 1, t + 1)
    variance = ((1 - before[spanned]) / (1 - abar_all[spanned]) * (1 - abar_all[spanned] / before[spanned])).sum()
    return abar_all[t], (abar_all[prev] if prev >= 0 else one), variance


def guidance_weight(sched: SchedulerMixin, t: int) -> float:
    """w_t of the module docstring for timestep ``t`` of ``sched``.

    DDPM from t to prev: the posterior mean's derivative along eps is -beta / (sqrt(alpha) sqrt(1 - abar_t)),
    with alpha = abar_t / abar_prev and beta = 1 - alpha, so w_t = V_t sqrt(alpha) sqrt(1 - abar_t) / beta
    moves the mean by -V_t grad E; V_t sums the one-step posterior variances of timesteps prev+1 .. t.
    """
    if isinstance(sched, DDPMScheduler):
        abar, abar_prev, variance = _ddpm_jump(sched, t)
        alpha = abar / abar_prev
        return float(variance * alpha.sqrt() * (1 - abar).sqrt() / (1 - alpha))
    return float((1 - sched.alphas_cumprod.double()[t]).sqrt())


def guidance_step_size(sched: SchedulerMixin, t: int) -> Optional[float]:
    """How far a DDPM step's guidance (per unit of scale) moves the sample's own x0 estimate per unit of
    grad_{x0_hat} E: V_t / sqrt(abar_t abar_prev), taking d x0_hat / d x_t ~ I / sqrt(abar_t) (the mean moves by
    -V_t grad_{x_t} E, and x0 is read off x_prev / sqrt(abar_prev)). None for other schedulers. Energies that
    name ``step_size`` get it times the guidance scale, per sample, and where the signal dominates times r^2,
    r the network's own shrinkage measured at the sample's previous step (:func:`guidance_shrinkage`)."""
    if not isinstance(sched, DDPMScheduler):
        return None
    abar, abar_prev, variance = _ddpm_jump(sched, t)
    return float(variance / (abar * abar_prev).sqrt())


MEASURED_STEP_MIN_SNR = 1.0  # the step size follows the measured shrinkage where abar_t / (1 - abar_t) >= this


def guidance_shrinkage(grad_x: torch.Tensor, grad_x0: torch.Tensor, abar: float) -> torch.Tensor:
    """Per sample, how far the network's x0 estimate moves along g = grad_{x0_hat} E per unit move of x_t, relative
    to the I / sqrt(abar_t) of :func:`guidance_step_size`: r = max(0, sqrt(abar_t) <J^T g, g> / <g, g>), J = d x0_hat /
    d x_t, J^T g = grad_{x_t} E (both from the guidance's one backward). 1 for a network that predicts no noise and
    where g = 0; below 1 for a denoiser that shrinks towards its prior (abar_t for data ~ N(0, I))."""
    along = (grad_x.double() * grad_x0.double()).flatten(1).sum(1)
    norm = grad_x0.double().square().flatten(1).sum(1)
    r = torch.where(norm > 0, abar ** 0.5 * along / norm.clamp_min(torch.finfo(torch.float64).tiny), 1.0)
    return r.clamp_min(0.0)


@contextmanager
def frozen(model: torch.nn.Module):
    """Eval mode with parameter gradients off (gradients w.r.t. inputs still flow, for guidance);
    restores the model's mode and each parameter's ``requires_grad`` afterwards."""
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval().requires_grad_(False)
    try:
        yield model
    finally:
        model.train(was_training)
        for p in trainable:
            p.requires_grad_(True)


def denoise(
    model: torch.nn.Module,
    process: DiffusionProcess,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: Condition = None,
    self_cond: Optional[torch.Tensor] = None,
    cfg_scale: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from one network evaluation (two, batched, with classifier-free guidance)."""
    if cfg_scale is None or cond is None:
        out = model(x_t, t, cond=cond, self_cond=self_cond)
    else:
        both_cond = cat_conditions(cond, null_condition_of(model, cond))
        sc = None if self_cond is None else torch.cat([self_cond, self_cond])
        on, off = model(torch.cat([x_t, x_t]), torch.cat([t, t]), cond=both_cond, self_cond=sc).chunk(2)
        out = off + cfg_scale * (on - off)
    return process.x0_and_eps(x_t, out, t)


def start_index(num_steps: int, strength: float) -> int:
    """How many of ``num_steps`` sampler steps to skip when starting from an earlier sample at
    ``strength`` (1 = from pure noise, 0 = return the sample as it is; SDEdit)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength {strength} is not in [0, 1]")
    return num_steps - int(round(strength * num_steps))


def sample(
    model: torch.nn.Module,
    process: DiffusionProcess,
    shape: tuple[int, ...],
    sampling: SamplingConfig,
    *,
    cond: Condition = None,
    guidance: Optional[Energy] = None,
    guidance_scale: float = 0.0,
    generator: Optional[torch.Generator] = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    x_init: Optional[torch.Tensor] = None,
    strength: float = 1.0,
    self_cond: Optional[torch.Tensor] = None,
    self_condition: Optional[bool] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Draw samples of ``shape`` from ``model``; returns the final x0 (B, ...).

    ``x_init`` + ``strength`` < 1: start from ``x_init`` noised to the step where a fraction
    ``strength`` of the sampler's steps remain (strength 1 draws the same noise as no ``x_init``).
    ``self_cond``: the first step's input self-conditioning; ``self_condition`` whether x0_hat is
    carried from step to step (None: when the process was trained with it). ``callback(step, t,
    x_t, x0_hat)`` runs after every step's network call; when it returns True sampling stops and
    that step's x0_hat is returned.
    """
    sched = make_sampling_scheduler(process, sampling.scheduler, sampling.timestep_spacing)
    set_sampling_timesteps(sched, sampling, process.num_timesteps)
    accepts = inspect.signature(sched.step).parameters
    step_kwargs = {k: v for k, v in (("generator", generator), ("eta", sampling.eta)) if k in accepts}
    timesteps = sched.timesteps
    skip = 0 if x_init is None else start_index(len(timesteps), strength)
    if x_init is not None and tuple(x_init.shape) != tuple(shape):
        raise ValueError(f"x_init shape {tuple(x_init.shape)} != sample shape {tuple(shape)}")
    x = torch.randn(shape, generator=generator, device="cpu").to(device)
    if skip == len(timesteps):
        return x_init.to(device)
    if skip > 0:
        t0 = timesteps[skip].reshape(1).repeat(shape[0])
        x = process.add_noise(x_init.to(device), x, t0.to(device))
    if self_condition is None:
        self_condition = process.cfg.self_condition_prob > 0
    energy = None if guidance is None or guidance_scale == 0 else _energy_reader(guidance)
    rows = _micro_batch_rows(sampling.micro_batch, shape[0], energy)
    shrinkage = torch.ones(shape[0], dtype=torch.float64, device=device)  # per sample, from its previous guided step
    groups = _row_groups(rows, torch.device(device))
    with frozen(model), _workers(len(groups)) as pool:
        for i, t in enumerate(tqdm(timesteps[skip:], desc="sampling", disable=not progress, leave=False)):
            x_in = sched.scale_model_input(x, t)
            weight, step_size = 0.0, None
            if energy is not None:
                weight, unit_step = guidance_scale * guidance_weight(sched, int(t)), guidance_step_size(sched, int(t))
                if unit_step is not None:
                    abar = float(process.alphas_cumprod[int(t)])
                    follow = abar / (1 - abar) >= MEASURED_STEP_MIN_SNR
                    step_size = guidance_scale * unit_step * (shrinkage.square() if follow else torch.ones_like(shrinkage))

            def run(group):  # all calls of this step end before the loop moves on
                return [(r, *_network_step(model, process, x_in, int(t), cond, self_cond, sampling.cfg_scale, energy,
                                           weight, None if step_size is None else step_size[r], r)) for r in group]

            parts = []
            for r, x0_r, eps_r, shrink_r in (out for done in pool.map(run, groups) for out in done):
                parts.append((x0_r, eps_r))
                if shrink_r is not None:
                    shrinkage[r] = shrink_r
            x0, eps = (parts[0] if len(parts) == 1 else (torch.cat(p) for p in zip(*parts)))
            if callback is not None and callback(skip + i, int(t), x, x0):
                return x0
            if self_condition:
                self_cond = x0
            x = sched.step(eps, t, x, **step_kwargs).prev_sample.detach()
    return x


def _micro_batch_rows(micro_batch: Optional[int], batch: int, energy: Optional[Callable]) -> list[slice]:
    """The row slices of one step's network calls: micro_batch rows each (one slice for the whole batch by default)."""
    if micro_batch is None:
        return [slice(0, batch)]
    if micro_batch < 1:
        raise ConfigError(f"sampling.micro_batch must be >= 1 or null (the whole batch), got {micro_batch}")
    if energy is not None and not energy.takes_rows:  # checked whatever the batch and threads: no surprises
        raise ConfigError("sampling.micro_batch needs an energy that can be restricted to rows (a `rows` parameter, "
                          "see gencond.guidance); set sampling.micro_batch=null for this energy")
    if micro_batch >= batch:
        return [slice(0, batch)]
    return [slice(lo, min(lo + micro_batch, batch)) for lo in range(0, batch, micro_batch)]


def _row_groups(rows: list[slice], device: torch.device) -> list[list[slice]]:
    """The calls of one step in contiguous groups, one per worker: one group on an accelerator, else up to
    torch.get_num_threads() groups of (nearly) equal size."""
    n = 1 if device.type != "cpu" else max(1, min(torch.get_num_threads(), len(rows)))
    size, extra = divmod(len(rows), n)
    bounds = [i * size + min(i, extra) for i in range(n + 1)]
    return [rows[lo:hi] for lo, hi in zip(bounds, bounds[1:])]


class _InThisThread:
    """The pool's ``map`` for one group: the calls run in the calling thread."""

    def map(self, fn, items):
        return map(fn, items)


@contextmanager
def _workers(n: int):
    """A pool of n threads with torch's intra-op threads shared out among them while it lives (restored after);
    for n = 1 the calls run in this thread, as they are."""
    if n == 1:
        yield _InThisThread()
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // n))  # before the pool: its threads read the setting when they start
    try:
        with ThreadPoolExecutor(n, thread_name_prefix="gencond-sampling") as pool:
            yield pool
    finally:
        torch.set_num_threads(threads)


def _network_step(model, process, x_in, t: int, cond, self_cond, cfg_scale, energy, weight: float,
                  step_size: Optional[torch.Tensor], rows: slice) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(x0_hat, eps, shrinkage) for ``rows`` of the batch; with an energy, eps carries its weighted gradient and
    shrinkage is :func:`guidance_shrinkage` of the rows when the energy was given step sizes (else None)."""
    x_rows = x_in[rows]
    tt = torch.full((x_rows.shape[0],), t, device=x_rows.device, dtype=torch.long)
    cond = map_condition(lambda c: c[rows], cond)
    self_cond = None if self_cond is None else self_cond[rows]
    if energy is None:
        with torch.no_grad():
            x0, eps = denoise(model, process, x_rows, tt, cond, self_cond, cfg_scale)
        return x0, eps, None
    with torch.enable_grad():
        x_req = x_rows.detach().requires_grad_(True)
        x0, eps = denoise(model, process, x_req, tt, cond, self_cond, cfg_scale)
        grad, grad_x0 = torch.autograd.grad(energy(x0, cond, tt, rows, step_size).sum(), [x_req, x0])
    shrinkage = None if step_size is None else guidance_shrinkage(grad, grad_x0, float(process.alphas_cumprod[t]))
    return x0.detach(), eps.detach() + weight * grad, shrinkage


def _energy_reader(energy: Energy) -> Callable:
    """Call an energy with the condition, timestep, rows and step size when its signature asks for them."""
    params = inspect.signature(energy).parameters
    wants = {name for name in ("cond", "t", "rows", "step_size") if name in params}

    def read(x0, cond, t, rows, step_size):
        given = {"cond": cond, "t": t, "rows": rows, "step_size": step_size}
        return energy(x0, **{k: v for k, v in given.items() if k in wants})

    read.takes_rows = "rows" in wants
    return read
