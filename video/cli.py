"""``gencond sample RUN`` (a plan beside the expert's real future, as a GIF) and ``gencond eval RUN``
(plan quality on held-out scenes, no robot: frame PSNR and object-track error) for video planners."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from gencond.arguments import add_sampling_arguments, non_negative_float, non_negative_int
from gencond.runs import output_dir, read_resume_log

EVAL_SEEDS = "100-104"  # no demonstration uses these (`gencond collect` defaults to 0-4)


def _planner(args):
    from gencond.pipeline import set_threads

    from .planner import VideoPlanner

    set_threads(args.threads)
    sampler = dict(weights=args.weights, scheduler=args.scheduler, steps=args.steps, cfg_scale=args.cfg_scale,
                   seed=args.seed)
    if getattr(args, "rounds", 0):  # VideoAgent: every refinement round
        from .agent import VideoAgentPlanner

        return VideoAgentPlanner(args.run_dir, args.rounds, refine_from=args.refine_from, strength=args.strength,
                                 **sampler)
    return VideoPlanner(args.run_dir, **sampler)


def _common(p: argparse.ArgumentParser) -> None:
    add_sampling_arguments(p)
    p.add_argument("--cfg-scale", type=non_negative_float, help="classifier-free guidance weight on the text (default: off)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="door-open", help="MetaWorld task (default door-open)")
    p.add_argument("--camera", default="corner", help="corner, corner2 or corner3 (default corner)")
    p.add_argument("--render", type=int, default=128, help="render size of the scene (default 128)")
    p.add_argument("--out", help="GIF path (default RUN_DIR/samples/<task>_<camera>_seed<k>.gif)")
    p.add_argument("--rounds", type=non_negative_int, default=0,
                   help="VideoAgent refinement rounds after the base plan, each shown (a VideoAgent run; default 0)")
    p.add_argument("--refine-from", default="noise", choices=("noise", "plan"),
                   help="each round samples from noise (the paper) or from the previous plan noised to --strength")
    p.add_argument("--strength", type=float, default=0.5, help="noise strength of --refine-from plan (default 0.5)")
    _common(p)
    p.set_defaults(seed=7)


def expert_clip(env_task: str, camera: str, seed: int, frames: int, render: int):
    """(observation frame, the expert's clip of ``frames`` frames from it, the expert's states there)."""
    from robotics.envs import TaskEnv
    from robotics.experts import run_expert

    from .data import clip_indices

    with TaskEnv(env_task, camera, render) as env:
        demo = run_expert(env, seed)
    idx = clip_indices(len(demo.frames), 0, frames)
    return demo.frames[0], demo.frames[idx], demo.states[idx]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def sample_command(args: argparse.Namespace) -> Path:
    from robotics.envs import check_camera, check_env_task, instruction_of
    from robotics.frames import resize_frames, write_labelled_gif
    from robotics.planners import plan_rgb

    env_task, camera = check_env_task(args.task), check_camera(args.camera)
    planner = _planner(args)
    first, expert, _ = expert_clip(env_task, camera, args.seed, planner.model.config.frames + 1, args.render)
    truth = resize_frames(expert, (planner.resolution,) * 2)
    if args.rounds:
        rounds = planner.refine_plan(first, instruction_of(env_task)).rounds
        columns = {("base plan" if r == 0 else f"round {r}"): plan_rgb(planner.to_plan(first, p))
                   for r, p in enumerate(rounds)}
    else:
        columns = {"plan": plan_rgb(planner.plan(first, instruction_of(env_task), camera))}
    suffix = f"_rounds{args.rounds}" if args.rounds else ""
    out = Path(args.out) if args.out else output_dir(args.run_dir) / "samples" / f"{env_task}_{camera}_seed{args.seed}{suffix}.gif"
    write_labelled_gif(out, {**columns, "expert": truth})
    for name, plan in columns.items():
        scores = [psnr(p, t) for p, t in zip(plan[1:], truth[1:])]
        print(f"{name}: PSNR of the {len(scores)} predicted frames vs. the expert's: {np.mean(scores):.1f} dB")
    print(f"wrote {out}: '{instruction_of(env_task)}' from {camera}, seed {args.seed}")
    return out


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", help="comma-separated tasks (default: the 11 benchmark tasks)")
    p.add_argument("--cameras", help="comma-separated cameras (default: corner,corner2,corner3)")
    p.add_argument("--seeds", default=EVAL_SEEDS, help=f"scene seeds, held out from training (default {EVAL_SEEDS})")
    p.add_argument("--render", type=int, default=128, help="render size of the scene (default 128)")
    p.add_argument("--out", help="output folder (default RUN_DIR/eval/plan_quality)")
    _common(p)


def track_error_cm(env, seed: int, plan, true_states: np.ndarray) -> float:
    """Mean distance (cm) between the extractor's object displacements read from ``plan`` and the
    object's true displacements (MetaWorld state[4:7]) at the same normalised times."""
    from robotics.avdc import AvdcFollower
    from robotics.execution import fit_plan_to_view

    env.reset(seed)
    view = env.render(depth=True, segmentation=True)
    follower = AvdcFollower()
    follower.start(env, view, fit_plan_to_view(plan, view.rgb.shape[:2]))
    sub = follower.motion.subgoals
    true = true_states[:, 4:7]
    return float(np.mean(np.linalg.norm((sub - sub[0]) - (true - true[0]), axis=1)[1:]) * 100)


def evaluate_plans(planner, env_tasks, cameras, seeds, out: Path, render: int = 128, progress: bool = True) -> dict:
    """PSNR and track error of the planner's first plan, the repeat-first floor and the oracle (the
    expert's frames at the planner's resolution), per episode (resumable) and per task."""
    from tqdm import tqdm

    from robotics.envs import TaskEnv, instruction_of
    from robotics.evaluate import check_identity, describe
    from robotics.frames import resize_frames
    from robotics.planners import plan_rgb

    check_identity(out, {"planner": describe(planner), "render": render, "metric": "plan-quality/1"})
    log = out / "episodes.jsonl"
    done = {(r["task"], r["camera"], r["seed"]): r for r in read_resume_log(log, ("task", "camera", "seed"))}
    todo = [(t, c, s) for t in env_tasks for c in cameras for s in seeds if (t, c, s) not in done]
    n = planner.model.config.frames + 1
    for env_task, camera, seed in tqdm(todo, desc="plan quality", unit="ep", disable=not progress):
        first, expert, states = expert_clip(env_task, camera, seed, n, render)
        if hasattr(planner, "begin_episode"):
            planner.begin_episode(env_task, camera, seed)
        plan = planner.plan(first, instruction_of(env_task), camera)
        truth = resize_frames(expert, (planner.resolution,) * 2)
        floor = np.repeat(truth[:1], n, axis=0)
        rec = {"task": env_task, "camera": camera, "seed": seed,
               "psnr": float(np.mean([psnr(p, t) for p, t in zip(plan_rgb(plan)[1:], truth[1:])])),
               "psnr_floor": float(np.mean([psnr(p, t) for p, t in zip(floor[1:], truth[1:])]))}
        with TaskEnv(env_task, camera, render) as env:
            for key, p in (("track_cm", plan), ("track_cm_floor", floor), ("track_cm_oracle", truth)):
                try:
                    rec[key] = track_error_cm(env, seed, p, states)
                except Exception as e:  # an extractor failure on a bad plan is a result, not a crash
                    rec[key], rec[key + "_error"] = None, f"{type(e).__name__}: {e}"
        with log.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        done[(env_task, camera, seed)] = rec
    records = [done[(t, c, s)] for t in env_tasks for c in cameras for s in seeds]
    keys = ("psnr", "psnr_floor", "track_cm", "track_cm_floor", "track_cm_oracle")

    def mean(rs, k):
        vals = [r[k] for r in rs if r.get(k) is not None]
        return round(float(np.mean(vals)), 2) if vals else None

    table = {"per_task": {t: {k: mean([r for r in records if r["task"] == t], k) for k in keys} for t in env_tasks},
             "overall": {k: mean(records, k) for k in keys}, "episodes": len(records), "seeds": list(seeds)}
    (out / "results.json").write_text(json.dumps(table, indent=1))
    lines = ["| task | PSNR plan | PSNR floor | track cm plan | track cm floor | track cm oracle |", "|---|---|---|---|---|---|"]
    for name, row in [*table["per_task"].items(), ("**overall**", table["overall"])]:
        lines.append(f"| {name} | " + " | ".join("–" if row[k] is None else f"{row[k]:.2f}" for k in keys) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return table


def eval_command(args: argparse.Namespace) -> dict:
    from robotics.envs import BENCHMARK_TASKS, CAMERAS
    from robotics.register import parse_list, parse_seeds

    planner = _planner(args)
    out = Path(args.out) if args.out else output_dir(args.run_dir) / "eval" / "plan_quality"
    table = evaluate_plans(planner, parse_list(args.tasks, BENCHMARK_TASKS), parse_list(args.cameras, CAMERAS),
                           parse_seeds(args.seeds), out, args.render, progress=not args.quiet)
    print((out / "results.md").read_text())
    print(f"{table['episodes']} episodes; results in {out}/results.json")
    return table
