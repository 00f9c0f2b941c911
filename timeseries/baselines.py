"""Base forecasters for refinement and the linear predictive score: Seasonal Naive, a Ridge linear
model on mean-scaled windows, and any GluonTS predictor or estimator.

Every base forecaster has ``predict(entries, freq) -> list[SampleForecast]``, where each entry's
``target`` is the past to forecast from (the same interface as ``TSDiffForecaster``).
"""
from __future__ import annotations

import importlib
import json
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from gencond.errors import UserError

from .data import TimeSeriesData, TrainingWindows, WindowBuilder

BASE_NAMES = ("seasonal_naive", "linear")


class RidgeForecaster:
    """A Ridge regression from the last ``context_length`` mean-scaled values to the next
    ``prediction_length`` (TSDiff's linear baseline and LPS model); a point forecast."""

    def __init__(self, context_length: int, prediction_length: int, alpha: float = 1.0):
        self.builder = WindowBuilder(context_length, prediction_length, lags=[])
        self.alpha = alpha
        self.regressor = None

    def fit_windows(self, windows: np.ndarray) -> "RidgeForecaster":
        """Fit on scaled windows (N, context_length + prediction_length)."""
        from sklearn.linear_model import Ridge

        ctx = self.builder.context_length
        windows = np.asarray(windows, dtype=np.float64)
        if windows.ndim != 2 or windows.shape[1] != self.builder.length:
            raise UserError(f"windows must have shape (N, {self.builder.length}) (context + prediction), got {windows.shape}")
        if len(windows) < ctx:
            raise UserError(
                f"{len(windows)} windows are fewer than the {ctx} features (context values) of the linear model; "
                f"draw at least {ctx} windows"
            )
        if not np.isfinite(windows).all():
            raise UserError("windows contain NaN or inf; the linear model needs finite values")
        self.regressor = Ridge(alpha=self.alpha).fit(windows[:, :ctx], windows[:, ctx:])
        return self

    def fit_series(self, series: Sequence[dict], num_windows: int = 10_000, seed: int = 0) -> "RidgeForecaster":
        """Fit on ``num_windows`` random windows of the given series (TSDiff uses 10,000)."""
        return self.fit_windows(real_windows(series, self.builder, num_windows, seed))

    def predict(self, entries: Sequence[dict], freq: str):
        from gluonts.model.forecast import SampleForecast

        if self.regressor is None:
            raise RuntimeError("fit the RidgeForecaster before predicting")
        b = self.builder
        raw = [b.past_window(np.asarray(e["target"], dtype=np.float32)) for e in entries]
        x, _, scale = b.features(np.stack([v for v, _ in raw]), np.stack([o for _, o in raw]))
        future = self.regressor.predict(x[:, : b.context_length, 0].numpy()) * scale.numpy()[:, None]
        return [SampleForecast(f[None], start_date=pd.Period(e["start"], freq) + len(e["target"]), item_id=e.get("item_id"))
                for e, f in zip(entries, future)]


def real_windows(series: Sequence[dict], builder: WindowBuilder, num_windows: int, seed: int = 0) -> np.ndarray:
    """``num_windows`` random training windows (N, context + prediction), mean-scaled on their context."""
    x, _, _ = TrainingWindows(series, builder).sample(num_windows, torch.Generator().manual_seed(seed))
    return x[:, :, 0].numpy()


class GluonTSBase:
    """Any GluonTS ``Predictor`` as a base forecaster."""

    def __init__(self, predictor: Any, num_samples: int = 100):
        self.predictor, self.num_samples = predictor, num_samples

    def predict(self, entries: Sequence[dict], freq: str):
        data = [{"start": pd.Period(e["start"], freq), "target": np.asarray(e["target"], dtype=np.float32),
                 "item_id": e.get("item_id")} for e in entries]
        return list(self.predictor.predict(data, num_samples=self.num_samples))


def make_base(name: str, data: TimeSeriesData, context_length: int, *, options: str | None = None,
              num_samples: int = 100, seed: int = 0):
    """A base forecaster by name: ``seasonal_naive``, ``linear`` (Ridge), or ``module:attr`` naming a
    GluonTS Predictor instance, Predictor/Estimator class, or factory; ``options`` is a JSON object of
    keyword arguments for that class or factory (prediction_length and freq are filled in when accepted).
    Estimators are trained on the dataset's training series."""
    from gluonts.model.seasonal_naive import SeasonalNaivePredictor
    from gluonts.time_feature import get_seasonality

    if name == "seasonal_naive":
        return GluonTSBase(SeasonalNaivePredictor(data.prediction_length, season_length=get_seasonality(data.freq)), num_samples)
    if name == "linear":
        return RidgeForecaster(context_length, data.prediction_length).fit_series(data.train, seed=seed)
    if ":" not in name:
        raise UserError(f"unknown base forecaster '{name}'; use {', '.join(BASE_NAMES)} or module:attr (a GluonTS predictor)")
    module, attr = name.split(":", 1)
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot load base forecaster '{name}': {e}") from None
    try:
        kwargs = json.loads(options) if options else {}
    except json.JSONDecodeError as e:
        raise UserError(f"--base-options is not a JSON object: {e}") from None
    is_instance = hasattr(obj, "predict") or hasattr(obj, "train")
    if isinstance(obj, type) or (callable(obj) and not is_instance):  # a class or factory: build it
        import inspect

        params = inspect.signature(obj).parameters
        for key, value in (("prediction_length", data.prediction_length), ("freq", data.freq)):
            if key in params and key not in kwargs:
                kwargs[key] = value
        obj = obj(**kwargs)
    if hasattr(obj, "train") and not hasattr(obj, "predict"):  # a GluonTS Estimator
        train = [{"start": e["start"], "target": e["target"], "item_id": e.get("item_id")} for e in data.train]
        obj = obj.train(train)
    if not hasattr(obj, "predict"):
        raise UserError(f"base forecaster '{name}' is not a GluonTS Predictor or Estimator (no predict/train method)")
    return obj if isinstance(obj, (RidgeForecaster, GluonTSBase)) else GluonTSBase(obj, num_samples)


def forecast_samples(forecasts, prediction_length: int) -> list[np.ndarray]:
    """Each forecast's samples (N, prediction_length); a clear error when a base forecaster
    returns another horizon."""
    out = []
    for f in forecasts:
        s = np.asarray(f.samples if hasattr(f, "samples") else f.to_sample_forecast().samples, dtype=np.float32)
        if s.ndim != 2 or s.shape[1] != prediction_length:
            raise UserError(
                f"base forecast for '{getattr(f, 'item_id', '?')}' has shape {s.shape}; expected (samples, {prediction_length}) "
                f"— the base forecaster must predict prediction_length={prediction_length} steps"
            )
        out.append(s)
    return out
