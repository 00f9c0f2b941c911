"""TSDiff on exchange_rate_nips at growing wall-clock training budgets.

Phase 1 trains once, stopping at each budget (later budgets resume the same run) and keeping a
snapshot of the weights (best validated, else last) at each. Phase 2 forecasts the 40 test
windows from every snapshot by quantile self-guidance and reports CRPS / ND / NRMSE, training
steps and steps/s, forecast seconds per series and peak memory. Results already in --out are
kept, so an interrupted benchmark resumes where it stopped.

    python benchmarks/timeseries/tsdiff_exchange.py --budgets 5 15 30 --eval ddim:25 --final-eval ddpm:100
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gencond.config import load_config
from gencond.pipeline import Pipeline, set_threads
from gencond.training import train
from timeseries.forecast import forecast_and_evaluate
from timeseries.task import build, load_data, make_forecaster, window_builder

ROOT = Path(__file__).resolve().parents[2]


def train_to(budget: float, args, run_dir: Path) -> dict:
    """Train until ``budget`` minutes of training time; snapshot the weights; return counters."""
    snap = run_dir / "snapshots" / f"{budget:g}min"
    if not (snap / "info.json").exists():
        cfg = load_config(args.config, [f"runs_dir={args.runs_dir}", f"name={args.name}", f"train.max_minutes={budget}",
                                        f"train.threads={args.threads}", *args.overrides])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        torch.manual_seed(cfg.seed)
        result = train(cfg, build(cfg), run_dir)
        if result.stopped == "interrupted":
            raise SystemExit("interrupted; rerun the same command to resume")
        weights = run_dir / ("best" if (run_dir / "best").exists() else "model")
        shutil.rmtree(snap, ignore_errors=True)
        shutil.copytree(weights, snap / "best")
        shutil.copy(run_dir / "config.yaml", snap / "config.yaml")
        info = {"budget_min": budget, "train_steps": result.step, "train_s": round(result.elapsed_s, 1),
                "steps_per_s": result.step / max(result.elapsed_s, 1e-9), "best_val_crps": result.best,
                "weights": weights.name}
        (snap / "info.json").write_text(json.dumps(info))
    return snap


def evaluate(snap: Path, spec: str, samples: int, max_series: int | None, batch_size: int) -> dict:
    scheduler, steps = spec.split(":")
    pipeline = Pipeline.from_run(snap, "best", task="tsdiff", device="cpu")
    cfg, model = pipeline.cfg, pipeline.model
    cfg.forecast.batch_size = batch_size
    cfg.sampling.scheduler, cfg.sampling.num_steps = scheduler, int(steps)
    data = load_data(cfg)
    entries = data.test[:max_series] if max_series else data.test
    forecaster = make_forecaster(cfg, model, window_builder(cfg, data), num_samples=samples, progress=True,
                                 calibration_windows=0)  # as sampled, comparable across budgets (calibration reported raw)
    start = time.perf_counter()
    _, metrics = forecast_and_evaluate(forecaster, entries, data.freq, data.prediction_length)
    seconds = time.perf_counter() - start
    return {"sampler": spec, "samples": samples, **metrics, "forecast_s_per_series": seconds / len(entries)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/timeseries/exchange_rate_nips.yaml"))
    p.add_argument("--budgets", type=float, nargs="+", default=[5, 15, 30, 60], help="training minutes")
    p.add_argument("--eval", nargs="+", default=["ddim:25"], help="sampler:steps for every budget")
    p.add_argument("--final-eval", nargs="*", default=["ddpm:100"], help="sampler:steps for the last budget")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--max-series", type=int, help="evaluate only the first N test windows")
    p.add_argument("--batch-size", type=int, default=200, help="windows sampled together")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs-dir", default=str(ROOT / "runs"))
    p.add_argument("--name", default="bench_exchange")
    p.add_argument("--restart", action="store_true", help="discard the run and the results, start from scratch")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/timeseries/tsdiff_exchange.json"))
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_args()
    for spec in args.eval + args.final_eval:
        name, _, steps = spec.partition(":")
        if not steps.isdigit():
            p.error(f"'{spec}' is not a sampler:steps spec like ddim:25 (put key=value overrides before the options)")
    set_threads(args.threads)
    run_dir, out = Path(args.runs_dir) / args.name, Path(args.out)
    if args.restart:
        shutil.rmtree(run_dir, ignore_errors=True)
        out.unlink(missing_ok=True)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    budgets = sorted(args.budgets)
    snaps = [train_to(b, args, run_dir) for b in budgets]
    for i, snap in enumerate(snaps):
        info = json.loads((snap / "info.json").read_text())
        for spec in args.eval + (args.final_eval if i == len(snaps) - 1 else []):
            if any(r["budget_min"] == info["budget_min"] and r["sampler"] == spec for r in rows):
                continue
            row = {**info, **evaluate(snap, spec, args.samples, args.max_series, args.batch_size), "threads": args.threads}
            row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"config": args.config, "overrides": args.overrides, "rows": rows}, indent=2))
    print("\n| training budget | steps | steps/s | sampler | CRPS | ND | NRMSE | 80 % interval covers | forecast s/series |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["budget_min"], r["sampler"])):
        print(f"| {r['budget_min']:g} min | {r['train_steps']} | {r['steps_per_s']:.2f} | {r['sampler']} | {r['CRPS']:.4f} | "
              f"{r['ND']:.4f} | {r['NRMSE']:.4f} | {r.get('coverage_80', float('nan')):.3f} | {r['forecast_s_per_series']:.1f} |")


if __name__ == "__main__":
    main()
