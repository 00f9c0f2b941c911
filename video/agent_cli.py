"""Command lines of VideoAgent: ``gencond video-execute`` (executed plans and outcomes: critic data),
``gencond video-online`` (online finetuning) and ``gencond eval CRITIC_RUN`` (critic accuracy)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from gencond.arguments import non_negative_int, positive_int
from gencond.runs import output_dir


def _scenes(p: argparse.ArgumentParser, seeds: str) -> None:
    p.add_argument("--tasks", help="comma-separated tasks (default: the 11 benchmark tasks)")
    p.add_argument("--cameras", help="comma-separated cameras (default: corner,corner2,corner3)")
    p.add_argument("--seeds", default=seeds, help=f"scene seeds (default {seeds})")
    p.add_argument("--resolution", type=positive_int, default=128, help="render size (default 128)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _agent(p: argparse.ArgumentParser, rounds: int) -> None:
    p.add_argument("--rounds", type=non_negative_int, default=rounds,
                   help=f"VideoAgent refinement rounds after the base plan (default {rounds}; needs a VideoAgent run)")
    p.add_argument("--critic", help="a video-critic run: the feedback that stops refinement (default: none)")


def _lists(args):
    from robotics.envs import BENCHMARK_TASKS, CAMERAS
    from robotics.register import parse_list, parse_seeds

    return parse_list(args.tasks, BENCHMARK_TASKS), parse_list(args.cameras, CAMERAS), parse_seeds(args.seeds)


def add_execute_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a video-planner run (a VideoAgent run for --rounds > 0)")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument("--draws", type=positive_int, default=1, help="independent plans per scene (default 1)")
    p.add_argument("--max-replans", type=non_negative_int, default=0,
                   help="replans per episode (default 0: the critic learns from plans executed alone)")
    _agent(p, 0)
    _scenes(p, "0-4")


def execute_command(args: argparse.Namespace) -> list:
    from gencond.pipeline import set_threads

    from .agent import make_planner
    from .executions import execute_plans

    set_threads(args.threads)
    env_tasks, cameras, seeds = _lists(args)
    records = execute_plans(make_planner(args.run_dir, args.rounds, args.critic), env_tasks, cameras, seeds, args.out,
                            draws=args.draws, resolution=args.resolution, max_replans=args.max_replans,
                            progress=not args.quiet)
    ok = sum(r["success"] for r in records)
    print(f"{ok}/{len(records)} executions succeeded ({100 * ok / len(records):.1f} %); "
          f"{sum(bool(r.get('kept_as_clip')) for r in records)} kept as clips in {args.out}/successes")
    return records


def add_online_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a VideoAgent run (trained for plan refinement)")
    p.add_argument("--iterations", type=positive_int, default=2, help="online iterations (default 2)")
    p.add_argument("--steps", type=positive_int, default=500, help="finetuning steps per iteration (default 500)")
    p.add_argument("--eval-seeds", default="100-104", help="held-out scenes of each evaluation (default 100-104)")
    p.add_argument("--max-replans", type=non_negative_int, default=5, help="replans per episode (default 5)")
    p.add_argument("--workers", type=positive_int, default=1, help="evaluation processes (default 1)")
    p.add_argument("--out", help="output folder (default RUN_DIR/online)")
    _agent(p, 4)
    _scenes(p, "5-29")  # new scenes: not the demonstrations' (0-4), not the evaluation's (100-124)


def online_command(args: argparse.Namespace) -> list:
    from gencond.pipeline import set_threads
    from robotics.register import parse_seeds

    from .online import online

    set_threads(args.threads)
    env_tasks, cameras, seeds = _lists(args)
    out = Path(args.out) if args.out else output_dir(args.run_dir) / "online"
    log = online(args.run_dir, out, args.iterations, env_tasks, cameras, seeds, parse_seeds(args.eval_seeds), args.steps,
                 args.rounds, args.critic, args.max_replans, args.resolution, args.workers, progress=not args.quiet)
    for entry in log:
        print(f"iteration {entry['iteration']}: {entry['execution_success']}/{entry['executed']} executions "
              f"succeeded, {entry['clips_added']} clips added, finetuned {entry['finetune_steps']} steps; "
              f"held-out success {entry['eval_success']}% over {entry['eval_episodes']} episodes")
    return log


def add_critic_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executions", required=True, nargs="+", help="folders of executed plans on held-out scenes")
    p.add_argument("--threshold", type=float, default=0.5, help="accept when P(success) >= this (default 0.5)")
    p.add_argument("--weights", default="best", help="best or last (default best)")


def critic_eval_command(args: argparse.Namespace) -> dict:
    from gencond.runs import load_run

    from .critic import ExecutedPlans, accuracy_table, pooled_text, scores

    cfg, model = load_run(args.run_dir, args.weights, task="video-critic", needed_by="this command")
    train_scenes = set()
    for folder in cfg.data.executions:
        from .executions import read_episodes

        train_scenes |= {(r["task"], r["camera"], r["seed"]) for r in read_episodes(folder)}
    data = ExecutedPlans(args.executions, model.config.image_size, model.config.frames)
    seen = sum(s in train_scenes for s in data.scenes)
    table = accuracy_table(scores(model, data, pooled_text(data.texts)), data.labels, args.threshold)
    table["scenes_seen_in_training"] = seen
    out = output_dir(args.run_dir) / "eval" / "critic.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=1))
    print(json.dumps(table))
    if seen:
        print(f"warning: {seen} of these plans come from scenes the critic was trained on: not held-out accuracy")
    return table
