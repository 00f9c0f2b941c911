"""Closed-loop execution of video plans: one episode of plan -> actions with stuck-triggered replanning.

An action extractor (AVDC-style or inverse dynamics) implements :class:`PlanFollower`: ``start`` is given
the current view and a fresh plan, ``act`` returns the next action. :func:`run_episode` runs the protocol:
at most 500 steps, success = ``info["success"]`` at any step, and a replan (at most ``max_replans``)
whenever the hand moved less than ``stuck_distance`` over each of the last ``stuck_steps`` steps
(steps in which the follower says it is ``holding_still`` on purpose do not count).
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from robotics.envs import MAX_EPISODE_STEPS, CameraFrame, TaskEnv, instruction_of
from robotics.frames import resize_frames
from robotics.planners import Plan, PlanError, RgbdPlan, plan_rgb, validate_plan

if TYPE_CHECKING:
    from robotics.experts import Demonstration


class PlanFollower(Protocol):
    #: what ``start`` needs rendered: RGB always; depth and segmentation when these are True
    needs_depth: bool
    needs_rgb_every_step: bool
    #: optional (default False): ``start`` is given RGB-D plans as :class:`~robotics.planners.RgbdPlan`;
    #: followers without it get the plan's RGB frames only
    # uses_plan_depth: bool

    def start(self, env: TaskEnv, view: CameraFrame, plan: np.ndarray) -> None: ...

    def act(self, env: TaskEnv, state: np.ndarray, rgb: np.ndarray | None) -> np.ndarray: ...


@dataclass
class EpisodeResult:
    env_task: str
    camera: str
    seed: int
    success: bool
    steps: int
    replans: int
    seconds: float
    error: str | None = None
    frames: list = field(default_factory=list, repr=False)   # executed RGB frames (when recorded)
    plans: list = field(default_factory=list, repr=False)    # (step, plan) pairs (when recorded)
    actions: list = field(default_factory=list, repr=False)  # executed actions (when recorded)
    states: list = field(default_factory=list, repr=False)   # states, one more than actions (when recorded)
    first_view: CameraFrame | None = field(default=None, repr=False)  # the first RGB-D view (when recorded)

    def demonstration(self, object_geom_ids) -> Demonstration:
        """A recorded episode as a demonstration (the ``gencond collect`` format): e.g. a successful
        execution that becomes training data."""
        from robotics.experts import Demonstration

        if self.first_view is None:
            raise ValueError("the episode was not recorded (run_episode(record=True))")
        v = self.first_view
        return Demonstration(env_task=self.env_task, camera=self.camera, seed=self.seed, frames=np.stack(self.frames),
                             actions=np.asarray(self.actions, np.float32).reshape(-1, 4),
                             states=np.stack(self.states).astype(np.float32), success=self.success,
                             success_step=len(self.actions) if self.success else -1, intrinsics=v.intrinsics,
                             world_to_camera=v.world_to_camera, first_depth=v.depth,
                             first_segmentation=v.segmentation, object_geom_ids=np.asarray(object_geom_ids))

    def summary(self) -> dict:
        return {"task": self.env_task, "camera": self.camera, "seed": self.seed, "success": self.success,
                "steps": self.steps, "replans": self.replans, "seconds": round(self.seconds, 2),
                "error": self.error}


def fit_plan_to_view(plan: Plan, view_shape: tuple[int, int]) -> Plan:
    """Resize plan frames to the camera resolution (plans may come at any resolution); an
    :class:`RgbdPlan`'s depth follows (see :func:`robotics.frames.resize_frames`)."""
    if isinstance(plan, RgbdPlan):
        return RgbdPlan(resize_frames(plan.rgb, view_shape), resize_frames(plan.depth, view_shape, depth=True))
    return resize_frames(plan, view_shape)


def run_episode(env: TaskEnv, planner, follower: PlanFollower, seed: int,
                max_steps: int = MAX_EPISODE_STEPS, max_replans: int = 5, stuck_steps: int = 15,
                stuck_distance: float = 1e-3, record: bool = False) -> EpisodeResult:
    """Run one evaluation episode; a simulator or extractor exception ends it as a recorded failure."""
    started = time.perf_counter()
    result = EpisodeResult(env.env_task, env.camera, seed, False, 0, 0, 0.0)
    try:
        _execute(env, planner, follower, seed, result, max_steps, max_replans, _Stuck(stuck_steps, stuck_distance),
                 record)
    except PlanError:
        raise  # a broken planner is the caller's bug: stop the evaluation with its message
    except Exception as exc:  # a failure of this episode, not of the evaluation
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        result.error = f"{type(exc).__name__}: {exc} ({frame.filename.split('/')[-1]}:{frame.lineno})"
        result.success = False
    result.steps = env.steps if env.seed == seed else 0
    result.seconds = time.perf_counter() - started
    return result


class _Stuck:
    """Whether the hand moved less than ``distance`` over each of the last ``steps`` steps (steps in which
    the follower holds still on purpose do not count)."""

    def __init__(self, steps: int, distance: float):
        self.steps, self.distance, self.positions = steps, distance, []

    def restart(self, hand: np.ndarray) -> None:
        self.positions = [hand]

    def __call__(self, hand: np.ndarray, holding_still: bool) -> bool:
        if holding_still:  # e.g. closing the gripper: not stuck
            self.positions = []
        self.positions = [*self.positions, hand][-(self.steps + 1):]
        moves = np.linalg.norm(np.diff(np.asarray(self.positions), axis=0), axis=1)
        return len(moves) == self.steps and moves.max() < self.distance


def _execute(env: TaskEnv, planner, follower: PlanFollower, seed: int, result: EpisodeResult, max_steps: int,
             max_replans: int, stuck: _Stuck, record: bool) -> None:
    """The episode's steps into ``result``: a plan from the first view, then the follower's actions until
    success or ``max_steps``, replanning from the current view whenever the hand is stuck."""
    if hasattr(planner, "begin_episode"):
        planner.begin_episode(env.env_task, env.camera, seed)
    state = env.reset(seed)
    view = env.render(depth=True, segmentation=True)
    if record:
        result.frames.append(view.rgb)
        result.states.append(state)
        result.first_view = view
    _start_plan(env, planner, follower, view, result, record)
    rgb = view.rgb
    stuck.restart(env.hand_position)
    while env.steps < max_steps:
        action = follower.act(env, state, rgb)
        step = env.step(action)
        state = step.state
        rgb = env.render().rgb if record or follower.needs_rgb_every_step else None
        if record:
            result.frames.append(rgb)
            result.actions.append(np.asarray(action, np.float32))
            result.states.append(state)
        if step.success:
            result.success = True
            break
        if stuck(env.hand_position, getattr(follower, "holding_still", False)) and result.replans < max_replans:
            result.replans += 1
            view = env.render(depth=True, segmentation=True)
            rgb = view.rgb
            _start_plan(env, planner, follower, view, result, record)
            stuck.restart(env.hand_position)


def _start_plan(env: TaskEnv, planner, follower: PlanFollower, view: CameraFrame, result: EpisodeResult,
                record: bool) -> None:
    """A checked plan from ``view``, fitted to it, handed to the follower (RGB only unless it reads depth)."""
    plan = validate_plan(planner.plan(view.rgb, instruction_of(env.env_task), env.camera))
    plan = fit_plan_to_view(plan, view.rgb.shape[:2])
    if record:  # videos show the RGB
        result.plans.append((env.steps, plan_rgb(plan)))
    if not getattr(follower, "uses_plan_depth", False):  # e.g. inverse dynamics: RGB only
        plan = plan_rgb(plan)
    follower.start(env, view, plan)
