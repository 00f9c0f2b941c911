"""Plan self-conditioning: iterative refinement in which each round's sample conditions the next.

``refine(sample_fn, feedback, max_rounds)`` calls ``sample_fn(previous, round)`` (``previous`` is
None in round 0), asks ``feedback(sample, round)`` for a verdict, and stops at the first accepted
sample. VideoAgent's self-conditioning consistency refines video plans this way; any sampler whose
condition can hold an earlier sample can be refined with it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Union


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


def judge(feedback: Optional[Feedback], sample: Any, round: int) -> Verdict:
    """The feedback's verdict; a feedback that raises rejects, with the error as the reason."""
    if feedback is None:
        return Verdict(False, reason="no feedback")
    try:
        verdict = feedback(sample, round)
    except Exception as e:  # a broken critic must not end the refinement
        return Verdict(False, reason=f"feedback failed: {type(e).__name__}: {e}")
    return verdict if isinstance(verdict, Verdict) else Verdict(bool(verdict))


def refine(sample_fn: Callable[[Any, int], Any], feedback: Optional[Feedback], max_rounds: int,
           previous: Any = None) -> Refinement:
    """Sample up to ``max_rounds`` times, each round conditioned on the previous round's sample
    (``previous`` seeds round 0), until ``feedback`` accepts; without feedback all rounds run."""
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be at least 1, got {max_rounds}")
    result = Refinement()
    for r in range(max_rounds):
        sample = sample_fn(previous, r)
        verdict = judge(feedback, sample, r)
        result.rounds.append(sample)
        result.verdicts.append(verdict)
        if verdict.accept:
            result.accepted = r
            break
        previous = sample
    return result
