import numpy as np
import pandas as pd
import pytest
import torch

from gencond.errors import UserError
from timeseries.data import (
    TrainingWindows, WindowBuilder, default_lags, load_dataset, read_series_file, split_rolling,
)


def test_features_lags_scaling_and_mask():
    builder = WindowBuilder(context_length=4, prediction_length=2, lags=[1, 3])
    values = np.arange(1, 10, dtype=np.float32)[None]  # history 3 + context 4 + prediction 2
    observed = np.ones_like(values)
    x, mask, scale = builder.features(values, observed)
    assert x.shape == mask.shape == (1, 6, 3)
    assert scale.item() == pytest.approx(np.mean([4, 5, 6, 7]))  # mean |value| over the context only
    raw = torch.from_numpy(values[0]) / scale
    torch.testing.assert_close(x[0, :, 0], raw[3:9])
    torch.testing.assert_close(x[0, :, 1], raw[2:8])  # lag 1
    torch.testing.assert_close(x[0, :, 2], raw[0:6])  # lag 3
    assert mask.min() == 1


def test_missing_values_are_masked_not_propagated():
    builder = WindowBuilder(context_length=4, prediction_length=2, lags=[2])
    values = np.array([[1, 2, np.nan, 4, 5, 6, 7, 8]], dtype=np.float32)
    observed = np.isfinite(values).astype(np.float32)
    x, mask, scale = builder.features(values, observed)
    assert torch.isfinite(x).all() and torch.isfinite(scale).all()
    assert mask[0, 0, 0] == 0 and x[0, 0, 0] == 0  # the NaN at the target channel
    assert mask[0, 2, 1] == 0  # ... and where lag 2 looks back at it
    assert scale.item() == pytest.approx(np.mean([4, 5, 6]))


def test_past_window_pads_short_series_as_unobserved():
    builder = WindowBuilder(context_length=5, prediction_length=2, lags=[3])
    values, observed = builder.past_window(np.array([1.0, 2.0, 3.0], np.float32))
    assert len(values) == builder.raw_length == 10
    np.testing.assert_array_equal(observed, [0, 0, 0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(values[5:8], [1, 2, 3])


def test_training_windows_are_a_function_of_the_generator():
    series = [{"target": np.arange(50, dtype=np.float32) + 1, "item_id": "a"},
              {"target": np.arange(12, dtype=np.float32) + 1, "item_id": "b"}]  # shorter than context
    windows = TrainingWindows(series, WindowBuilder(16, 4, [2]))
    a = windows.sample(32, torch.Generator().manual_seed(3))
    b = windows.sample(32, torch.Generator().manual_seed(3))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)
    x, mask, _ = a
    assert x.shape == (32, 20, 2)
    # every window has observed context and a fully observed future of the target
    assert (mask[:, :16, 0].sum(1) > 0).all() and (mask[:, 16:, 0] == 1).all()


def test_split_rolling_and_too_short_series():
    series = [{"start": pd.Period("2020-01-01", "D"), "target": np.arange(20, dtype=np.float32), "item_id": "s"}]
    train, test = split_rolling(series, prediction_length=3, num_windows=2)
    assert len(train[0]["target"]) == 14 and [len(t["target"]) for t in test] == [17, 20]
    with pytest.raises(UserError, match="too few for 7 test windows"):
        split_rolling(series, prediction_length=3, num_windows=7)


def test_csv_and_jsonl(tmp_path):
    idx = pd.date_range("2021-01-01", periods=60, freq="h")
    frame = pd.DataFrame({"time": idx, "a": np.arange(60.0), "b": np.ones(60)})
    frame.loc[5, "a"] = np.nan
    frame.to_csv(tmp_path / "s.csv", index=False)
    data = load_dataset(str(tmp_path / "s.csv"), prediction_length=6, num_test_windows=2)
    assert data.freq.lower() == "h" and [e["item_id"] for e in data.train] == ["a", "b"]
    assert len(data.test) == 4 and np.isnan(data.train[0]["target"][5])
    (tmp_path / "s.jsonl").write_text('{"start": "2021-01-01", "target": [1, 2, null, 4, 5, 6, 7, 8]}\n')
    entries, freq = read_series_file(tmp_path / "s.jsonl", "D", None)
    assert freq == "D" and np.isnan(entries[0]["target"][2])
    with pytest.raises(UserError, match="pass data.freq"):
        read_series_file(tmp_path / "s.jsonl", None, None)
    with pytest.raises(UserError, match="pass data.prediction_length"):
        load_dataset(str(tmp_path / "s.csv"))


def test_gluonts_dataset_lookup(data_dir, tmp_path, monkeypatch):
    data = load_dataset("exchange_rate_nips")
    assert (data.freq, data.prediction_length, len(data.train), len(data.test)) == ("B", 30, 8, 40)
    assert default_lags("B") == [30 * i for i in range(1, 13)]
    with pytest.raises(UserError, match="disagrees with dataset 'exchange_rate_nips'.*set it to 30"):
        load_dataset("exchange_rate_nips", prediction_length=24)
    monkeypatch.setenv("GENCOND_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError, match=f"dataset 'exchange_rate_nips' not found \\(looked in {tmp_path}"):
        load_dataset("exchange_rate_nips", root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="unknown dataset 'exchange_rates'"):
        load_dataset("exchange_rates")
