"""Calibration of probabilistic forecasts: coverage and interval scores, a flag for intervals that do not
mean what they say, and a recalibration fitted only on windows that end before the forecast starts.

Coverage of quantile q is the share of observations at or below the forecast's q-quantile (GluonTS's
``Coverage[q]``); a central interval's coverage is the share inside it, ``Coverage[hi] - Coverage[lo]``.
WIS is the weighted interval score (Bracher et al. 2021) of the median and the central 50/80/90 %
intervals, per forecast point in the data's units; MSIS is GluonTS's mean scaled interval score of the
95 % interval.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from gencond.errors import UserError

COVERAGE_QUANTILES = tuple(np.round(np.arange(1, 10) / 10, 1))
INTERVALS = (50, 80, 90)  # central intervals (%) whose coverage is reported
FLAG_TOLERANCE = 0.10  # an 80 % interval covering outside 70-90 %, or a median outside 40-60 %, is flagged
MIN_CALIBRATION_POINTS = 50  # fewer observed points in the windows before a forecast: it stays as sampled


def interval_bounds(percent: int) -> tuple[float, float]:
    """The quantile levels of a central interval: 80 -> (0.1, 0.9)."""
    return round((100 - percent) / 200, 3), round((100 + percent) / 200, 3)


def evaluator_quantiles(base: Sequence[float] = COVERAGE_QUANTILES) -> tuple[float, ...]:
    """``base`` plus the bounds of every reported interval (the evaluator scores all of them)."""
    bounds = [b for p in INTERVALS for b in interval_bounds(p)]
    return tuple(sorted({float(q) for q in base} | set(bounds)))


def calibration_metrics(agg: dict, num_points: int) -> dict:
    """Coverage per quantile 0.1..0.9 and per central interval, MSIS, WIS and a flag, from the aggregate
    metrics of a GluonTS ``Evaluator`` run with :func:`evaluator_quantiles` (``num_points``: observed
    forecast points)."""
    out = {f"coverage_q{q:.1f}": float(agg[f"Coverage[{q}]"]) for q in COVERAGE_QUANTILES}
    for p in INTERVALS:
        lo, hi = interval_bounds(p)
        out[f"coverage_{p}"] = float(agg[f"Coverage[{hi}]"] - agg[f"Coverage[{lo}]"])
    out["MSIS"] = float(agg["MSIS"])
    # WIS = (|y - m| / 2 + sum_k alpha_k / 2 * IS_alpha_k) / (K + 1/2) = sum of pinball losses over the 2K + 1
    # quantiles / (K + 1/2); GluonTS's QuantileLoss[q] is twice the pinball loss summed over all points
    levels = {0.5} | {b for p in INTERVALS for b in interval_bounds(p)}
    pinball = sum(float(agg[f"QuantileLoss[{q}]"]) / 2 for q in levels)
    out["WIS"] = pinball / (len(INTERVALS) + 0.5) / max(num_points, 1)
    out["calibration"] = calibration_flag(out)
    return out


def calibration_flag(metrics: dict) -> str:
    """'ok', or what is wrong: the 80 % interval too narrow / too wide, or the median biased."""
    c80, med = metrics["coverage_80"], metrics["coverage_q0.5"]
    if c80 < 0.8 - FLAG_TOLERANCE:
        return f"too narrow: the central 80 % interval covers {100 * c80:.0f} % of the observations"
    if c80 > 0.8 + FLAG_TOLERANCE:
        return f"too wide: the central 80 % interval covers {100 * c80:.0f} % of the observations"
    if abs(med - 0.5) > FLAG_TOLERANCE:
        return f"biased: {100 * med:.0f} % of the observations lie at or below the median"
    return "ok"


def interval_coverage(truths: np.ndarray, samples: np.ndarray, percent: int) -> float:
    """Share of the finite ``truths`` (S, L) inside the central ``percent`` % interval of ``samples`` (S, N, L)."""
    lo, hi = np.quantile(samples, interval_bounds(percent), axis=1)
    ok = np.isfinite(truths)
    return float(((truths > lo) & (truths <= hi))[ok].mean()) if ok.any() else float("nan")


# ---------------------------------------------------------------- recalibration


def _spread(sorted_samples: np.ndarray) -> np.ndarray:
    """Each point's 10-90 % width (M, L), floored at a millionth of the samples' typical size."""
    lo, hi = np.quantile(sorted_samples, (0.1, 0.9), axis=1)
    floor = 1e-6 * np.abs(sorted_samples).mean(axis=(1, 2), keepdims=True)[:, 0] + 1e-12
    return np.maximum(hi - lo, floor)


def _calibration_inputs(samples, truths) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` (M, N, L) and ``truths`` (M, L) as float64, checked: matching shapes, enough observed points."""
    samples, truths = np.asarray(samples, dtype=np.float64), np.asarray(truths, dtype=np.float64)
    if samples.ndim != 3 or truths.shape != (samples.shape[0], samples.shape[2]):
        raise UserError(f"calibration samples (M, N, L) and truths (M, L) do not match: {samples.shape}, {truths.shape}")
    points = int(np.isfinite(truths).sum())
    if points < MIN_CALIBRATION_POINTS:
        raise UserError(f"{points} observed calibration points; the recalibration needs ≥ {MIN_CALIBRATION_POINTS}")
    return samples, truths


class QuantileRecalibration:
    """Per-level conformal shifts: the k-th smallest of N samples (level k / (N-1), the rank GluonTS reads a
    quantile from, kept within 1/2N of 0 and 1) moves by ``shift[k]``
    times the point's 10-90 % width, ``shift[k]`` the level-k quantile of (truth - that sample) / width
    over calibration windows. Calibrated forecasts get shifts near 0; too-narrow ones are widened, a biased
    median is moved. Each time step's values are re-sorted and handed back in the samples' own rank order,
    so paths keep their shape."""

    def __init__(self, shifts: np.ndarray, points: int):
        self.shifts, self.points = shifts, points

    @classmethod
    def fit(cls, samples: np.ndarray, truths: np.ndarray) -> "QuantileRecalibration":
        """``samples`` (M, N, L) forecast for calibration windows whose observed values are ``truths`` (M, L)."""
        samples, truths = _calibration_inputs(samples, truths)
        ok = np.isfinite(truths)
        ranked = np.sort(samples, axis=1)
        scores = (truths[:, None, :] - ranked) / _spread(ranked)[:, None, :]  # (M, N, L)
        scores = scores.transpose(1, 0, 2)[:, ok]  # (N, points)
        n = samples.shape[1]
        levels = np.clip(np.arange(n) / max(n - 1, 1), 0.5 / n, 1 - 0.5 / n)
        shifts = np.array([np.quantile(scores[k], levels[k]) for k in range(n)])
        return cls(shifts, int(ok.sum()))

    def apply(self, samples: np.ndarray) -> np.ndarray:
        """Recalibrated copy of ``samples`` (S, N, L)."""
        samples = np.asarray(samples)
        if samples.ndim != 3 or samples.shape[1] != len(self.shifts):
            raise UserError(f"recalibration fitted for {len(self.shifts)} samples per series, got shape {samples.shape}")
        order = np.argsort(samples, axis=1, kind="stable")
        ranked = np.take_along_axis(samples, order, axis=1).astype(np.float64)
        moved = np.sort(ranked + self.shifts[None, :, None] * _spread(ranked)[:, None, :], axis=1)
        out = np.empty_like(moved)
        np.put_along_axis(out, order, moved, axis=1)
        return out.astype(samples.dtype)


class WidthRecalibration:
    """One factor ``width`` for every sample's distance to its point's median, chosen on calibration
    windows to minimise the quantile score (:func:`quantile_score`) over a grid of 1/4..4. The median
    stays where it was sampled: only the spread is corrected, so a bias in the calibration windows
    that does not last (a market that turned) cannot move later forecasts."""

    GRID = np.geomspace(0.25, 4.0, 49)

    def __init__(self, width: float, points: int):
        self.width, self.points = width, points

    @classmethod
    def fit(cls, samples: np.ndarray, truths: np.ndarray) -> "WidthRecalibration":
        """``samples`` (M, N, L) forecast for calibration windows whose observed values are ``truths`` (M, L)."""
        samples, truths = _calibration_inputs(samples, truths)
        median = np.median(samples, axis=1, keepdims=True)  # once, not once per grid point
        scores = [quantile_score(median + w * (samples - median), truths) for w in cls.GRID]
        return cls(float(cls.GRID[int(np.argmin(scores))]), int(np.isfinite(truths).sum()))

    def apply(self, samples: np.ndarray) -> np.ndarray:
        """Recalibrated copy of ``samples`` (S, N, L): median + width × (sample − median), per point."""
        samples = np.asarray(samples)
        if samples.ndim != 3:
            raise UserError(f"samples must be (series, samples, length), got shape {samples.shape}")
        median = np.median(samples, axis=1, keepdims=True)
        return (median + self.width * (samples - median)).astype(samples.dtype)


RECALIBRATIONS = {"width": WidthRecalibration, "quantile": QuantileRecalibration}


def calibration_windows(pasts: Sequence[dict], prediction_length: int, windows: int, series_of) -> list[dict]:
    """For each series, the last ``windows`` stretches of ``prediction_length`` values before its earliest
    forecast start among ``pasts`` (entries whose ``target`` ends where their forecast starts), as entries
    ``{start, target: the values before the stretch, truth, end: the stretch's end (a Period), ...}``,
    the latest stretch of every series first (so fewer windows are a prefix of more). Nothing at or after
    that forecast start is read."""
    earliest: dict[str, dict] = {}
    for p in pasts:
        key = series_of(p)
        if key not in earliest or _end(p) < _end(earliest[key]):
            earliest[key] = p
    out = []
    for j in range(1, windows + 1):
        for p in earliest.values():
            values, n = np.asarray(p["target"]), len(p["target"])
            cut = n - j * prediction_length
            if cut >= 1 and np.isfinite(values[:cut]).any():
                out.append({**p, "target": values[:cut], "truth": values[cut : cut + prediction_length],
                            "end": _end(p) - (j - 1) * prediction_length, "age": j})
    return out


def _end(entry: dict) -> pd.Period:
    """Where an entry's target ends (the first period after it)."""
    return pd.Period(entry["start"]) + len(entry["target"])


def quantile_score(samples: np.ndarray, truths: np.ndarray) -> float:
    """Mean pinball loss of the quantiles 0.1..0.9 of ``samples`` (M, N, L) at the finite ``truths`` (M, L)."""
    ok = np.isfinite(truths)
    losses = [np.where(truths >= f, q * (truths - f), (1 - q) * (f - truths))[ok]
              for q, f in zip(COVERAGE_QUANTILES, np.quantile(samples, COVERAGE_QUANTILES, axis=1))]
    return float(np.mean(losses))


def checked_fit(window_samples: np.ndarray, truths: np.ndarray, ages: np.ndarray, method: str = "width"):
    """A recalibration fitted on all windows, or None where it fails a check in time: fitted on the older
    windows only (age > 1), it must lower the quantile score of the newest ones (age 1) against the samples
    as drawn. A shift learnt from one market episode that did not carry over to the next is not used.
    With windows of one age only, or too few points for the check, the fit is used unchecked."""
    older, newest = ages > 1, ages == 1
    if np.isfinite(truths[older]).sum() >= MIN_CALIBRATION_POINTS and np.isfinite(truths[newest]).sum() > 0:
        trial = RECALIBRATIONS[method].fit(window_samples[older], truths[older])
        if quantile_score(trial.apply(window_samples[newest]), truths[newest]) >= quantile_score(window_samples[newest], truths[newest]):
            return None
    return RECALIBRATIONS[method].fit(window_samples, truths)


def recalibrate(pasts: Sequence[dict], samples: np.ndarray, windows: Sequence[dict], window_samples: np.ndarray,
                method: str = "width") -> tuple[np.ndarray, int]:
    """``samples`` (S, N, L) of the forecasts of ``pasts``, each recalibrated (:func:`checked_fit`) with the
    calibration ``windows`` that end at or before its own forecast start; returns (samples, how many were
    recalibrated)."""
    if method not in RECALIBRATIONS:
        raise UserError(f"unknown recalibration '{method}'; use one of {sorted(RECALIBRATIONS)}")
    if not len(windows):
        return samples, 0
    ends = [w["end"] for w in windows]
    ages = np.array([w.get("age", 1) for w in windows])
    truths = np.stack([np.asarray(w["truth"], dtype=np.float64) for w in windows])
    fitted: dict[tuple, QuantileRecalibration | WidthRecalibration | None] = {}
    out, done = np.array(samples, copy=True), 0
    for i, p in enumerate(pasts):
        start = _end(p)
        usable = tuple(k for k, e in enumerate(ends) if e <= start)
        if usable not in fitted:
            use = list(usable)
            enough = np.isfinite(truths[use]).sum() >= MIN_CALIBRATION_POINTS if usable else False
            fitted[usable] = checked_fit(window_samples[use], truths[use], ages[use], method) if enough else None
        if fitted[usable] is not None:
            out[i] = fitted[usable].apply(samples[i : i + 1])[0]
            done += 1
    return out, done
