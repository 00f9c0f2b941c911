"""Learned inverse dynamics: (current frame, goal frame) -> the next ``chunk`` actions.

Trained on expert demonstrations (see :mod:`robotics.collect`): a training pair is frame t and frame
t + gap (gap drawn from [gap_min, gap_max]); the target is actions t .. t+chunk-1 (the last action
repeated past the end). At execution time (:class:`IdmFollower`) the goal is the next plan frame; the
follower moves to the following plan frame once the view looks at least as much like it as like the
current goal, or after ``max_steps_per_frame`` steps.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from gencond.errors import UserError
from gencond.runs import CONFIG, run_task
from gencond.training import TrainingJob

from robotics.idm_config import IdmConfig  # noqa: F401  (the schema of the task built here)


class InverseDynamicsModel(ModelMixin, ConfigMixin):
    """A small CNN on the channel-stacked (current, goal) frames; outputs ``chunk`` actions in [-1, 1]."""

    @register_to_config
    def __init__(self, image_size: int = 64, chunk: int = 4, action_dim: int = 4, width: int = 32):
        super().__init__()
        layers, channels = [], 6
        for mult in (1, 2, 4, 4):
            layers += [nn.Conv2d(channels, width * mult, 4, stride=2, padding=1), nn.GroupNorm(8, width * mult),
                       nn.SiLU()]
            channels = width * mult
        self.encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(channels * 16, 256), nn.SiLU(), nn.Linear(256, chunk * action_dim))

    def forward(self, current: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] frames (B, 3, H, W) -> actions (B, chunk, action_dim)."""
        x = torch.cat([current, goal], dim=1).float()
        if x.max() > 1.5:
            x = x / 255.0
        out = self.head(self.encoder(x * 2 - 1))
        return torch.tanh(out).view(len(x), self.config.chunk, self.config.action_dim)


def to_model_frames(frames: np.ndarray, image_size: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, S, S) uint8 tensor at the model's resolution."""
    resized = np.stack([cv2.resize(f, (image_size, image_size), interpolation=cv2.INTER_AREA) for f in frames])
    return torch.from_numpy(resized).permute(0, 3, 1, 2).contiguous()


class DemonstrationPairs:
    """All demonstrations in memory, sampled as (frame t, frame t+gap) -> action chunk batches."""

    def __init__(self, demos, image_size: int = 64, chunk: int = 4, gap_min: int = 2, gap_max: int = 16):
        if not demos:
            raise UserError("no successful demonstrations to train on; run `gencond collect` first")
        self.frames = [to_model_frames(d.frames, image_size) for d in demos]
        self.actions = [torch.from_numpy(np.clip(d.actions, -1, 1)) for d in demos]
        self.chunk, self.gap_min, self.gap_max = chunk, gap_min, gap_max

    def __len__(self) -> int:
        return sum(len(a) for a in self.actions)

    def batch(self, size: int, generator: torch.Generator) -> dict:
        episodes = torch.randint(len(self.frames), (size,), generator=generator).tolist()
        current, goal, target = [], [], []
        for e in episodes:
            steps = len(self.actions[e])
            t = int(torch.randint(steps, (1,), generator=generator))
            gap = int(torch.randint(self.gap_min, self.gap_max + 1, (1,), generator=generator))
            current.append(self.frames[e][t])
            goal.append(self.frames[e][min(t + gap, steps)])
            idx = torch.clamp(torch.arange(t, t + self.chunk), max=steps - 1)
            target.append(self.actions[e][idx])
        return {"current": torch.stack(current), "goal": torch.stack(goal), "actions": torch.stack(target)}


def idm_loss(model: nn.Module, batch: dict, generator=None) -> tuple[torch.Tensor, dict]:
    """Mean squared error of the predicted action chunk; also reports the xyz and gripper parts."""
    device = next(model.parameters()).device
    pred = model(batch["current"].to(device), batch["goal"].to(device))
    err = (pred - batch["actions"].to(device)) ** 2
    loss = err.mean()
    return loss, {"mse": loss.item(), "mse_xyz": err[..., :3].mean().item(), "mse_grip": err[..., 3].mean().item()}


def build(cfg) -> TrainingJob:
    """The training job of an :class:`IdmConfig`."""
    from robotics.collect import load_dataset

    d, m = cfg.data, cfg.model
    demos = load_dataset(d.root, env_tasks=d.tasks, cameras=d.cameras)
    val_seeds = set(d.val_seeds)
    train_demos = [x for x in demos if x.seed not in val_seeds]
    val_demos = [x for x in demos if x.seed in val_seeds]
    pairs = DemonstrationPairs(train_demos, m.image_size, m.chunk, d.gap_min, d.gap_max)
    model = InverseDynamicsModel(image_size=m.image_size, chunk=m.chunk, width=m.width)
    batch_size = cfg.train.batch_size
    validate = None
    if val_demos:
        val_pairs = DemonstrationPairs(val_demos, m.image_size, m.chunk, d.gap_min, d.gap_max)
        val_batches = [val_pairs.batch(256, torch.Generator().manual_seed(i)) for i in range(4)]

        @torch.no_grad()
        def validate(model):
            losses = [idm_loss(model, b)[0].item() for b in val_batches]
            return {"val_loss": float(np.mean(losses))}

    return TrainingJob(model=model, batch_fn=lambda step, gen: pairs.batch(batch_size, gen),
                       loss_fn=idm_loss, validate=validate)


def idm_folder(path: str | Path) -> Path:
    """The model folder of a ``robotics-idm`` run directory (its ``model/``) or a saved model folder;
    a one-line error for anything else (another task's run, another model class, no model)."""
    path = Path(path)
    if (path / CONFIG).is_file() and run_task(path) != "robotics-idm":
        raise UserError(f"{path} is a '{run_task(path)}' run; --idm needs a 'robotics-idm' run")
    if (path / "model" / "config.json").exists():
        path = path / "model"
    if not (path / "config.json").exists():
        raise UserError(f"no inverse-dynamics model at {path}; train one with "
                        "`gencond train configs/robotics/idm.yaml data.root=<demos>`")
    kind = json.loads((path / "config.json").read_text()).get("_class_name")
    if kind != InverseDynamicsModel.__name__:
        raise UserError(f"{path} holds a '{kind}' model; --idm needs an InverseDynamicsModel (a 'robotics-idm' run)")
    return path


def load_idm(path: str | Path) -> InverseDynamicsModel:
    """An inverse-dynamics model from a run directory or an export (its ``model/``, through the run
    loader) or a saved model folder."""
    folder = idm_folder(path)
    if (Path(path) / CONFIG).is_file():  # a run or an export: through the one run loader
        from gencond.runs import load_run

        return load_run(path, "last", task="robotics-idm", needed_by="--idm")[1]
    return InverseDynamicsModel.from_pretrained(folder).eval()


def describe_idm(path: str | Path) -> str:
    """The model folder and a digest of its files: the model's part of an evaluation's identity (a model
    trained further in the same run directory is another model)."""
    folder = idm_folder(path).resolve()
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()))
    return f"{folder} (sha256 {digest.hexdigest()[:12]})"


class IdmFollower:
    """Executes a plan with an inverse-dynamics model, one action chunk at a time."""

    needs_depth = False
    needs_rgb_every_step = True

    def __init__(self, model: InverseDynamicsModel, max_steps_per_frame: int = 20, actions_per_query: int = 2):
        self.model = model.eval()
        self.max_steps_per_frame = max_steps_per_frame
        self.actions_per_query = min(actions_per_query, model.config.chunk)
        self._plan: torch.Tensor | None = None
        self._goal = 1
        self._steps_on_goal = 0
        self._queue: list[np.ndarray] = []

    def start(self, env, view, plan: np.ndarray) -> None:
        self._plan = to_model_frames(plan, self.model.config.image_size)
        self._goal, self._steps_on_goal, self._queue = 1, 0, []

    def _advance_goal(self, current: torch.Tensor) -> None:
        last = len(self._plan) - 1
        while self._goal < last:
            here = (current.float() - self._plan[self._goal].float()).abs().mean()
            nxt = (current.float() - self._plan[self._goal + 1].float()).abs().mean()
            if nxt <= here or self._steps_on_goal >= self.max_steps_per_frame:
                self._goal += 1
                self._steps_on_goal = 0
            else:
                break

    @torch.no_grad()
    def act(self, env, state: np.ndarray, rgb: np.ndarray) -> np.ndarray:
        if not self._queue:
            current = to_model_frames(rgb[None], self.model.config.image_size)[0]
            self._advance_goal(current)
            chunk = self.model(current[None], self._plan[self._goal][None])[0].numpy()
            self._queue = list(chunk[: self.actions_per_query])
        self._steps_on_goal += 1
        return self._queue.pop(0).astype(np.float32)
