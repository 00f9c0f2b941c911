"""Calibration metrics against a hand-computed example, the too-narrow flag, and a recalibration that
reads nothing at or after the forecast start."""
import numpy as np
import pandas as pd
import pytest
from gluonts.model.forecast import SampleForecast

from gencond.config import SamplingConfig
from gencond.errors import UserError
from timeseries.calibration import QuantileRecalibration, WidthRecalibration, calibration_windows, recalibrate
from timeseries.data import WindowBuilder, series_id
from timeseries.forecast import TSDiffForecaster, evaluate


def test_metrics_match_a_hand_computed_example():
    past, truth = np.array([0.0, 2, 4, 6, 8]), np.array([0.4, 5.2, 9.3, 12.0])
    entry = {"start": pd.Period("2024-01-01", "D"), "target": np.concatenate([past, truth]), "item_id": "a"}
    # GluonTS's q-quantile of N samples is the sorted sample number round((N - 1) q): of 0, 0.5, ..., 10 it is 10 q
    samples = np.tile(np.arange(21.0)[:, None] / 2, (1, 4))
    m = evaluate([entry], [SampleForecast(samples, start_date=pd.Period("2024-01-06", "D"))], "D")
    # y <= 10 q: 0.4 for q >= 0.1, 5.2 for q >= 0.6, 9.3 for q >= 0.95, 12 never
    for q, share in ((0.1, 0.25), (0.4, 0.25), (0.5, 0.25), (0.6, 0.5), (0.9, 0.5)):
        assert m[f"coverage_q{q}"] == pytest.approx(share)
    assert m["coverage_50"] == pytest.approx(0.25)  # (2.5, 7.5] holds 5.2
    assert m["coverage_80"] == pytest.approx(0.25)  # (1, 9] holds 5.2
    assert m["coverage_90"] == pytest.approx(0.5)  # (0.5, 9.5] holds 5.2 and 9.3
    # WIS = (|y - median| / 2 + sum_alpha alpha / 2 * IS_alpha) / (K + 1/2), intervals 50, 80, 90 %
    wis = []
    for y in truth:
        total = abs(y - 5) / 2
        for alpha in (0.5, 0.2, 0.1):
            lo, hi = 10 * alpha / 2, 10 * (1 - alpha / 2)
            total += alpha / 2 * ((hi - lo) + 2 / alpha * max(lo - y, 0) + 2 / alpha * max(y - hi, 0))
        wis.append(total / 3.5)
    assert m["WIS"] == pytest.approx(np.mean(wis))
    # MSIS of the 95 % interval, samples number round(0.5) = 0 and round(19.5) = 20: (0, 10), width 10, plus
    # 2 / 0.05 * 2 for y = 12; seasonal error 2 (daily data: lag 1)
    assert m["MSIS"] == pytest.approx((4 * 10 + 40 * 2) / 4 / 2)
    pinball = [sum(max(q * (y - 10 * q), (q - 1) * (y - 10 * q)) for y in truth) for q in np.arange(1, 10) / 10]
    assert m["CRPS"] == pytest.approx(2 * np.mean(pinball) / truth.sum())
    assert m["calibration"].startswith("too narrow: the central 80 % interval covers 25 %")


def _normal_entries(rng, count, spread, length=60, pl=20, shift=0.0):
    """Entries of iid N(10, 1) values with forecasts N(10 + shift, spread^2) of 100 samples."""
    entries, forecasts = [], []
    for i in range(count):
        entries.append({"start": pd.Period("2024-01-01", "D"), "target": 10 + rng.normal(size=length), "item_id": str(i)})
        forecasts.append(SampleForecast(10 + shift + spread * rng.normal(size=(100, pl)), start_date=pd.Period("2024-01-01", "D") + length - pl))
    return entries, forecasts


def test_a_too_narrow_forecaster_is_flagged_and_a_calibrated_one_is_not():
    rng = np.random.default_rng(0)
    narrow = evaluate(*_normal_entries(rng, 50, spread=0.3), "D")
    assert narrow["calibration"].startswith("too narrow") and narrow["coverage_80"] < 0.4
    good = evaluate(*_normal_entries(rng, 50, spread=1.0), "D")
    assert good["calibration"] == "ok" and abs(good["coverage_80"] - 0.8) < 0.05
    biased = evaluate(*_normal_entries(rng, 50, spread=1.0, shift=-0.4), "D")
    assert biased["calibration"].startswith("biased")


def test_recalibration_widens_a_too_narrow_forecast_to_its_nominal_coverage():
    rng = np.random.default_rng(1)
    fit = QuantileRecalibration.fit(0.3 * rng.normal(size=(100, 50, 20)) + 0.5, rng.normal(size=(100, 20)))
    samples = 0.3 * rng.normal(size=(200, 50, 20)) + 0.5
    truths = rng.normal(size=(200, 20))
    fixed = fit.apply(samples)
    for q in (0.1, 0.3, 0.5, 0.7, 0.9):
        assert abs((truths <= np.quantile(fixed, q, axis=1)).mean() - q) < 0.03
    assert (truths <= np.quantile(samples, 0.1, axis=1)).mean() > 0.3  # before: far too narrow and biased
    # each time step's values keep the samples' rank order
    np.testing.assert_array_equal(np.argsort(fixed, axis=1), np.argsort(samples, axis=1))
    with pytest.raises(UserError, match="needs ≥ 50"):
        QuantileRecalibration.fit(rng.normal(size=(1, 50, 20)), rng.normal(size=(1, 20)))


def test_width_recalibration_widens_around_the_median_it_leaves_in_place():
    rng = np.random.default_rng(6)
    fit = WidthRecalibration.fit(0.3 * rng.normal(size=(100, 50, 20)), rng.normal(size=(100, 20)))
    assert 2.5 < fit.width < 4.0  # truth spread 1 against samples 0.3: about 1 / 0.3
    samples = 0.3 * rng.normal(size=(200, 50, 20)) + 0.5  # too narrow and biased
    fixed = fit.apply(samples)
    np.testing.assert_allclose(np.median(fixed, axis=1), np.median(samples, axis=1))  # only the spread moves
    truths = rng.normal(size=(200, 20)) + 0.5
    assert abs(((truths > np.quantile(fixed, 0.1, axis=1)) & (truths <= np.quantile(fixed, 0.9, axis=1))).mean() - 0.8) < 0.03
    calibrated = WidthRecalibration.fit(rng.normal(size=(100, 50, 20)), rng.normal(size=(100, 20)))
    assert 0.85 < calibrated.width < 1.15  # a calibrated forecast stays about as it is
    with pytest.raises(UserError, match="needs ≥ 50"):
        WidthRecalibration.fit(rng.normal(size=(1, 50, 20)), rng.normal(size=(1, 20)))


def test_an_unknown_recalibration_is_refused():
    with pytest.raises(UserError, match="unknown recalibration 'conformal'.*quantile"):
        recalibrate([{"start": "2024-01-01", "target": np.ones(5)}], np.ones((1, 4, 2)),
                    [{"end": pd.Period("2024-01-01", "D"), "truth": np.ones(2)}], np.ones((1, 4, 2)), "conformal")


class _NarrowForecaster(TSDiffForecaster):
    """A forecaster without a model: samples around the last observed value, far too narrow."""

    def __init__(self, windows):
        super().__init__(None, None, WindowBuilder(20, 10, []), SamplingConfig(), num_samples=40, calibration_windows=windows)

    def sample_futures(self, pasts, store=None, offset=0):
        out = []
        for p in pasts:
            rng = np.random.default_rng(len(p) + 1000 * self.seed)
            out.append(p[-1] + 0.05 * rng.normal(size=(self.num_samples, 10)))
        return np.stack(out)


def _rolling(values, pl=10, windows=2):
    """Rolling test entries of one random walk per row (the earliest window first)."""
    return [{"start": pd.Period("2024-01-01", "D"), "target": v[: len(v) - (windows - 1 - w) * pl], "item_id": f"{i}_{w}",
             "series": str(i)} for w in range(windows) for i, v in enumerate(values)]


def test_recalibration_reads_nothing_at_or_after_the_forecast_start():
    rng = np.random.default_rng(2)
    values = np.cumsum(rng.normal(size=(8, 120)), axis=1)
    pl = 10
    pasts = [{**e, "target": e["target"][:-pl]} for e in _rolling(values)]
    first = [i for i, p in enumerate(pasts) if p["item_id"].endswith("_0")]
    start = len(pasts[first[0]]["target"])  # where the earliest forecasts start
    forecaster = _NarrowForecaster(windows=2)
    raw = np.stack([f.samples for f in _NarrowForecaster(windows=0).predict(pasts, "D")])
    fixed = np.stack([f.samples for f in forecaster.predict(pasts, "D")])
    assert forecaster.recalibrated == len(pasts)
    assert not np.allclose(fixed[first], raw[first])  # the recalibration did act on the earliest forecasts
    # change every value from the earliest forecast start on: the later windows' pasts hold them
    changed = values.copy()
    changed[:, start:] += 50 * rng.normal(size=changed[:, start:].shape)
    pasts2 = [{**e, "target": e["target"][:-pl]} for e in _rolling(changed)]
    again = np.stack([f.samples for f in _NarrowForecaster(windows=2).predict(pasts2, "D")])
    np.testing.assert_array_equal(again[first], fixed[first])


def test_calibration_windows_end_before_the_earliest_forecast_and_are_used_only_by_later_ones():
    rng = np.random.default_rng(3)
    pasts = [{**e, "target": e["target"][:-10]} for e in _rolling(np.cumsum(rng.normal(size=(8, 120)), axis=1))]
    windows = calibration_windows(pasts, 10, 2, series_id)
    assert len(windows) == 16 and all(w["end"] <= pd.Period("2024-01-01", "D") + 100 for w in windows)
    assert [w["end"] for w in windows[:8]] == [pd.Period("2024-01-01", "D") + 100] * 8  # the latest stretch first
    samples = rng.normal(size=(len(pasts), 40, 10))
    window_samples = rng.normal(size=(len(windows), 40, 10))
    _, done = recalibrate(pasts, samples, windows, window_samples)
    assert done == len(pasts)
    late = [{**w, "end": w["end"] + 1000} for w in windows]  # windows that end after every forecast start
    out, done = recalibrate(pasts, samples, late, window_samples)
    assert done == 0 and np.array_equal(out, samples)


def test_fan_chart_states_the_coverage_of_the_windows_it_shows(tmp_path):
    from timeseries.forecast import fan_chart

    rng = np.random.default_rng(4)
    entries, forecasts = _normal_entries(rng, 4, spread=0.3)
    fig = fan_chart(entries, forecasts, tmp_path / "fan.png", "D", max_series=2)
    shown = [f.samples for f in forecasts[:2]]
    truths = np.stack([e["target"][-20:] for e in entries[:2]])
    lo, hi = np.quantile(np.stack(shown), (0.05, 0.95), axis=1)
    expected = 100 * ((truths > lo) & (truths <= hi)).mean()
    assert f"the 90 % band {expected:.0f} % of the time" in fig._suptitle.get_text()
    assert "2 of 4 test windows shown" in fig._suptitle.get_text()


@pytest.mark.parametrize("method", ["width", "quantile"])
def test_a_recalibration_that_fails_on_the_newest_windows_is_not_used(method):
    from timeseries.calibration import checked_fit

    rng = np.random.default_rng(5)
    ages = np.repeat([1, 2], 20)
    samples = 0.3 * rng.normal(size=(40, 50, 20))
    narrow = rng.normal(size=(40, 20))  # every window: truth spread 1, samples 0.3 -> widened
    assert checked_fit(samples, narrow, ages, method) is not None
    episode = 0.3 * rng.normal(size=(40, 20))
    episode[ages == 2] += 2.0  # the older windows alone drifted up; the newest did not
    assert checked_fit(samples, episode, ages, method) is None
    assert checked_fit(samples[ages == 2], episode[ages == 2], ages[ages == 2] - 1, method) is not None  # one age: unchecked
