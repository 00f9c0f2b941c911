"""Refinement, missing-value scenarios, TSDiff-Cond and the linear predictive score."""
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from gencond.config import DiffusionConfig
from gencond.diffusion import DiffusionProcess
from gencond.errors import UserError
from gencond.guidance import ObservationGuidance
from timeseries.baselines import forecast_samples, real_windows
from timeseries.data import TimeSeriesData, WindowBuilder, hide_context, missing_positions
from timeseries.model import TSDiffDenoiser
from timeseries.refine import Refiner, RefinementDiverged
from timeseries.synthesis import linear_predictive_score
from timeseries.task import TSDiffConfig, conditional_batch

BUILDER = WindowBuilder(context_length=24, prediction_length=8, lags=[8])
PROCESS = DiffusionProcess(DiffusionConfig(num_train_timesteps=20, beta_end=0.1))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = TSDiffDenoiser(in_channels=BUILDER.channels, hidden_channels=8, num_blocks=1, state_size=8, step_embedding_dim=16)
    torch.nn.init.normal_(m.output_mlp[-1].weight, std=0.3)  # the output layer starts at zero: make eps depend on x
    return m


def _pasts(n=3, length=40, seed=0):
    rng = np.random.default_rng(seed)
    return [10 + np.cumsum(rng.normal(size=length)).astype(np.float32) for _ in range(n)]


def test_missing_positions_are_exactly_the_advertised_ones():
    rng = np.random.default_rng(0)
    assert missing_positions("BM-B", 5, 20, rng).tolist() == [0, 1, 2, 3, 4]
    assert missing_positions("BM-E", 5, 20, rng).tolist() == [15, 16, 17, 18, 19]
    rm = missing_positions("RM", 5, 20, rng)
    assert len(set(rm.tolist())) == 5 and rm.min() >= 0 and rm.max() < 20
    past = np.arange(30, dtype=np.float32)  # the context is the last 20 values: 10..29
    hidden = hide_context(past, "BM-E", 5, 20, rng)
    assert np.flatnonzero(np.isnan(hidden)).tolist() == [25, 26, 27, 28, 29]
    assert np.flatnonzero(np.isnan(hide_context(past, "BM-B", 5, 20, rng))).tolist() == [10, 11, 12, 13, 14]
    with pytest.raises(UserError, match="unknown missing-value scenario 'XX'"):
        missing_positions("XX", 5, 20, rng)
    with pytest.raises(UserError, match="missing points must be in 1..19"):
        missing_positions("RM", 20, 20, rng)


def test_conditional_batch_hides_future_and_scenario_points():
    cfg = OmegaConf.merge(OmegaConf.structured(TSDiffConfig), {"data": {"dataset": "x", "missing_points": 6},
                                                               "model": {"conditional": True, "cond_missing_prob": 1.0,
                                                                         "cond_missing": ["BM-B"]}})
    values = np.tile(np.arange(1, BUILDER.raw_length + 1, dtype=np.float32), (2, 1))
    x, cond, loss_mask = conditional_batch(cfg, BUILDER, values, np.ones_like(values), torch.Generator().manual_seed(0))
    known = cond[..., BUILDER.channels:]
    assert cond.shape == (2, BUILDER.length, 2 * BUILDER.channels)
    assert known[:, :6, 0].sum() == 0 and known[:, 6:24, 0].min() == 1 and known[:, 24:, 0].sum() == 0
    torch.testing.assert_close(cond[..., : BUILDER.channels], x * known)
    torch.testing.assert_close(loss_mask, torch.ones_like(loss_mask))  # the loss counts every observed value


def test_lmc_with_zero_step_is_the_identity(model):
    base = [np.full((4, 8), 12.0, np.float32) + np.arange(4)[:, None] for _ in range(3)]
    refiner = Refiner(model, PROCESS, BUILDER, tau=5, method="lmc", step_size=0.0, num_samples=4, progress=False)
    refined = refiner.refine(_pasts(), base)
    expected = np.stack([np.quantile(b, np.arange(1, 5) / 5, axis=0) for b in base])
    np.testing.assert_allclose(refined, expected, rtol=1e-5)


@pytest.mark.parametrize("prior", ["mse", "quantile"])
def test_ml_refinement_lowers_its_energy(model, prior):
    refiner = Refiner(model, PROCESS, BUILDER, tau=5, method="ml", prior=prior, step_size=0.05, iterations=20,
                      num_samples=4, progress=False)
    raw = [BUILDER.past_window(p) for p in _pasts(n=8)]
    x, mask, _ = BUILDER.features(np.stack([v for v, _ in raw]), np.stack([o for _, o in raw]))
    target = x.clone()
    x[:, 24:, 0] = 3.0  # a start far from the base forecast (the observed level)
    target[:, 24:, 0] = target[:, :24, 0].mean(1, keepdim=True)
    future = torch.zeros_like(mask)
    future[:, 24:, 0] = 1
    prior_energy = ObservationGuidance(target, future, torch.full((len(x),), 0.5) if prior == "quantile" else None)
    noises = [torch.randn(x.shape, generator=torch.Generator().manual_seed(s)) for s in range(8)]

    def mean_energy(y):
        with torch.no_grad():
            return float(torch.stack([refiner.energy(y, prior_energy, n) for n in noises]).mean())

    refined = refiner.refine_windows(x.clone(), 1 - mask, prior_energy, torch.Generator().manual_seed(1))
    assert mean_energy(refined) < mean_energy(x) - 1.0  # the denoising part alone is ~65: sum of eps²)
    torch.testing.assert_close(refined * mask, x * mask)  # observed values never move


def test_diverging_refinement_and_bad_base_forecasts_are_clear_errors(model):
    refiner = Refiner(model, PROCESS, BUILDER, tau=5, method="ml", step_size=1e6, num_samples=2, progress=False)
    base = [np.full((2, 8), 12.0, np.float32)] * 3
    with pytest.raises(RefinementDiverged, match="diverged at iteration 1 .* lower the step size"):
        refiner.refine(_pasts(), base)
    with pytest.raises(UserError, match=r"shape \(N, 8\), got \(2, 5\)"):
        refiner.refine(_pasts(), [np.ones((2, 5), np.float32)] * 3)

    class Forecast:
        samples, item_id = np.ones((3, 5)), "a"

    with pytest.raises(UserError, match="expected \\(samples, 8\\).*prediction_length=8"):
        forecast_samples([Forecast()], 8)


def _linear_process(n_series=6, length=400, seed=0):
    """x_t = 1 + 0.5 sin(2πt/8 + φ) + small noise: it obeys the linear recurrence
    x_t − 1 = √2 (x_{t−1} − 1) − (x_{t−2} − 1), so a Ridge can recover it."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return [{"start": pd.Period("2020-01-01", "D"), "item_id": str(i),
             "target": (1 + 0.5 * np.sin(2 * np.pi * t / 8 + rng.uniform(0, 6.3)) + 0.01 * rng.normal(size=length)).astype(np.float32)}
            for i in range(n_series)]


def test_lps_of_windows_from_a_known_linear_process_is_low():
    series = _linear_process()
    tests = [{**e, "target": e["target"][: len(e["target"]) - 4 * k]} for e in series for k in range(5)]
    data = TimeSeriesData("ar1", "D", 4, [{**e, "target": e["target"][:-20]} for e in series], tests)
    windows = real_windows(data.train, WindowBuilder(16, 4, lags=[]), 2000)
    good = linear_predictive_score(windows, data, 16)["CRPS"]
    decoupled = windows.copy()
    decoupled[:, 16:] = decoupled[np.random.default_rng(0).permutation(len(windows)), 16:]  # futures of other windows
    bad = linear_predictive_score(decoupled, data, 16)["CRPS"]
    assert good < 0.03 and good < 0.2 * bad
    with pytest.raises(UserError, match="10 windows are fewer than the 16 features"):
        linear_predictive_score(windows[:10], data, 16)
