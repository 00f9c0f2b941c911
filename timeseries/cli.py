"""``gencond forecast RUN_DIR``: guided forecasts of a trained TSDiff, evaluated and plotted."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .data import series_id


def add_forecast_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory written by `gencond train`")
    p.add_argument("--guidance", choices=["quantile", "mse"], help="TSDiff-Q or TSDiff-MS (default: the config's)")
    p.add_argument("--scale", type=float, help="guidance scale (default: the config's)")
    p.add_argument("--scheduler", help="ddpm, ddim, dpm++, ... (default: the config's sampling.scheduler)")
    p.add_argument("--steps", type=int, help="sampling steps (default: every training step)")
    p.add_argument("--samples", type=int, help="samples per series (default: the config's, 100)")
    p.add_argument("--weights", default="best", choices=["best", "last"], help="validated best or last weights")
    p.add_argument("--data", help="forecast this .csv/.jsonl instead of the run's dataset")
    p.add_argument("--freq", help="frequency of --data (e.g. H, D, B)")
    p.add_argument("--future", action="store_true", help="forecast beyond the end of each series (no evaluation)")
    p.add_argument("--max-series", type=int, help="forecast only the first N test entries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the run's train.threads)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/forecasts/<settings>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def forecast_command(args: argparse.Namespace) -> dict:
    import torch
    from omegaconf import OmegaConf

    from .data import load_dataset
    from .forecast import evaluate, fan_chart, forecast_and_evaluate
    from .task import load_data, load_trained, make_forecaster, window_builder

    cfg, model = load_trained(Path(args.run_dir), args.weights)
    if args.threads or cfg.train.threads:
        torch.set_num_threads(args.threads or cfg.train.threads)
    if args.scheduler or args.steps:
        cfg.sampling = OmegaConf.merge(cfg.sampling, {k: v for k, v in {"scheduler": args.scheduler, "num_steps": args.steps}.items() if v})
    if args.data:
        data = load_dataset(args.data, freq=args.freq, prediction_length=load_data(cfg).prediction_length,
                            num_test_windows=cfg.data.num_test_windows, timestamp_column=cfg.data.timestamp_column)
    else:
        data = load_data(cfg)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    builder = window_builder(cfg, data)
    overrides = {k: v for k, v in {"guidance": args.guidance, "scale": args.scale, "num_samples": args.samples}.items() if v is not None}
    forecaster = make_forecaster(cfg, model, builder, seed=args.seed, progress=not args.quiet, **overrides)
    entries = _full_history(data) if args.future else data.test
    entries = entries[: args.max_series] if args.max_series else entries
    tag = f"{forecaster.guidance}_s{forecaster.scale:g}_{cfg.sampling.scheduler}{cfg.sampling.num_steps or cfg.diffusion.num_train_timesteps}_n{forecaster.num_samples}"
    out = Path(args.out) if args.out else Path(args.run_dir) / "forecasts" / (tag + ("_future" if args.future else ""))
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    if args.future:
        forecasts = forecaster.predict(entries, data.freq)
        metrics = {}
    else:
        forecasts, metrics = forecast_and_evaluate(forecaster, entries, data.freq, data.prediction_length)
    seconds = time.perf_counter() - start
    metrics.update(series=len(entries), seconds=seconds, seconds_per_series=seconds / max(1, len(entries)), settings=tag)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _write_quantiles(forecasts, out / "forecasts.csv", data.freq)
    title = f"{data.name}: TSDiff-{'Q' if forecaster.guidance == 'quantile' else 'MS'}" + (
        f", CRPS {metrics['CRPS']:.4f}" if "CRPS" in metrics else "")
    fan_chart(entries, forecasts, out / "fan_chart.png", data.freq, title=title)
    shown = {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
    print(json.dumps(shown))
    print(f"wrote {out}/metrics.json, forecasts.csv, fan_chart.png")
    return metrics


def _full_history(data) -> list[dict]:
    """Each series once, with all its known values (its longest train or test entry)."""
    longest: dict[str, dict] = {}
    for e in data.train + data.test:
        if len(e["target"]) > len(longest.get(series_id(e), {"target": ()})["target"]):
            longest[series_id(e)] = e
    return list(longest.values())


def _write_quantiles(forecasts, path: Path, freq: str) -> None:
    rows = []
    for f in forecasts:
        idx = pd.period_range(f.start_date, periods=f.samples.shape[1], freq=freq)
        cols = {"item_id": f.item_id, "timestamp": idx.astype(str), "mean": f.mean}
        cols.update({f"q{q:.1f}": f.quantile(q) for q in np.round(np.arange(1, 10) / 10, 1)})
        rows.append(pd.DataFrame(cols))
    pd.concat(rows).to_csv(path, index=False)
