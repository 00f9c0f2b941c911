"""The core's seams for video plans and interaction control: structured conditions, sampler hooks,
the refine loop, trainer hooks, the run layer and the registry."""

import pytest
import torch
from omegaconf import OmegaConf

from gencond import cli
from gencond.conditions import GuidableDenoiser
from gencond.config import DiffusionConfig, RunConfig, SamplingConfig
from gencond.diffusion import DiffusionProcess, drop_condition
from gencond.errors import UserError
from gencond.refinement import Verdict, refine
from gencond.registry import register_command, register_task
from gencond.runs import load_run
from gencond.sampling import ClassifierFreeGuidance, EnergyGuidance, SDEdit, denoise, sample
from gencond.training import TrainingJob, train

from .toys import DictConditioned, GaussianOracle, TinyMLP, register_toy_task

PROCESS = DiffusionProcess(DiffusionConfig(num_train_timesteps=50))


def dict_cond(b=6, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"label": torch.randn(b, d, generator=g), "frame": torch.randn(b, d, generator=g)}


def test_the_contract_is_declared_once():
    assert isinstance(DictConditioned(), GuidableDenoiser)
    assert not isinstance(TinyMLP(), GuidableDenoiser)


def test_structured_cfg_equals_the_two_evaluations_combined_by_hand():
    torch.manual_seed(0)
    model, cond = DictConditioned(), dict_cond()
    x, t = torch.randn(6, 4), torch.randint(0, 50, (6,))
    x0, eps = denoise(ClassifierFreeGuidance(model, 3.0), PROCESS, x, t, cond)
    with torch.no_grad():
        on, off = model(x, t, cond=cond), model(x, t, cond=model.null_condition(cond))
        want_x0, want_eps = PROCESS.x0_and_eps(x, off + 3.0 * (on - off), t)
    torch.testing.assert_close(eps.detach(), want_eps)
    torch.testing.assert_close(x0.detach(), want_x0)


def test_dropout_replaces_exactly_the_nulled_keys_of_the_dropped_samples():
    model, cond = DictConditioned(), dict_cond()
    drop = torch.tensor([True, False, True, False, False, True])
    out = drop_condition(model, cond, drop)
    assert torch.all(out["label"][drop] == 0)
    torch.testing.assert_close(out["label"][~drop], cond["label"][~drop])
    torch.testing.assert_close(out["frame"], cond["frame"])  # a key the null condition keeps is never dropped


def test_training_with_dropout_works_on_dict_conditions_and_a_ddp_like_wrapper():
    class Wrapper(torch.nn.parallel.DistributedDataParallel):  # only the lookup matters, not the wrapping
        def __init__(self, module):
            torch.nn.Module.__init__(self)
            self.module = module

        def forward(self, *a, **k):
            return self.module(*a, **k)

    process = DiffusionProcess(DiffusionConfig(num_train_timesteps=50, cond_drop_prob=0.5, self_condition_prob=1.0))
    loss, _ = process.training_loss(Wrapper(DictConditioned()), torch.randn(6, 4), cond=dict_cond(),
                                    generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_an_sdedit_start_at_strength_0_is_returned_and_at_strength_1_equals_sampling_from_noise():
    model = GaussianOracle(PROCESS)
    x_init = torch.full((5, 3), 7.0)
    sampling = SamplingConfig(scheduler="ddim", num_steps=10)
    same = sample(model, PROCESS, (5, 3), sampling, start=SDEdit(x_init, 0.0), progress=False)
    torch.testing.assert_close(same, x_init)
    a = sample(model, PROCESS, (5, 3), sampling, start=SDEdit(x_init, 1.0), generator=torch.Generator().manual_seed(1), progress=False)
    b = sample(model, PROCESS, (5, 3), sampling, generator=torch.Generator().manual_seed(1), progress=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    half = sample(model, PROCESS, (5, 3), sampling, start=SDEdit(x_init, 0.3), generator=torch.Generator().manual_seed(1), progress=False)
    assert half.mean() > 3.0  # a light refinement keeps much of the earlier sample


def test_the_callback_sees_every_step_and_can_stop_early():
    seen = []

    def callback(step, t, x_t, x0_hat):
        seen.append((step, t, tuple(x0_hat.shape)))
        return step == 3

    sample(GaussianOracle(PROCESS), PROCESS, (2, 3), SamplingConfig(scheduler="ddim", num_steps=10),
           callback=callback, progress=False)
    assert [s for s, _, _ in seen] == [0, 1, 2, 3] and seen[0][2] == (2, 3)
    assert seen[0][1] > seen[-1][1]  # timesteps count down


def test_an_energy_that_reads_the_condition_and_timestep_is_applied():
    calls = []

    def towards_target(x0_hat, cond, t):
        calls.append(t)
        return (x0_hat - cond["frame"]).square().sum(1)

    model = DictConditioned()
    cond = {"label": torch.zeros(200, 4), "frame": torch.full((200, 4), 3.0)}
    sampling = SamplingConfig(scheduler="ddim", num_steps=10)
    free = sample(model, PROCESS, (200, 4), sampling, cond=cond, generator=torch.Generator().manual_seed(0), progress=False)
    guided = sample(model, PROCESS, (200, 4), sampling, cond=cond, guidance=EnergyGuidance(towards_target, 2.0),
                    generator=torch.Generator().manual_seed(0), progress=False)
    assert len(calls) == 10 and calls[0].shape == (200,)
    assert (guided - 3).square().mean() < 0.5 * (free - 3).square().mean()


def test_an_input_self_cond_reaches_the_first_step_and_stays_when_not_carried():
    from .toys import Recorder

    model = Recorder(3)
    start = torch.ones(2, 3)
    sample(model, PROCESS, (2, 3), SamplingConfig(scheduler="ddim", num_steps=3), input_self_cond=start,
           carry_self_cond=False, progress=False)
    assert torch.equal(model.calls[0]["self_cond"], start) and torch.equal(model.calls[1]["self_cond"], start)


def test_refine_stops_at_the_first_accept_and_returns_every_round():
    conditions = []

    def sample_fn(previous, r):
        conditions.append(previous)
        return (previous or 0) + 1

    result = refine(sample_fn, lambda s, r: Verdict(s >= 3, score=float(s)), max_rounds=5)
    assert result.rounds == [1, 2, 3] and result.accepted == 2 and result.final == 3
    assert conditions == [None, 1, 2]  # each round is conditioned on the previous round's sample
    assert [v.accept for v in result.verdicts] == [False, False, True]
    fixed = refine(sample_fn, None, max_rounds=4)
    assert len(fixed.rounds) == 4 and fixed.accepted is None and fixed.final == 4


def test_a_failing_feedback_rejects_with_its_reason_and_refinement_goes_on():
    def broken(sample, r):
        raise RuntimeError("critic offline")

    result = refine(lambda p, r: r, broken, max_rounds=3)
    assert len(result.rounds) == 3 and "critic offline" in result.verdicts[0].reason


def test_a_feedback_returning_neither_bool_nor_verdict_is_a_one_line_error():
    import numpy as np

    from gencond.errors import UserError

    assert refine(lambda p, r: r, lambda s, r: np.bool_(r == 1), max_rounds=3).accepted == 1
    with pytest.raises(UserError, match=r"returned str 'Accept'; it must return a bool"):
        refine(lambda p, r: r, lambda s, r: "Accept", max_rounds=2)


def test_a_feedback_that_times_out_rejects_and_the_last_round_can_go_unjudged():
    import time

    judged = []

    def slow(sample, r):
        judged.append(r)
        if r == 0:
            time.sleep(2.0)
        return False

    started = time.perf_counter()
    result = refine(lambda p, r: r, slow, max_rounds=3, timeout_s=0.2, judge_last=False)
    assert time.perf_counter() - started < 1.5  # the slow verdict was not waited for
    assert "timed out after 0.2 s" in result.verdicts[0].reason and not result.verdicts[0].accept
    assert judged == [0, 1] and result.verdicts[2].reason == "last round: not judged"
    assert result.final == 2 and result.accepted is None


# ---- trainer ---------------------------------------------------------------------------------------

def make_cfg(**train_keys):
    cfg = OmegaConf.structured(RunConfig(task="toy", name="toy"))
    cfg.train = OmegaConf.merge(cfg.train, dict(batch_size=8, lr=1e-2, log_every=1, checkpoint_every=100, **train_keys))
    return cfg


def make_job(**kw):
    torch.manual_seed(0)
    data = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    return TrainingJob(TinyMLP(8), lambda step, g: data[torch.randint(0, 64, (8,), generator=g)],
                       lambda m, b, g: PROCESS.training_loss(m, b, generator=g), **kw)


def test_the_after_step_hook_runs_once_per_optimizer_step(tmp_path):
    steps = []
    train(make_cfg(max_steps=5, grad_accum_steps=3), make_job(after_step=lambda m, s: steps.append(s)), tmp_path, progress=False)
    assert steps == [1, 2, 3, 4, 5]


def test_batches_from_dataloader_workers_equal_batches_from_the_loop(tmp_path):
    from safetensors.torch import load_file

    train(make_cfg(max_steps=6), make_job(), tmp_path / "loop", progress=False)
    train(make_cfg(max_steps=6, num_workers=2), make_job(), tmp_path / "workers", progress=False)
    a = load_file(str(tmp_path / "loop" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "workers" / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_frozen_parameters_do_not_change(tmp_path):
    job = make_job()
    before = {n: p.detach().clone() for n, p in job.model.named_parameters()}
    train(make_cfg(max_steps=4, trainable=["net.2.*"]), job, tmp_path, progress=False)
    after = dict(job.model.named_parameters())
    assert torch.equal(after["net.0.weight"], before["net.0.weight"]) and torch.equal(after["net.0.bias"], before["net.0.bias"])
    assert not torch.equal(after["net.2.weight"], before["net.2.weight"])
    with pytest.raises(UserError, match="matches no parameter"):
        train(make_cfg(max_steps=1, trainable=["decoder.*"]), make_job(), tmp_path / "bad", progress=False)


def test_init_from_starts_from_another_runs_weights(toy_config, tmp_path, capsys):
    from safetensors.torch import load_file

    runs = tmp_path / "runs"
    assert cli.main(["train", str(toy_config), f"runs_dir={runs}", "name=base", "seed=1", "--quiet"]) == 0
    assert cli.main(["train", str(toy_config), f"runs_dir={runs}", "name=tuned", "train.max_steps=0",
                     f"train.init_from={runs / 'base'}:last", "--quiet"]) == 0
    assert "starting from the weights in" in capsys.readouterr().out
    a = load_file(str(runs / "base" / "model" / "model.safetensors"))
    b = load_file(str(runs / "tuned" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert cli.main(["train", str(toy_config), f"runs_dir={runs}", "name=bad", f"train.init_from={tmp_path}"]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_load_run_checks_the_task_in_one_line(toy_config, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli.main(["train", str(toy_config), f"runs_dir={runs}", "--quiet"]) == 0
    with pytest.raises(UserError, match=r"toy is a 'toy-mlp' run; gencond forecast needs a 'tsdiff' run"):
        load_run(runs / "toy", task="tsdiff", needed_by="gencond forecast")
    assert cli.main(["forecast", str(runs / "toy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"gencond forecast: error: {runs / 'toy'} is a 'toy-mlp' run; gencond forecast needs a 'tsdiff' run"
    with pytest.raises(UserError, match="is not a run directory"):
        load_run(tmp_path)
    with pytest.raises(UserError, match="unknown weights"):
        load_run(runs / "toy", weights="middle")


def test_registering_a_name_twice_names_both_modules():
    register_toy_task()
    with pytest.raises(ValueError, match=r"task 'toy-mlp' is registered twice: by tests.core.toys and by tests.core.test_seams"):
        register_task("toy-mlp", RunConfig, lambda cfg: None)
    with pytest.raises(ValueError, match=r"command 'forecast' is registered twice: by timeseries.register and by"):
        register_command("forecast", "", lambda p: None, lambda a: None)
    with pytest.raises(ValueError, match="core verb"):
        register_command("sample", "", lambda p: None, lambda a: None)
