"""Training speed at 1 and 2 threads, on an idle machine and next to a competing single-threaded job.

    python benchmarks/timeseries/threads_busy.py                     # 30 demo steps per case, all cases
    python benchmarks/timeseries/threads_busy.py --steps 60 --policies PASSIVE default spin=10000

Each case runs ``gencond train configs/timeseries/demo.yaml`` for ``--steps`` steps in a fresh process
and reads steps/s from its metrics.jsonl (training time only). Policies: PASSIVE (gencond's default),
ACTIVE, "default" (libgomp's own: spin a while, then sleep; what gencond ran with before), and
"spin=N" (libgomp's default policy with GOMP_SPINCOUNT=N). Writes
benchmarks/results/timeseries/threads_busy.{json,md}. Measurement only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUSY = "while True: pass"  # one core's worth of competing work


def run_case(threads: int, policy: str, busy: bool, steps: int, workdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    if policy.startswith("spin="):
        env["GOMP_SPINCOUNT"] = policy.split("=", 1)[1]
    # "default" is no libgomp value: libgomp warns once and keeps its own default (gencond sets none)
    env["OMP_WAIT_POLICY"] = "default" if policy == "default" or policy.startswith("spin=") else policy
    name = f"t{threads}_{policy.replace('=', '')}_{'busy' if busy else 'idle'}"
    competitor = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gencond", "train", str(ROOT / "configs/timeseries/demo.yaml"),
                        f"name={name}", f"runs_dir={workdir}", f"train.max_steps={steps}", f"train.threads={threads}",
                        f"train.log_every={steps}", "train.validate_every=0", f"train.checkpoint_every={steps}",
                        "--quiet", "--restart"], check=True, env=env, cwd=workdir, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    last = [json.loads(line) for line in (workdir / name / "metrics.jsonl").read_text().splitlines()][-1]
    return {"threads": threads, "policy": policy, "load": "busy" if busy else "idle", "steps": steps,
            "train_s": round(last["elapsed_s"], 2), "steps_per_s": round(steps / last["elapsed_s"], 2),
            "process_wall_s": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--policies", nargs="+", default=["PASSIVE", "default", "spin=10000"],
                   help="PASSIVE, ACTIVE, default, spin=N")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "timeseries" / "threads_busy"))
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for busy in (False, True):
            for policy in args.policies:
                for threads in (1, 2):
                    rows.append(run_case(threads, policy, busy, args.steps, Path(tmp)))
                    print(json.dumps(rows[-1]), flush=True)
    lines = [f"TSDiff demo training, {args.steps} steps, {os.cpu_count()} cores; busy = one other process "
             "spinning on a core.", "",
             "| load | OMP_WAIT_POLICY | threads | steps/s | training s |", "|---|---|---|---|---|"]
    lines += [f"| {r['load']} | {r['policy']} | {r['threads']} | {r['steps_per_s']} | {r['train_s']} |" for r in rows]
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
