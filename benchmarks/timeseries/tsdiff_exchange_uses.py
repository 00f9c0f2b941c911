"""TSDiff's other uses on exchange_rate_nips: refinement, synthesis (LPS) and missing values.

Runs the CLI on trained runs and gathers one table (benchmarks/results/timeseries/tsdiff_exchange_uses.{json,md}).
Each part is resumable: finished rows are kept and skipped.

    python benchmarks/timeseries/tsdiff_exchange_uses.py refine  --run runs/bench_exchange/snapshots/30min
    python benchmarks/timeseries/tsdiff_exchange_uses.py lps     --run runs/bench_exchange/snapshots/30min
    python benchmarks/timeseries/tsdiff_exchange_uses.py missing --run runs/bench_exchange/snapshots/15min --cond-run runs/bench_exchange_cond
    python benchmarks/timeseries/tsdiff_exchange_uses.py table
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gencond.cli import main as gencond

RESULTS = Path(__file__).resolve().parents[1] / "results" / "timeseries" / "tsdiff_exchange_uses.json"
OUT = Path("runs/bench_uses")


def load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))


def run(argv: list[str]) -> None:
    print("$ gencond " + " ".join(argv), flush=True)
    if gencond(argv) != 0:
        raise SystemExit(f"gencond {argv[0]} failed")


def refine(args) -> None:
    """One CLI call per (base, refiner), so that an interrupted benchmark loses at most one."""
    for base in args.bases.split(","):
        for refiner in ("lmc-quantile", "lmc-mse", "ml-quantile", "ml-mse"):
            row = load().get("refine", {}).get(base, {"base": base, "CRPS": {}, "seconds": {}})
            if refiner in row["CRPS"]:
                continue
            out = OUT / "refine" / base / refiner
            argv = ["refine", args.run, "--base", base, "--refiners", refiner, "--samples", str(args.samples),
                    "--step-size", str(args.step_size), "--batch-size", str(args.batch_size),
                    "--threads", str(args.threads), "--out", str(out)]
            run(argv)
            got = json.loads((out / "metrics.json").read_text())
            row["CRPS"].update(got["CRPS"])
            row["seconds"].update(got["seconds"])
            row.update(series=got["series"], tau=got["tau"], step_size=got["step_size"], iterations=got["iterations"],
                       samples=args.samples, command="gencond " + " ".join(argv).replace(refiner, "<refiner>"))
            results = load()
            results.setdefault("refine", {})[base] = row
            save(results)


def lps(args) -> None:
    results = load()
    if "lps" in results:
        return
    scheduler, steps = args.sampler.split(":")
    out = OUT / "lps"
    argv = ["eval", args.run, "--lps", "--num", str(args.num), "--scheduler", scheduler, "--steps", steps,
            "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--out", str(out)]
    start = time.perf_counter()
    run(argv)
    row = json.loads((out / "lps.json").read_text())
    row.update(command="gencond " + " ".join(argv), seconds=time.perf_counter() - start, sampler=args.sampler)
    results = load()
    results["lps"] = row
    save(results)


def missing(args) -> None:
    scheduler, steps = args.sampler.split(":")
    for scenario in ["none", "RM", "BM-B", "BM-E"]:
        for method, run_dir in (("TSDiff-Q", args.run), ("TSDiff-Cond", args.cond_run)):
            if method not in args.methods.split(","):
                continue
            key = f"{method}/{scenario}"
            if key in load().get("missing", {}):
                continue
            out = OUT / "missing" / method / scenario
            argv = ["forecast", run_dir, "--samples", str(args.samples), "--scheduler", scheduler, "--steps", steps,
                    "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--out", str(out), "--weights", "last" if method == "TSDiff-Cond" else "best"]
            if scenario != "none":
                argv += ["--missing", scenario, "--missing-points", str(args.points)]
            run(argv)
            row = json.loads((out / "metrics.json").read_text())
            row["command"] = "gencond " + " ".join(argv)
            results = load()
            results.setdefault("missing", {})[key] = row
            save(results)


def table(_args=None) -> str:
    r = load()
    lines = []
    if "refine" in r:
        lines += ["| base forecaster | base | LMC-Q | LMC-MS | ML-Q | ML-MS |", "|---|---|---|---|---|---|"]
        for row in r["refine"].values():
            c = row["CRPS"]
            lines.append(f"| {row['base']} | {c['base']:.4f} | " + " | ".join(
                f"{c[k]:.4f}" if k in c else "–" for k in ("lmc-quantile", "lmc-mse", "ml-quantile", "ml-mse")) + " |")
        lines.append("")
    if "lps" in r:
        x = r["lps"]
        lines += ["| LPS (Ridge on windows → CRPS on test) | synthetic | real | ratio |", "|---|---|---|---|",
                  f"| {x['windows']} windows, {x['sampler']} | {x['LPS_synthetic']:.4f} | {x['LPS_real']:.4f} | {x['ratio']:.3f} |", ""]
    if "missing" in r:
        m = r["missing"]
        lines += ["| method | no missing | RM | BM-B | BM-E |", "|---|---|---|---|---|"]
        for method in ("TSDiff-Q", "TSDiff-Cond"):
            lines.append(f"| {method} | " + " | ".join(
                f"{m[f'{method}/{s}']['CRPS']:.4f}" if f"{method}/{s}" in m else "–" for s in ("none", "RM", "BM-B", "BM-E")) + " |")
    text = "\n".join(lines) + "\n"
    RESULTS.with_suffix(".md").write_text(text)
    print(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    for name, fn in (("refine", refine), ("lps", lps), ("missing", missing), ("table", table)):
        s = sub.add_parser(name)
        s.set_defaults(fn=fn)
        if name == "table":
            continue
        s.add_argument("--run", default="runs/bench_exchange/snapshots/30min", help="an unconditional TSDiff run")
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--batch-size", type=int, default=200, help="windows per batch (200 is fastest on CPU)")
    sub.choices["refine"].add_argument("--bases", default="seasonal_naive,linear")
    sub.choices["refine"].add_argument("--samples", type=int, default=100)
    sub.choices["refine"].add_argument("--step-size", type=float, default=0.01, help="the paper's eta for Exchange")
    sub.choices["lps"].add_argument("--num", type=int, default=10_000)
    sub.choices["lps"].add_argument("--sampler", default="ddim:25")
    sub.choices["missing"].add_argument("--cond-run", default="runs/bench_exchange_cond")
    sub.choices["missing"].add_argument("--samples", type=int, default=100)
    sub.choices["missing"].add_argument("--methods", default="TSDiff-Q,TSDiff-Cond")
    sub.choices["missing"].add_argument("--sampler", default="ddim:25")
    sub.choices["missing"].add_argument("--points", type=int, default=180, help="the paper's count for Exchange")
    args = p.parse_args()
    args.fn(args)
    if args.part != "table":
        table()


if __name__ == "__main__":
    main()
