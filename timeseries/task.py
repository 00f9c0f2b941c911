"""The ``tsdiff`` task: its config schema, training job and the pieces forecasting reloads."""
from __future__ import annotations


import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from gencond.diffusion import DiffusionProcess
from gencond.errors import UserError
from gencond.training import TrainingJob

from .config import TSDiffConfig, TSDiffModelConfig  # noqa: F401  (the schema, re-exported)
from .data import MISSING_SCENARIOS, TimeSeriesData, TrainingWindows, WindowBuilder, default_lags, load_dataset, missing_positions
from .forecast import TSDiffForecaster, forecast_and_evaluate, known_condition


def load_data(cfg: DictConfig) -> TimeSeriesData:
    d = cfg.data
    return load_dataset(
        d.dataset, root=d.root, freq=d.freq, prediction_length=d.prediction_length,
        num_test_windows=d.num_test_windows, timestamp_column=d.timestamp_column, max_series=d.max_series,
        coerce_non_numeric=d.coerce_non_numeric,
    )


def window_builder(cfg: DictConfig, data: TimeSeriesData) -> WindowBuilder:
    if cfg.data.context_length < 1:
        raise UserError(f"data.context_length must be ≥ 1, got {cfg.data.context_length}")
    lags = [] if not cfg.data.use_lags else (list(cfg.data.lags) if cfg.data.lags is not None else default_lags(data.freq))
    if any(lag < 1 for lag in lags):
        raise UserError(f"data.lags must be positive, got {lags}")
    return WindowBuilder(cfg.data.context_length, data.prediction_length, lags)


def build_model(cfg: DictConfig, channels: int) -> torch.nn.Module:
    """The config's :class:`~timeseries.model.TSDiffDenoiser`: its ``model`` section (but the task's own keys),
    and what follows from the data and the diffusion (channels, TSDiff-Cond's inputs, input self-conditioning)."""
    from .model import TSDiffDenoiser

    section = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k not in TSDiffModelConfig.TASK_KEYS}
    return TSDiffDenoiser(**section, in_channels=channels, input_self_condition=cfg.diffusion.self_condition_prob > 0,
                          cond_channels=2 * channels if cfg.model.conditional else 0)


def make_forecaster(cfg: DictConfig, model, builder: WindowBuilder, **overrides) -> TSDiffForecaster:
    f = cfg.forecast
    options = dict(guidance=f.guidance, scale=f.scale, proximal=f.proximal_guidance, num_samples=f.num_samples,
                   batch_size=f.batch_size, seed=cfg.seed, calibration_windows=f.calibration_windows if f.recalibrate else 0,
                   recalibration=f.recalibration)
    options.update(overrides)
    device = next(model.parameters()).device
    return TSDiffForecaster(model, DiffusionProcess(cfg.diffusion), builder, cfg.sampling, device=device, **options)


def build(cfg: DictConfig) -> TrainingJob:
    """The training job of a TSDiff config: random windows, denoising loss, CRPS validation."""
    data = load_data(cfg)
    builder = window_builder(cfg, data)
    windows = TrainingWindows(data.train, builder)
    model = build_model(cfg, builder.channels)
    process = DiffusionProcess(cfg.diffusion)
    batch_size = cfg.train.batch_size

    if cfg.model.conditional:
        check_missing(cfg)

        def batch_fn(step: int, generator: torch.Generator):
            return conditional_batch(cfg, builder, *windows.sample_raw(batch_size, generator), generator)
    else:
        def batch_fn(step: int, generator: torch.Generator):
            x, mask, _ = windows.sample(batch_size, generator)
            return x, None, mask

    def loss_fn(model, batch, generator):
        device = next(model.parameters()).device
        x, cond, mask = (None if b is None else b.to(device) for b in batch)
        return process.training_loss(model, x, cond=cond, mask=mask, generator=generator)

    val_entries = data.validation_entries(cfg.forecast.validation_series)

    def validate(model) -> dict[str, float]:
        forecaster = make_forecaster(cfg, model, builder, num_samples=cfg.forecast.validation_samples, progress=False,
                                     calibration_windows=0)  # raw forecasts: validation compares checkpoints
        _, metrics = forecast_and_evaluate(forecaster, val_entries, data.freq, data.prediction_length)
        return {"val_crps": metrics["CRPS"], "val_nd": metrics["ND"]}

    return TrainingJob(model, batch_fn, loss_fn, validate, monitor="val_crps")


def check_missing(cfg: DictConfig) -> None:
    """One-line errors for missing-value settings before any work starts."""
    for name in list(cfg.model.cond_missing) + ([cfg.forecast.missing] if cfg.forecast.missing else []):
        if name not in MISSING_SCENARIOS:
            raise UserError(f"unknown missing-value scenario '{name}'; use one of {', '.join(MISSING_SCENARIOS)}")
    m = cfg.model
    hides = cfg.forecast.missing or (m.conditional and m.cond_missing_prob > 0 and len(m.cond_missing) > 0)
    if hides and not 0 < cfg.data.missing_points < cfg.data.context_length:
        raise UserError(f"data.missing_points must be in 1..{cfg.data.context_length - 1}, got {cfg.data.missing_points}")
    if not 0 <= cfg.model.cond_missing_prob <= 1:
        raise UserError(f"model.cond_missing_prob must be in [0, 1], got {cfg.model.cond_missing_prob}")


def conditional_batch(cfg: DictConfig, builder: WindowBuilder, values: np.ndarray, observed: np.ndarray,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, cond, loss mask) for TSDiff-Cond: the known part is the observed context, which with
    probability ``model.cond_missing_prob`` also loses points as in a random missing-value scenario.
    The loss counts every observed value: the model denoises the whole window, known part included,
    so that its sampled context stays on the data manifold the future is predicted from."""
    known = observed.copy()
    known[:, builder.history + builder.context_length:] = 0
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    scenarios = list(cfg.model.cond_missing)
    for row in np.flatnonzero(rng.random(len(known)) < cfg.model.cond_missing_prob) if scenarios else []:
        hidden = missing_positions(scenarios[rng.integers(len(scenarios))], cfg.data.missing_points, builder.context_length, rng)
        known[row, builder.history + hidden] = 0
    x_known, known_mask, scale = builder.features(values, known)
    x, mask, _ = builder.features(values, observed, scale=scale.numpy())
    return x, known_condition(x_known, known_mask), mask
