"""Seconds per plan of a trained video planner (video.planner.VideoPlanner) on this CPU.

    python benchmarks/video/video_planner_speed.py runs/metaworld_small            # DDIM-25 (the run's sampler)
    python benchmarks/video/video_planner_speed.py runs/metaworld_small --steps 10 --threads 2

Plans --plans first frames (door-open from corner, seeds 100..) after one warm-up plan and reports the
median and minimum wall time per plan, with the run's step and sampler. Writes
benchmarks/results/video/video_planner_speed_<run>_<sampler>_t<threads>.json. Measurement only.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from gencond.pipeline import set_threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--plans", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's)")
    p.add_argument("--scheduler", default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    set_threads(args.threads)

    from robotics.envs import TaskEnv, instruction_of
    from video.planner import VideoPlanner

    planner = VideoPlanner(args.run_dir, scheduler=args.scheduler, steps=args.steps)
    frames = []
    with TaskEnv("door-open", "corner", 128) as env:
        for seed in range(100, 100 + args.plans + 1):
            env.reset(seed)
            frames.append(env.render().rgb)
    text = instruction_of("door-open")
    planner.plan(frames[0], text, "corner")  # warm-up
    times = []
    for frame in frames[1:]:
        start = time.perf_counter()
        planner.plan(frame, text, "corner")
        times.append(time.perf_counter() - start)
    state = json.loads(sorted((Path(args.run_dir) / "checkpoints").glob("step_*/trainer_state.json"))[-1].read_text())
    s = planner.cfg.sampling
    result = {"machine": f"{platform.machine()}, torch {torch.__version__}", "run": args.run_dir,
              "newest_checkpoint_step": state.get("step"), "scheduler": s.scheduler, "num_steps": s.num_steps,
              "threads": args.threads, "plans": len(times), "median_s_per_plan": round(statistics.median(times), 3),
              "min_s_per_plan": round(min(times), 3)}
    print(json.dumps(result, indent=1))
    name = f"video_planner_speed_{Path(args.run_dir).name}_{s.scheduler}{s.num_steps}_t{args.threads}.json"
    (Path(__file__).resolve().parents[1] / "results" / "video" / name).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
