"""Bad input is a one-line error that says where and how to fix it, never a silently wrong result."""
import numpy as np
import pytest
import torch

from gencond.cli import main
from gencond.errors import UserError
from timeseries.data import TimeSeriesData, load_dataset, read_series_file, synthetic_series
from timeseries.forecast import TSDiffForecaster, fan_chart
from timeseries.synthesis import plot_windows


def _csv(tmp_path, text: str):
    path = tmp_path / "my.csv"
    path.write_text(text)
    return path


def _hourly(values: dict, hours=range(8)) -> str:
    """CSV text: a time column of the given hours of 2024-01-01, then one column per series."""
    rows = ["time," + ",".join(values)]
    rows += [f"2024-01-01 {h:02d}:00," + ",".join(str(v[i]) for v in values.values()) for i, h in enumerate(hours)]
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------- JSON lines


def test_jsonl_broken_line_names_file_and_line(tmp_path):
    path = tmp_path / "my.jsonl"
    good = '{"start": "2024-01-01", "target": [1, 2, 3]}'
    path.write_text(f"{good}\n{good}\n{{\"start\": \"2024-01-01\", \"target\": [1, 2\n")
    with pytest.raises(UserError, match=r"my\.jsonl line 3: not valid JSON \("):
        read_series_file(path, "D", None)


def test_jsonl_entry_without_target_or_with_bad_values(tmp_path):
    path = tmp_path / "my.jsonl"
    path.write_text('{"start": "2024-01-01", "target": [1, 2]}\n{"start": "2024-01-01", "values": [1]}\n')
    with pytest.raises(UserError, match=r"my\.jsonl line 2: entry has no 'target'"):
        read_series_file(path, "D", None)
    path.write_text('{"start": "2024-01-01", "target": [1, "x"]}\n')
    with pytest.raises(UserError, match=r"my\.jsonl line 1: .*target"):
        read_series_file(path, "D", None)
    path.write_text('[1, 2, 3]\n')
    with pytest.raises(UserError, match=r"my\.jsonl line 1: .*not a JSON object"):
        read_series_file(path, "D", None)


# ---------------------------------------------------------------- CSV


def test_csv_without_timestamp_column_is_an_error(tmp_path):
    path = _csv(tmp_path, "a,b\n" + "".join(f"{i},{2 * i}\n" for i in range(30)))
    with pytest.raises(UserError, match=r"my\.csv: .*column 'a'.*not timestamps.*data\.timestamp_column"):
        read_series_file(path, None, None)
    path = _csv(tmp_path, "a,b\nx,1\ny,2\n")
    with pytest.raises(UserError, match=r"my\.csv: .*column 'a'.*'x'.*data\.timestamp_column"):
        read_series_file(path, None, None)


def test_csv_non_number_names_column_and_line(tmp_path):
    b = [1, 2, 3, 4, 5, "1O.5", 7, 8]  # the typo is on line 7 (after the header)
    path = _csv(tmp_path, _hourly({"a": list(range(8)), "b": b}))
    with pytest.raises(UserError, match=r"my\.csv: column 'b' line 7 \(2024-01-01 05:00\): '1O\.5' is not a number; "
                                        r"fix it, .*empty.*data\.coerce_non_numeric=true"):
        read_series_file(path, "h", None)
    entries, _ = read_series_file(path, "h", None, coerce_non_numeric=True)
    assert np.isnan(entries[1]["target"][5]) and np.nansum(entries[1]["target"]) == 30


def test_csv_missing_value_spellings_stay_missing(tmp_path):
    path = _csv(tmp_path, _hourly({"a": [1, "", "NaN", "nan", "null", 6, 7, 8]}))
    entries, freq = read_series_file(path, None, None)
    assert freq.lower() == "h" and np.isnan(entries[0]["target"][1:5]).all() and entries[0]["target"][5] == 6


def test_csv_irregular_timestamps_are_an_error(tmp_path):
    path = _csv(tmp_path, _hourly({"a": list(range(8))}, hours=[0, 1, 2, 3, 4, 7, 8, 9]))
    with pytest.raises(UserError, match=r"my\.csv: timestamps are not regular at freq 'h': line 7 \(2024-01-01 07:00\) "
                                        r"follows 2024-01-01 04:00; .*empty cells"):
        read_series_file(path, "h", None)
    path = _csv(tmp_path, _hourly({"a": list(range(4))}, hours=[0, 1, 1, 2]))  # a repeated hour
    with pytest.raises(UserError, match=r"not regular at freq 'h': line 4 \(2024-01-01 01:00\) follows 2024-01-01 01:00"):
        read_series_file(path, "h", None)
    with pytest.raises(UserError, match=r"my\.csv: unknown frequency 'fortnightly'"):
        read_series_file(path, "fortnightly", None)


def test_regular_csv_with_freq_loads(tmp_path):
    path = _csv(tmp_path, _hourly({"a": list(range(8))}))
    data = load_dataset(str(path), freq="h", prediction_length=2)
    assert str(data.train[0]["start"]) == "2024-01-01 00:00" and len(data.train[0]["target"]) == 6


# ---------------------------------------------------------------- CLI flags


@pytest.mark.parametrize("argv, message", [
    (["forecast", "RUN", "--scale", "-5"], "argument --scale: must be a finite number ≥ 0, got '-5'"),
    (["forecast", "RUN", "--scale", "nan"], "argument --scale: must be a finite number ≥ 0, got 'nan'"),
    (["forecast", "RUN", "--scale", "inf"], "argument --scale: must be a finite number ≥ 0"),
    (["forecast", "RUN", "--samples", "0"], "argument --samples: must be an integer ≥ 1, got '0'"),
    (["forecast", "RUN", "--steps", "-1"], "argument --steps: must be an integer ≥ 1"),
    (["forecast", "RUN", "--timesteps", "99:50"], "argument --timesteps: must be ranges FIRST:LAST:STRIDE"),
    (["forecast", "RUN", "--timesteps", "50:99:1"], "(FIRST >= LAST >= 0, STRIDE >= 1) joined by +, e.g. 99:52:12+50:26:2+25:0:1; got '50:99:1'"),
    (["forecast", "RUN", "--eta", "-0.5"], "argument --eta: must be a finite number ≥ 0, got '-0.5'"),
    (["forecast", "RUN", "--batch-size", "0"], "argument --batch-size: must be an integer ≥ 1"),
    (["forecast", "RUN", "--max-series", "0"], "argument --max-series: must be an integer ≥ 1"),
    (["forecast", "RUN", "--missing-points", "0"], "argument --missing-points: must be an integer ≥ 1"),
    (["forecast", "RUN", "--threads", "0"], "argument --threads: must be an integer ≥ 1"),
    (["refine", "RUN", "--step-size", "0"], "argument --step-size: must be a finite number > 0"),
    (["refine", "RUN", "--step-size", "inf"], "argument --step-size: must be a finite number > 0"),
    (["refine", "RUN", "--iterations", "0"], "argument --iterations: must be an integer ≥ 1"),
    (["refine", "RUN", "--samples", "-3"], "argument --samples: must be an integer ≥ 1"),
    (["refine", "RUN", "--tau", "-1"], "argument --tau: must be an integer ≥ 0"),
    (["sample", "RUN", "--num", "0"], "argument --num: must be an integer ≥ 1"),
    (["sample", "RUN", "--steps", "0"], "argument --steps: must be an integer ≥ 1"),
    (["eval", "RUN", "--lps", "--batch-size", "-1"], "argument --batch-size: must be an integer ≥ 1"),
])
def test_bad_numeric_flags_are_refused(argv, message, tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("task: tsdiff\n")
    with pytest.raises(SystemExit) as exit:
        main([str(tmp_path) if a == "RUN" else a for a in argv])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1], err


@pytest.mark.parametrize("scale", [-5.0, float("nan"), float("inf")])
def test_forecaster_refuses_a_bad_guidance_scale_from_the_config(scale):
    with pytest.raises(UserError, match="guidance scale must be a finite number ≥ 0"):
        TSDiffForecaster(torch.nn.Identity(), None, None, None, scale=scale)


# ---------------------------------------------------------------- plots


def _forecasts(entries, pl):
    from gluonts.model.forecast import SampleForecast

    rng = np.random.default_rng(0)
    return [SampleForecast(e["target"][-pl:] + rng.normal(size=(8, pl)), start_date=e["start"] + len(e["target"]) - pl,
                           item_id=e["item_id"]) for e in entries]


def test_fan_chart_says_how_many_windows_and_labels_the_truth(tmp_path):
    entries = [{**e, "target": e["target"][:100]} for e in synthetic_series(num_series=10, length=100)]
    fig = fan_chart(entries, _forecasts(entries, 12), tmp_path / "fan.png", "h", title="demo")
    assert (tmp_path / "fan.png").is_file()
    assert "6 of 10 test windows" in fig._suptitle.get_text() and fig._suptitle.get_text().startswith("demo")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "truth" in labels and "history" in labels and "median" in labels
    fig = fan_chart(entries[:2], _forecasts(entries[:2], 12), tmp_path / "fan.png", "h", unit="series")
    assert "2 of 2 series" in fig._suptitle.get_text()


def test_windows_plot_labels_real_and_synthetic_rows(tmp_path):
    series = synthetic_series(num_series=2, length=200)
    data = TimeSeriesData("synthetic", "h", 12, series, series)
    fig = plot_windows(data, np.ones((20, 60), np.float32), tmp_path / "w.png", 48, count=3)
    rows = [ax.get_ylabel() for ax in (fig.axes[0], fig.axes[3])]
    assert rows[0].startswith("real") and rows[1].startswith("synthetic") and "3 of 20" in rows[1]
