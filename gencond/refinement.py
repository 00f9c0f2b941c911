"""Refinement rounds: each round's sample conditions the next, until a feedback accepts one.

``refine(sample_fn, feedback, max_rounds)`` calls ``sample_fn(previous, round)`` (``previous`` is
None in round 0), asks ``feedback(sample, round)`` for a verdict, and stops at the first accepted
sample. VideoAgent's plan refinement (``video.plan_refinement``) refines video plans this way; any
sampler whose condition can hold an earlier sample can be refined with it.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Union

from .errors import UserError


@dataclass
class Verdict:
    """A feedback's judgement of one sample: accept or not, an optional score and a reason."""

    accept: bool
    score: Optional[float] = None
    reason: str = ""


class Feedback(Protocol):
    def __call__(self, sample: Any, round: int) -> Union[Verdict, bool]: ...


@dataclass
class Refinement:
    """Every round's sample and verdict; ``accepted`` is the round that was accepted, if any."""

    rounds: list = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    accepted: Optional[int] = None

    @property
    def final(self) -> Any:
        """The accepted sample, else the last round's."""
        return self.rounds[self.accepted if self.accepted is not None else -1]


def judge(feedback: Optional[Feedback], sample: Any, round: int, timeout_s: Optional[float] = None) -> Verdict:
    """The feedback's verdict; a feedback that raises, or takes longer than ``timeout_s``, rejects
    with the reason recorded (a timed-out call is left to finish in its thread, its verdict unused)."""
    if feedback is None:
        return Verdict(False, reason="no feedback")
    try:
        if timeout_s is None:
            verdict = feedback(sample, round)
        else:
            pool = ThreadPoolExecutor(1)
            try:
                verdict = pool.submit(feedback, sample, round).result(timeout=timeout_s)
            except FutureTimeout:
                return Verdict(False, reason=f"feedback timed out after {timeout_s:g} s")
            finally:
                pool.shutdown(wait=False)
    except Exception as e:  # a broken critic must not end the refinement
        return Verdict(False, reason=f"feedback failed: {type(e).__name__}: {e}")
    if isinstance(verdict, Verdict):
        return verdict
    if type(verdict).__name__ in ("bool", "bool_"):  # Python's or numpy's
        return Verdict(bool(verdict))
    raise UserError(f"a feedback returned {type(verdict).__name__} {str(verdict)[:40]!r}; it must return a bool "
                    "(accept) or a gencond.refinement.Verdict")


def refine(sample_fn: Callable[[Any, int], Any], feedback: Optional[Feedback], max_rounds: int,
           previous: Any = None, timeout_s: Optional[float] = None, judge_last: bool = True) -> Refinement:
    """Sample up to ``max_rounds`` times, each round conditioned on the previous round's sample
    (``previous`` seeds round 0), until ``feedback`` accepts; without feedback all rounds run.
    ``judge_last=False``: the last round's sample is returned unjudged (its verdict would change nothing)."""
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be at least 1, got {max_rounds}")
    result = Refinement()
    for r in range(max_rounds):
        sample = sample_fn(previous, r)
        last = r == max_rounds - 1
        verdict = (Verdict(False, reason="last round: not judged") if last and not judge_last
                   else judge(feedback, sample, r, timeout_s))
        result.rounds.append(sample)
        result.verdicts.append(verdict)
        if verdict.accept:
            result.accepted = r
            break
        previous = sample
    return result
