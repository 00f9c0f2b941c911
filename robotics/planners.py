"""Video planners: (observation frame, instruction, camera) -> plan frames.

A plan is a uint8 array (T+1, H, W, 3): the observation itself followed by T predicted frames, or an
:class:`RgbdPlan` that also carries each frame's metric depth (T+1, H, W) (a video model predicting a
depth channel). The video model implements the same :class:`Planner` protocol. ``begin_episode`` is an
optional hook the evaluator calls at the start of each episode; planners that do not need it simply do
not define it.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, Union, runtime_checkable

import numpy as np

from gencond.errors import UserError

from robotics.envs import TaskEnv, instruction_of
from robotics.frames import resize_frames


@runtime_checkable
class Planner(Protocol):
    def plan(self, frame: np.ndarray, instruction: str, camera: str) -> "Plan":
        """Plan frames (T+1, H, W, 3) uint8 starting at ``frame`` for ``instruction`` (or an
        :class:`RgbdPlan` of them with their depth)."""
        ...


class PlanError(UserError):
    """A planner returned something that is not a valid plan (wrong type, shape or dtype)."""


@dataclass
class RgbdPlan:
    """An RGB-D plan: frames (T+1, H, W, 3) uint8 and their metric depth (T+1, H, W) float32 metres
    (depth along the camera's optical axis, as :meth:`robotics.envs.TaskEnv.render` gives it)."""

    rgb: np.ndarray
    depth: np.ndarray

    def __len__(self) -> int:
        return len(self.rgb)


Plan = Union[np.ndarray, RgbdPlan]


@dataclass(frozen=True)
class PlannerPlugin:
    """A family of planners named ``PREFIX:ARG`` on the command line: ``make(ARG)`` returns one."""

    prefix: str
    make: Callable[[str], Planner]
    form: str  # how --planner names one, e.g. "video:RUN_DIR"
    help: str  # what it is, e.g. "a trained video planner"
    argument: str  # what ARG is, for the error when it is missing, e.g. "a run folder"
    module: str = ""


PLANNER_PLUGINS: dict[str, PlannerPlugin] = {}
"""Registered ``PREFIX:ARG`` planners (the video domain registers ``video`` and ``videoagent``)."""


def register_planner(prefix: str, make: Callable[[str], Planner], form: str, help: str, argument: str) -> None:
    """Let ``gencond evaluate-planner --planner PREFIX:ARG`` plan with ``make(ARG)``; a domain calls this
    from its registration module (the video domain's ``video/register.py``)."""
    module = sys._getframe(1).f_globals.get("__name__", "?")
    existing = PLANNER_PLUGINS.get(prefix)
    if existing is not None and existing.module != module:
        raise ValueError(f"planner prefix '{prefix}' is registered twice: by {existing.module} and by {module}")
    PLANNER_PLUGINS[prefix] = PlannerPlugin(prefix, make, form, help, argument, module)


def planner_plugins() -> dict[str, PlannerPlugin]:
    """Every registered ``PREFIX:ARG`` planner family, the installed domains loaded first."""
    from gencond.registry import load_domains

    load_domains()
    return PLANNER_PLUGINS


def is_planner_factory(obj) -> bool:
    """True for a class or a function that makes a planner, False for a planner itself."""
    return isinstance(obj, type) or (callable(obj) and not hasattr(obj, "plan"))


def plan_rgb(plan: Plan) -> np.ndarray:
    """The RGB frames of a plan of either form."""
    return plan.rgb if isinstance(plan, RgbdPlan) else plan


def plan_depth(plan: Plan) -> np.ndarray | None:
    """The depth of an RGB-D plan, None for an RGB plan."""
    return plan.depth if isinstance(plan, RgbdPlan) else None


def validate_plan(plan) -> Plan:
    """Return ``plan`` checked (an RGB array, or an :class:`RgbdPlan` with float32 depth), or raise a
    one-line error saying what is wrong."""
    if isinstance(plan, RgbdPlan):
        rgb = _validate_rgb(plan.rgb)
        depth = plan.depth
        if not isinstance(depth, np.ndarray):
            raise PlanError(f"an RgbdPlan's depth must be a numpy array of shape (T+1, H, W), "
                            f"got {type(depth).__name__}")
        if depth.shape != rgb.shape[:3]:
            raise PlanError(f"an RgbdPlan's depth must have shape {rgb.shape[:3]} (one (H, W) map per RGB "
                            f"frame), got {depth.shape}")
        if not np.issubdtype(depth.dtype, np.floating):
            raise PlanError(f"an RgbdPlan's depth must be floating-point metres, got dtype {depth.dtype}")
        depth = depth.astype(np.float32, copy=False)
        finite = np.isfinite(depth)
        if not finite.all():
            frame = int(np.argwhere(~finite)[0, 0])
            raise PlanError(f"an RgbdPlan's depth must be finite: {int((~finite).sum())} NaN or infinite "
                            f"values (first in frame {frame})")
        if depth.min() <= 0:
            frame = int(np.argwhere(depth <= 0)[0, 0])
            raise PlanError(f"an RgbdPlan's depth must be positive metres: {int((depth <= 0).sum())} values "
                            f"<= 0 (min {float(depth.min()):.3g}, first in frame {frame})")
        return RgbdPlan(rgb, depth)
    return _validate_rgb(plan)


def _validate_rgb(plan) -> np.ndarray:
    if not isinstance(plan, np.ndarray):
        raise PlanError(f"a plan must be a numpy array of shape (T+1, H, W, 3) or an RgbdPlan, "
                        f"got {type(plan).__name__}")
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


def subsample_indices(length: int, count: int) -> np.ndarray:
    """``count`` indices evenly spaced from 0 to ``length - 1`` (the last one repeated if too few)."""
    return np.round(np.linspace(0, length - 1, count)).astype(int)


def subsample(frames: np.ndarray, count: int) -> np.ndarray:
    """``count`` frames evenly spaced from first to last (the last one repeated if there are too few)."""
    return frames[subsample_indices(len(frames), count)]


class RepeatFirstFramePlanner:
    """The floor: a plan in which nothing moves."""

    def __init__(self, num_frames: int = 8):
        self.num_frames = num_frames

    def __repr__(self) -> str:  # part of an evaluation's identity (see robotics.evaluate.describe)
        return f"RepeatFirstFramePlanner(num_frames={self.num_frames})"

    def plan(self, frame: np.ndarray, instruction: str, camera: str) -> np.ndarray:
        return np.repeat(np.asarray(frame, dtype=np.uint8)[None], self.num_frames, axis=0)


class OraclePlanner:
    """The ceiling: the expert's own future frames for the same task, camera and seed.

    At ``begin_episode`` the expert is rolled out from the episode's scene and its frames are kept.
    A plan starts at the expert frame closest (in pixels) to the observation, so a replan from a later
    state continues the expert's video from where the scene looks most alike.

    ``depth``: plans are :class:`RgbdPlan` with the depth rendered with each expert frame.
    ``plan_resolution``: plans come at this square size (frames rendered at ``resolution``, the camera's,
    then shrunk by area averaging, depth too), as a video model trained at that size would deliver them;
    the evaluation enlarges them back to the camera view. None: at the camera's resolution.
    """

    def __init__(self, num_frames: int = 8, resolution: int | tuple[int, int] = 128, depth: bool = False,
                 plan_resolution: int | None = None):
        self.num_frames = num_frames
        self.resolution = resolution
        self.depth = depth
        self.plan_resolution = plan_resolution
        self._key = None
        self._frames: np.ndarray | None = None
        self._depths: np.ndarray | None = None
        self._env: TaskEnv | None = None

    def __repr__(self) -> str:
        extra = (", depth=True" if self.depth else "") + \
            (f", plan_resolution={self.plan_resolution}" if self.plan_resolution else "")
        return f"OraclePlanner(num_frames={self.num_frames}, resolution={self.resolution}{extra})"

    def begin_episode(self, env_task: str, camera: str, seed: int) -> None:
        from robotics.experts import run_expert

        if self._key == (env_task, camera, seed):
            return
        if self._env is None or (self._env.env_task, self._env.camera) != (env_task, camera):
            self.close()
            self._env = TaskEnv(env_task, camera, self.resolution)
        if self.depth:
            from robotics.collect import run_expert_with_depth

            demo = run_expert_with_depth(self._env, seed)
            self._frames, self._depths = demo.frames, demo.depth
        else:
            self._frames, self._depths = run_expert(self._env, seed).frames, None
        self._key = (env_task, camera, seed)

    def plan(self, frame: np.ndarray, instruction: str, camera: str) -> Plan:
        if self._frames is None or camera != self._key[1] or \
                instruction not in (self._key[0], instruction_of(self._key[0])):
            raise RuntimeError("OraclePlanner.plan called before begin_episode(env_task, camera, seed) "
                               "for this task and camera")
        frames = self._frames
        if frames.shape[1:3] != frame.shape[:2]:
            raise ValueError(f"observation is {frame.shape[:2]} but the oracle renders {frames.shape[1:3]}")
        dist = np.abs(frames.astype(np.int16) - frame.astype(np.int16)).mean(axis=(1, 2, 3))
        start = int(np.argmin(dist))
        idx = start + subsample_indices(len(frames) - start, self.num_frames)
        rgb = frames[idx]
        depth = self._depths[idx] if self._depths is not None else None
        if self.plan_resolution:
            size = (self.plan_resolution, self.plan_resolution)
            rgb = resize_frames(rgb, size)
            depth = resize_frames(depth, size, depth=True) if depth is not None else None
        return RgbdPlan(rgb, depth) if depth is not None else rgb

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
