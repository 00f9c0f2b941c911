"""The evaluation protocol: tasks x cameras x seeds episodes, success tables, and side-by-side videos.

``evaluate(planner, follower_factory, tasks, cameras, seeds, out_dir)`` runs every episode with
:func:`robotics.execution.run_episode` and appends its summary to ``out_dir/episodes.jsonl`` at once,
so an interrupted evaluation resumes without redoing finished episodes. It then writes
``results.json`` (per task, per camera and overall success) and ``results.md`` (the same as a table).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from gencond.errors import UserError

from robotics.envs import CAMERAS, MAX_EPISODE_STEPS, check_camera, check_task

EPISODES_FILE = "episodes.jsonl"


def _read_done(path: Path) -> dict[tuple, dict]:
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[(rec["task"], rec["camera"], rec["seed"])] = rec
    return done


def success_table(records: list[dict], tasks, cameras) -> dict:
    """Success rates (percent) per task, per task and camera, and overall, from episode records."""
    def rate(rs):
        return round(100.0 * sum(r["success"] for r in rs) / len(rs), 1) if rs else None

    per_task = {}
    for task in tasks:
        rs = [r for r in records if r["task"] == task]
        per_task[task] = {"success": rate(rs), "episodes": len(rs),
                          "cameras": {c: rate([r for r in rs if r["camera"] == c]) for c in cameras}}
    errors = [r for r in records if r.get("error")]
    return {"overall": rate(records), "episodes": len(records), "per_task": per_task,
            "errors": len(errors), "mean_steps": float(np.mean([r["steps"] for r in records])) if records else None}


def markdown_table(table: dict, cameras, title: str = "") -> str:
    """The success table as Markdown: one row per task, one column per camera, and the overall row."""
    head = "| task | " + " | ".join(cameras) + " | all | episodes |"
    lines = ([f"### {title}", ""] if title else []) + [head, "|" + "---|" * (len(cameras) + 3)]
    fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    for task, row in table["per_task"].items():
        cams = " | ".join(fmt(row["cameras"][c]) for c in cameras)
        lines.append(f"| {task} | {cams} | {fmt(row['success'])} | {row['episodes']} |")
    lines.append(f"| **overall** | {' | '.join('' for _ in cameras)} | **{fmt(table['overall'])}** | "
                 f"{table['episodes']} |")
    return "\n".join(lines) + "\n"


def write_side_by_side(path: str | Path, frames: list[np.ndarray], plans: list[tuple[int, np.ndarray]],
                       fps: int = 20) -> Path:
    """A GIF or MP4 (by suffix): the current plan's frames (left, advancing over the plan while it is
    executed) beside the executed frames (right)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    video = []
    for step, frame in enumerate(frames):
        starts = [s for s, _ in plans if s <= step] or [0]
        start = starts[-1]
        plan = next(p for s, p in reversed(plans) if s == start)
        nxt = next((s for s, _ in plans if s > start), len(frames))
        k = min(len(plan) - 1, int(round((step - start) / max(nxt - start, 1) * (len(plan) - 1))))
        left = plan[k]
        if left.shape[:2] != (height, width):
            import cv2
            left = cv2.resize(left, (width, height), interpolation=cv2.INTER_AREA)
        video.append(np.concatenate([left, np.full((height, 2, 3), 255, np.uint8), frame], axis=1))
    if path.suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise UserError("MP4 videos need the imageio-ffmpeg package (pip install imageio-ffmpeg); "
                            "or use --video-format gif") from None
        imageio.mimwrite(path, video, fps=fps, macro_block_size=1)
    else:
        imageio.mimwrite(path, video, duration=1000 / fps, loop=0)
    return path


def evaluate(planner, make_follower: Callable[[], object], tasks, cameras=CAMERAS, seeds=range(5),
             out_dir: str | Path = "runs/robotics/eval", resolution: int = 128,
             max_steps: int = MAX_EPISODE_STEPS, max_replans: int = 5, videos: int = 1,
             video_format: str = "gif", title: str = "", progress: bool = True) -> dict:
    """Run the protocol; returns the results dict also written to ``out_dir/results.json``.

    ``make_follower()`` returns a fresh action extractor per episode (e.g. ``AvdcFollower``).
    ``videos``: how many episodes per task and camera (the first seeds) to save as side-by-side videos.
    """
    from tqdm import tqdm

    from robotics.envs import TaskEnv
    from robotics.execution import run_episode

    tasks = [check_task(t) for t in tasks]
    cameras = [check_camera(c) for c in cameras]
    seeds = list(seeds)
    if video_format not in ("gif", "mp4"):
        raise UserError(f"unknown video format '{video_format}'; valid formats: gif, mp4")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    episodes_path = out / EPISODES_FILE
    done = _read_done(episodes_path)
    todo = [(t, c, s) for t in tasks for c in cameras for s in seeds if (t, c, s) not in done]
    total = len(tasks) * len(cameras) * len(seeds)
    bar = tqdm(total=total, initial=total - len(todo), desc="evaluate", unit="ep", disable=not progress)
    started, env = time.perf_counter(), None
    ran, ran_seconds = 0, 0.0
    for task, camera, seed in todo:
        if env is None or (env.task, env.camera) != (task, camera):
            if env is not None:
                env.close()
            env = TaskEnv(task, camera, resolution)
        record = seeds.index(seed) < videos
        result = run_episode(env, planner, make_follower(), seed, max_steps=max_steps,
                             max_replans=max_replans, record=record)
        rec = result.summary()
        if record and result.frames:
            video = out / "videos" / f"{task}_{camera}_seed{seed}.{video_format}"
            write_side_by_side(video, result.frames, result.plans)
            rec["video"] = str(video.relative_to(out))
        with episodes_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        done[(task, camera, seed)] = rec
        ran, ran_seconds = ran + 1, ran_seconds + result.seconds
        successes = sum(r["success"] for r in done.values())
        bar.set_postfix(task=task, success=f"{successes}/{len(done)}")
        bar.update()
    bar.close()
    if env is not None:
        env.close()
    if hasattr(planner, "close"):
        planner.close()
    records = [done[(t, c, s)] for t in tasks for c in cameras for s in seeds]
    table = success_table(records, tasks, cameras)
    wall = time.perf_counter() - started
    table["episodes_per_minute"] = round(60 * ran / wall, 1) if ran and wall > 0 else None
    table["episodes_run_now"] = ran
    table["seeds"] = seeds
    (out / "results.json").write_text(json.dumps(table, indent=1))
    (out / "results.md").write_text(markdown_table(table, cameras, title))
    return table
