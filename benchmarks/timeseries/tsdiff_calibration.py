"""Where TSDiff's miscalibration comes from, and what the recalibration does: coverage, CRPS, MSIS and WIS
of raw and recalibrated forecasts, for sampler / guidance-scale / sample-count variants of one trained run.

Each spec is ``default`` or comma-separated ``key=value``: ``steps=100`` (DDPM on every timestep instead of
the default 20 listed ones), ``guidance=plain`` (TSDiff's loss gradient instead of proximal guidance),
``scale=S``, ``samples=N``. Every spec forecasts the same test windows with the same seed, and the
``--windows`` calibration windows per series before the first forecast start (timeseries.calibration);
the raw forecasts are then scored as sampled and recalibrated on the first 1..``--windows`` of those
windows (``timeseries.calibration.recalibrate``: from 2 windows on, with its check in time). Samples are kept under ``--work`` (a rerun reads them back); rows already in ``--out`` are kept;
``benchmarks/record.py`` adds the ``--out`` to the study's record (date, commit, machine, threads).

    python benchmarks/timeseries/tsdiff_calibration.py runs/demo --specs default scale=0.5 scale=8 samples=16 \\
        --out /tmp/calibration_demo.json --work /tmp/calwork
    python benchmarks/timeseries/tsdiff_calibration.py runs/demo --heldout-seed 1 ...   # generated series never trained on
    python benchmarks/record.py benchmarks/results/timeseries/tsdiff_calibration.jsonl /tmp/calibration_demo.json --run demo --threads 1
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

from gencond.pipeline import Pipeline, set_threads
from timeseries.calibration import calibration_windows, recalibrate
from timeseries.data import TimeSeriesData, series_id, split_rolling, synthetic_series
from timeseries.forecast import evaluate
from timeseries.task import load_data, make_forecaster, window_builder

KEYS = ("CRPS", "ND", "MSIS", "WIS", "calibration", *(f"coverage_q{q / 10:.1f}" for q in range(1, 10)),
        "coverage_50", "coverage_80", "coverage_90")


def parse_spec(spec: str) -> dict:
    if spec == "default":
        return {}
    out = {}
    for option in spec.split(","):
        key, _, value = option.partition("=")
        if key not in ("steps", "guidance", "scale", "samples") or not value:
            raise SystemExit(f"'{spec}': use default or key=value among steps, guidance, scale, samples")
        out[key] = value
    return out


def heldout(cfg, seed: int) -> TimeSeriesData:
    """The demo's generator with another seed: series of the same kind the model never saw."""
    train, test = split_rolling(synthetic_series(seed=seed), cfg.data.prediction_length, cfg.data.num_test_windows)
    return TimeSeriesData(f"synthetic_seed{seed}", "h", cfg.data.prediction_length, train, test)


def run_spec(spec: str, args) -> dict:
    s = parse_spec(spec)
    pipeline = Pipeline.from_run(args.run_dir, args.weights, task="tsdiff", device="cpu")
    cfg, model = pipeline.cfg, pipeline.model
    if "steps" in s:
        cfg.sampling.timesteps, cfg.sampling.num_steps = None, int(s["steps"])
    data = heldout(cfg, args.heldout_seed) if args.heldout_seed is not None else load_data(cfg)
    entries = data.test[: args.max_series] if args.max_series else data.test
    pl = data.prediction_length
    forecaster = make_forecaster(cfg, model, window_builder(cfg, data), seed=args.seed, progress=not args.quiet,
                                 num_samples=int(s.get("samples", cfg.forecast.num_samples)),
                                 scale=float(s.get("scale", cfg.forecast.scale)),
                                 proximal=s.get("guidance", "proximal") == "proximal", calibration_windows=0,
                                 non_negative=all(float(np.nanmin(e["target"])) >= 0 for e in data.train))
    work = Path(args.work) / f"{Path(args.run_dir).resolve().name}_{args.weights}_{data.name}_{args.max_series}_{args.seed}_{spec}"
    pasts = [{**e, "target": e["target"][:-pl]} for e in entries]
    start = time.perf_counter()
    raw = forecaster.sample_futures([p["target"] for p in pasts], work / "samples")
    seconds = time.perf_counter() - start
    windows = calibration_windows(pasts, pl, args.windows, series_id)
    other = copy.copy(forecaster)
    other.seed, other.progress = forecaster.seed + 1, False  # as timeseries.forecast.recalibrated
    start = time.perf_counter()
    window_samples = other.sample_futures([w["target"] for w in windows], work / "calibration")
    cal_seconds = time.perf_counter() - start
    row = {"spec": spec, "data": data.name, "series": len(entries), "samples": forecaster.num_samples,
           "scale": forecaster.scale, "proximal_guidance": forecaster.proximal,
           "steps": cfg.sampling.num_steps or len(cfg.sampling.timesteps), "forecast_s_per_series": seconds / len(entries),
           "calibration_s": cal_seconds, "raw": _scores(entries, raw, data.freq)}
    per_series = len({series_id(p) for p in pasts})
    for c in range(1, args.windows + 1):
        used = windows[: c * per_series]
        fixed, done = recalibrate(pasts, raw, used, window_samples[: len(used)], "quantile")
        if forecaster.non_negative:
            fixed = np.maximum(fixed, 0.0)
        row[f"recal{c}"] = {**_scores(entries, fixed, data.freq), "recalibrated": done, "calibration_windows": len(used)}
        for method in args.methods:
            fixed, done = recalibrate(pasts, raw, used, window_samples[: len(used)], method)
            if forecaster.non_negative:
                fixed = np.maximum(fixed, 0.0)
            row[f"recal{c}_{method}"] = {**_scores(entries, fixed, data.freq), "recalibrated": done, "calibration_windows": len(used)}
    return row


def _scores(entries, samples, freq) -> dict:
    import pandas as pd
    from gluonts.model.forecast import SampleForecast

    forecasts = [SampleForecast(s, start_date=pd.Period(e["start"], freq) + len(e["target"]) - s.shape[1]) for e, s in zip(entries, samples)]
    m = evaluate(entries, forecasts, freq)
    # the 80 % interval's coverage per window (GluonTS's quantile: sorted sample round((N - 1) q)), for its standard error
    n = samples.shape[1]
    ranked = np.sort(samples, axis=1)
    lo, hi = ranked[:, int(np.round((n - 1) * 0.1))], ranked[:, int(np.round((n - 1) * 0.9))]
    truths = np.stack([e["target"][-samples.shape[2]:] for e in entries])
    per_window = ((truths > lo) & (truths <= hi)).mean(axis=1)
    return {k: m[k] for k in KEYS} | {"coverage_80_se": float(per_window.std(ddof=1) / np.sqrt(len(per_window)))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--specs", nargs="+", default=["default"])
    p.add_argument("--weights", default="best")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-series", type=int, help="only the first N test windows")
    p.add_argument("--heldout-seed", type=int, help="forecast generated series of this seed instead of the run's data")
    p.add_argument("--windows", type=int, default=2, help="calibration windows per series (up to)")
    p.add_argument("--methods", nargs="*", default=["width"], help="recalibrations scored beside 'quantile' (recalN)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--work", default="/tmp/tsdiff_calibration", help="where samples are kept")
    p.add_argument("--out", required=True, help="results JSON (rows kept and extended)")
    args = p.parse_args()
    for spec in args.specs:
        parse_spec(spec)
    set_threads(args.threads)
    out = Path(args.out)
    saved = json.loads(out.read_text()) if out.exists() else {"rows": []}
    for spec in args.specs:
        key = dict(run=str(Path(args.run_dir).resolve()), weights=args.weights, seed=args.seed, max_series=args.max_series,
                   heldout_seed=args.heldout_seed, spec=spec)
        if any(r["key"] == key for r in saved["rows"]):
            continue
        row = {"key": key, **run_spec(spec, args), "threads": args.threads}
        saved["rows"].append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(saved, indent=2))
        print(json.dumps({k: row[k] for k in ("spec", "data")} | {v: {k: round(row[v][k], 4) for k in ("CRPS", "coverage_80", "coverage_q0.5")}
                                                                     for v in row if v == "raw" or v.startswith("recal")}), flush=True)
    print("\n| run | data | spec | variant | CRPS | q0.1 | q0.3 | q0.5 | q0.7 | q0.9 | 50 % | 80 % (s.e.) | 90 % | MSIS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in saved["rows"]:
        for v in [v for v in r if v == "raw" or v.startswith("recal")]:
            m = r[v]
            cells = [f"{m['CRPS']:.4f}", *(f"{m[f'coverage_q{q}']:.3f}" for q in ("0.1", "0.3", "0.5", "0.7", "0.9")),
                     f"{m['coverage_50']:.3f}", f"{m['coverage_80']:.3f} ({m.get('coverage_80_se', float('nan')):.3f})",
                     f"{m['coverage_90']:.3f}", f"{m['MSIS']:.2f}"]
            print(f"| {Path(r['key']['run']).name} | {r['data']} | {r['spec']} | {v} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
