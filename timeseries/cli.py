"""``gencond forecast RUN_DIR``: guided forecasts of a trained TSDiff, evaluated and plotted."""
from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from gencond.arguments import add_sampling_arguments, non_negative_float, non_negative_int, positive_float, positive_int
from gencond.errors import UserError
from gencond.runs import claim_output, output_dir, prepare_output

from .config import MISSING_SCENARIOS, REFINERS

if TYPE_CHECKING:  # imported when a verb runs: `gencond --help` loads no torch
    from gencond.pipeline import Pipeline




def add_forecast_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory written by `gencond train`")
    p.add_argument("--guidance", choices=["quantile", "mse"], help="TSDiff-Q or TSDiff-MS (default: the config's)")
    p.add_argument("--scale", type=non_negative_float, help="guidance scale (default: the config's)")
    p.add_argument("--plain-guidance", action="store_true", help="TSDiff's own guidance, the loss gradient at every step, "
                   "instead of its Moreau envelope at the step's size (forecast.proximal_guidance=false)")
    p.add_argument("--samples", type=positive_int, help="samples per series (default: the config's, 100)")
    p.add_argument("--data", help="forecast this .csv/.jsonl instead of the run's dataset")
    p.add_argument("--freq", help="frequency of --data (e.g. H, D, B)")
    p.add_argument("--future", action="store_true", help="forecast beyond the end of each series (no evaluation)")
    p.add_argument("--missing", choices=MISSING_SCENARIOS, help="hide context points first: at random (RM), "
                   "a block at the beginning (BM-B) or end (BM-E) of the context (default: the config's forecast.missing)")
    p.add_argument("--missing-points", type=positive_int, help="how many context points to hide (default: the config's data.missing_points)")
    p.add_argument("--series", type=series_slice, help="forecast entries START:END only (0-based, END excluded; START a "
                   "multiple of batch-size // samples); slices written into one --out add up to the whole forecast")
    p.add_argument("--allow-negative", action="store_true", help="keep negative samples even when every training "
                   "value is ≥ 0 (by default such data gets non-negative forecasts)")
    p.add_argument("--recalibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="recalibrate the spread on windows before each forecast (default: the config's forecast.recalibrate, on)")
    p.add_argument("--calibration-windows", type=positive_int,
                   help="recalibrate on this many windows per series (default: the config's forecast.calibration_windows, 2)")
    p.add_argument("--recalibration", choices=("width", "quantile"), help="what the recalibration fits: the spread "
                   "around the median (width) or every quantile (default: the config's forecast.recalibration, width)")
    _common_arguments(p, "forecast only the first N test entries", "RUN_DIR/forecasts/<settings>")


def series_slice(text: str) -> slice:
    """'START:END' (either may be omitted) -> slice; a reversed or malformed one is an argparse error."""
    start, colon, end = text.partition(":")
    try:
        if not colon:
            raise ValueError
        s = slice(int(start) if start else 0, int(end) if end else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not START:END (e.g. 0:100, 100:)") from None
    if s.start < 0 or (s.stop is not None and s.stop <= s.start):
        raise argparse.ArgumentTypeError(f"'{text}': need 0 <= START < END")
    return s


def _common_arguments(p: argparse.ArgumentParser, max_series_help: str, out_default: str, sampler: bool = True) -> None:
    p.add_argument("--max-series", type=positive_int, help=max_series_help)
    _batch_size_argument(p)
    add_sampling_arguments(p, sampler)
    p.add_argument("--out", help=f"output folder (default: {out_default})")
    _overwrite_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


FORECAST_RESULTS = ("metrics.json", "forecasts.csv", "fan_chart.png")


def _overwrite_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --out (by default a folder "
                   "holding results of another command is refused; the same forecast resumes)")


def _batch_size_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=positive_int, help="windows processed together (default: the config's forecast.batch_size; "
                   "200 is fastest on CPU, raise it on a GPU)")


def _load_run(args: argparse.Namespace) -> Pipeline:
    """The run's :class:`~gencond.pipeline.Pipeline` (its model on the GPU when there is one), with the sampler
    flags and threads applied."""
    from gencond.pipeline import Pipeline

    pipeline = Pipeline.from_args(args, task="tsdiff", needed_by=f"gencond {getattr(args, 'verb', 'forecast')}")
    if getattr(args, "batch_size", None):
        pipeline.cfg.forecast.batch_size = args.batch_size
    return pipeline


def forecast_command(args: argparse.Namespace) -> dict:
    """``gencond forecast``: the run's forecasts of the test windows (or of the future), their metrics, quantiles
    and fan chart in the settings' own folder (a rerun of the same settings resumes)."""
    from .forecast import forecast_and_evaluate

    pipeline = _load_run(args)
    cfg = pipeline.cfg
    data, overrides = _forecast_settings(args, cfg)
    forecaster, non_negative = _forecaster(args, pipeline, data, overrides)
    entries = _full_history(data) if args.future else data.test
    entries = entries[: args.max_series] if args.max_series else entries
    series = args.series or slice(0, None)
    if series.start >= len(entries):
        raise UserError(f"--series {series.start}:…: there are only {len(entries)} entries (0-{len(entries) - 1})")
    tag = forecast_tag(cfg, forecaster)
    out = Path(args.out) if args.out else output_dir(args.run_dir) / "forecasts" / (tag + ("_future" if args.future else ""))
    out = prepare_output(out, FORECAST_RESULTS, identity=out / "samples" / "identity.json", overwrite=args.overwrite)
    store = out / "samples"
    _claim_forecast(store, args, cfg, forecaster, tag, non_negative, data.name, len(entries))

    start = time.perf_counter()
    if args.future:
        forecasts = forecaster.predict(entries[series], data.freq, store, offset=series.start, calibrate_on=entries)
        entries = entries[series]
        metrics = {"recalibrated": forecaster.recalibrated} if forecaster.calibration_windows else {}
    else:
        forecasts, metrics = forecast_and_evaluate(forecaster, entries, data.freq, data.prediction_length,
                                                   missing=cfg.forecast.missing, missing_points=cfg.data.missing_points,
                                                   seed=args.seed, store=store, series=series)
        entries = entries[series]
    seconds = time.perf_counter() - start
    metrics.update(method=forecaster.method, missing=cfg.forecast.missing, series=len(entries), seconds=seconds,
                   seconds_per_series=seconds / max(1, len(entries)), settings=tag, non_negative=non_negative,
                   proximal_guidance=None if forecaster.conditional else forecaster.proximal,
                   calibration_windows=forecaster.calibration_windows,
                   slice=None if args.series is None else f"{series.start}:{series.start + len(entries)}")
    _write_forecast(out, args, cfg, data, forecaster, entries, forecasts, metrics)
    return metrics


def _forecast_settings(args: argparse.Namespace, cfg) -> tuple:
    """(the data to forecast, the forecaster's overrides) after the flags that change ``cfg``'s missing-value
    and recalibration settings are applied to it; one-line errors for flags that do not go together."""
    from .data import load_dataset
    from .task import check_missing, load_data

    cfg.forecast.missing = args.missing or cfg.forecast.missing
    cfg.data.missing_points = args.missing_points or cfg.data.missing_points
    check_missing(cfg)
    if args.future and cfg.forecast.missing:
        raise UserError("--missing hides points of test contexts; it cannot be combined with --future")
    if args.data:
        data = load_dataset(args.data, freq=args.freq, prediction_length=load_data(cfg).prediction_length,
                            num_test_windows=cfg.data.num_test_windows, timestamp_column=cfg.data.timestamp_column,
                            coerce_non_numeric=cfg.data.coerce_non_numeric)
    else:
        data = load_data(cfg)
    overrides = {k: v for k, v in {"guidance": args.guidance, "scale": args.scale, "num_samples": args.samples}.items() if v is not None}
    if args.plain_guidance:
        overrides["proximal"] = False
    cfg.forecast.recalibrate = args.recalibrate if args.recalibrate is not None else (
        cfg.forecast.recalibrate or bool(args.calibration_windows or args.recalibration))
    cfg.forecast.calibration_windows = args.calibration_windows or cfg.forecast.calibration_windows
    cfg.forecast.recalibration = args.recalibration or cfg.forecast.recalibration
    return data, overrides


def _forecaster(args: argparse.Namespace, pipeline: Pipeline, data, overrides: dict) -> tuple:
    """(the run's forecaster of ``data``, whether its forecasts are kept non-negative)."""
    import numpy as np

    from .task import make_forecaster, window_builder

    cfg = pipeline.cfg
    builder = window_builder(cfg, data)
    non_negative = not args.allow_negative and all(float(np.nanmin(e["target"])) >= 0 for e in data.train if len(e["target"]))
    forecaster = make_forecaster(cfg, pipeline.model, builder, seed=args.seed, progress=not args.quiet,
                                 non_negative=non_negative, **overrides)
    return forecaster, non_negative


def forecast_tag(cfg, forecaster) -> str:
    """The name of a forecast's settings (its folder under RUN_DIR/forecasts): guidance, sampler and steps, samples,
    missing-value scenario and recalibration, e.g. ``quantile_s8_prox_ddpm20t1a2b3c4d_n100``."""
    from gencond.sampling import listed_timesteps

    how = "cond" if forecaster.conditional else f"{forecaster.guidance}_s{forecaster.scale:g}" + ("_prox" if forecaster.proximal else "")
    listed = listed_timesteps(cfg.sampling)
    steps = f"{len(listed)}t{zlib.crc32(str(listed).encode()):08x}" if listed else (
        cfg.sampling.num_steps or cfg.diffusion.num_train_timesteps)  # listed steps: their number and a checksum
    tag = f"{how}_{cfg.sampling.scheduler}{steps}"
    tag += f"_eta{cfg.sampling.eta:g}" if cfg.sampling.eta and cfg.sampling.scheduler != "ddpm" else ""
    tag += f"_{cfg.sampling.timestep_spacing}" if cfg.sampling.timestep_spacing else ""
    tag += f"_n{forecaster.num_samples}"
    tag += f"_{cfg.forecast.missing}{cfg.data.missing_points}" if cfg.forecast.missing else ""
    tag += f"_recal{forecaster.calibration_windows}" if forecaster.calibration_windows else ""
    tag += "_quantile" if forecaster.calibration_windows and forecaster.recalibration == "quantile" else ""
    return tag


def _claim_forecast(store: Path, args: argparse.Namespace, cfg, forecaster, tag: str, non_negative: bool,
                    data_name: str, entries: int) -> None:
    """Mark ``store`` (the samples folder) as this forecast's: what makes its samples, so that a rerun with other
    settings is refused rather than mixed in."""
    from omegaconf import OmegaConf

    claim_output(store / "identity.json", {"run": str(Path(args.run_dir).resolve()), "weights": args.weights, "settings": tag,
                         "seed": args.seed, "chunk_size": forecaster.chunk_size, "non_negative": non_negative,
                         "proximal_guidance": forecaster.proximal, "future": bool(args.future), "data": data_name, "entries": entries,
                         "sampling": {k: v for k, v in OmegaConf.to_container(cfg.sampling, resolve=True).items()
                                      if k != "micro_batch"}}, "forecast")  # micro_batch: a speed setting, same samples


def _write_forecast(out: Path, args: argparse.Namespace, cfg, data, forecaster, entries, forecasts, metrics: dict) -> None:
    """metrics.json, forecasts.csv (quantiles) and fan_chart.png into ``out``; a warning when the intervals are
    miscalibrated; the metrics printed as one JSON line."""
    from .forecast import fan_chart

    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if metrics.get("calibration", "ok") != "ok":
        print(f"gencond {getattr(args, 'verb', 'forecast')}: warning: the forecast intervals do not mean what they say: "
              f"{metrics['calibration']}" + ("" if forecaster.calibration_windows else
                                             " (as sampled; --recalibrate fits them on earlier windows)"), file=sys.stderr)
    _write_quantiles(forecasts, out / "forecasts.csv", data.freq)
    title = f"{data.name}: {forecaster.method}" + (f" ({cfg.forecast.missing} missing)" if cfg.forecast.missing else "") + (
        f", CRPS {metrics['CRPS']:.4f}" if "CRPS" in metrics else "")
    fan_chart(entries, forecasts, out / "fan_chart.png", data.freq, title=title, unit="series" if args.future else "test windows")
    shown = {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
    print(json.dumps(shown))
    print(f"wrote {out}/metrics.json, forecasts.csv, fan_chart.png")


def _full_history(data) -> list[dict]:
    """Each series once, with all its known values (its longest train or test entry)."""
    from .data import series_id

    longest: dict[str, dict] = {}
    for e in data.train + data.test:
        if len(e["target"]) > len(longest.get(series_id(e), {"target": ()})["target"]):
            longest[series_id(e)] = e
    return list(longest.values())


def _write_quantiles(forecasts, path: Path, freq: str) -> None:
    import numpy as np
    import pandas as pd

    rows = []
    for f in forecasts:
        idx = pd.period_range(f.start_date, periods=f.samples.shape[1], freq=freq)
        cols = {"item_id": f.item_id, "timestamp": idx.astype(str), "mean": f.mean}
        cols.update({f"q{q:.1f}": f.quantile(q) for q in np.round(np.arange(1, 10) / 10, 1)})
        rows.append(pd.DataFrame(cols))
    pd.concat(rows).to_csv(path, index=False)


# ---------------------------------------------------------------- refine


def add_refine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory of an unconditional TSDiff")
    p.add_argument("--base", default="seasonal_naive",
                   help="base forecaster: seasonal_naive, linear (Ridge), or module:attr naming a GluonTS predictor, "
                        "estimator class or factory (default: seasonal_naive)")
    p.add_argument("--base-options", help="JSON keyword arguments for a module:attr base, e.g. '{\"trainer_kwargs\": {\"max_epochs\": 5}}'")
    p.add_argument("--refiners", default="all", help=f"comma-separated from {', '.join(REFINERS)} (default: all)")
    p.add_argument("--step-size", type=positive_float, help="eta (default: the config's refine.step_size)")
    p.add_argument("--iterations", type=positive_int, help="refinement iterations (default: the config's, 20)")
    p.add_argument("--tau", type=non_negative_int, help="diffusion step of the denoising energy (default: closest to the mean loss)")
    p.add_argument("--samples", type=positive_int, help="samples per series (default: the config's refine.num_samples)")
    _common_arguments(p, "refine only the first N test entries", "RUN_DIR/refine/<base>", sampler=False)


def refine_command(args: argparse.Namespace) -> dict:
    from .baselines import make_base
    from .forecast import evaluate, fan_chart
    from .config import REFINERS
    from .refine import Refiner, choose_tau
    from .task import load_data, window_builder

    pipeline = _load_run(args)
    cfg, model, process = pipeline.cfg, pipeline.model, pipeline.process
    r = cfg.refine
    names = list(REFINERS) if args.refiners == "all" else [n.strip() for n in args.refiners.split(",")]
    unknown = [n for n in names if n not in REFINERS]
    if unknown:
        raise UserError(f"unknown refiner(s) {', '.join(unknown)}; use {', '.join(REFINERS)} or all")
    data = load_data(cfg)
    builder = window_builder(cfg, data)
    entries = data.test[: args.max_series] if args.max_series else data.test
    pl = data.prediction_length
    pasts = [{**e, "target": e["target"][:-pl]} for e in entries]
    samples = args.samples or r.num_samples
    base = make_base(args.base, data, cfg.data.context_length, options=args.base_options, num_samples=samples, seed=args.seed)
    base_forecasts = base.predict(pasts, data.freq)
    tau = choose_tau(model, process, builder, data.train, seed=args.seed, tau=args.tau if args.tau is not None else r.tau)
    label = args.base.replace(":", "_").replace(".", "_")
    out = Path(args.out) if args.out else output_dir(args.run_dir) / "refine" / label
    out = prepare_output(out, ("metrics.json", "base.png", "refined.png") if args.out else (), overwrite=args.overwrite)
    results = {"base": args.base, "series": len(entries), "tau": tau, "step_size": r.step_size if args.step_size is None else args.step_size,
               "iterations": args.iterations if args.iterations is not None else r.iterations,
               "CRPS": {}, "calibration": {}, "seconds": {}}
    _score(results, "base", evaluate(entries, base_forecasts, data.freq))
    print(f"{args.base}: CRPS {results['CRPS']['base']:.4f}; tau = {tau}")
    best = None
    for name in names:
        method, prior = name.split("-")
        refiner = Refiner(model, process, builder, tau=tau, method=method, prior=prior,
                          step_size=results["step_size"], iterations=results["iterations"], prior_weight=r.prior_weight,
                          noise_scale=r.noise_scale, num_samples=samples, batch_size=cfg.forecast.batch_size,
                          seed=args.seed, device=next(model.parameters()).device, progress=not args.quiet)
        start = time.perf_counter()
        refined = refiner.predict(pasts, base_forecasts, data.freq)
        results["seconds"][name] = time.perf_counter() - start
        _score(results, name, evaluate(entries, refined, data.freq))
        print(f"  {name}: CRPS {results['CRPS'][name]:.4f}, 80 % interval covers "
              f"{100 * results['calibration'][name]['coverage_80']:.0f} % ({results['seconds'][name]:.0f} s)")
        if best is None or results["CRPS"][name] < results["CRPS"][best[0]]:
            best = (name, refined)
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    fan_chart(entries, base_forecasts, out / "base.png", data.freq, title=f"{data.name}: {args.base}, CRPS {results['CRPS']['base']:.4f}")
    fan_chart(entries, best[1], out / "refined.png", data.freq,
              title=f"{data.name}: {args.base} refined by {best[0]}, CRPS {results['CRPS'][best[0]]:.4f}")
    print(f"wrote {out}/metrics.json, base.png, refined.png")
    return results


def _score(results: dict, name: str, metrics: dict) -> None:
    """CRPS and the calibration metrics (coverage, MSIS, WIS, flag) of one forecaster into the refine results."""
    results["CRPS"][name] = metrics["CRPS"]
    results["calibration"][name] = {k: v for k, v in metrics.items() if k.startswith("coverage") or k in ("MSIS", "WIS", "calibration")}


# ---------------------------------------------------------------- sample and eval (synthesis)


def add_sample_arguments(p: argparse.ArgumentParser, num: int = 1000) -> None:
    p.add_argument("--num", type=positive_int, default=num, help=f"how many windows (default {num:,})")
    _batch_size_argument(p)
    add_sampling_arguments(p)
    p.add_argument("--out", help="output folder (default: RUN_DIR/samples)")
    _overwrite_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _synthesize(pipeline: Pipeline, args, num: int):
    from .synthesis import synthesize
    from .task import load_data, window_builder

    data = load_data(pipeline.cfg)
    builder = window_builder(pipeline.cfg, data)
    windows = synthesize(pipeline, builder, num, batch_size=pipeline.cfg.forecast.batch_size, seed=args.seed,
                         progress=not args.quiet)
    return data, builder, windows


def sample_command(args: argparse.Namespace) -> Path:
    import numpy as np

    from .synthesis import plot_windows

    data, builder, windows = _synthesize(_load_run(args), args, args.num)
    out = Path(args.out) if args.out else output_dir(args.run_dir) / "samples"
    out = prepare_output(out, ("windows.npy", "windows.png") if args.out else (), overwrite=args.overwrite)
    np.save(out / "windows.npy", windows)
    plot_windows(data, windows, out / "windows.png", builder.context_length, seed=args.seed,
                 title=f"{data.name}: real vs. TSDiff samples (scaled)")
    print(f"wrote {len(windows)} windows of length {windows.shape[1]} (scaled units) to {out}/windows.npy, and windows.png")
    return out / "windows.npy"


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    add_sample_arguments(p, num=10_000)
    p.add_argument("--lps", action="store_true", help="Linear Predictive Score of synthetic windows (and of real ones)")
    p.add_argument("--windows", help="score these windows (.npy from `gencond sample`) instead of drawing --num new ones")


def eval_command(args: argparse.Namespace) -> dict:
    from .synthesis import load_windows, lps_report, plot_windows
    from .task import load_data, window_builder

    if not args.lps:
        raise UserError("nothing to evaluate: pass --lps (forecast accuracy: `gencond forecast RUN_DIR`)")
    pipeline = _load_run(args)
    cfg = pipeline.cfg
    if args.windows:
        data = load_data(cfg)
        builder = window_builder(cfg, data)
        windows = load_windows(args.windows, builder.length)
    elif args.num < cfg.data.context_length:  # fail before sampling, not after
        raise UserError(f"{args.num} windows are fewer than the {cfg.data.context_length} features (context values) "
                        f"of the linear model; pass --num ≥ {cfg.data.context_length}")
    else:
        data, builder, windows = _synthesize(pipeline, args, args.num)
    report = lps_report(windows, data, builder.context_length, seed=args.seed)
    out = Path(args.out) if args.out else output_dir(args.run_dir) / "eval"
    out = prepare_output(out, ("lps.json", "real_vs_synthetic.png") if args.out else (), overwrite=args.overwrite)
    (out / "lps.json").write_text(json.dumps(report, indent=2))
    plot_windows(data, windows, out / "real_vs_synthetic.png", builder.context_length, seed=args.seed,
                 title=f"{data.name}: LPS synthetic {report['LPS_synthetic']:.4f} vs. real {report['LPS_real']:.4f}")
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in report.items()}))
    print(f"wrote {out}/lps.json, real_vs_synthetic.png")
    return report
