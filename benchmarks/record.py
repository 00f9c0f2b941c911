"""Add one benchmark run's JSON to its study's record file (one JSON object per line).

    python benchmarks/record.py benchmarks/results/timeseries/tsdiff_end_to_end.jsonl runs/bench/e2e.json \\
        --run 8series_today_round1 --threads 2

Each record carries what the file name used to: ``run`` (a label unique in the file), ``date``,
``commit`` (``git rev-parse --short HEAD`` unless ``--commit`` names the code measured), ``machine``
(the CPU model from /proc/cpuinfo, or the GPU), ``threads``, and the run's own JSON under ``result``.
Measurement only: nothing is asserted, and an existing ``run`` label is refused rather than replaced.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        else:
            model = platform.processor() or platform.machine()
    except OSError:
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def append_record(study: Path, result: dict, run: str, threads=None, commit=None, machine_name=None) -> dict:
    """Append ``result`` to ``study`` as a record with its run label, date, commit, machine and threads;
    an existing ``run`` label is refused rather than replaced."""
    study = Path(study)
    if study.exists():
        runs = {json.loads(line)["run"] for line in study.read_text().splitlines() if line.strip()}
        if run in runs:
            raise SystemExit(f"{study} already holds a run named {run!r}; choose another label")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    record = {"run": run, "date": datetime.date.today().isoformat(), "session": None,
              "commit": commit or head.stdout.strip(),
              "commit_is": "the code measured" if commit else "HEAD of the checkout that ran it",
              "machine": machine_name or machine(), "threads": threads, "result": result}
    study.parent.mkdir(parents=True, exist_ok=True)
    with study.open("a") as f:
        f.write(json.dumps(record, separators=(",", ":")) + "\n")
    print(f"added {run!r} to {study}")
    return record


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", type=Path, help="the study's .jsonl under benchmarks/results/<domain>/")
    p.add_argument("result", type=Path, help="the JSON one benchmark run wrote (its --out)")
    p.add_argument("--run", required=True, help="a label for this run, unique within the study")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--commit", default=None, help="the code measured, when not this checkout's HEAD")
    p.add_argument("--machine", default=None, help="default: the CPU model and core count")
    args = p.parse_args(argv)
    append_record(args.study, json.loads(args.result.read_text()), args.run, args.threads, args.commit, args.machine)


if __name__ == "__main__":
    main()
