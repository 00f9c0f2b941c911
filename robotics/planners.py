"""Video planners: (observation frame, task text, camera) -> plan frames.

A plan is a uint8 array (T+1, H, W, 3): the observation itself followed by T predicted frames. The video
model implements the same :class:`Planner` protocol. ``begin_episode`` is an optional hook the evaluator
calls at the start of each episode; planners that do not need it simply do not define it.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from gencond.errors import UserError

from robotics.envs import TaskEnv, task_text


@runtime_checkable
class Planner(Protocol):
    def plan(self, frame: np.ndarray, task: str, camera: str) -> np.ndarray:
        """Plan frames (T+1, H, W, 3) uint8 starting at ``frame`` for the instruction ``task``."""
        ...


class PlanError(UserError):
    """A planner returned something that is not a valid plan (wrong type, shape or dtype)."""


def validate_plan(plan) -> np.ndarray:
    """Return ``plan`` as a checked array, or raise a one-line error saying what is wrong."""
    if not isinstance(plan, np.ndarray):
        raise PlanError(f"a plan must be a numpy array of shape (T+1, H, W, 3), got {type(plan).__name__}")
    if plan.ndim != 4 or plan.shape[-1] != 3:
        raise PlanError(f"a plan must have shape (T+1, H, W, 3) (first frame + T future frames), "
                         f"got {plan.shape}")
    if plan.shape[0] < 2:
        raise PlanError(f"a plan needs the first frame and at least one future frame, got {plan.shape[0]} frame")
    if plan.dtype != np.uint8:
        raise PlanError(f"plan frames must be uint8 RGB in [0, 255], got dtype {plan.dtype}; "
                        "convert with (x * 255).clip(0, 255).astype(np.uint8)")
    if min(plan.shape[1:3]) < 8:
        raise PlanError(f"plan frames of {plan.shape[1]}x{plan.shape[2]} pixels are too small (need >= 8)")
    return plan


def subsample(frames: np.ndarray, count: int) -> np.ndarray:
    """``count`` frames evenly spaced from first to last (the last one repeated if there are too few)."""
    idx = np.round(np.linspace(0, len(frames) - 1, count)).astype(int)
    return frames[idx]


class RepeatFirstFramePlanner:
    """The floor: a plan in which nothing moves."""

    def __init__(self, num_frames: int = 8):
        self.num_frames = num_frames

    def __repr__(self) -> str:  # part of an evaluation's identity (see robotics.evaluate.describe)
        return f"RepeatFirstFramePlanner(num_frames={self.num_frames})"

    def plan(self, frame: np.ndarray, task: str, camera: str) -> np.ndarray:
        return np.repeat(np.asarray(frame, dtype=np.uint8)[None], self.num_frames, axis=0)


class OraclePlanner:
    """The ceiling: the expert's own future frames for the same task, camera and seed.

    At ``begin_episode`` the expert is rolled out from the episode's scene and its frames are kept.
    A plan starts at the expert frame closest (in pixels) to the observation, so a replan from a later
    state continues the expert's video from where the scene looks most alike.
    """

    def __init__(self, num_frames: int = 8, resolution: int | tuple[int, int] = 128):
        self.num_frames = num_frames
        self.resolution = resolution
        self._key = None
        self._frames: np.ndarray | None = None
        self._env: TaskEnv | None = None

    def __repr__(self) -> str:
        return f"OraclePlanner(num_frames={self.num_frames}, resolution={self.resolution})"

    def begin_episode(self, task: str, camera: str, seed: int) -> None:
        from robotics.experts import run_expert

        if self._key == (task, camera, seed):
            return
        if self._env is None or (self._env.task, self._env.camera) != (task, camera):
            self.close()
            self._env = TaskEnv(task, camera, self.resolution)
        self._frames = run_expert(self._env, seed).frames
        self._key = (task, camera, seed)

    def plan(self, frame: np.ndarray, task: str, camera: str) -> np.ndarray:
        if self._frames is None or camera != self._key[1] or \
                task not in (self._key[0], task_text(self._key[0])):
            raise RuntimeError("OraclePlanner.plan called before begin_episode(task, camera, seed) "
                               "for this task and camera")
        frames = self._frames
        if frames.shape[1:3] != frame.shape[:2]:
            raise ValueError(f"observation is {frame.shape[:2]} but the oracle renders {frames.shape[1:3]}")
        dist = np.abs(frames.astype(np.int16) - frame.astype(np.int16)).mean(axis=(1, 2, 3))
        start = int(np.argmin(dist))
        return subsample(frames[start:], self.num_frames)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
