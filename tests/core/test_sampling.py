import threading

import pytest
import torch
from diffusers import DDPMScheduler

from gencond.config import ConfigError, DiffusionConfig, SamplingConfig
from gencond.diffusion import DiffusionProcess
from gencond.guidance import ObservationGuidance, evenly_spaced_quantiles
from gencond.sampling import (
    MEASURED_STEP_MIN_SNR,
    EnergyGuidance,
    GuidanceRule,
    _row_groups,
    guidance_shrinkage,
    guidance_step_size,
    guidance_weight,
    make_sampling_scheduler,
    micro_batch_rows,
    sample,
)

from .toys import DictConditioned, GaussianOracle, Recorder

PROCESS = DiffusionProcess(DiffusionConfig(num_train_timesteps=100, beta_end=0.1))


@pytest.mark.parametrize("scheduler,steps", [("ddpm", None), ("ddim", 20), ("dpm++", 10), ("dpm++sde", 20), ("unipc", 10)])
def test_oracle_samples_have_the_data_variance(scheduler, steps):
    model = GaussianOracle(PROCESS, sigma=2.0)
    x = sample(model, PROCESS, (4000, 2), SamplingConfig(scheduler=scheduler, num_steps=steps),
               generator=torch.Generator().manual_seed(0), progress=False)
    assert abs(x.std().item() - 2.0) < 0.15
    assert abs(x.mean().item()) < 0.1


@pytest.mark.parametrize("scheduler,steps", [("ddpm", None), ("ddim", 20), ("dpm++sde", 20)])
def test_guidance_pulls_samples_to_observations(scheduler, steps):
    model = GaussianOracle(PROCESS)
    obs = torch.zeros(500, 3)
    obs[:, 0] = 2.5
    mask = torch.tensor([1.0, 0.0, 0.0]).expand(500, 3)
    energy = ObservationGuidance(obs, mask)
    sampling = SamplingConfig(scheduler=scheduler, num_steps=steps)
    free = sample(model, PROCESS, (500, 3), sampling, generator=torch.Generator().manual_seed(0), progress=False)
    guided = sample(model, PROCESS, (500, 3), sampling, guidance=EnergyGuidance(energy, 1.0),
                    generator=torch.Generator().manual_seed(0), progress=False)
    assert energy(guided).mean() < 0.25 * energy(free).mean()
    assert abs(guided[:, 1:].std().item() - 1.0) < 0.15  # unobserved entries keep their distribution


def test_ddpm_guidance_moves_the_posterior_mean_by_sigma_squared_grad():
    sched = make_sampling_scheduler(PROCESS, "ddpm")
    sched.set_timesteps(100)
    x, eps, grad = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    for t in (99, 50, 1):
        a = sched.step(eps, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
        b = sched.step(eps + guidance_weight(sched, t) * grad, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
        abar, abar_prev = sched.alphas_cumprod[t], sched.alphas_cumprod[t - 1]
        posterior_var = (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
        torch.testing.assert_close(b - a, -posterior_var * grad, atol=1e-5, rtol=1e-4)
    assert isinstance(sched, DDPMScheduler) and guidance_weight(sched, 0) == 0.0


def test_strided_ddpm_guidance_adds_up_to_the_full_chains():
    full = make_sampling_scheduler(PROCESS, "ddpm")
    full.set_timesteps(100)
    one_step_variance = {u: float(full._get_variance(u)) for u in range(100)}  # diffusers' own posterior variance
    sched = make_sampling_scheduler(PROCESS, "ddpm")
    sched.set_timesteps(25)
    x, eps, grad = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    pushed = 0.0
    for t in sched.timesteps.tolist():
        spanned = sum(one_step_variance[u] for u in range(int(sched.previous_timestep(t)) + 1, t + 1))
        a = sched.step(eps, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
        b = sched.step(eps + guidance_weight(sched, t) * grad, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
        torch.testing.assert_close(b - a, -spanned * grad, atol=1e-5, rtol=1e-4)
        pushed += spanned
    first = int(sched.timesteps[0])
    assert pushed == pytest.approx(sum(one_step_variance[u] for u in range(first + 1)))
    assert pushed > 1.1 * sum(float(sched._get_variance(t)) for t in sched.timesteps.tolist())  # more than the jumps' own


def test_scheduler_aliases_carry_their_options():
    sde = make_sampling_scheduler(PROCESS, "dpm++sde")
    assert sde.config.algorithm_type == "sde-dpmsolver++"
    assert make_sampling_scheduler(PROCESS, "dpm++").config.algorithm_type == "dpmsolver++"


def test_stochastic_schedulers_follow_the_generator():
    model = GaussianOracle(PROCESS)

    def draw(seed):
        return sample(model, PROCESS, (8, 2), SamplingConfig(scheduler="dpm++sde", num_steps=10),
                      generator=torch.Generator().manual_seed(seed), progress=False)

    torch.testing.assert_close(draw(0), draw(0))
    assert not torch.allclose(draw(0), draw(1))


def test_quantile_energy_is_the_pinball_loss():
    obs, mask = torch.zeros(3, 2), torch.ones(3, 2)
    q = evenly_spaced_quantiles(3)
    torch.testing.assert_close(q, torch.tensor([0.25, 0.5, 0.75]))
    x0 = torch.full((3, 2), -1.0)  # below the observation: e = +1, loss q per entry
    torch.testing.assert_close(ObservationGuidance(obs, mask, q)(x0), 2 * q)
    x0 = torch.full((3, 2), 1.0)  # above: e = -1, loss 1 - q
    torch.testing.assert_close(ObservationGuidance(obs, mask, q)(x0), 2 * (1 - q))


def _energy_gradient(energy, x0, **kw):
    x0 = x0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(x0, **kw).sum(), x0)
    return grad


def test_proximal_guidance_steps_to_the_observation_never_past_it():
    obs, mask, q = torch.zeros(3, 5), torch.ones(3, 5), torch.tensor([0.1, 0.5, 0.9])
    x0 = torch.tensor([-2.0, -0.01, 0.0, 0.015, 1.0]).expand(3, 5)
    energy, lam = ObservationGuidance(obs, mask, q), 0.2
    grad = _energy_gradient(energy, x0, step_size=lam)
    err = obs - x0
    torch.testing.assert_close(grad, -torch.maximum(torch.minimum(err / lam, q[:, None]), q[:, None] - 1))  # Moreau gradient
    moved = x0 - lam * grad  # the proximal step of the pinball loss
    torch.testing.assert_close(moved[:, 1:4], torch.zeros(3, 3))  # within λq below / λ(1-q) above: onto the observation
    torch.testing.assert_close(moved[:, 0], -2.0 + lam * q)  # far below: the plain step λq, still below
    torch.testing.assert_close(moved[:, 4], 1.0 - lam * (1 - q))
    plain = -torch.where(err > 0, q[:, None], q[:, None] - 1)
    for kw, e in (({}, energy), ({"step_size": None}, energy), ({"step_size": lam}, ObservationGuidance(obs, mask, q, proximal=False))):
        torch.testing.assert_close(_energy_gradient(e, x0, **kw)[:, [0, 1, 3, 4]], plain[:, [0, 1, 3, 4]])  # TSDiff's own
    mse = ObservationGuidance(obs, mask)
    torch.testing.assert_close(_energy_gradient(mse, x0, step_size=lam), -2 * err / (1 + 2 * lam))
    assert (x0 - lam * _energy_gradient(mse, x0, step_size=lam)).abs().le(x0.abs()).all()


class NoNoise(torch.nn.Module):
    """Predicts no noise: x0_hat = x_t / sqrt(abar_t), exactly the Jacobian the sampler's step-size rule assumes."""

    def forward(self, x_t, t, cond=None, self_cond=None):
        return torch.zeros_like(x_t)


def _rule(t: int, prev: int) -> float:
    """4 x (the posterior variances jumped) / sqrt(abar_t abar_prev): gencond.sampling.guidance_step_size at scale 4."""
    abar = PROCESS.scheduler.alphas_cumprod.double()
    full = make_sampling_scheduler(PROCESS, "ddpm")
    full.set_timesteps(100)
    spanned = sum(float(full._get_variance(u)) for u in range(prev + 1, t + 1))
    return 4.0 * spanned / float((abar[t] * (abar[prev] if prev >= 0 else 1)).sqrt())


def test_sampler_gives_energies_the_ddpm_step_size():
    seen = []

    def energy(x0_hat, t, step_size):
        seen.append((int(t[0]), None if step_size is None else step_size.clone()))
        return x0_hat.square().flatten(1).sum(1)

    listed = [99, 60, 10, 0]
    sample(NoNoise(), PROCESS, (2, 3), SamplingConfig(scheduler="ddpm", timesteps=listed), guidance=EnergyGuidance(energy, 4.0),
           generator=torch.Generator().manual_seed(0), progress=False)
    for (t, size), prev in zip(seen, listed[1:] + [-1]):  # shrinkage r = 1 for this network: the rule itself
        assert size.shape == (2,) and t in listed
        torch.testing.assert_close(size, torch.full((2,), _rule(t, prev), dtype=torch.float64), rtol=1e-5, atol=1e-12)
    assert [t for t, _ in seen] == listed and (seen[-1][1].abs() < 1e-12).all()
    seen.clear()
    sample(Recorder(3), PROCESS, (2, 3), SamplingConfig(scheduler="ddim", num_steps=5), guidance=EnergyGuidance(energy, 4.0),
           generator=torch.Generator().manual_seed(0), progress=False)
    assert len(seen) == 5 and all(size is None for _, size in seen)
    ddim = make_sampling_scheduler(PROCESS, "ddim")
    ddim.set_timesteps(5)
    assert guidance_step_size(ddim, int(ddim.timesteps[0])) is None


def test_step_size_follows_the_measured_shrinkage_where_the_signal_dominates():
    # For data ~ N(0, sigma^2) the exact denoiser's x0_hat = sqrt(abar) sigma^2 x_t / (abar sigma^2 + 1 - abar): its
    # shrinkage relative to I / sqrt(abar) is r = abar sigma^2 / (abar sigma^2 + 1 - abar), the same for every sample.
    sigma, listed, seen = 0.5, [99, 60, 30, 10, 0], []

    def energy(x0_hat, t, step_size):
        seen.append((int(t[0]), None if step_size is None else step_size.clone()))
        return (x0_hat - 1.0).square().flatten(1).sum(1)

    sample(GaussianOracle(PROCESS, sigma=sigma), PROCESS, (3, 2), SamplingConfig(scheduler="ddpm", timesteps=listed),
           guidance=EnergyGuidance(energy, 4.0), generator=torch.Generator().manual_seed(0), progress=False)
    abar = PROCESS.alphas_cumprod
    shrink = {t: float(abar[t] * sigma**2 / (abar[t] * sigma**2 + 1 - abar[t])) for t in listed}
    for i, (t, size) in enumerate(seen):
        prev = listed[i + 1] if i + 1 < len(listed) else -1
        follows = float(abar[t] / (1 - abar[t])) >= MEASURED_STEP_MIN_SNR
        factor = shrink[listed[i - 1]] ** 2 if follows and i > 0 else 1.0
        torch.testing.assert_close(size, torch.full((3,), _rule(t, prev) * factor, dtype=torch.float64), rtol=1e-4, atol=1e-12)
    assert [float(abar[t] / (1 - abar[t])) >= 1 for t in listed] == [False, False, True, True, True]


def test_guidance_shrinkage_is_one_for_the_rules_jacobian_and_safe_without_a_gradient():
    g = torch.tensor([[1.0, -2.0], [0.0, 0.0], [3.0, 1.0]])
    abar = 0.64
    r = guidance_shrinkage(g / abar**0.5, g, abar)  # J = I / sqrt(abar): r = 1
    torch.testing.assert_close(r, torch.ones(3, dtype=torch.float64))  # and 1 where g = 0 (no information)
    torch.testing.assert_close(guidance_shrinkage(0.3 * g / abar**0.5, g, abar), torch.tensor([0.3, 1.0, 0.3], dtype=torch.float64))
    assert (guidance_shrinkage(-g, g, abar) == torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)).all()  # never below 0


def test_per_sample_step_sizes_equal_one_call_per_sample():
    obs, mask, q = torch.zeros(3, 4), torch.ones(3, 4), torch.tensor([0.1, 0.5, 0.9])
    x0 = torch.tensor([[-2.0, -0.01, 0.015, 1.0]]).expand(3, 4)
    lam = torch.tensor([0.2, 0.0, 0.05], dtype=torch.float64)
    for energy in (ObservationGuidance(obs, mask, q), ObservationGuidance(obs, mask)):
        together = _energy_gradient(energy, x0, step_size=lam)
        for i in range(3):
            one = ObservationGuidance(obs[i:i + 1], mask[i:i + 1], None if energy.quantiles is None else q[i:i + 1])
            torch.testing.assert_close(together[i:i + 1], _energy_gradient(one, x0[i:i + 1], step_size=float(lam[i])))
        assert torch.isfinite(together).all()  # a zero step size is the plain loss, not 0 / 0


def test_nan_observations_are_unobserved():
    obs = torch.tensor([[1.0, float("nan")]])
    energy = ObservationGuidance(obs, torch.ones(1, 2))(torch.zeros(1, 2))
    assert torch.isfinite(energy).all() and energy.item() == 1.0


def test_self_condition_is_carried_between_steps():
    process = DiffusionProcess(DiffusionConfig(num_train_timesteps=10, self_condition_prob=0.5))
    model = Recorder(4)
    sample(model, process, (2, 4), SamplingConfig(scheduler="ddim", num_steps=5), progress=False)
    assert model.calls[0]["self_cond"] is None
    assert all(c["self_cond"] is not None for c in model.calls[1:])
    assert len(model.calls) == 5


def test_classifier_free_guidance_interpolates():
    torch.manual_seed(0)
    model = Recorder(4)
    cond = torch.full((2,), 3.0)
    outs = {}
    for w in (None, 0.0, 1.0):
        outs[w] = sample(model, PROCESS, (2, 4), SamplingConfig(scheduler="ddim", num_steps=3, cfg_scale=w), cond=cond,
                         generator=torch.Generator().manual_seed(0), progress=False)
    uncond = sample(model, PROCESS, (2, 4), SamplingConfig(scheduler="ddim", num_steps=3), cond=torch.zeros(2),
                    generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(outs[1.0], outs[None], atol=1e-5, rtol=1e-5)  # w = 1 is the conditional model
    torch.testing.assert_close(outs[0.0], uncond, atol=1e-5, rtol=1e-5)  # w = 0 the unconditional one


def test_unknown_scheduler_lists_choices():
    with pytest.raises(ConfigError, match="unknown scheduler 'dddim'.*ddim"):
        make_sampling_scheduler(PROCESS, "dddim")


def test_micro_batches_give_the_same_guided_samples():
    torch.manual_seed(0)
    model = GaussianOracle(PROCESS)
    obs, mask = 3 * torch.randn(10, 8), (torch.rand(10, 8) < 0.5).float()  # each row its own observations
    runs = {}
    for micro in (None, 3, 1):
        # MSE guidance (smooth): micro-batching may only change float rounding
        runs[micro] = sample(model, PROCESS, (10, 8), SamplingConfig(scheduler="ddpm", num_steps=20, micro_batch=micro),
                             guidance=EnergyGuidance(ObservationGuidance(obs, mask), 1.0),
                             generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(runs[3], runs[None], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(runs[1], runs[None], atol=1e-5, rtol=1e-5)
    free = sample(model, PROCESS, (10, 8), SamplingConfig(scheduler="ddpm", num_steps=20),
                  generator=torch.Generator().manual_seed(0), progress=False)
    assert not torch.allclose(free, runs[None], atol=1e-3)  # the guidance acted


def test_micro_batches_slice_the_condition_and_the_quantiles():
    torch.manual_seed(0)
    model = DictConditioned(4)
    cond = {"label": torch.randn(5, 4), "frame": torch.randn(5, 4)}
    sampling = dict(scheduler="ddim", num_steps=4, cfg_scale=2.0)
    whole, sliced = (sample(model, PROCESS, (5, 4), SamplingConfig(**sampling, micro_batch=m), cond=cond,
                            generator=torch.Generator().manual_seed(0), progress=False) for m in (None, 2))
    torch.testing.assert_close(sliced, whole, atol=1e-6, rtol=1e-6)
    energy = ObservationGuidance(torch.zeros(4, 2), torch.ones(4, 2), evenly_spaced_quantiles(4))
    x0 = torch.full((2, 2), -1.0)
    torch.testing.assert_close(energy(x0, rows=slice(2, 4)), 2 * evenly_spaced_quantiles(4)[2:])


def test_micro_batches_need_an_energy_that_takes_rows():
    model = GaussianOracle(PROCESS)
    with pytest.raises(ConfigError, match="micro_batch needs an energy that can be restricted to rows"):
        sample(model, PROCESS, (4, 2), SamplingConfig(num_steps=2, micro_batch=2), guidance=EnergyGuidance(lambda x0: x0.square().sum(1), 1.0),
               progress=False)
    with pytest.raises(ConfigError, match="micro_batch needs an energy that can be restricted to rows"):
        # refused even where one call would take the whole batch (micro_batch >= batch): a config
        # must not pass on one machine and fail on another
        sample(model, PROCESS, (4, 2), SamplingConfig(num_steps=2, micro_batch=8), guidance=EnergyGuidance(lambda x0: x0.square().sum(1), 1.0),
               progress=False)
    with pytest.raises(ConfigError, match="micro_batch must be >= 1"):
        sample(model, PROCESS, (4, 2), SamplingConfig(num_steps=2, micro_batch=0), progress=False)


def test_micro_batches_run_on_worker_threads_with_the_same_samples_on_any_thread_count():
    class Sizes(GaussianOracle):
        def forward(self, x_t, t, cond=None, self_cond=None):
            self.calls.append((x_t.shape[0], threading.current_thread().name, torch.get_num_threads()))
            return super().forward(x_t, t, cond, self_cond)

    torch.manual_seed(0)
    obs, mask = 3 * torch.randn(45, 2), (torch.rand(45, 2) < 0.5).float()
    threads, runs = torch.get_num_threads(), {}
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            model = Sizes(PROCESS)
            model.calls = []
            runs[n] = sample(model, PROCESS, (45, 2), SamplingConfig(scheduler="ddpm", num_steps=3, micro_batch=10),
                             guidance=EnergyGuidance(ObservationGuidance(obs, mask), 1.0),
                             generator=torch.Generator().manual_seed(0), progress=False)
            assert sorted(size for size, _, _ in model.calls) == sorted([10] * 4 * 3 + [5] * 3)  # rows per call fixed
            names = {name for _, name, _ in model.calls}
            # up to n workers (the pool reuses a worker that is already idle, as on a busy machine)
            assert 1 <= len(names) <= n and all(name.startswith("gencond-sampling") for name in names) == (n > 1)
            assert {k for _, _, k in model.calls} == {1}  # each worker runs its ops single-threaded
            assert torch.get_num_threads() == n  # restored
        assert torch.equal(runs[2], runs[1]) and torch.equal(runs[3], runs[1])
        torch.set_num_threads(2)  # contiguous groups of (nearly) equal size, one per thread
        assert [[(r.start, r.stop) for r in g] for g in _row_groups(micro_batch_rows(10, 45), torch.device("cpu"))] \
            == [[(0, 10), (10, 20), (20, 30)], [(30, 40), (40, 45)]]
        assert [len(g) for g in _row_groups([slice(0, 1)] * 5, torch.device("cuda"))] == [5]  # one group on an accelerator
        assert micro_batch_rows(10, 0) == [slice(0, 0)]  # an empty batch: one empty call, not none
    finally:
        torch.set_num_threads(threads)


def test_timestep_spacing_places_the_few_steps():
    firsts_lasts = {}
    for spacing in ("leading", "trailing", "linspace"):
        sched = make_sampling_scheduler(PROCESS, "ddpm", spacing)
        sched.set_timesteps(25)
        firsts_lasts[spacing] = (int(sched.timesteps[0]), int(sched.timesteps[-1]))
    assert firsts_lasts == {"leading": (96, 0), "trailing": (99, 3), "linspace": (99, 0)}
    with pytest.raises(ConfigError, match="unknown sampling.timestep_spacing 'even'.*linspace"):
        make_sampling_scheduler(PROCESS, "ddpm", "even")


def test_listed_timesteps_are_the_steps_taken_and_guidance_still_adds_up():
    listed = [99, 80, 50, 49, 20, 3, 0]
    seen = []
    for num_steps in (None, 4):
        sample(Recorder(3), PROCESS, (2, 3), SamplingConfig(scheduler="ddpm", num_steps=num_steps, timesteps=listed),
               generator=torch.Generator().manual_seed(0), progress=False, callback=lambda i, t, x, x0: seen.append(t))
    assert seen == listed + [75, 50, 25, 0]  # num_steps, when given, wins over the list
    full = make_sampling_scheduler(PROCESS, "ddpm")
    full.set_timesteps(100)
    sched = make_sampling_scheduler(PROCESS, "ddpm")
    sched.set_timesteps(timesteps=listed)
    x, eps, grad = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    pushed = 0.0
    for t in listed:
        a = sched.step(eps, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
        b = sched.step(eps + guidance_weight(sched, t) * grad, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
        pushed += float((a - b).mean() / grad.mean())
    assert pushed == pytest.approx(sum(float(full._get_variance(u)) for u in range(100)), rel=1e-4)


@pytest.mark.parametrize("sampling,message", [
    (SamplingConfig(timesteps=[99, 60, 70, 0]), r"must decrease strictly through training timesteps 0\.\.99, got \[99, 60, 70, 0\]"),
    (SamplingConfig(timesteps=[100, 0]), "must decrease strictly"),
    (SamplingConfig(timesteps=[49, 0]), r"must start at the last training timestep 99 \(pure noise\), got 49"),
    (SamplingConfig(scheduler="ddim", timesteps=[99, 0]), "scheduler 'ddim' takes no sampling.timesteps; use ddpm or dpm\\+\\+, or give a number of steps"),
    (SamplingConfig(timesteps=[99, 0], timestep_spacing="trailing"), "with listed sampling.timesteps and no num_steps it must be null"),
])
def test_bad_listed_timesteps_are_refused(sampling, message):
    with pytest.raises(ConfigError, match=message):
        sample(Recorder(3), PROCESS, (2, 3), sampling, progress=False)


def test_a_guidance_rule_replaces_the_weight_step_size_shrinkage_and_min_snr():
    seen, calls = [], []

    def energy(x0_hat, step_size):
        seen.append(step_size.clone())
        return x0_hat.square().flatten(1).sum(1)

    def weight(sched, t):
        calls.append(t)
        return 0.0

    rule = GuidanceRule(weight=weight, step_size=lambda sched, t: 0.5, shrinkage=lambda gx, gx0, abar: torch.zeros(2),
                        min_snr=float("inf"))  # never follows the (zero) shrinkage
    sampling = SamplingConfig(scheduler="ddim", num_steps=3)
    model = GaussianOracle(PROCESS)
    guided = sample(model, PROCESS, (2, 3), sampling, guidance=EnergyGuidance(energy, 4.0, rule),
                    generator=torch.Generator().manual_seed(0), progress=False)
    free = sample(model, PROCESS, (2, 3), sampling, generator=torch.Generator().manual_seed(0), progress=False)
    assert len(calls) == 3 and all(torch.equal(s, torch.full((2,), 2.0, dtype=torch.float64)) for s in seen)
    assert torch.equal(guided, free)  # a zero weight adds nothing to eps
    assert EnergyGuidance(energy, 1.0).rule == GuidanceRule() and GuidanceRule().min_snr == MEASURED_STEP_MIN_SNR
