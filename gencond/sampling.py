"""One sampling loop for every domain: any diffusers scheduler, self-guidance, classifier-free
guidance and input self-conditioning.

``sample(model, process, shape, sampling, cond=..., guidance=EnergyGuidance(energy, scale), start=SDEdit(x, 0.5))``:
classifier-free guidance (``sampling.cfg_scale``) is a wrapper around the network
(:class:`ClassifierFreeGuidance`); self-guidance an energy, its scale and a :class:`GuidanceRule` (the per-step
weight, step size, shrinkage and minimum signal-to-noise ratio below, replaceable for an ablation); micro-batches
a helper (:func:`micro_batches`).

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
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Protocol

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


def ddpm_jump(sched: DDPMScheduler, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        abar, abar_prev, variance = ddpm_jump(sched, t)
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
    abar, abar_prev, variance = ddpm_jump(sched, t)
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



class ClassifierFreeGuidance:
    """A network wrapper for classifier-free guidance: off + scale * (on - off), the outputs for the condition and
    for the model's null condition from one batched call (``scale`` 1 is the conditional model, 0 the
    unconditional one); without a condition, the network's own output."""

    def __init__(self, model: torch.nn.Module, scale: float):
        self.model, self.scale = model, scale

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition = None,
                 self_cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        if cond is None:
            return self.model(x_t, t, cond=cond, self_cond=self_cond)
        both_cond = cat_conditions(cond, null_condition_of(self.model, cond))
        sc = None if self_cond is None else torch.cat([self_cond, self_cond])
        on, off = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), cond=both_cond, self_cond=sc).chunk(2)
        return off + self.scale * (on - off)


def denoise(model: Callable, process: DiffusionProcess, x_t: torch.Tensor, t: torch.Tensor, cond: Condition = None,
            self_cond: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from one call of ``model`` (a network, or a wrapper such as
    :class:`ClassifierFreeGuidance`)."""
    return process.x0_and_eps(x_t, model(x_t, t, cond=cond, self_cond=self_cond), t)


@dataclass(frozen=True)
class GuidanceRule:
    """How energy guidance is scaled at each step (module docstring): the weight w_t of the gradient, the step
    size an energy is given per unit of scale (None: none), the measured shrinkage r, and the signal-to-noise
    ratio abar_t / (1 - abar_t) from which the step size follows r^2. The defaults are the sampler's own;
    an ablation passes others (benchmarks/timeseries/tsdiff_few_step.py)."""

    weight: Callable[[SchedulerMixin, int], float] = guidance_weight
    step_size: Callable[[SchedulerMixin, int], Optional[float]] = guidance_step_size
    shrinkage: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] = guidance_shrinkage
    min_snr: float = MEASURED_STEP_MIN_SNR


@dataclass(frozen=True)
class EnergyGuidance:
    """Self-guidance: eps <- eps + scale * w_t * grad_{x_t} E(x0_hat), ``energy`` E from gencond.guidance (or any
    function of x0_hat, see there), scaled by ``rule``. Scale 0 samples unguided."""

    energy: Energy
    scale: float
    rule: GuidanceRule = GuidanceRule()


class SDEdit(NamedTuple):
    """Start from the sample ``x`` noised to the step where a fraction ``strength`` of the sampler's steps remain
    (1: from pure noise, the same noise as no start; 0: ``x`` as it is)."""

    x: torch.Tensor
    strength: float


def start_index(num_steps: int, strength: float) -> int:
    """How many of ``num_steps`` sampler steps to skip when starting from an earlier sample at
    ``strength`` (1 = from pure noise, 0 = return the sample as it is; SDEdit)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength {strength} is not in [0, 1]")
    return num_steps - int(round(strength * num_steps))


def sampling_scheduler(process: DiffusionProcess, sampling: SamplingConfig) -> SchedulerMixin:
    """The config's scheduler on the process's noise schedule, its steps set (:func:`set_sampling_timesteps`)."""
    sched = make_sampling_scheduler(process, sampling.scheduler, sampling.timestep_spacing)
    set_sampling_timesteps(sched, sampling, process.num_timesteps)
    return sched


def sample(
    model: torch.nn.Module,
    process: DiffusionProcess,
    shape: tuple[int, ...],
    sampling: SamplingConfig,
    *,
    cond: Condition = None,
    guidance: Optional[EnergyGuidance] = None,
    start: Optional[SDEdit] = None,
    input_self_cond: Optional[torch.Tensor] = None,
    carry_self_cond: Optional[bool] = None,
    generator: Optional[torch.Generator] = None,
    callback: Optional[StepCallback] = None,
    progress: bool = True,
) -> torch.Tensor:
    """Draw samples of ``shape`` from ``model`` on the device of its parameters; returns the final x0 (B, ...).

    ``sampling``: scheduler and steps, ``eta``, ``cfg_scale`` (:class:`ClassifierFreeGuidance` when set) and
    ``micro_batch``. ``input_self_cond``: the first step's input self-conditioning; ``carry_self_cond`` whether
    each step's x0_hat is carried to the next as its input (None: when the process was trained with it).
    ``callback(step, t, x_t, x0_hat)`` runs after every step's network call; when it returns True sampling
    stops and that step's x0_hat is returned.
    """
    sched = sampling_scheduler(process, sampling)
    device = model_device(model)
    skip, x = _first_sample(process, sched.timesteps, shape, generator, device, start)
    accepts = inspect.signature(sched.step).parameters
    step_kwargs = {k: v for k, v in (("generator", generator), ("eta", sampling.eta)) if k in accepts}
    rows = micro_batch_rows(sampling.micro_batch, shape[0])
    guide = None if guidance is None or guidance.scale == 0 else _Guide(guidance, process, shape[0], device,
                                                                    sampling.micro_batch is not None)
    net = model if sampling.cfg_scale is None else ClassifierFreeGuidance(model, sampling.cfg_scale)
    carry = process.cfg.self_condition_prob > 0 if carry_self_cond is None else carry_self_cond
    self_cond = input_self_cond
    with frozen(model), micro_batches(rows, device) as run:
        for i, t in enumerate(tqdm(sched.timesteps[skip:], desc="sampling", disable=not progress, leave=False)):
            x_in = sched.scale_model_input(x, t)
            guided = None if guide is None else guide.at(sched, int(t))
            x0, eps = run(_network_call(net, process, x_in, int(t), cond, self_cond, guided))
            if callback is not None and callback(skip + i, int(t), x, x0):
                return x0
            if carry:
                self_cond = x0
            x = sched.step(eps, t, x, **step_kwargs).prev_sample.detach()
    return x


def model_device(model) -> torch.device:
    """Where ``model`` computes: the device of its parameters (the CPU for a model without any)."""
    parameters = getattr(model, "parameters", None)
    first = next(iter(parameters()), None) if parameters is not None else None
    return torch.device("cpu") if first is None else first.device


def _first_sample(process: DiffusionProcess, timesteps: torch.Tensor, shape: tuple[int, ...],
                  generator: Optional[torch.Generator], device: torch.device, start: Optional[SDEdit]):
    """(sampler steps skipped, x_t at the first step taken): pure noise, or with ``start`` its sample noised to
    the step where its strength of the steps remain (the sample itself when none remain)."""
    skip = 0 if start is None else start_index(len(timesteps), start.strength)
    if start is not None and tuple(start.x.shape) != tuple(shape):
        raise ValueError(f"start sample shape {tuple(start.x.shape)} != sample shape {tuple(shape)}")
    x = torch.randn(shape, generator=generator, device="cpu").to(device)  # drawn also with a start: the same noise
    if skip == len(timesteps):
        return skip, start.x.to(device)
    if skip > 0:
        t0 = timesteps[skip].reshape(1).repeat(shape[0])
        x = process.add_noise(start.x.to(device), x, t0.to(device))
    return skip, x


def _network_call(net, process: DiffusionProcess, x_in: torch.Tensor, t: int, cond: Condition,
                  self_cond: Optional[torch.Tensor], guided: Optional[Callable]) -> Callable:
    """The step's network call on a slice of rows: rows -> (x0_hat, eps_hat), eps carrying the guidance when
    ``guided`` (:meth:`_Guide.at`)."""
    def call(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        x_rows = x_in[rows]
        tt = torch.full((x_rows.shape[0],), t, device=x_rows.device, dtype=torch.long)
        cond_rows = map_condition(lambda c: c[rows], cond)
        self_cond_rows = None if self_cond is None else self_cond[rows]

        def denoise_rows(x):
            return denoise(net, process, x, tt, cond_rows, self_cond_rows)

        if guided is None:
            with torch.no_grad():
                return denoise_rows(x_rows)
        return guided(denoise_rows, x_rows, tt, cond_rows, rows)
    return call


class _Guide:
    """One sampling's energy guidance: each step's weight and step sizes, and each sample's shrinkage measured
    at its previous guided step (from the backward the guidance does anyway: no extra network evaluation)."""

    def __init__(self, guidance: EnergyGuidance, process: DiffusionProcess, batch: int, device, micro_batched: bool):
        self.energy, self.scale, self.rule = _energy_reader(guidance.energy), guidance.scale, guidance.rule
        if micro_batched and not self.energy.takes_rows:  # checked whatever the batch and threads: no surprises
            raise ConfigError("sampling.micro_batch needs an energy that can be restricted to rows (a `rows` parameter, "
                              "see gencond.guidance); set sampling.micro_batch=null for this energy")
        self.process = process
        self.shrinkage = torch.ones(batch, dtype=torch.float64, device=device)

    def at(self, sched: SchedulerMixin, t: int) -> Callable:
        """The guidance of step t: (denoise_rows, x_rows, tt, cond_rows, rows) -> (x0_hat, guided eps_hat)."""
        weight, unit_step = self.scale * self.rule.weight(sched, t), self.rule.step_size(sched, t)
        step_size = None
        if unit_step is not None:
            abar = float(self.process.alphas_cumprod[t])
            follow = abar / (1 - abar) >= self.rule.min_snr
            step_size = self.scale * unit_step * (self.shrinkage.square() if follow else torch.ones_like(self.shrinkage))

        def guided(denoise_rows, x_rows, tt, cond_rows, rows):
            sizes = None if step_size is None else step_size[rows]
            with torch.enable_grad():
                x_req = x_rows.detach().requires_grad_(True)
                x0, eps = denoise_rows(x_req)
                grad, grad_x0 = torch.autograd.grad(self.energy(x0, cond_rows, tt, rows, sizes).sum(), [x_req, x0])
            if sizes is not None:  # rows of one worker each: no two threads write the same entries
                self.shrinkage[rows] = self.rule.shrinkage(grad, grad_x0, float(self.process.alphas_cumprod[t]))
            return x0.detach(), eps.detach() + weight * grad
        return guided


def micro_batch_rows(micro_batch: Optional[int], batch: int) -> list[slice]:
    """The row slices of one step's network calls: micro_batch rows each (one slice for the whole batch by default)."""
    if micro_batch is None:
        return [slice(0, batch)]
    if micro_batch < 1:
        raise ConfigError(f"sampling.micro_batch must be >= 1 or null (the whole batch), got {micro_batch}")
    if micro_batch >= batch:
        return [slice(0, batch)]
    return [slice(lo, min(lo + micro_batch, batch)) for lo in range(0, batch, micro_batch)]


@contextmanager
def micro_batches(rows: list[slice], device):
    """``run(call)``: ``call(rows)`` -> (x0_hat, eps_hat) for every slice of ``rows``, joined in row order. On a CPU
    the calls are shared out among up to torch.get_num_threads() worker threads in contiguous groups, each
    running its ops single-threaded (module docstring); the calls of one ``run`` end before it returns."""
    groups = _row_groups(rows, torch.device(device))
    with _workers(len(groups)) as pool:
        def run(call):
            parts = [out for done in pool.map(lambda group: [call(r) for r in group], groups) for out in done]
            return parts[0] if len(parts) == 1 else tuple(torch.cat(p) for p in zip(*parts))
        yield run


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


def _energy_reader(energy: Energy) -> Callable:
    """Call an energy with the condition, timestep, rows and step size when its signature asks for them."""
    params = inspect.signature(energy).parameters
    wants = {name for name in ("cond", "t", "rows", "step_size") if name in params}

    def read(x0, cond, t, rows, step_size):
        given = {"cond": cond, "t": t, "rows": rows, "step_size": step_size}
        return energy(x0, **{k: v for k, v in given.items() if k in wants})

    read.takes_rows = "rows" in wants
    return read
