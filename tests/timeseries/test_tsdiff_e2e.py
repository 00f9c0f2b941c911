"""Train a tiny TSDiff on a slice of exchange_rate_nips through the CLI, resume it, forecast it."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gencond.cli import main

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "timeseries" / "exchange_rate_nips.yaml")
TINY = ["data.max_series=2", "data.context_length=60", "data.lags=[30]", "model.hidden_channels=16",
        "model.num_blocks=1", "model.state_size=16", "model.step_embedding_dim=32", "train.batch_size=16",
        "train.log_every=5", "train.checkpoint_every=10", "train.validate_every=10", "forecast.validation_samples=4",
        "forecast.num_samples=8", "sampling.scheduler=ddim", "sampling.num_steps=10"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    if not (Path(__import__("os").environ["GENCOND_DATA_DIR"]) / "gluonts" / "exchange_rate_nips").is_dir():
        pytest.skip("exchange_rate_nips is not under GENCOND_DATA_DIR")
    runs = tmp_path_factory.mktemp("runs")
    assert main(["train", CONFIG, f"runs_dir={runs}", "name=tiny", "train.max_steps=10", "--quiet", *TINY]) == 0
    assert main(["train", CONFIG, f"runs_dir={runs}", "name=tiny", "train.max_steps=20", "--quiet", *TINY]) == 0
    return runs / "tiny"


def test_training_resumed_without_losing_steps(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [5, 10, 15, 20]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert [r["step"] for r in rows if "val_crps" in r] == [10, 20]
    assert (run_dir / "best" / "config.json").exists() and (run_dir / "model" / "config.json").exists()


def test_changed_config_refuses_to_resume(run_dir, capsys):
    assert main(["train", str(run_dir), "model.hidden_channels=32", "--quiet"]) == 2
    assert "trained with a different config (model.hidden_channels)" in capsys.readouterr().err


def test_forecast_writes_metrics_csv_and_fan_chart(run_dir, tmp_path, capsys):
    out = tmp_path / "fc"
    assert main(["forecast", str(run_dir), "--out", str(out), "--quiet", "--scheduler", "ddim", "--steps", "5"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["series"] == 10  # 2 series × 5 rolling windows
    assert all(np.isfinite(metrics[k]) and metrics[k] > 0 for k in ("CRPS", "ND", "NRMSE", "MSIS", "WIS"))
    coverage = [metrics[f"coverage_q{q / 10:.1f}"] for q in range(1, 10)]
    assert all(0 <= c <= 1 for c in coverage) and coverage == sorted(coverage)
    assert metrics["coverage_80"] == pytest.approx(metrics["coverage_q0.9"] - metrics["coverage_q0.1"])
    assert metrics["calibration_windows"] == 2 and "recalibrated" in metrics and "calibration" in metrics  # on by default
    assert metrics["settings"].endswith("_recal2")
    table = pd.read_csv(out / "forecasts.csv")
    assert len(table) == 10 * 30 and (table["q0.1"] <= table["q0.9"]).all()
    assert (out / "fan_chart.png").read_bytes()[:4] == b"\x89PNG"
    assert '"CRPS"' in capsys.readouterr().out


def test_forecast_with_listed_timesteps_takes_them_and_names_its_folder(run_dir, capsys):
    assert main(["forecast", str(run_dir), "--quiet", "--max-series", "2", "--scheduler", "ddpm",
                 "--timesteps", "99:60:39+20:0:10"]) == 0  # 99, 60, 20, 10, 0 over the config's num_steps=10
    folders = [p.name for p in (run_dir / "forecasts").iterdir() if "_ddpm5t" in p.name]
    assert len(folders) == 1, folders
    assert main(["forecast", str(run_dir), "--quiet", "--max-series", "2", "--scheduler", "ddim", "--timesteps", "99:0:33"]) == 2
    assert "scheduler 'ddim' takes no sampling.timesteps" in capsys.readouterr().err


def test_forecast_future_of_own_csv(run_dir, tmp_path):
    idx = pd.bdate_range("2001-01-01", periods=200)
    pd.DataFrame({"date": idx, "x": 1 + 0.01 * np.arange(200.0)}).to_csv(tmp_path / "mine.csv", index=False)
    out = tmp_path / "future"
    assert main(["forecast", str(run_dir), "--data", str(tmp_path / "mine.csv"), "--future", "--out", str(out),
                 "--quiet", "--samples", "4", "--steps", "5", "--scheduler", "ddim"]) == 0
    table = pd.read_csv(out / "forecasts.csv")
    assert len(table) == 30 and table["timestamp"].iloc[0] == str(pd.Period(idx[-1], "B") + 1)
    assert json.loads((out / "metrics.json").read_text())["series"] == 1


def test_forecast_of_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["forecast", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_diverging_guidance_warns(run_dir, tmp_path):
    with pytest.warns(UserWarning, match="guided samples miss the observed context.*lower the guidance scale"):
        main(["forecast", str(run_dir), "--out", str(tmp_path), "--quiet", "--guidance", "mse", "--scale", "1e6",
              "--scheduler", "ddim", "--steps", "3", "--samples", "2", "--max-series", "1"])


def test_refine_reports_crps_before_and_after(run_dir, tmp_path, capsys):
    out = tmp_path / "refine"
    assert main(["refine", str(run_dir), "--base", "linear", "--refiners", "lmc-quantile,ml-mse", "--samples", "4",
                 "--max-series", "4", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["CRPS"]) == {"base", "lmc-quantile", "ml-mse"} and metrics["series"] == 4
    assert all(np.isfinite(v) and v > 0 for v in metrics["CRPS"].values())
    assert 0 <= metrics["tau"] < 100 and metrics["step_size"] == 0.01  # Exchange's eta from the config
    assert (out / "refined.png").exists() and "lmc-quantile: CRPS" in capsys.readouterr().out
    assert main(["refine", str(run_dir), "--base", "nowhere:Predictor", "--out", str(out)]) == 2
    assert "cannot load base forecaster 'nowhere:Predictor'" in capsys.readouterr().err


def test_refine_any_gluonts_predictor(run_dir, tmp_path):
    """A GluonTS predictor class named module:attr, built with --base-options (prediction_length filled in)."""
    out = tmp_path / "npts"
    assert main(["refine", str(run_dir), "--base", "gluonts.model.npts:NPTSPredictor", "--base-options",
                 '{"context_length": 60}', "--refiners", "ml-quantile", "--samples", "4", "--max-series", "2",
                 "--tau", "10", "--out", str(out), "--quiet"]) == 0
    crps = json.loads((out / "metrics.json").read_text())["CRPS"]
    assert set(crps) == {"base", "ml-quantile"} and all(np.isfinite(v) for v in crps.values())


def test_sample_and_lps(run_dir, tmp_path, capsys):
    assert main(["sample", str(run_dir), "--num", "64", "--steps", "5", "--scheduler", "ddim", "--out", str(tmp_path), "--quiet"]) == 0
    windows = np.load(tmp_path / "windows.npy")
    assert windows.shape == (64, 90) and np.isfinite(windows).all()
    assert main(["eval", str(run_dir), "--lps", "--windows", str(tmp_path / "windows.npy"), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "lps.json").read_text())
    assert report["windows"] == 64 and report["LPS_real"] > 0 and report["ratio"] == pytest.approx(report["LPS_synthetic"] / report["LPS_real"])
    assert (tmp_path / "real_vs_synthetic.png").exists()
    assert main(["eval", str(run_dir), "--lps", "--num", "10"]) == 2
    assert "10 windows are fewer than the 60 features" in capsys.readouterr().err


def test_missing_values_and_tsdiff_cond(run_dir, tmp_path):
    runs = run_dir.parent
    assert main(["train", CONFIG, f"runs_dir={runs}", "name=cond", "train.max_steps=10", "model.conditional=true",
                 "data.missing_points=30", "--quiet", *TINY]) == 0
    results = {}
    for run in (run_dir, runs / "cond"):
        out = tmp_path / run.name
        assert main(["forecast", str(run), "--missing", "BM-E", "--missing-points", "30", "--out", str(out), "--quiet",
                     "--max-series", "2", "--samples", "4"]) == 0
        results[run.name] = json.loads((out / "metrics.json").read_text())
    assert results["tiny"]["method"] == "TSDiff-Q" and results["cond"]["method"] == "TSDiff-Cond"
    assert all(r["missing"] == "BM-E" and np.isfinite(r["CRPS"]) for r in results.values())


FAST = ["--quiet", "--no-recalibrate", "--scheduler", "ddim", "--steps", "3", "--samples", "4", "--batch-size", "8"]


def samples_of(out):
    return pd.read_csv(out / "forecasts.csv")[["mean", "q0.1", "q0.5", "q0.9"]].to_numpy()


def test_an_interrupted_forecast_resumes_to_the_uninterrupted_one(run_dir, tmp_path, monkeypatch, capsys):
    import timeseries.forecast as forecast

    whole = tmp_path / "whole"
    assert main(["forecast", str(run_dir), "--out", str(whole), *FAST]) == 0
    real, calls = forecast.TSDiffForecaster._sample_chunk, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(forecast.TSDiffForecaster, "_sample_chunk", interrupted)
    resumed = tmp_path / "resumed"
    assert main(["forecast", str(run_dir), "--out", str(resumed), *FAST]) == 130  # Ctrl-C: gencond.errors.Interrupted's status
    assert len(list((resumed / "samples").glob("chunk_*.npz"))) == 2  # two chunks of 2 windows were written
    assert main(["forecast", str(run_dir), "--out", str(resumed), *FAST]) == 0
    assert len(calls) == 3 + 3  # 5 chunks: 2 read back, 3 sampled
    np.testing.assert_array_equal(samples_of(resumed), samples_of(whole))
    assert json.loads((resumed / "metrics.json").read_text())["CRPS"] == json.loads((whole / "metrics.json").read_text())["CRPS"]
    capsys.readouterr()
    assert main(["forecast", str(run_dir), "--out", str(resumed), *FAST[:-2], "--batch-size", "4"]) == 2
    assert "samples holds another forecast (chunk_size " in capsys.readouterr().err


def test_slices_add_up_to_the_whole_forecast(run_dir, tmp_path, capsys):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["forecast", str(run_dir), "--out", str(whole), *FAST]) == 0
    assert main(["forecast", str(run_dir), "--out", str(parts), "--series", "4:", *FAST]) == 0
    sliced = json.loads((parts / "metrics.json").read_text())
    assert sliced["series"] == 6 and sliced["slice"] == "4:10" and len(pd.read_csv(parts / "forecasts.csv")) == 6 * 30
    assert main(["forecast", str(run_dir), "--out", str(parts), "--series", "0:4", *FAST]) == 0
    assert main(["forecast", str(run_dir), "--out", str(parts), *FAST]) == 0  # every chunk is there already
    np.testing.assert_array_equal(samples_of(parts), samples_of(whole))
    capsys.readouterr()
    assert main(["forecast", str(run_dir), "--out", str(tmp_path / "x"), "--series", "3:5", *FAST]) == 2
    assert "a multiple of the chunk size 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["forecast", str(run_dir), "--series", "5:2", *FAST])
    assert "need 0 <= START < END" in capsys.readouterr().err


def test_non_negative_data_gets_non_negative_forecasts_unless_turned_off(run_dir, tmp_path):
    import timeseries.forecast as forecast

    out = tmp_path / "nonneg"
    assert main(["forecast", str(run_dir), "--out", str(out), *FAST, "--scale", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["non_negative"] is True  # exchange rates are positive
    assert (pd.read_csv(out / "forecasts.csv")[[f"q{q / 10:.1f}" for q in range(1, 10)]].to_numpy() >= 0).all()
    free = tmp_path / "free"
    assert main(["forecast", str(run_dir), "--out", str(free), *FAST, "--scale", "0", "--allow-negative"]) == 0
    assert json.loads((free / "metrics.json").read_text())["non_negative"] is False
    assert forecast.PLACEHOLDER_YEAR >= 1750


def test_plain_guidance_switch_changes_the_samples_and_is_recorded(run_dir, tmp_path):
    outs = {}
    for name, extra in (("prox", []), ("plain", ["--plain-guidance"])):
        outs[name] = tmp_path / name
        ddpm = [*FAST, "--scheduler", "ddpm"]  # DDPM steps have a size to smooth by (DDIM's: none)
        assert main(["forecast", str(run_dir), "--out", str(outs[name]), *ddpm, *extra]) == 0
    prox, plain = (json.loads((outs[n] / "metrics.json").read_text()) for n in ("prox", "plain"))
    assert prox["proximal_guidance"] is True and plain["proximal_guidance"] is False
    assert "_prox_" in prox["settings"] and "_prox" not in plain["settings"]  # distinct default folders, never mixed
    a, b = (pd.read_csv(outs[n] / "forecasts.csv")["q0.5"].to_numpy() for n in ("prox", "plain"))
    assert a.shape == b.shape and not np.allclose(a, b)


def test_hourly_data_prints_no_deprecation_warning_per_series(run_dir, tmp_path):
    import subprocess
    import sys

    idx = pd.date_range("2021-01-01", periods=300, freq="h")
    lines = [json.dumps({"start": str(idx[0]), "target": list(1 + np.sin(np.arange(300) / 7 + k))}) for k in range(4)]
    (tmp_path / "hourly.jsonl").write_text("\n".join(lines) + "\n")
    done = subprocess.run([sys.executable, "-W", "always", "-m", "gencond", "forecast", str(run_dir), "--data",
                           str(tmp_path / "hourly.jsonl"), "--freq", "H", "--future", "--out", str(tmp_path / "h"), *FAST],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "'H' is deprecated" not in done.stderr
    assert (tmp_path / "h" / "fan_chart.png").exists()


def test_recalibration_switch_changes_the_quantiles_and_is_recorded(run_dir, tmp_path):
    outs = {}
    for name, extra in (("recal", ["--recalibrate"]), ("raw", []), ("one", ["--recalibrate", "--calibration-windows", "1"]),
                        ("quantile", ["--recalibrate", "--recalibration", "quantile"])):
        outs[name] = tmp_path / name
        assert main(["forecast", str(run_dir), "--out", str(outs[name]), *FAST, *extra]) == 0
    recal, raw, one, quantile = (json.loads((outs[n] / "metrics.json").read_text()) for n in ("recal", "raw", "one", "quantile"))
    assert quantile["calibration_windows"] == 2 and quantile["settings"].endswith("_recal2_quantile")
    assert recal["calibration_windows"] == 2 and recal["recalibrated"] == 10 and recal["settings"].endswith("_recal2")
    assert raw["calibration_windows"] == 0 and "recalibrated" not in raw and "_recal" not in raw["settings"]
    assert one["calibration_windows"] == 1 and one["settings"].endswith("_recal1")
    assert not (outs["raw"] / "samples" / "calibration").exists()
    a, b = samples_of(outs["recal"]), samples_of(outs["raw"])
    assert a.shape == b.shape and not np.allclose(a, b)
