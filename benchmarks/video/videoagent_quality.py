"""VideoAgent's plan quality on held-out scenes, per refinement round, with controls (no robot needed).

For every scene (task x camera x seed), against the expert's real future:
  base       the first-frame-only plan (round 0; AVDC's plan from the same network)
  round k    k fixed refinement rounds, no feedback (each conditioned on the previous round's plan)
  unrelated  one round conditioned on the base plan of another task's scene (does the plan matter?)
  best-of-K  K base samples (the compute of base + K-1 rounds), the one the critic scores highest (--critic)
  critic     VideoAgent: refined until the critic accepts, at most --rounds rounds (--critic)
Metrics: frame PSNR (dB) and object-track error (cm; the extractor's 3-D subgoals vs the simulator's
object along the expert's future), as `gencond eval` computes them. Resumable (scenes.jsonl).

  python benchmarks/video/videoagent_quality.py runs/metaworld_small_videoagent --critic runs/metaworld_small_critic \
      --seeds 100-101 --rounds 4
writes benchmarks/results/video/videoagent_quality_<run>_seeds<...>.json (and runs/bench/... for resuming).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def metrics(plan, truth, env, seed, states):
    from robotics.planners import plan_rgb
    from video.cli import psnr, track_error_cm

    rgb = plan_rgb(plan)
    out = {"psnr": float(np.mean([psnr(p, t) for p, t in zip(rgb[1:], truth[1:])]))}
    try:
        out["track_cm"] = track_error_cm(env, seed, plan, states)
    except Exception as e:  # an extractor failure on a bad plan is a result
        out["track_cm"], out["track_error"] = None, f"{type(e).__name__}: {e}"
    return out


def main() -> None:

    from gencond.pipeline import set_threads
    from robotics.envs import BENCHMARK_TASKS, CAMERAS, TaskEnv, instruction_of
    from robotics.evaluate import check_identity
    from robotics.frames import resize_frames
    from robotics.register import parse_list, parse_seeds
    from video.agent import VideoAgentPlanner
    from video.cli import expert_clip

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a VideoAgent run (model.previous_plan)")
    p.add_argument("--critic", help="a video-critic run (adds best-of-K and critic-stopped refinement)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--tasks")
    p.add_argument("--cameras")
    p.add_argument("--seeds", default="100-101")
    p.add_argument("--render", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights", default="best")
    args = p.parse_args()
    set_threads(args.threads)
    tasks, cameras = parse_list(args.tasks, BENCHMARK_TASKS), parse_list(args.cameras, CAMERAS)
    seeds = parse_seeds(args.seeds)
    agent = VideoAgentPlanner(args.run_dir, max_rounds=args.rounds, weights=args.weights)
    critic = None
    if args.critic:
        from video.feedback import CriticFeedback

        critic = CriticFeedback(args.critic)
    name = f"videoagent_quality_{Path(args.run_dir).name}_seeds{args.seeds}"
    work = Path("runs/bench") / name
    work.mkdir(parents=True, exist_ok=True)
    check_identity(work, {"planner": repr(agent), "critic": repr(critic), "render": args.render, "rounds": args.rounds})
    log = work / "scenes.jsonl"
    done = {(r["task"], r["camera"], r["seed"]) for r in map(json.loads, log.read_text().splitlines())} if log.exists() else set()
    scenes = [(t, c, s) for s in seeds for c in cameras for t in tasks]
    n = agent.model.config.frames + 1
    from tqdm import tqdm

    for i, (task, camera, seed) in enumerate(tqdm(scenes, desc="plan quality per round", unit="scene")):
        if (task, camera, seed) in done:
            continue
        text = instruction_of(task)
        first, expert, states = expert_clip(task, camera, seed, n, args.render)
        truth = resize_frames(expert, (agent.resolution,) * 2)
        rec = {"task": task, "camera": camera, "seed": seed}
        with TaskEnv(task, camera, args.render) as env:
            agent.begin_episode(task, camera, seed)
            started = time.perf_counter()
            rounds = agent.refine_plan(first, text).rounds
            rec["seconds_per_round"] = (time.perf_counter() - started) / len(rounds)
            rec["rounds"] = [metrics(agent.to_plan(first, r), truth, env, seed, states) for r in rounds]
            # another task's scene: its base plan as the previous plan of one round
            other_task, other_camera, other_seed = scenes[(i + 1) % len(scenes)]
            other_first, _, _ = expert_clip(other_task, other_camera, other_seed, n, args.render)
            agent.begin_episode(other_task, other_camera, other_seed)
            unrelated_base = agent.sample_plan(other_first, instruction_of(other_task))
            agent.begin_episode(task, camera, seed)
            unrelated = agent.sample_plan(first, text, unrelated_base)
            rec["unrelated"] = metrics(agent.to_plan(first, unrelated), truth, env, seed, states)
            if critic is not None:
                agent.begin_episode(task, camera, seed)
                samples = [agent.sample_plan(first, text) for _ in range(args.rounds + 1)]
                scores = [critic(first, agent.to_plan(first, s), text).score for s in samples]
                rec["best_of_k"] = {**metrics(agent.to_plan(first, samples[int(np.argmax(scores))]), truth, env, seed,
                                              states), "critic_scores": scores}
                agent.feedback = critic
                agent.begin_episode(task, camera, seed)
                refined = agent.refine_plan(first, text)
                agent.feedback = None
                rec["critic"] = {**metrics(agent.to_plan(first, refined.final), truth, env, seed, states),
                                 "rounds_used": len(refined.rounds), "accepted": refined.accepted}
        with log.open("a") as f:
            f.write(json.dumps(rec) + "\n")
    records = [r for r in map(json.loads, log.read_text().splitlines()) if (r["task"], r["camera"], r["seed"]) in set(scenes)]

    def mean(values):
        v = [x for x in values if x is not None]
        return round(float(np.mean(v)), 3) if v else None

    rows = {f"round {k}" if k else "base": [r["rounds"][k] for r in records] for k in range(args.rounds + 1)}
    rows["unrelated plan, 1 round"] = [r["unrelated"] for r in records]
    if critic is not None:
        rows[f"best-of-{args.rounds + 1} by critic"] = [r["best_of_k"] for r in records]
        rows["VideoAgent (critic-stopped)"] = [r["critic"] for r in records]
    table = {k: {"psnr": mean(m["psnr"] for m in v), "track_cm": mean(m["track_cm"] for m in v)} for k, v in rows.items()}
    base = table["base"]["track_cm"]
    for row in table.values():
        row["track_change_vs_base_%"] = None if base is None or row["track_cm"] is None else round(100 * (row["track_cm"] / base - 1), 1)
    summary = {"run": str(args.run_dir), "critic": args.critic, "scenes": len(records), "seeds": seeds,
               "rounds": args.rounds, "table": table,
               "seconds_per_round": mean(r["seconds_per_round"] for r in records),
               "critic_rounds_used": mean(r["critic"]["rounds_used"] for r in records) if critic else None,
               "command": " ".join(["python", *sys.argv])}
    out = Path("benchmarks/results/video") / f"{name}.json"
    out.write_text(json.dumps(summary, indent=1))
    print("| plan | PSNR dB | track cm | track vs base |\n|---|---|---|---|")
    for k, row in table.items():
        print(f"| {k} | {row['psnr']} | {row['track_cm']} | {row['track_change_vs_base_%']} % |")
    print(f"{len(records)} scenes; {summary['seconds_per_round']} s per round; wrote {out}")


if __name__ == "__main__":
    main()
