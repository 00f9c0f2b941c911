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

import cv2
import numpy as np

from robotics.envs import MAX_EPISODE_STEPS, CameraFrame, TaskEnv, task_text
from robotics.planners import Plan, PlanError, RgbdPlan, plan_rgb, resize_frames, validate_plan

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
    task: str
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
        return Demonstration(task=self.task, camera=self.camera, seed=self.seed, frames=np.stack(self.frames),
                             actions=np.asarray(self.actions, np.float32).reshape(-1, 4),
                             states=np.stack(self.states).astype(np.float32), success=self.success,
                             success_step=len(self.actions) if self.success else -1, intrinsics=v.intrinsics,
                             world_to_camera=v.world_to_camera, first_depth=v.depth,
                             first_segmentation=v.segmentation, object_geom_ids=np.asarray(object_geom_ids))

    def summary(self) -> dict:
        return {"task": self.task, "camera": self.camera, "seed": self.seed, "success": self.success,
                "steps": self.steps, "replans": self.replans, "seconds": round(self.seconds, 2),
                "error": self.error}


def fit_plan_to_view(plan: Plan, view_shape: tuple[int, int]) -> Plan:
    """Resize plan frames to the camera resolution (plans may come at any resolution); an
    :class:`RgbdPlan`'s depth follows (see :func:`robotics.planners.resize_frames`)."""
    if isinstance(plan, RgbdPlan):
        return RgbdPlan(fit_plan_to_view(plan.rgb, view_shape), resize_frames(plan.depth, view_shape, depth=True))
    if plan.shape[1:3] == tuple(view_shape):
        return plan
    height, width = view_shape
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in plan])


def run_episode(env: TaskEnv, planner, follower: PlanFollower, seed: int,
                max_steps: int = MAX_EPISODE_STEPS, max_replans: int = 5, stuck_steps: int = 15,
                stuck_distance: float = 1e-3, record: bool = False) -> EpisodeResult:
    """Run one evaluation episode; a simulator or extractor exception ends it as a recorded failure."""
    started = time.perf_counter()
    result = EpisodeResult(env.task, env.camera, seed, False, 0, 0, 0.0)
    try:
        if hasattr(planner, "begin_episode"):
            planner.begin_episode(env.task, env.camera, seed)
        state = env.reset(seed)
        text = task_text(env.task)

        def new_plan(view: CameraFrame) -> None:
            plan = validate_plan(planner.plan(view.rgb, text, env.camera))
            plan = fit_plan_to_view(plan, view.rgb.shape[:2])
            if record:  # videos show the RGB
                result.plans.append((env.steps, plan_rgb(plan)))
            if not getattr(follower, "uses_plan_depth", False):  # e.g. inverse dynamics: RGB only
                plan = plan_rgb(plan)
            follower.start(env, view, plan)

        view = env.render(depth=True, segmentation=True)
        if record:
            result.frames.append(view.rgb)
            result.states.append(state)
            result.first_view = view
        new_plan(view)
        rgb = view.rgb
        last_positions = [env.hand_position]
        while env.steps < max_steps:
            action = follower.act(env, state, rgb)
            step = env.step(action)
            state = step.state
            want_rgb = record or follower.needs_rgb_every_step
            rgb = env.render().rgb if want_rgb else None
            if record:
                result.frames.append(rgb)
                result.actions.append(np.asarray(action, np.float32))
                result.states.append(state)
            if step.success:
                result.success = True
                break
            if getattr(follower, "holding_still", False):  # e.g. closing the gripper: not stuck
                last_positions = []
            last_positions.append(env.hand_position)
            last_positions = last_positions[-(stuck_steps + 1):]
            moves = np.linalg.norm(np.diff(np.asarray(last_positions), axis=0), axis=1)
            if len(moves) == stuck_steps and moves.max() < stuck_distance and result.replans < max_replans:
                result.replans += 1
                view = env.render(depth=True, segmentation=True)
                rgb = view.rgb
                new_plan(view)
                last_positions = [env.hand_position]
    except PlanError:
        raise  # a broken planner is the caller's bug: stop the evaluation with its message
    except Exception as exc:  # a failure of this episode, not of the evaluation
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        result.error = f"{type(exc).__name__}: {exc} ({frame.filename.split('/')[-1]}:{frame.lineno})"
        result.success = False
    result.steps = env.steps if env.seed == seed else 0
    result.seconds = time.perf_counter() - started
    return result
