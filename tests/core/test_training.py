import json
import signal

import pytest
import torch
from omegaconf import OmegaConf

from gencond.config import DiffusionConfig, RunConfig
from gencond.diffusion import DiffusionProcess
from gencond.checkpoints import latest_checkpoint
from gencond.training import TrainingError, TrainingJob, train

from .toys import TinyMLP


def make_cfg(**train):
    cfg = OmegaConf.structured(RunConfig(task="toy", name="toy"))
    cfg.train = OmegaConf.merge(cfg.train, dict(batch_size=16, lr=1e-2, log_every=2, checkpoint_every=5,
                                                lr_schedule="cosine", warmup_steps=2, ema_decay=0.9, grad_clip=1.0, **train))
    return cfg


def make_job(validate=None, fail_at=None, interrupt_at=None):
    torch.manual_seed(0)
    process = DiffusionProcess(DiffusionConfig(num_train_timesteps=50))
    centers = torch.randn(4, 8)

    def batch_fn(step, g):
        if step == interrupt_at:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C during this step
        return centers[torch.randint(0, 4, (16,), generator=g)] + 0.1 * torch.randn(16, 8, generator=g)

    def loss_fn(model, batch, g):
        loss, metrics = process.training_loss(model, batch, generator=g)
        if fail_at is not None and fail_at[0] == fail_at[1]:
            loss = loss * float("nan")
        if fail_at is not None:
            fail_at[1] += 1
        return loss, metrics

    return TrainingJob(TinyMLP(8), batch_fn, loss_fn, validate)


def params(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_resume_after_ctrl_c_equals_uninterrupted_run(tmp_path):
    full = train(make_cfg(max_steps=20), make_job(), tmp_path / "full", progress=False)
    first = train(make_cfg(max_steps=20), make_job(interrupt_at=7), tmp_path / "split", progress=False)
    assert first.stopped == "interrupted" and first.step == 8  # the step in flight finishes, then it stops
    second = train(make_cfg(max_steps=20), make_job(), tmp_path / "split", progress=False)
    assert full.step == second.step == 20
    a, b = params(tmp_path / "full" / "model"), params(tmp_path / "split" / "model")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)  # bit-identical, EMA weights included
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2, 21, 2))


def test_checkpoints_rotate_and_tensorboard_is_written(tmp_path):
    train(make_cfg(max_steps=20, keep_checkpoints=2), make_job(), tmp_path, progress=False)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step_00000015", "step_00000020"]
    assert latest_checkpoint(tmp_path).name == "step_00000020"
    assert any((tmp_path / "tensorboard").rglob("events.out.tfevents*"))


def test_validation_keeps_the_best(tmp_path):
    scores = iter([3.0, 1.0, 2.0, 5.0])
    result = train(make_cfg(max_steps=20, validate_every=5), make_job(lambda m: {"val_loss": next(scores)}), tmp_path, progress=False)
    assert result.best == 1.0
    assert (tmp_path / "best" / "model.safetensors").exists()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]
    assert [r["best_val_loss"] for r in rows] == [3.0, 1.0, 1.0, 1.0]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match=r"loss is nan at step 7.*step_00000005"):
        train(make_cfg(max_steps=20), make_job(fail_at=[7, 0]), tmp_path, progress=False)
    assert latest_checkpoint(tmp_path).name == "step_00000005"


def test_time_budget_stops_training(tmp_path):
    result = train(make_cfg(max_steps=1000, max_minutes=0.0), make_job(), tmp_path, progress=False)
    assert result.stopped == "max_minutes" and result.step == 0


GROUPS = [{"pattern": "net.2.*", "lr": 1e-1, "weight_decay": 0.5}]


def test_param_groups_follow_the_schedule_and_resume_exactly(tmp_path):
    full = train(make_cfg(max_steps=20, param_groups=GROUPS), make_job(), tmp_path / "full", progress=False)
    first = train(make_cfg(max_steps=20, param_groups=GROUPS), make_job(interrupt_at=7), tmp_path / "split", progress=False)
    assert first.stopped == "interrupted"
    second = train(make_cfg(max_steps=20, param_groups=GROUPS), make_job(), tmp_path / "split", progress=False)
    assert full.step == second.step == 20
    a, b = params(tmp_path / "full" / "model"), params(tmp_path / "split" / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert len({round(r["lr"], 12) for r in rows}) > 3  # warm-up then cosine: the schedule moves...
    for r in rows:  # ...and scales every group alike
        assert r["lr/net.2.*"] == pytest.approx(10 * r["lr/default"]) and r["lr/default"] == r["lr"]
    plain = train(make_cfg(max_steps=20), make_job(), tmp_path / "plain", progress=False)
    c = params(plain.run_dir / "model")
    assert not torch.equal(a["net.2.weight"], c["net.2.weight"])  # the group's own lr and decay were used


@pytest.mark.parametrize("groups, message", [
    ([{"pattern": "decoder.*", "lr": 1e-2}], r"train.param_groups: 'decoder.\*' matches no trainable parameter"),
    ([{"pattern": "net.2.*", "lr": 1e-2}, {"pattern": "*.bias", "lr": 1e-3}],
     r"'\*.bias' claims 'net.2.bias', which 'net.2.\*' already claims"),
])
def test_param_group_errors_name_the_pattern(tmp_path, groups, message):
    from gencond.errors import UserError

    with pytest.raises(UserError, match=message):
        train(make_cfg(max_steps=2, param_groups=groups), make_job(), tmp_path, progress=False)


def test_resuming_with_other_param_groups_is_refused(tmp_path):
    from gencond.errors import UserError

    train(make_cfg(max_steps=5), make_job(), tmp_path, progress=False)
    with pytest.raises(UserError, match=r"parameter groups of \[4\] parameters, this run's train.param_groups make \[2, 2\]"):
        train(make_cfg(max_steps=10, param_groups=GROUPS), make_job(), tmp_path, progress=False)
