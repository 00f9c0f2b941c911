"""The command line's argument types (a value, or a one-line 'must be ...' error that argparse prints) and the
flags every verb that samples a run shares; light: a verb's ``--help`` imports no torch."""
from __future__ import annotations

import argparse
import math

from .errors import UserError
from .layout import WEIGHTS


def typed(kind, what: str, ok):
    """An argparse type: ``kind(text)`` if ``ok`` accepts it (and a float is finite), else a one-line
    'must be <what>, got ...' error (``argparse.ArgumentTypeError``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or (isinstance(value, float) and not math.isfinite(value)) or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got '{text}'")
        return value
    return parse


positive_int = typed(int, "an integer ≥ 1", lambda v: v >= 1)
non_negative_int = typed(int, "an integer ≥ 0", lambda v: v >= 0)
positive_float = typed(float, "a finite number > 0", lambda v: v > 0)
non_negative_float = typed(float, "a finite number ≥ 0", lambda v: v >= 0)


def timestep_ranges(text: str) -> list[int]:
    """An argparse type: '99:52:12+50:26:2+25:0:1' (ranges FIRST:LAST:STRIDE, LAST included, joined by +)
    -> the decreasing timesteps 99, 87, 75, 63, 50, 48, ..., 26, 25, 24, ..., 0."""
    steps = set()
    for part in text.split("+"):
        try:
            first, last, stride = (int(v) for v in part.split(":"))
        except ValueError:
            first = None
        if first is None or stride < 1 or last > first or last < 0:
            raise argparse.ArgumentTypeError(f"must be ranges FIRST:LAST:STRIDE (FIRST >= LAST >= 0, STRIDE >= 1) "
                                             f"joined by +, e.g. 99:52:12+50:26:2+25:0:1; got '{text}'")
        steps.update(range(first, last - 1, -stride))
    return sorted(steps, reverse=True)


def add_sampling_arguments(p: argparse.ArgumentParser, sampler: bool = True) -> None:
    """The flags every verb that loads a run shares (``sampler``: also --scheduler and --steps)."""
    p.add_argument("--weights", default="best", choices=sorted(WEIGHTS),
                   help="validated best weights (the last when the run kept none) or the last weights; default best")
    if sampler:
        p.add_argument("--scheduler", help="ddpm, ddim, dpm++, ... (default: the config's sampling.scheduler)")
        p.add_argument("--steps", type=positive_int, help="sampling steps (default: the config's sampling.num_steps)")
        p.add_argument("--timesteps", type=timestep_ranges, help="the DDPM (or dpm++) steps as ranges FIRST:LAST:STRIDE "
                       "joined by +, from the last training timestep down, e.g. 99:52:12+50:26:2+25:0:1 "
                       "(sampling.timesteps; --steps wins when both are given)")
        p.add_argument("--eta", type=non_negative_float, help="DDIM stochasticity, 0 deterministic to 1 ancestral "
                       "(default: the config's sampling.eta)")
        p.add_argument("--micro-batch", type=positive_int, help="rows per network call (on several CPU threads the calls run "
                       "side by side): the same samples, faster when a call's activations fit a core's caches (default: the config's "
                       "sampling.micro_batch)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed, an integer ≥ 0 (default 0)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: the run's train.threads)")


def check_sampling_steps(chosen: dict, trained: int, steps_name: str = "--steps") -> None:
    """Refuse --steps / --timesteps beyond the timesteps the model was trained on (``steps_name``: what the
    user set the step count with, for the message)."""
    if (chosen.get("num_steps") or 0) > trained:
        raise UserError(f"{steps_name} {chosen['num_steps']}: the model was trained on {trained} timesteps; "
                        f"sample with at most {trained} steps")
    late = [t for t in chosen.get("timesteps") or () if t >= trained]
    if late:
        raise UserError(f"--timesteps: {late[0]} is not a training timestep; the model was trained on 0..{trained - 1}")
