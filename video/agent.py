"""VideoAgent: a video plan improved by plan refinement until a feedback accepts it.

``VideoAgentPlanner(run_dir, max_rounds=4, feedback=...)`` plans like :class:`VideoPlanner` (round 0:
first frame and text, the previous-plan slot empty), then refines: each round is a sampling pass
conditioned on the first frame, the text and the previous round's plan, either from noise (the
paper) or from the previous plan noised to ``strength`` (SDEdit), until the feedback accepts. It
uses the core refine loop; every round's plan and verdict of the last ``plan`` call are in
:attr:`last_refinement`, and a per-episode summary in :meth:`episode_record`.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

import numpy as np

from gencond.arguments import typed
from gencond.errors import UserError
from gencond.refinement import Refinement, Verdict, refine
from gencond.sampling import SDEdit
from robotics.evaluate import describe

from .feedback import PlanSample
from .planner import VideoPlanner

REFINE_FROM = ("noise", "plan")


class VideoAgentPlanner(VideoPlanner):
    """A robotics Planner: VideoAgent's refined plans from a run trained with ``model.previous_plan``."""

    def __init__(self, run_dir: str | Path, max_rounds: int = 4, feedback=None, refine_from: str = "noise",
                 strength: float = 0.5, feedback_timeout: Optional[float] = 60.0, **planner):
        super().__init__(run_dir, **planner)
        if not self.model.config.previous_plan:
            raise UserError(f"{run_dir} is a planner without the previous-plan input; VideoAgent refines with a run "
                            "trained for plan refinement (configs/video/metaworld_small_videoagent.yaml)")
        if max_rounds < 0:
            raise UserError(f"max_rounds is {max_rounds}; use 0 (the base plan only) or more refinement rounds")
        if refine_from not in REFINE_FROM:
            raise UserError(f"refine_from '{refine_from}' is not one of: {', '.join(REFINE_FROM)}")
        if not 0.0 < strength <= 1.0:
            raise UserError(f"strength {strength} is not in (0, 1]")
        if feedback is not None and not callable(feedback):
            raise UserError("feedback must be callable as feedback(sample, round) (a gencond.refinement.Feedback of "
                            f"video.feedback.PlanSample), got {type(feedback).__name__}")
        self.max_rounds, self.feedback, self.refine_from = max_rounds, feedback, refine_from
        self.strength, self.feedback_timeout = strength, feedback_timeout
        self.last_refinement: Optional[Refinement] = None
        self._episode: list[dict] = []

    def __repr__(self) -> str:
        base = super().__repr__()
        return (f"VideoAgent{base[:-1]}, max_rounds={self.max_rounds}, refine_from={self.refine_from}, "
                f"strength={self.strength}, feedback={describe(self.feedback)})")

    def begin_episode(self, env_task: str, camera: str, seed: int) -> None:
        super().begin_episode(env_task, camera, seed)
        self._episode = []
        if hasattr(self.feedback, "begin_episode"):
            self.feedback.begin_episode(env_task, camera, seed)

    def refine_plan(self, frame: np.ndarray, instruction: str) -> Refinement:
        """Every round's predicted frames ((1, C, T, res, res) in [-1, 1]) and verdict; the feedback judges
        each round's plan as a :class:`video.feedback.PlanSample`."""
        def sample_round(previous, r):
            if previous is None:  # round 0: the base plan, first-frame-only mode
                return self.sample_plan(frame, instruction)
            if self.refine_from == "plan":
                return self.sample_plan(frame, instruction, previous, start=SDEdit(previous, self.strength))
            return self.sample_plan(frame, instruction, previous)

        def judge(predicted, r):
            return self.feedback(PlanSample(self.to_plan(frame, predicted), frame, instruction), r)

        return refine(sample_round, None if self.feedback is None else judge, self.max_rounds + 1,
                      timeout_s=self.feedback_timeout, judge_last=False)

    def plan(self, frame: np.ndarray, instruction: str, camera: str):
        started = time.perf_counter()
        result = self.refine_plan(frame, instruction)
        self.last_refinement = result
        self._episode.append({"rounds": len(result.rounds), "accepted": result.accepted,
                              "seconds": round(time.perf_counter() - started, 2),
                              "verdicts": [_verdict(v) for v in result.verdicts]})
        return self.to_plan(frame, result.final)

    def episode_record(self) -> dict:
        """What the plans of the current episode took: rounds, accepted round and verdicts per plan."""
        return {"plans": list(self._episode)}

    def close(self) -> None:
        if hasattr(self.feedback, "close"):
            self.feedback.close()


def _verdict(v: Verdict) -> dict:
    return {"accept": v.accept, "score": None if v.score is None else round(float(v.score), 4), "reason": v.reason}


def make_videoagent_planner(spec: str) -> VideoAgentPlanner:
    """``--planner videoagent:RUN_DIR[,rounds=4][,critic=RUN_DIR][,threshold=0.5][,from=noise|plan]
    [,strength=0.5][,feedback=none|critic|simulator]`` on the command line."""
    run, opts = parse_videoagent_options(spec)
    kind = opts.get("feedback", "critic" if "critic" in opts else "none")
    if kind == "critic":
        from .feedback import CriticFeedback

        if "critic" not in opts:
            raise UserError("--planner videoagent:RUN,feedback=critic needs critic=CRITIC_RUN_DIR")
        feedback = CriticFeedback(opts["critic"], opts.get("threshold", 0.5))
    elif kind == "simulator":
        from .feedback import SimulatorFeedback

        feedback = SimulatorFeedback()
    elif kind == "none":
        feedback = None
    else:
        raise UserError(f"--planner videoagent: feedback={kind}; use none, critic or simulator")
    return VideoAgentPlanner(run, max_rounds=opts.get("rounds", 4), feedback=feedback,
                             refine_from=opts.get("from", "noise"), strength=opts.get("strength", 0.5))


VIDEOAGENT_OPTIONS = {  # option -> how its value is read (gencond.arguments.typed)
    "rounds": typed(int, "an integer ≥ 0", lambda v: v >= 0),
    "critic": typed(str, "a video-critic run directory", bool),
    "threshold": typed(float, "a number in [0, 1]", lambda v: 0 <= v <= 1),
    "from": typed(str, "noise or plan", lambda v: v in ("noise", "plan")),
    "strength": typed(float, "a number in (0, 1]", lambda v: 0 < v <= 1),
    "feedback": typed(str, "none, critic or simulator", lambda v: v in ("none", "critic", "simulator")),
}
CRITIC_OPTIONS = ("critic", "threshold")  # read only by feedback=critic


def parse_videoagent_options(spec: str) -> tuple[str, dict]:
    """``RUN_DIR,key=value,...`` -> (RUN_DIR, typed options); a malformed, unknown, repeated or ignored
    option (critic/threshold with another feedback) is a one-line error."""
    run, *options = spec.split(",")
    opts = {}
    for o in options:
        key, eq, value = (part.strip() for part in o.partition("="))
        if not eq:
            raise UserError(f"--planner videoagent:{spec}: option '{o}' is not key=value")
        if key not in VIDEOAGENT_OPTIONS:
            raise UserError(f"--planner videoagent: unknown option {key}; options: {', '.join(sorted(VIDEOAGENT_OPTIONS))}")
        if key in opts:
            raise UserError(f"--planner videoagent: option {key} is given twice; give it once")
        try:
            opts[key] = VIDEOAGENT_OPTIONS[key](value)
        except argparse.ArgumentTypeError as e:
            raise UserError(f"--planner videoagent: {key}={value!r} {str(e).split(', got ')[0]}") from None
    ignored = [k for k in CRITIC_OPTIONS if k in opts and opts.get("feedback", "critic") != "critic"]
    if ignored:
        raise UserError(f"--planner videoagent: {ignored[0]}= is read only by feedback=critic, "
                        f"not feedback={opts['feedback']}; drop it or use feedback=critic")
    if "threshold" in opts and "critic" not in opts:
        raise UserError("--planner videoagent: threshold= is read only with critic=CRITIC_RUN_DIR")
    return run, opts


def make_planner(run_dir: str | Path, rounds: int = 0, critic: Optional[str] = None, weights: str = "best"):
    """A :class:`VideoPlanner` for a planner run asked for no rounds and no critic, else a
    :class:`VideoAgentPlanner` (``critic``: a ``video-critic`` run as its feedback)."""
    from omegaconf import OmegaConf

    from gencond.config import load_config
    from gencond.runs import CONFIG

    cfg = load_config(Path(run_dir) / CONFIG) if (Path(run_dir) / CONFIG).is_file() else None
    if rounds == 0 and critic is None and not OmegaConf.select(cfg, "model.previous_plan", default=False):
        return VideoPlanner(run_dir, weights)  # (a missing or foreign run is VideoPlanner's one-line error)
    feedback = None
    if critic:
        from .feedback import CriticFeedback

        feedback = CriticFeedback(critic)
    return VideoAgentPlanner(run_dir, max_rounds=rounds, feedback=feedback, weights=weights)
