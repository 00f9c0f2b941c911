"""The ``tsdiff`` task's config schema (kept light: the CLI reads it without importing torch)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

from gencond.config import DiffusionConfig, RunConfig, SamplingConfig, TrainConfig, above, at_least, between, one_of, ranged

MISSING_SCENARIOS = ("RM", "BM-B", "BM-E")  # random, a block at the beginning / end of the context
REFINERS = tuple(f"{method}-{prior}" for method in ("lmc", "ml") for prior in ("quantile", "mse"))


@dataclass
class TSDiffModelConfig:
    """The TSDiff denoiser: the arguments of :class:`timeseries.model.TSDiffDenoiser` that a config sets, declared
    here once (the constructor's defaults are these), and TSDiff-Cond's switch and training scenarios."""

    TASK_KEYS: ClassVar[tuple[str, ...]] = ("conditional", "cond_missing_prob", "cond_missing")  # not arguments

    hidden_channels: int = ranged(64, at_least(1))
    num_blocks: int = ranged(3, at_least(1))
    state_size: int = ranged(128, at_least(1))
    step_embedding_dim: int = ranged(128, at_least(2))
    init_skip: bool = False
    dropout: float = ranged(0.0, between(0, 1, high_open=True))
    conditional: bool = False  # TSDiff-Cond: the denoiser also reads the known context and its mask
    # TSDiff-Cond training: chance that a window's context loses data.missing_points points as in a
    # random missing-value scenario (so one model serves RM, BM-B and BM-E)
    cond_missing_prob: float = ranged(0.5, between(0, 1))
    cond_missing: List[str] = ranged(domain=one_of(*MISSING_SCENARIOS), factory=lambda: ["RM", "BM-B", "BM-E"])


@dataclass
class TSDataConfig:
    dataset: str = "???"  # a GluonTS dataset name, 'synthetic', or a .csv / .jsonl file
    root: Optional[str] = None  # where GluonTS datasets live (else $GENCOND_DATA_DIR/gluonts, then GluonTS's cache)
    freq: Optional[str] = None  # required for .jsonl, inferred for .csv, the dataset's own otherwise
    prediction_length: Optional[int] = ranged(None, at_least(1))  # required for files; must match a GluonTS dataset's
    context_length: int = ranged(360, at_least(1))
    lags: Optional[List[int]] = ranged(None, at_least(1))  # None = TSDiff's defaults for the frequency
    use_lags: bool = True
    num_test_windows: int = ranged(1, at_least(1))  # rolling test windows cut from the end of .csv / .jsonl / synthetic series
    timestamp_column: Optional[str] = None  # CSV; default: the first column
    coerce_non_numeric: bool = False  # CSV: read cells that are not numbers as missing values (default: an error)
    max_series: Optional[int] = ranged(None, at_least(1))  # use only the first N series (quick experiments, tests)
    missing_points: int = ranged(168, at_least(1))  # context points a missing-value scenario hides (paper: 168; Exchange 180)


@dataclass
class ForecastConfig:
    guidance: str = ranged("quantile", one_of("quantile", "mse"))  # quantile (TSDiff-Q) | mse (TSDiff-MS)
    scale: float = 8.0  # guidance scale s
    # guide by the loss's Moreau envelope at each step's own size (gencond.guidance.ObservationGuidance): coarse
    # steps stop overshooting the context; false = TSDiff's plain loss gradient (the paper's, for DDPM-100)
    proximal_guidance: bool = True
    num_samples: int = ranged(100, at_least(1))
    # windows (series × samples) sampled together; on CPU, batches whose activations pass glibc's
    # 32 MB mmap threshold are page-faulted in at every step, which dominates the time: raise it on a GPU
    batch_size: int = ranged(200, at_least(1))
    validation_samples: int = ranged(16, at_least(1))
    validation_series: int = ranged(64, at_least(1))
    missing: Optional[str] = ranged(None, one_of(*MISSING_SCENARIOS))  # RM | BM-B | BM-E: hide data.missing_points context points before forecasting
    # recalibrate each forecast on calibration_windows windows (prediction_length values each) per series that end
    # before the forecast starts (timeseries.calibration; docs "Calibration"): "width" scales the spread around the
    # median, "quantile" maps every quantile (calibrates the generated series, but cost Exchange 37 % CRPS)
    # (benchmarks/results/timeseries/tsdiff_calibration.jsonl)
    recalibrate: bool = True
    calibration_windows: int = ranged(2, at_least(1))
    recalibration: str = ranged("width", one_of("width", "quantile"))


@dataclass
class RefineConfig:
    """Refinement of base forecasts (TSDiff §4.2): the paper's settings."""

    step_size: float = ranged(0.1, above(0))  # eta (the paper: 0.01 for Exchange)
    iterations: int = ranged(20, at_least(1))
    prior_weight: float = 1.0  # lambda
    noise_scale: float = 0.1  # LMC's noise factor
    tau: Optional[int] = None  # None = the step whose denoising loss is closest to the mean
    num_samples: int = ranged(100, at_least(1))


def _tsdiff_diffusion() -> DiffusionConfig:
    return DiffusionConfig(num_train_timesteps=100, beta_schedule="linear", beta_start=1e-4, beta_end=0.1)


def power_timesteps(num_steps: int, num_train_timesteps: int, power: float = 1.5) -> List[int]:
    """round((T - 1) (i / (num_steps - 1))^power), i = num_steps - 1 .. 0, repeats dropped: power > 1 packs the
    steps towards t = 0."""
    top = num_train_timesteps - 1
    return sorted({round(top * (i / max(num_steps - 1, 1)) ** power) for i in range(num_steps)}, reverse=True)


def _tsdiff_sampling() -> SamplingConfig:
    # DDPM on 20 of the 100 timesteps, strides 8 at t = 99 down to 1 near 0 (power 1.5), with proximal guidance
    # (forecast.proximal_guidance; its step size follows the network's measured shrinkage where abar/(1-abar) >= 1,
    # gencond.sampling): within 2.5 % of the paper's DDPM-100 CRPS in all 7 cases measured (two Exchange models,
    # the generated series, several sampler seeds; 25 steps were within 3.3 %) with a fifth of its network
    # evaluations (README; --steps 100 --plain-guidance gives the paper's chain).
    # 10 windows of 390 x 64 activations (~1 MB) per network call stay in a core's caches (a guided step of 100
    # samples 1.2x, of 200 1.45x faster on 1 thread); on several threads the calls run side by side, one
    # single-threaded worker per thread (gencond.sampling), which beat 20 rows per call on 2 threads (README).
    return SamplingConfig(timesteps=power_timesteps(20, 100), micro_batch=10)


def _tsdiff_train() -> TrainConfig:
    return TrainConfig(max_steps=128_000, batch_size=64, lr=1e-3, grad_clip=0.5, validate_every=6400, checkpoint_every=1000)


@dataclass
class TSDiffConfig(RunConfig):
    task: str = "tsdiff"
    train: TrainConfig = field(default_factory=_tsdiff_train)
    diffusion: DiffusionConfig = field(default_factory=_tsdiff_diffusion)
    sampling: SamplingConfig = field(default_factory=_tsdiff_sampling)
    model: TSDiffModelConfig = field(default_factory=TSDiffModelConfig)
    data: TSDataConfig = field(default_factory=TSDataConfig)
    forecast: ForecastConfig = field(default_factory=ForecastConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
