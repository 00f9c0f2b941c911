"""The paper's success table from evaluations on the same episodes, with paired McNemar tests.

Each column is a folder written by `gencond evaluate-planner --out DIR` (or by `gencond video-online`,
iter_<k>/evaluation); only the episodes every column has are compared.

  python benchmarks/video/videoagent_table.py --tag small_seeds100-104 \
      --column AVDC=runs/eval/avdc --column AVDC-Replan=runs/eval/avdc_replan \
      --column VideoAgent=runs/eval/videoagent --compare VideoAgent:AVDC
writes benchmarks/results/video/videoagent_table_<tag>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    from robotics.envs import BENCHMARK_TASKS
    from robotics.evaluate import EPISODES_FILE, _read_done, paired_test, success_table

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--column", action="append", required=True, help="NAME=EVALUATION_DIR (in table order)")
    p.add_argument("--compare", action="append", default=[], help="A:B, a paired test of column A against B")
    p.add_argument("--tag", required=True, help="names the result files")
    args = p.parse_args()
    columns = {}
    for spec in args.column:
        name, _, folder = spec.partition("=")
        done = _read_done(Path(folder) / EPISODES_FILE)
        if not done:
            sys.exit(f"--column {spec}: no episodes in {folder}/{EPISODES_FILE}")
        columns[name] = done
    shared = sorted(set.intersection(*(set(d) for d in columns.values())))
    order = list(BENCHMARK_TASKS)
    tasks = sorted({k[0] for k in shared}, key=lambda t: order.index(t) if t in order else len(order))
    cameras = sorted({k[1] for k in shared})
    tables = {n: success_table([d[k] for k in shared], tasks, cameras) for n, d in columns.items()}
    tests = {}
    for spec in args.compare:
        a, _, b = spec.partition(":")
        if a not in columns or b not in columns:
            sys.exit(f"--compare {spec}: columns are {', '.join(columns)}")
        tests[spec] = paired_test([columns[a][k] for k in shared], [columns[b][k] for k in shared])
    lines = ["| task | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for task in tasks:
        lines.append(f"| {task} | " + " | ".join(f"{t['per_task'][task]['success']:.1f}" for t in tables.values()) + " |")
    lines.append("| **overall** | " + " | ".join(f"**{t['overall']:.1f}**" for t in tables.values()) + " |")
    lines.append(f"\n{len(shared)} shared episodes ({len(tasks)} tasks x {len(cameras)} cameras x "
                 f"{len({k[2] for k in shared})} seeds).")
    for spec, t in tests.items():
        a, _, b = spec.partition(":")
        lines.append(f"- {a} vs {b}: {t['difference_points']:+.1f} points ({t['only_first']} episodes only {a} "
                     f"solved, {t['only_second']} only {b}), McNemar p = {t['p_value']}")
    out = Path("benchmarks/results/video") / f"videoagent_table_{args.tag}"
    out.with_suffix(".json").write_text(json.dumps({"columns": {n: str(s.partition('=')[2]) for n, s in
                                                                zip(columns, args.column)},
                                                    "tables": tables, "paired_tests": tests, "episodes": len(shared),
                                                    "command": " ".join(["python", *sys.argv])}, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
