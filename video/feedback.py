"""Feedback on video plans: what stops (or steers) VideoAgent's plan refinement.

A feedback is the core's :class:`gencond.refinement.Feedback`, ``feedback(sample, round) -> Verdict | bool``,
whose sample is a :class:`PlanSample`: the plan (the observation first, then the predicted frames, uint8
RGB or an RGB-D plan), the observation (H, W, 3) uint8 and the instruction. One that also has
``begin_episode(env_task, camera, seed)`` is told which scene it judges. Three are here:

- :class:`SimulatorFeedback` executes the plan in a fresh copy of the scene and accepts on success
  (privileged information: an upper bound, never a headline result);
- :class:`CriticFeedback`, a learned critic (``video-critic`` run) trained on executed plans' outcomes;
- :class:`VisionLanguageFeedback`, an adapter for a vision-language model (a local one or a
  user-supplied API client; GPT-4o in the paper), never called in tests or benchmarks here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from gencond.errors import UserError
from gencond.refinement import Verdict


@dataclass(frozen=True)
class PlanSample:
    """What a feedback judges: a plan (uint8 (T+1, H, W, 3), the observation first, or an RGB-D plan), the
    observation it starts from (H, W, 3) uint8 and the instruction it is for."""

    plan: Any
    first_frame: np.ndarray
    instruction: str


class _FixedPlan:
    """A planner that returns one given plan (the simulator feedback executes it without replanning)."""

    def __init__(self, plan):
        self._plan = plan

    def plan(self, frame, instruction, camera):
        return self._plan


class SimulatorFeedback:
    """Accepts a plan when executing it from the episode's first state succeeds (no replanning).

    Privileged: it runs the real scene. Plans from later states (replans) are rejected with that reason:
    the simulator is reset to the episode's start, not to the middle of an execution.
    """

    privileged = True

    def __init__(self, extractor: str = "avdc", resolution: int = 128, max_steps: Optional[int] = None):
        from robotics.register import make_follower_factory

        self.make_follower = make_follower_factory(extractor, None)
        self.resolution, self.max_steps = resolution, max_steps
        self.episode: Optional[tuple[str, str, int]] = None
        self.env = None
        self.start_frame: Optional[np.ndarray] = None

    def __repr__(self) -> str:
        return f"SimulatorFeedback(resolution={self.resolution}, max_steps={self.max_steps})"

    def begin_episode(self, env_task: str, camera: str, seed: int) -> None:
        from robotics.envs import TaskEnv

        if self.env is None or (self.env.env_task, self.env.camera) != (env_task, camera):
            self.close()
            self.env = TaskEnv(env_task, camera, self.resolution)
        self.episode = (env_task, camera, seed)
        self.env.reset(seed)
        self.start_frame = self.env.render().rgb

    def __call__(self, sample: PlanSample, round: int = 0) -> Verdict:
        from robotics.envs import MAX_EPISODE_STEPS
        from robotics.execution import run_episode

        if self.episode is None:
            raise RuntimeError("SimulatorFeedback needs begin_episode(env_task, camera, seed) first")
        first = sample.first_frame
        if first.shape != self.start_frame.shape or not np.array_equal(first, self.start_frame):
            return Verdict(False, reason="simulator feedback judges plans from the episode's first state only")
        result = run_episode(self.env, _FixedPlan(sample.plan), self.make_follower(), self.episode[2],
                             max_steps=self.max_steps or MAX_EPISODE_STEPS, max_replans=0)
        return Verdict(result.success, float(result.success),
                       f"executed: {'success' if result.success else 'failure'} in {result.steps} steps"
                       + (f" ({result.error})" if result.error else ""))

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


class CriticFeedback:
    """A trained ``video-critic`` run: accepts when its success probability is at least ``threshold``."""

    def __init__(self, run_dir: str | Path, threshold: float = 0.5, weights: str = "best"):
        from .critic import load_critic

        if not 0.0 <= threshold <= 1.0:
            raise UserError(f"critic threshold {threshold} is not a probability in [0, 1]")
        self.run_dir, self.threshold = Path(run_dir), threshold
        self.critic = load_critic(run_dir, weights)

    def __repr__(self) -> str:
        return f"CriticFeedback({self.run_dir.resolve()}, threshold={self.threshold}, sha256={self.critic.fingerprint})"

    def __call__(self, sample: PlanSample, round: int = 0) -> Verdict:
        p = self.critic.success_probability(sample.plan, sample.instruction)
        return Verdict(p >= self.threshold, p, f"critic: success probability {p:.2f}")


VLM_PROMPT = ("The first image is a robot's observation; the next {n} images are a video plan for the "
              "task \"{instruction}\". Does the plan complete the task realistically and consistently? Reject even "
              "if there are the slightest errors. Answer 'Accept' or 'Reject', then one sentence of critique.")


class VisionLanguageFeedback:
    """Asks a vision-language model to accept or reject a plan, as VideoAgent does with GPT-4o.

    ``ask(images, prompt) -> str`` is the model: a local one or a user's API client, given the
    observation then the plan frames (uint8 RGB). The answer must begin with Accept or Reject; the rest is
    the critique, kept as the verdict's reason. ``prompt`` may name ``{n}`` (plan frames) and ``{instruction}``.
    """

    def __init__(self, ask: Callable[[Sequence[np.ndarray], str], str], prompt: str = VLM_PROMPT):
        if not callable(ask):
            raise UserError("VisionLanguageFeedback needs ask(images, prompt) -> str, a callable")
        self.ask, self.prompt = ask, prompt

    def __call__(self, sample: PlanSample, round: int = 0) -> Verdict:
        from robotics.planners import plan_rgb

        frames = list(plan_rgb(sample.plan))[1:]
        prompt = self.prompt.format(n=len(frames), instruction=sample.instruction)
        answer = str(self.ask([sample.first_frame, *frames], prompt)).strip()
        m = re.match(r"\W*(accept|reject)\b\W*(.*)", answer, flags=re.IGNORECASE | re.DOTALL)
        if m is None:
            return Verdict(False, reason=f"unreadable answer (no Accept/Reject): {answer[:200]!r}")
        return Verdict(m.group(1).lower() == "accept", reason=m.group(2).strip() or m.group(1))
