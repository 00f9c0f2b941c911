"""Synthetic windows from an unconditional TSDiff, and the Linear Predictive Score (LPS).

LPS (TSDiff §5.3): fit a Ridge regressor (context → prediction) on synthetic windows, then score
its forecasts of the real test set by CRPS; the same Ridge fitted on real training windows is the
reference. A generator whose data is as useful as real data gets an LPS close to the reference.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gencond.errors import UserError
from gencond.files import parsing
from gencond.pipeline import Pipeline

from .baselines import RidgeForecaster, real_windows
from .data import TimeSeriesData, WindowBuilder
from .forecast import evaluate


def synthesize(pipeline: Pipeline, builder: WindowBuilder, num_windows: int, *, batch_size: int = 200, seed: int = 0,
               progress: bool = True) -> np.ndarray:
    """``num_windows`` unguided samples (N, context + prediction) in scaled units (mean 1 over the context)."""
    if getattr(pipeline.model, "cond_channels", 0):
        raise UserError("synthesis needs an unconditional TSDiff; this run is TSDiff-Cond (it needs a context)")
    if num_windows < 1:
        raise UserError(f"the number of windows must be ≥ 1, got {num_windows}")
    generator = torch.Generator().manual_seed(seed)  # one stream for all batches (not seeded_generator's mix)
    out = []
    for start in tqdm(range(0, num_windows, batch_size), desc="synthesize", disable=not progress):
        n = min(batch_size, num_windows - start)
        draws = pipeline.sample((n, builder.length, builder.channels), generator=generator, progress=False)
        out.append(draws[:, :, 0].float().cpu().numpy())
    windows = np.concatenate(out)
    if not np.isfinite(windows).all():
        raise UserError("synthetic windows contain NaN or inf; the model is not trained (check its training loss)")
    return windows


def linear_predictive_score(windows: np.ndarray, data: TimeSeriesData, context_length: int) -> dict[str, float]:
    """CRPS (and ND, NRMSE) on ``data.test`` of a Ridge fitted on scaled ``windows`` (N, context + prediction)."""
    ridge = RidgeForecaster(context_length, data.prediction_length).fit_windows(windows)
    pl = data.prediction_length
    pasts = [{**e, "target": e["target"][:-pl]} for e in data.test]
    return evaluate(data.test, ridge.predict(pasts, data.freq), data.freq)


def lps_report(synthetic: np.ndarray, data: TimeSeriesData, context_length: int, seed: int = 0) -> dict[str, float]:
    """LPS of the synthetic windows beside the LPS of as many real training windows."""
    builder = WindowBuilder(context_length, data.prediction_length, lags=[])
    real = real_windows(data.train, builder, len(synthetic), seed)
    ours = linear_predictive_score(synthetic, data, context_length)
    ref = linear_predictive_score(real, data, context_length)
    return {"windows": len(synthetic), "LPS_synthetic": ours["CRPS"], "LPS_real": ref["CRPS"],
            "ratio": ours["CRPS"] / ref["CRPS"], "ND_synthetic": ours["ND"], "ND_real": ref["ND"]}


def plot_windows(data: TimeSeriesData, synthetic: np.ndarray, path, context_length: int, *, count: int = 6,
                 title: str = "", seed: int = 0) -> None:
    """A PNG of random real training windows (top row) beside synthetic ones (bottom row), in scaled
    units; each row's label says how many of how many windows it shows. Returns the (closed) figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = real_windows(data.train, WindowBuilder(context_length, data.prediction_length, lags=[]), 64, seed)
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(2, count, figsize=(2.6 * count, 4.4), sharey=True, squeeze=False)
    for row, (label, windows) in enumerate((("real", real), ("synthetic", synthetic))):
        picks = rng.choice(len(windows), size=min(count, len(windows)), replace=False)
        axes[row, 0].set_ylabel(f"{label}: {len(picks)} of {len(windows)}" + ("\n(training data)" if row == 0 else "\n(TSDiff)"),
                                fontsize=8)
        for ax, i in zip(axes[row], picks):
            ax.plot(windows[i], lw=0.8, color="black" if row == 0 else "tab:blue")
            ax.axvline(context_length, color="gray", lw=0.6, ls="--")
            ax.set_title(f"{label} #{i}", fontsize=8)
            ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def load_windows(path, length: int) -> np.ndarray:
    """Windows saved by ``gencond sample`` (.npy), checked against the run's window length."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path} (write one with `gencond sample RUN_DIR`)")
    with parsing(path, "--windows", "a .npy array of windows (written by `gencond sample`)"):
        windows = np.load(path, allow_pickle=False)
    if windows.ndim != 2 or windows.shape[1] != length:
        raise UserError(f"{path} holds windows of shape {windows.shape}; this run's windows are (N, {length})")
    return windows
