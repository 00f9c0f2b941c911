"""Inverse-dynamics model: data pairs, training through the core trainer, save/load, execution."""
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from gencond.config import build_config
from gencond.errors import UserError
from gencond.training import train
from robotics.collect import collect
from robotics.envs import TaskEnv
from robotics.idm import DemonstrationPairs, IdmFollower, InverseDynamicsModel, build, load_idm
from robotics.idm_config import IdmConfig
from robotics.experts import run_expert


@pytest.fixture(scope="module")
def demos():
    env = TaskEnv("handle-press", "corner", 64)
    out = [run_expert(env, s) for s in (0, 1)]
    env.close()
    return out


def test_pairs_hold_frames_and_the_right_action_chunk(demos):
    pairs = DemonstrationPairs(demos, image_size=32, chunk=4, gap_min=2, gap_max=5)
    batch = pairs.batch(16, torch.Generator().manual_seed(0))
    assert batch["current"].shape == (16, 3, 32, 32) and batch["current"].dtype == torch.uint8
    assert batch["goal"].shape == (16, 3, 32, 32)
    assert batch["actions"].shape == (16, 4, 4)
    # a chunk is a run of consecutive expert actions of one episode
    acts = [torch.from_numpy(np.clip(d.actions, -1, 1)) for d in demos]
    for chunk in batch["actions"]:
        found = any(torch.allclose(chunk[0], a[t]) and torch.allclose(chunk[1], a[min(t + 1, len(a) - 1)])
                    for a in acts for t in range(len(a)))
        assert found


def test_model_outputs_bounded_action_chunks():
    model = InverseDynamicsModel(image_size=32, chunk=3, width=8)
    frames = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    out = model(frames, frames)
    assert out.shape == (5, 3, 4) and out.abs().max() <= 1


def test_training_with_the_core_trainer_lowers_the_loss_and_reloads(tmp_path):
    root = tmp_path / "demos"
    collect(root, ["handle-press"], ["corner"], [0, 1], resolution=64, progress=False)
    raw = OmegaConf.create({"task": "robotics-idm", "data": {"root": str(root)},
                            "model": {"image_size": 32, "width": 8},
                            "train": {"max_steps": 60, "batch_size": 32, "lr": 3e-3, "log_every": 10,
                                      "checkpoint_every": 1000, "threads": 1}})
    cfg = build_config(IdmConfig, raw, "test")
    job = build(cfg)
    run_dir = tmp_path / "run"
    train(cfg, job, run_dir, progress=False)
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.6 * losses[0]
    model = load_idm(run_dir)
    assert model.config.image_size == 32
    env = TaskEnv("handle-press", "corner", 64)
    env.reset(0)
    view = env.render()
    follower = IdmFollower(model)
    follower.start(env, view, np.repeat(view.rgb[None], 8, 0))
    action = follower.act(env, env.state, view.rgb)
    env.close()
    assert action.shape == (4,) and np.abs(action).max() <= 1


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no inverse-dynamics model at"):
        load_idm(tmp_path)
