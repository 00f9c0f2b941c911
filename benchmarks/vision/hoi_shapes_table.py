"""The HOI-shapes table from ``gencond eval`` results: one row per run (base, GLIGEN-style,
InteractDiffusion, its ablation) and the renders, per split, with each run's paired difference in
interaction accuracy against a reference run (same held-out scenes, same pairs: a paired bootstrap).

    python benchmarks/vision/hoi_shapes_table.py runs/hoi_shapes_base runs/hoi_shapes_gligen runs/hoi_shapes_interact \\
        --reference runs/hoi_shapes_gligen --out benchmarks/results/vision/hoi_shapes_table.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def paired_difference(a, b, draws: int = 2000, seed: int = 0) -> tuple[float, list[float], float]:
    """mean(a) - mean(b) over paired 0/1 outcomes, its 95 % bootstrap interval, and the two-sided
    bootstrap p-value of no difference."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (draws, len(d)))].mean(1)
    p = min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean()))
    return float(d.mean()), [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))], float(p)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders with eval/hoi_shapes/results.json (or results.json files)")
    p.add_argument("--reference", help="the run the paired differences are taken against (default: none)")
    p.add_argument("--out", help="also write the table to this Markdown file")
    args = p.parse_args()

    def load(path):
        f = Path(path)
        f = f if f.suffix == ".json" else f / "eval" / "hoi_shapes" / "results.json"
        if not f.is_file():
            raise SystemExit(f"{f} not found: run `gencond eval {path}` first")
        return json.loads(f.read_text())

    results = {r: load(r) for r in args.runs}
    ref = load(args.reference) if args.reference else None
    splits = list(next(iter(results.values()))["splits"])
    lines = ["| run | grounding | split | interaction acc. [95 %] | Δ vs reference [95 %], p | triplet recall@0.5 | "
             "box alignment | FD | KID |", "|---|---|---|---|---|---|---|---|---|"]
    for split in splits:
        for name, res in results.items():
            r = res["splits"].get(split)
            if r is None:
                continue
            delta = "-"
            if ref is not None and Path(name).resolve() != Path(args.reference).resolve() and split in ref["splits"]:
                other = ref["splits"][split]
                if len(other.get("pair_correct", [])) == len(r.get("pair_correct", [])) > 0:
                    d, (lo, hi), pv = paired_difference(r["pair_correct"], other["pair_correct"])
                    delta = f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}], p={pv:.3f}"
            lo, hi = r["interval_95"]
            lines.append(f"| {Path(name).name} | {res['grounding']} | {split} | {100 * r['interaction_accuracy']:.1f} "
                         f"[{100 * lo:.1f}, {100 * hi:.1f}] | {delta} | {100 * r['triplet_recall_iou50']:.1f} | "
                         f"{r['box_alignment']:.2f} | {r['fd_evaluator_features']:.2f} | {r['kid_evaluator_features']:.3g} |")
        first = next(res for res in results.values() if split in res["splits"])["splits"][split]
        lines.append(f"| renders | (upper bound) | {split} | {100 * first['renders_accuracy']:.1f} | - | "
                     f"{100 * first['renders_triplet_recall_iou50']:.1f} | {first['renders_box_alignment']:.2f} | 0 | 0 |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
