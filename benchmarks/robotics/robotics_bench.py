"""Robotics benchmark on CPU: rendering speed, expert collection time, and plan-execution success.

    python benchmarks/robotics/robotics_bench.py render
    python benchmarks/robotics/robotics_bench.py collect --out runs/robotics/demos          # 165 demos, timed
    python benchmarks/robotics/robotics_bench.py evaluate --extractor avdc                  # oracle + AVDC
    python benchmarks/robotics/robotics_bench.py evaluate --planner oracle-rgbd             # RGB-D oracle plans
    python benchmarks/robotics/robotics_bench.py evaluate --plan-resolution 32              # 32x32 oracle plans
    python benchmarks/robotics/robotics_bench.py evaluate --extractor idm --idm runs/robotics-idm
    python benchmarks/robotics/robotics_bench.py evaluate --planner repeat-first --seeds 100-101  # the floor
    python benchmarks/robotics/robotics_bench.py evaluate --planner video:runs/metaworld_small --workers 2 [--max-replans 0]
    python benchmarks/robotics/robotics_bench.py combine A.json B.json --name evaluate_..._seeds100-124  # disjoint seeds

Evaluation seeds default to 100-104, which no collected demonstration (seeds 0-4) used, so the
inverse-dynamics model is tested on scenes it was not trained on.

Each part prints its figures and writes them to benchmarks/results/robotics/robotics_<part>[_<tag>].json;
``evaluate`` names its file by planner, extractor and every non-default setting (e.g.
robotics_evaluate_oracle_avdc_seeds100-100.json), so only the default run writes the canonical
robotics_evaluate_oracle_avdc.json, and no result is overwritten by one of fewer episodes. ``evaluate``
keeps the episode records beside the table (``..._episodes.jsonl``, for paired tests later) and leaves
results.md, episodes.jsonl and videos under --out. Measurement only.
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from pathlib import Path

from gencond.errors import UserError
from robotics import results

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "robotics"


def save(name: str, payload: dict) -> None:
    payload = {"machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cpus",
               **payload}
    path = RESULTS / f"robotics_{name}.json"
    results.save_result(path, payload)
    print(json.dumps(payload, indent=1))
    print(f"saved {path}")


def bench_render(args) -> None:
    from robotics.envs import CAMERAS, make_env

    out = {}
    for camera in CAMERAS:
        env = make_env("assembly", camera, args.resolution, seed=0)
        for kind, kw in (("rgb", {}), ("rgb+depth+seg", {"depth": True, "segmentation": True})):
            env.render(**kw)  # warm-up
            times = []
            cpu_start = time.process_time()  # CPU of all this process's threads (llvmpipe's too)
            for _ in range(args.frames):
                start = time.perf_counter()
                env.render(**kw)
                times.append(1000 * (time.perf_counter() - start))
            # on a shared machine wall time includes waiting for a core; CPU time per frame does not
            cpu_ms = 1000 * (time.process_time() - cpu_start) / args.frames
            out[f"{camera} {kind}"] = {"median_ms": round(statistics.median(times), 2),
                                       "min_ms": round(min(times), 2), "cpu_ms": round(cpu_ms, 2)}
        steps = []
        for _ in range(200):
            start = time.perf_counter()
            env.step([0.1, 0.0, 0.0, 0.0])
            steps.append(1000 * (time.perf_counter() - start))
        out[f"{camera} env.step"] = {"median_ms": round(statistics.median(steps), 3)}
        env.close()
    load = __import__("os").getloadavg()[0]
    save("render", {"resolution": args.resolution, "frames": args.frames, "load_average_1min": round(load, 2),
                    "ms_per_frame": out})


def bench_collect(args) -> None:
    from robotics.collect import collect
    from robotics.envs import BENCHMARK_TASKS, CAMERAS

    if (Path(args.out) / "index.json").exists():
        raise SystemExit(f"{args.out} already holds a dataset; pass a fresh --out to time a full collection")
    start = time.perf_counter()
    index = collect(args.out, BENCHMARK_TASKS, CAMERAS, range(args.seeds), args.resolution)
    seconds = time.perf_counter() - start
    eps = index["episodes"]
    save("collect", {"episodes": len(eps), "successful": sum(e["success"] for e in eps),
                     "mean_steps": round(statistics.mean(e["steps"] for e in eps), 1),
                     "seconds": round(seconds, 1), "out": args.out})


def evaluate_name(args) -> str:
    """The result's name: planner, extractor, each setting that is not the default, and the tag."""
    return results.evaluate_name(args.planner, args.extractor, args.tag,
                                 **{k: getattr(args, k) for k in results.EVALUATE_DEFAULTS})


def bench_evaluate(args) -> None:
    from robotics.envs import BENCHMARK_TASKS, CAMERAS
    from robotics.evaluate import evaluate
    from robotics.register import evaluation_identity, make_follower_factory, make_planner, parse_seeds

    tasks = args.tasks.split(",") if args.tasks else list(BENCHMARK_TASKS)
    cameras = args.cameras.split(",") if args.cameras else list(CAMERAS)
    make = functools.partial(make_planner, args.planner, args.plan_frames, args.resolution, args.plan_resolution)
    planner = make if args.workers > 1 else make()  # workers build their own planner
    factory = make_follower_factory(args.extractor, args.idm)
    name = evaluate_name(args)
    out = args.out or f"runs/robotics/bench_{name}"
    start = time.perf_counter()
    seeds = parse_seeds(args.seeds)
    table = evaluate(planner, factory, tasks, cameras, seeds, out, resolution=args.resolution,
                     max_replans=args.max_replans, videos=args.videos,
                     title=f"{args.planner} planner + {args.extractor} extractor",
                     identity=evaluation_identity(args.planner, args.extractor, args.plan_frames, args.idm,
                                                  args.plan_resolution), workers=args.workers)
    seconds = time.perf_counter() - start
    print((Path(out) / "results.md").read_text())
    save(name, {"planner": args.planner, "extractor": args.extractor, "plan_frames": args.plan_frames,
                "plan_resolution": args.plan_resolution, "seeds": args.seeds, "max_replans": args.max_replans,
                "workers": args.workers, "wall_seconds": round(seconds, 1),
                "out": out, **table})
    save_episodes(name, out, tasks, cameras, seeds)


def save_episodes(name: str, out: str, tasks, cameras, seeds) -> None:
    """Keep the evaluation's episode records beside its table (robotics_<name>_episodes.jsonl), so a later
    evaluation on the same seeds can be paired with it (McNemar) after the run folder is gone."""
    lines = [json.dumps(record) for record in results.episode_records(out, tasks, cameras, seeds)]
    (RESULTS / f"robotics_{name}_episodes.jsonl").write_text("\n".join(lines) + "\n")


def bench_combine(args) -> None:
    tables = [json.loads(Path(f).read_text()) for f in args.results]
    save(args.name, {"combined_from": [Path(f).name for f in args.results], **results.combine_tables(tables)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = parser.add_subparsers(dest="part", required=True)
    p = parts.add_parser("render")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--frames", type=int, default=300)
    p.set_defaults(run=bench_render)
    p = parts.add_parser("collect")
    p.add_argument("--out", default="runs/robotics/demos")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--resolution", type=int, default=128)
    p.set_defaults(run=bench_collect)
    p = parts.add_parser("evaluate")
    p.add_argument("--planner", default="oracle")
    p.add_argument("--extractor", default="avdc")
    p.add_argument("--idm", default=None)
    p.add_argument("--tasks", default=results.EVALUATE_DEFAULTS["tasks"])
    p.add_argument("--cameras", default=results.EVALUATE_DEFAULTS["cameras"])
    p.add_argument("--seeds", default=results.EVALUATE_DEFAULTS["seeds"], help="count, range or list (default 100-104: "
                   "seeds that no training demo used)")
    p.add_argument("--plan-frames", type=int, help="frames per plan of the built-in planners (default 8)")
    p.add_argument("--resolution", type=int, default=results.EVALUATE_DEFAULTS["resolution"])
    p.add_argument("--plan-resolution", type=int, default=results.EVALUATE_DEFAULTS["plan_resolution"],
                   help="oracle plans at this square size, enlarged back to --resolution (a video model's size)")
    p.add_argument("--max-replans", type=int, default=results.EVALUATE_DEFAULTS["max_replans"],
                   help="0: AVDC without replanning; 5: AVDC-Replan (default)")
    p.add_argument("--workers", type=int, default=1, help="processes the episodes are split across")
    p.add_argument("--videos", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--tag", default="")
    p.set_defaults(run=bench_evaluate)
    p = parts.add_parser("combine", help="one table from result files of one evaluation on disjoint seeds")
    p.add_argument("results", nargs="+", help="benchmarks/results/robotics/robotics_evaluate_*.json files")
    p.add_argument("--name", required=True, help="the combined result's name (robotics_<name>.json)")
    p.set_defaults(run=bench_combine)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    try:
        args.run(args)
    except UserError as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
