"""Forecasting by self-guidance (TSDiff-MS / TSDiff-Q) and its evaluation with GluonTS.

The unconditional model samples whole windows (context + future); an observation energy on
x0_hat ties the context to what was observed. TSDiff-Q gives sample i of N the quantile
i/(N+1), so the N samples spread like the predictive distribution. A conditional denoiser
(TSDiff-Cond, the paper's baseline) instead reads the known values as its condition, unguided.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from gencond.config import SamplingConfig
from gencond.diffusion import DiffusionProcess
from gencond.errors import UserError
from gencond.guidance import ObservationGuidance, evenly_spaced_quantiles
from gencond.pipeline import seeded_generator
from gencond.runs import read_arrays
from gencond.sampling import EnergyGuidance, GuidanceRule, sample

from .data import WindowBuilder, hide_context

GUIDANCE_KINDS = ("quantile", "mse")
MAX_CONTEXT_MISFIT = 1.0  # samples further than this from the observed context mean guidance failed
EVAL_QUANTILES = tuple(np.round(np.arange(1, 10) / 10, 1))
PLACEHOLDER_YEAR = 1800  # series starting this early carry no real dates (GluonTS uses 1750-01-01)


class TSDiffForecaster:
    """Draws ``num_samples`` guided forecasts per series from a trained TSDiff denoiser."""

    def __init__(
        self,
        model: torch.nn.Module,
        process: DiffusionProcess,
        builder: WindowBuilder,
        sampling: SamplingConfig,
        *,
        guidance: str = "quantile",
        scale: float = 8.0,
        proximal: bool = True,
        num_samples: int = 100,
        batch_size: int = 200,
        seed: int = 0,
        device: torch.device | str = "cpu",
        progress: bool = True,
        non_negative: bool = False,
        calibration_windows: int = 0,
        recalibration: str = "width",
        rule: GuidanceRule = GuidanceRule(),
    ):
        if guidance not in GUIDANCE_KINDS:
            raise UserError(f"unknown guidance '{guidance}'; use one of {GUIDANCE_KINDS}")
        if num_samples < 1 or batch_size < 1:
            raise UserError(f"the number of samples and the batch size must be ≥ 1, got {num_samples} and {batch_size}")
        if not (np.isfinite(scale) and scale >= 0):
            raise UserError(f"the guidance scale must be a finite number ≥ 0, got {scale}")
        self.model, self.process, self.builder, self.sampling = model, process, builder, sampling
        self.guidance, self.scale, self.num_samples = guidance, scale, num_samples
        self.proximal = proximal  # guidance by the energy's Moreau envelope at each step's size (gencond.guidance)
        self.rule = rule  # the guidance's per-step weight and step size (gencond.sampling.GuidanceRule)
        self.batch_size, self.seed, self.device, self.progress = batch_size, seed, device, progress
        self.non_negative = non_negative  # clip samples at 0 (for data that is never negative)
        self.conditional = getattr(model, "cond_channels", 0) > 0
        if calibration_windows < 0:
            raise UserError(f"the number of calibration windows must be ≥ 0, got {calibration_windows}")
        # > 0: forecasts are recalibrated on this many windows per series before the earliest forecast start
        self.calibration_windows = calibration_windows
        self.recalibration = recalibration  # timeseries.calibration.RECALIBRATIONS
        self.recalibrated = 0  # forecasts recalibrated by the last predict

    @property
    def chunk_size(self) -> int:
        """Series sampled together: ``batch_size // num_samples`` (at least 1)."""
        return max(1, self.batch_size // self.num_samples)

    @property
    def method(self) -> str:
        """TSDiff-Q, TSDiff-MS or TSDiff-Cond."""
        return "TSDiff-Cond" if self.conditional else "TSDiff-" + ("Q" if self.guidance == "quantile" else "MS")

    def sample_futures(self, pasts: Sequence[np.ndarray], store: Optional[Path] = None, offset: int = 0) -> np.ndarray:
        """Forecast samples (S, num_samples, prediction_length) for S past series (raw values, NaN = missing).

        Series are sampled in chunks of :attr:`chunk_size`, each with noise seeded by the seed and the
        chunk's first series only (its index ``offset + i``: ``pasts`` may be a slice of a longer list
        that starts at a chunk boundary). ``store``: a folder where every finished chunk is written
        (``chunk_<first>.npz``) and from which it is read back instead of sampled again, so an
        interrupted forecast resumes without redoing finished series.
        """
        if offset % self.chunk_size:
            raise UserError(f"a slice must start at a multiple of the chunk size {self.chunk_size} "
                            f"(batch size // samples), got {offset}")
        windows = [self.builder.past_window(np.asarray(p, dtype=np.float32)) for p in pasts]
        per_batch = self.chunk_size
        out, misfits = [], []
        chunks = range(0, len(windows), per_batch)
        todo = [s for s in chunks if store is None or not (Path(store) / f"chunk_{offset + s:06d}.npz").is_file()]
        bar = tqdm(total=len(windows), initial=len(windows) - sum(len(windows[s:s + per_batch]) for s in todo),
                   desc="forecast", unit="series", disable=not self.progress or len(chunks) == 1)
        for start in chunks:
            path = None if store is None else Path(store) / f"chunk_{offset + start:06d}.npz"
            group = windows[start : start + per_batch]
            saved = read_arrays(path, ("samples", "misfit")) if path is not None and path.is_file() else None
            if saved is not None and len(saved["samples"]) == len(group):
                out.append(saved["samples"])
                misfits.append(torch.from_numpy(saved["misfit"]))
                continue
            future, misfit = self._sample_chunk(group, seeded_generator(self.seed, offset + start),
                                                show_steps=self.progress and len(chunks) == 1)
            if self.non_negative:
                future = np.maximum(future, 0.0)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.stem + ".tmp.npz")
                np.savez(tmp, samples=future, misfit=misfit.numpy())
                tmp.replace(path)
            out.append(future)
            misfits.append(misfit)
            bar.update(len(group))
        bar.close()
        misfit = float(torch.cat(misfits).median())
        if not np.isfinite(misfit) or misfit > MAX_CONTEXT_MISFIT:
            remedy = "train longer" if self.conditional else (
                f"lower the guidance scale (now {self.scale:g}), use more sampling steps, or train longer")
            warnings.warn(
                f"{'TSDiff-Cond' if self.conditional else 'guided'} samples miss the observed context by {misfit:.3g} (RMS, in units of the series' "
                f"mean): the forecasts are unreliable; {remedy}", stacklevel=2,
            )
        return np.concatenate(out)

    def _sample_chunk(self, group, generator: torch.Generator, show_steps: bool) -> tuple[np.ndarray, torch.Tensor]:
        """(raw-scale future samples (G, num_samples, prediction_length), per-sample context misfit)."""
        vals = np.stack([v for v, _ in group])
        obs = np.stack([o for _, o in group])
        x, mask, scale = self.builder.features(vals, obs)
        n = self.num_samples
        x, mask = x.repeat_interleave(n, 0).to(self.device), mask.repeat_interleave(n, 0).to(self.device)
        if self.conditional:
            options = dict(cond=known_condition(x, mask))
        else:
            quantiles = evenly_spaced_quantiles(n).repeat(len(group)) if self.guidance == "quantile" else None
            energy = ObservationGuidance(x, mask, quantiles, proximal=self.proximal)
            options = dict(guidance=EnergyGuidance(energy, self.scale, self.rule))
        draws = sample(self.model, self.process, tuple(x.shape), self.sampling, generator=generator,
                       progress=show_steps, **options)
        misfit = context_misfit(draws, x, mask, self.builder.context_length)
        future = draws[:, self.builder.context_length :, 0].float().cpu().reshape(len(group), n, -1)
        return (future * scale[:, None, None]).numpy(), misfit

    def predict(self, entries: Iterable[dict], freq: str, store: Optional[Path] = None, offset: int = 0,
                calibrate_on: Optional[Sequence[dict]] = None):
        """GluonTS ``SampleForecast``s for entries whose ``target`` is the past to forecast from
        (``store``: see :meth:`sample_futures`). With ``calibration_windows`` > 0 each forecast is
        recalibrated (:func:`recalibrated`) on windows cut from ``calibrate_on`` (default: ``entries``)."""
        from gluonts.model.forecast import SampleForecast

        entries = list(entries)
        samples = self.sample_futures([e["target"] for e in entries], store, offset)
        if self.calibration_windows:
            samples, self.recalibrated = recalibrated(self, entries, samples, entries if calibrate_on is None else calibrate_on,
                                                      None if store is None else Path(store) / "calibration")
        return [
            SampleForecast(s, start_date=pd.Period(e["start"], freq) + len(e["target"]), item_id=e.get("item_id"))
            for e, s in zip(entries, samples)
        ]


def recalibrated(forecaster: TSDiffForecaster, pasts: Sequence[dict], samples: np.ndarray, calibrate_on: Sequence[dict],
                 store: Optional[Path] = None) -> tuple[np.ndarray, int]:
    """(``samples`` of ``pasts`` recalibrated, how many were): the forecaster forecasts its
    ``calibration_windows`` windows per series before the series' earliest forecast start in
    ``calibrate_on`` (with other noise than the forecasts: seed + 1), and each forecast is mapped by a
    ``forecaster.recalibration`` (:data:`~timeseries.calibration.RECALIBRATIONS`) fitted on the windows that end before it starts."""
    import copy

    from .calibration import MIN_CALIBRATION_POINTS, calibration_windows, recalibrate
    from .data import series_id

    windows = calibration_windows(calibrate_on, forecaster.builder.prediction_length, forecaster.calibration_windows, series_id)
    if not windows:
        return samples, 0
    other = copy.copy(forecaster)
    other.seed, other.progress = forecaster.seed + 1, False
    window_samples = other.sample_futures([w["target"] for w in windows], store)
    out, done = recalibrate(pasts, samples, windows, window_samples, forecaster.recalibration)
    if forecaster.non_negative:
        out = np.maximum(out, 0.0)
    if done < len(pasts):
        warnings.warn(f"{len(pasts) - done} of {len(pasts)} forecasts are left as sampled: the windows before them hold "
                      f"fewer than {MIN_CALIBRATION_POINTS} observed values, or the recalibration fitted on the older ones "
                      f"did not improve the newest (timeseries.calibration.checked_fit)", stacklevel=3)
    return out, done


def known_condition(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """TSDiff-Cond's condition: the known values (zero elsewhere) and their mask, (B, L, 2C)."""
    return torch.cat([x * known, known], dim=-1)


def context_misfit(draws: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, context_length: int) -> torch.Tensor:
    """Per-sample RMS distance between the samples and the observed context (scaled units)."""
    m = mask[:, :context_length, 0].cpu()
    err = (draws[:, :context_length, 0].cpu() - x[:, :context_length, 0].cpu()).square() * m
    return (err.sum(1) / m.sum(1).clamp_min(1)).sqrt()


def evaluate(entries: Sequence[dict], forecasts: Sequence, freq: str) -> dict:
    """CRPS (GluonTS mean weighted quantile loss over 0.1…0.9), ND, NRMSE and MSE of forecasts whose
    truth is the last values of each entry's ``target``, and their calibration
    (:func:`timeseries.calibration.calibration_metrics`: coverage, MSIS, WIS and a flag)."""
    from gluonts.evaluation import Evaluator

    from .calibration import calibration_metrics, evaluator_quantiles

    truths = [
        pd.DataFrame(e["target"], index=pd.period_range(pd.Period(e["start"], freq), periods=len(e["target"]), freq=freq))
        for e in entries
    ]
    from gluonts.env import env

    evaluator = Evaluator(quantiles=evaluator_quantiles(EVAL_QUANTILES), num_workers=0)
    with env._let(use_tqdm=False):
        agg, _ = evaluator(iter(truths), iter(forecasts), num_series=len(truths))
    points = sum(int(np.isfinite(e["target"][len(e["target"]) - f.samples.shape[1]:]).sum()) for e, f in zip(entries, forecasts))
    crps = float(np.mean([agg[f"wQuantileLoss[{q}]"] for q in EVAL_QUANTILES]))  # the mean over 0.1…0.9 only
    return {"CRPS": crps, "ND": float(agg["ND"]), "NRMSE": float(agg["NRMSE"]), "MSE": float(agg["MSE"]),
            **calibration_metrics(agg, points)}


def forecast_and_evaluate(forecaster: TSDiffForecaster, entries: Sequence[dict], freq: str, prediction_length: int,
                          *, missing: Optional[str] = None, missing_points: int = 0, seed: int = 0,
                          store: Optional[Path] = None, series: slice = slice(None)):
    """Forecast the last ``prediction_length`` values of each entry from the values before them;
    ``missing`` (RM, BM-B, BM-E) first hides ``missing_points`` of each context (seeded, over all
    entries); ``series`` forecasts and evaluates a slice of them (``store``: see ``sample_futures``)."""
    rng = np.random.default_rng(seed)
    pasts = [{**e, "target": e["target"][:-prediction_length]} for e in entries]
    if missing:
        ctx = forecaster.builder.context_length
        pasts = [{**p, "target": hide_context(p["target"], missing, missing_points, ctx, rng)} for p in pasts]
    entries, every_past, pasts = list(entries)[series], pasts, pasts[series]
    forecasts = forecaster.predict(pasts, freq, store, offset=series.start or 0, calibrate_on=every_past)
    metrics = evaluate(entries, forecasts, freq)
    if forecaster.calibration_windows:
        metrics["recalibrated"] = forecaster.recalibrated
    return forecasts, metrics


def fan_chart(entries: Sequence[dict], forecasts: Sequence, path, freq: str, *, max_series: int = 6,
              history: Optional[int] = None, title: str = "", unit: str = "test windows"):
    """A PNG of forecast fans (median, 50 % and 90 % intervals) over the recent history and the
    truth (an entry's values from the forecast start on); the title says how many of the ``unit``
    (test windows, series) it shows and, where there is truth, the share of it inside each band
    over the windows shown. Returns the (closed) figure."""
    from .calibration import interval_coverage

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates
    import matplotlib.pyplot as plt

    k = min(max_series, len(entries))
    cols = 2 if k > 1 else 1
    rows = (k + cols - 1) // cols
    truths, fans = [], []
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 2.6 * rows), squeeze=False)
    for ax, e, f in zip(axes.flat, entries, forecasts):
        n = f.samples.shape[1]
        h = history or 4 * n
        periods = pd.period_range(pd.Period(e["start"], freq), periods=len(e["target"]), freq=freq)
        fperiods = pd.period_range(f.start_date, periods=n, freq=freq)
        if periods[0].year <= PLACEHOLDER_YEAR:  # no real dates (GluonTS puts such series at 1750): step numbers
            idx = np.arange(len(periods))
            fidx = (fperiods.asi8 - periods[0].ordinal).astype(int)
            ax.set_xlabel(f"step ({freq}) since the series' start; the data carries no dates", fontsize=7)
        else:
            idx, fidx = periods.to_timestamp(), fperiods.to_timestamp()
            locator = matplotlib.dates.AutoDateLocator(maxticks=6)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(matplotlib.dates.ConciseDateFormatter(locator))
        first, cut = max(0, len(e["target"]) - h - n), int(np.searchsorted(idx, fidx[0]))
        ax.plot(idx[first:cut], e["target"][first:cut], color="black", lw=1, label="history")
        if cut < len(idx):
            ax.plot(idx[cut:], e["target"][cut:], color="tab:red", lw=1, label="truth")
            if len(idx) - cut == n:
                truths.append(np.asarray(e["target"][cut:], dtype=np.float64))
                fans.append(f.samples)
        for lo, hi, alpha in ((0.05, 0.95, 0.2), (0.25, 0.75, 0.4)):
            ax.fill_between(fidx, f.quantile(lo), f.quantile(hi), color="tab:blue", alpha=alpha, lw=0,
                            label=f"{round(100 * (hi - lo))} % interval")
        ax.plot(fidx, f.quantile(0.5), color="tab:blue", lw=1.5, label="median")
        ax.set_title(str(e.get("item_id", "")), fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    shown = f"{k} of {len(entries)} {unit} shown"
    if truths:
        inside = [interval_coverage(np.stack(truths), np.stack(fans), p) for p in (50, 90)]
        shown += f"; truth inside the 50 % band {100 * inside[0]:.0f} %, the 90 % band {100 * inside[1]:.0f} % of the time"
    fig.suptitle(f"{title}\n{shown}" if title else shown, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig
