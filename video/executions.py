"""Executed plans and their outcomes: the learned critic's training data and VideoAgent-Online's new clips.

``execute_plans(planner, env_tasks, cameras, seeds, out)`` runs the robotics protocol on each scene
(``draws`` independent plans per scene) and keeps, per episode::

    <out>/episodes.jsonl                           one record per episode (resumable: finished ones are skipped)
    <out>/plans/<task>_<camera>_seed<k>_draw<d>.npz  first plan at the planner's resolution (uint8, observation
                                                    first), text, success
    <out>/successes/                               every scene's first successful execution, a ``gencond collect``
                                                    dataset (index.json): new training clips

Each episode's plans depend only on the planner's seed, the scene and the draw, so an interrupted
run resumed gives the same data as an uninterrupted one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from gencond.errors import UserError
from gencond.runs import read_resume_log

EPISODES = "episodes.jsonl"
PLANS = "plans"
SUCCESSES = "successes"


def plan_path(out: Path, env_task: str, camera: str, seed: int, draw: int) -> Path:
    return Path(out) / PLANS / f"{env_task}_{camera}_seed{seed}_draw{draw}.npz"


def read_episodes(out: str | Path) -> list[dict]:
    return read_resume_log(Path(out) / EPISODES, ("task", "camera", "seed", "draw", "success"))


def execute_plans(planner, env_tasks: Sequence[str], cameras: Sequence[str], seeds: Sequence[int], out: str | Path,
                  draws: int = 1, resolution: int = 128, max_replans: int = 0, extractor: str = "avdc",
                  progress: bool = True, identity: Optional[dict] = None) -> list[dict]:
    """Execute the planner's plans and keep outcomes, first plans and successful executions (see module)."""
    from tqdm import tqdm

    from robotics.collect import write_index
    from robotics.envs import TaskEnv, check_camera, check_env_task
    from robotics.evaluate import check_identity, describe
    from robotics.register import make_follower_factory

    from .planner import VideoPlanner

    if draws < 1:
        raise UserError(f"draws is {draws}; execute at least 1 plan per scene")
    if isinstance(planner, VideoPlanner) and planner.depth:
        raise UserError("executing RGB-D planners to keep their executions as clips is not supported; "
                        "use an RGB planner (data.depth: false)")
    env_tasks, cameras = [check_env_task(t) for t in env_tasks], [check_camera(c) for c in cameras]
    out = Path(out)
    check_identity(out, {"planner": describe(planner), "extractor": extractor, "resolution": resolution,
                         "max_replans": max_replans, **(identity or {})})
    make_follower = make_follower_factory(extractor, None)
    done = {(r["task"], r["camera"], r["seed"], r["draw"]): r for r in read_episodes(out)}
    todo = [(t, c, s, d) for t in env_tasks for c in cameras for s in seeds for d in range(draws) if (t, c, s, d) not in done]
    env = None
    bar = tqdm(todo, desc="execute plans", unit="ep", disable=not progress or not todo)
    try:
        for env_task, camera, seed, draw in bar:
            if env is None or (env.env_task, env.camera) != (env_task, camera):
                if env is not None:
                    env.close()
                env = TaskEnv(env_task, camera, resolution)
            rec = _execute_draw(env, planner, make_follower(), seed, draw, out, max_replans, resolution, done)
            with (out / EPISODES).open("a") as f:
                f.write(json.dumps(rec) + "\n")
            done[(env_task, camera, seed, draw)] = rec
            bar.set_postfix(success=f"{sum(r['success'] for r in done.values())}/{len(done)}")
    finally:
        bar.close()
        if env is not None:
            env.close()
    if not (out / SUCCESSES / "index.json").exists():
        (out / SUCCESSES).mkdir(parents=True, exist_ok=True)
        write_index(out / SUCCESSES, (resolution, resolution))
    return [done[(t, c, s, d)] for t in env_tasks for c in cameras for s in seeds for d in range(draws)]


def _execute_draw(env, planner, follower, seed: int, draw: int, out: Path, max_replans: int, resolution: int,
                  done: dict) -> dict:
    """One episode of draw ``draw`` on the scene ``seed``: its record, its first plan saved, and the execution
    kept as a clip when it is the scene's first success."""
    from robotics.collect import episode_path, save_demonstration, write_index
    from robotics.envs import instruction_of
    from robotics.execution import run_episode
    from robotics.frames import resize_frames

    env_task, camera = env.env_task, env.camera
    if hasattr(planner, "draw"):  # which independent plan of this scene (its begin_episode seeds by it)
        planner.draw = draw
    result = run_episode(env, planner, follower, seed, max_replans=max_replans, record=True)
    rec = {**result.summary(), "draw": draw}
    if hasattr(planner, "episode_record"):
        rec["planner"] = planner.episode_record()
    if result.plans:
        size = getattr(planner, "resolution", None)
        first = result.plans[0][1]
        first = resize_frames(first, (size, size)) if size else first
        path = plan_path(out, env_task, camera, seed, draw)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, plan=first, text=instruction_of(env_task), success=result.success, replans=result.replans)
        rec["plan"] = str(path.relative_to(out))
    # a scene's first successful draw becomes a clip (a rerun writes the same file again)
    rec["kept_as_clip"] = result.success and not any(
        done.get((env_task, camera, seed, d), {}).get("success") for d in range(draw))
    if rec["kept_as_clip"]:
        save_demonstration(result.demonstration(env.object_geom_ids), episode_path(out / SUCCESSES, env_task, camera, seed))
        write_index(out / SUCCESSES, (resolution, resolution))
    return rec
