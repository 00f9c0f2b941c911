"""The evaluation protocol: tasks x cameras x seeds episodes, success tables, and side-by-side videos.

``evaluate(planner, follower_factory, env_tasks, cameras, seeds, out_dir)`` runs every episode with
:func:`robotics.execution.run_episode` and appends its summary to ``out_dir/episodes.jsonl`` at once,
so an interrupted evaluation resumes without redoing finished episodes. It then writes
``results.json`` (per task, per camera and overall success) and ``results.md`` (the same as a table).
``out_dir/evaluation.json`` records what defines the evaluation (planner, extractor, settings, gencond
version): a rerun with another identity into the same folder is refused instead of resumed.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from gencond.errors import UserError
from gencond.runs import claim_output, read_resume_log

from robotics.collect import check_resolution
from robotics.envs import CAMERAS, MAX_EPISODE_STEPS, check_camera, check_env_task
from robotics.frames import LABEL_HEIGHT, label_strip, resize_frames
from robotics.planners import is_planner_factory

EPISODES_FILE = "episodes.jsonl"
IDENTITY_FILE = "evaluation.json"


def describe(obj) -> str:
    """A planner's or follower factory's part of an evaluation identity: its ``describe()``, a class's
    dotted name, else its repr (e.g. ``RepeatFirstFramePlanner(num_frames=8)``) or name if that is an address."""
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    if hasattr(obj, "describe"):
        return str(obj.describe())
    text = repr(obj)
    return getattr(obj, "__qualname__", type(obj).__qualname__) if " at 0x" in text else text


def check_identity(out: Path, identity: dict) -> None:
    """Write ``identity`` to ``out/evaluation.json``, or refuse if ``out`` holds another evaluation."""
    if not (out / IDENTITY_FILE).exists() and (out / EPISODES_FILE).exists():
        raise UserError(f"{out} holds episodes but no {IDENTITY_FILE} (written by an older gencond), so they "
                        "may be of another evaluation; use another --out or delete the folder")
    claim_output(out / IDENTITY_FILE, identity, "evaluation")


def _read_done(path: Path) -> dict[tuple, dict]:
    return {(rec["task"], rec["camera"], rec["seed"]): rec for rec in read_resume_log(path, ("task", "camera", "seed", "success"))}


def success_table(records: list[dict], env_tasks, cameras) -> dict:
    """Success rates (percent) per task, per task and camera, and overall, from episode records."""
    def rate(rs):
        return round(100.0 * sum(r["success"] for r in rs) / len(rs), 1) if rs else None

    per_task = {}
    for env_task in env_tasks:
        rs = [r for r in records if r["task"] == env_task]
        per_task[env_task] = {"success": rate(rs), "episodes": len(rs),
                          "cameras": {c: rate([r for r in rs if r["camera"] == c]) for c in cameras}}
    errors = [r for r in records if r.get("error")]
    return {"overall": rate(records), "episodes": len(records), "per_task": per_task,
            "errors": len(errors), "mean_steps": float(np.mean([r["steps"] for r in records])) if records else None}


def paired_test(a: list[dict], b: list[dict]) -> dict:
    """Exact two-sided McNemar test of two evaluations on the same episodes (task, camera, seed):
    the difference in success (points), the discordant counts and the p-value."""
    from math import comb

    ka = {(r["task"], r["camera"], r["seed"]): bool(r["success"]) for r in a}
    kb = {(r["task"], r["camera"], r["seed"]): bool(r["success"]) for r in b}
    common = sorted(set(ka) & set(kb))
    if not common:
        raise UserError("the two evaluations share no episode (task, camera, seed); evaluate the same seeds")
    only_a = sum(ka[k] and not kb[k] for k in common)
    only_b = sum(kb[k] and not ka[k] for k in common)
    n, low = only_a + only_b, min(only_a, only_b)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(comb(n, i) for i in range(low + 1)) / 2 ** n)
    return {"episodes": len(common), "difference_points": round(100.0 * (only_a - only_b) / len(common), 1),
            "only_first": only_a, "only_second": only_b, "p_value": round(p, 4)}


def markdown_table(table: dict, cameras, title: str = "") -> str:
    """The success table as Markdown: one row per task, one column per camera, and the overall row."""
    head = "| task | " + " | ".join(cameras) + " | all | episodes |"
    lines = ([f"### {title}", ""] if title else []) + [head, "|" + "---|" * (len(cameras) + 3)]
    fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    for env_task, row in table["per_task"].items():
        cams = " | ".join(fmt(row["cameras"][c]) for c in cameras)
        lines.append(f"| {env_task} | {cams} | {fmt(row['success'])} | {row['episodes']} |")
    lines.append(f"| **overall** | {' | '.join('' for _ in cameras)} | **{fmt(table['overall'])}** | "
                 f"{table['episodes']} |")
    return "\n".join(lines) + "\n"


def write_side_by_side(path: str | Path, frames: list[np.ndarray], plans: list[tuple[int, np.ndarray]],
                       fps: int = 20) -> Path:
    """A GIF or MP4 (by suffix): the current plan's frames (left, advancing over the plan while it is
    executed) beside the executed frames (right), under a strip labelling them "plan" and "execution".
    Frames of H x W give video frames of (LABEL_HEIGHT + H) x (2 W + 2)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    gap = np.full((height + LABEL_HEIGHT, 2, 3), 255, np.uint8)
    header = np.concatenate([label_strip("plan", width), gap[:LABEL_HEIGHT], label_strip("execution", width)], axis=1)
    video = []
    for step, frame in enumerate(frames):
        starts = [s for s, _ in plans if s <= step] or [0]
        start = starts[-1]
        plan = next(p for s, p in reversed(plans) if s == start)
        nxt = next((s for s, _ in plans if s > start), len(frames))
        k = min(len(plan) - 1, int(round((step - start) / max(nxt - start, 1) * (len(plan) - 1))))
        left = resize_frames(plan[k][None], (height, width))[0]
        video.append(np.concatenate([header, np.concatenate([left, gap[LABEL_HEIGHT:], frame], axis=1)]))
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


def evaluate(planner, make_follower: Callable[[], object], env_tasks, cameras=CAMERAS, seeds=range(5),
             out_dir: str | Path = "runs/robotics/eval", resolution: int = 128,
             max_steps: int = MAX_EPISODE_STEPS, max_replans: int = 5, videos: int = 1,
             video_format: str = "gif", title: str = "", progress: bool = True,
             identity: dict | None = None, workers: int = 1) -> dict:
    """Run the protocol; returns the results dict also written to ``out_dir/results.json``.

    ``planner``: a Planner, or a picklable zero-argument function that makes one (needed for
    ``workers > 1``: every worker process makes its own). ``make_follower()`` returns a fresh action
    extractor per episode (e.g. ``AvdcFollower``; picklable for ``workers > 1``).
    ``videos``: how many episodes per task and camera (the first seeds) to save as side-by-side videos.
    ``identity``: what else defines the evaluation (e.g. ``{"planner": "video:runs/x", "idm": ...}``); it
    extends or replaces the defaults (:func:`describe` of planner and factory, resolution, max steps and
    replans, gencond version). Episodes in ``out_dir`` are resumed only under the same identity.
    ``workers``: episodes run in that many processes (one torch thread each); the main process alone
    writes ``episodes.jsonl``, so an interruption loses at most the episodes in flight.
    """
    from importlib.metadata import version

    env_tasks, cameras, seeds = _checked(env_tasks, cameras, seeds, resolution, video_format, workers)
    make_planner = planner if is_planner_factory(planner) else None
    if workers > 1 and make_planner is None:
        raise ValueError("workers > 1 needs a planner factory (a picklable function returning a planner), "
                         "not a planner object")
    planner = make_planner() if make_planner is not None else planner
    seen = sorted(set(seeds) & set(getattr(planner, "training_seeds", ())))
    if seen:
        warnings.warn(f"evaluating on scene seeds {seen}, which the planner's training demonstrations used; "
                      "success there is not held-out success (the demos use 0-4 by default: evaluate on "
                      "--seeds 100-104)", stacklevel=2)
    out = Path(out_dir)
    identity = {"planner": describe(planner), "extractor": describe(make_follower), "resolution": resolution,
                "max_steps": max_steps, "max_replans": max_replans, "gencond": version("gencond"),
                **(identity or {})}
    check_identity(out, identity)
    done = _read_done(out / EPISODES_FILE)
    todo = [(t, c, s, seeds.index(s) < videos) for t in env_tasks for c in cameras for s in seeds
            if (t, c, s) not in done]
    settings = dict(resolution=resolution, max_steps=max_steps, max_replans=max_replans, out=str(out),
                    video_format=video_format)
    started, total = time.perf_counter(), len(env_tasks) * len(cameras) * len(seeds)
    bar = {"total": total, "initial": total - len(todo), "desc": "evaluate", "unit": "ep", "disable": not progress}
    if workers == 1 or len(todo) <= 1:
        runner = _EpisodeRunner(planner, make_follower, **settings)
        ran = _record_episodes((runner(*episode) for episode in todo), out, done, bar, runner.close)
    else:
        if hasattr(planner, "close"):  # made here for the identity only: each worker makes its own
            planner.close()
        ran = _run_in_workers(todo, out, done, bar, workers, (make_planner, make_follower, settings))
    wall = time.perf_counter() - started
    records = [done[(t, c, s)] for t in env_tasks for c in cameras for s in seeds]
    table = {**success_table(records, env_tasks, cameras),
             "episodes_per_minute": round(60 * ran / wall, 1) if ran and wall > 0 else None,
             "episodes_run_now": ran, "seeds": seeds, "identity": identity}
    (out / "results.json").write_text(json.dumps(table, indent=1))
    (out / "results.md").write_text(markdown_table(table, cameras, title))
    return table


def _checked(env_tasks, cameras, seeds, resolution: int, video_format: str, workers: int):
    """The task, camera and seed lists checked (one-line errors), with the other settings."""
    env_tasks = [check_env_task(t) for t in env_tasks]
    cameras = [check_camera(c) for c in cameras]
    seeds = list(seeds)
    check_resolution(resolution)
    if not (env_tasks and cameras and seeds):
        raise UserError("no episodes to evaluate: the task, camera or seed list is empty")
    if video_format not in ("gif", "mp4"):
        raise UserError(f"unknown video format '{video_format}'; valid formats: gif, mp4")
    if workers < 1:
        raise UserError(f"--workers {workers}: use 1 or more processes")
    return env_tasks, cameras, seeds


def _record_episodes(results, out: Path, done: dict, bar_args: dict, close: Callable[[], None]) -> int:
    """Append each episode record of ``results`` to ``episodes.jsonl`` as it arrives (into ``done`` too),
    with a progress bar (tqdm's arguments ``bar_args``); ``close()`` at the end, also on an interruption.
    Returns the number recorded."""
    from tqdm import tqdm

    bar = tqdm(**bar_args)
    ran = 0
    try:
        for rec in results:
            with (out / EPISODES_FILE).open("a") as f:
                f.write(json.dumps(rec) + "\n")
            done[(rec["task"], rec["camera"], rec["seed"])] = rec
            ran += 1
            successes = sum(r["success"] for r in done.values())
            bar.set_postfix(task=rec["task"], success=f"{successes}/{len(done)}")
            bar.update()
    finally:
        bar.close()
        close()
    return ran


def _run_in_workers(todo: list, out: Path, done: dict, bar_args: dict, workers: int, initargs: tuple) -> int:
    """The episodes of ``todo`` in ``workers`` spawned processes (each makes its own planner); the main
    process alone writes the records."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=initargs)
    results = (f.result() for f in as_completed([pool.submit(_run_in_worker, e) for e in todo]))
    return _record_episodes(results, out, done, bar_args, lambda: pool.shutdown(wait=True, cancel_futures=True))


class _EpisodeRunner:
    """Runs one episode at a time, keeping the last task and camera's environment open."""

    def __init__(self, planner, make_follower, resolution: int, max_steps: int, max_replans: int, out: str,
                 video_format: str):
        self.planner, self.make_follower, self.env = planner, make_follower, None
        self.resolution, self.max_steps, self.max_replans = resolution, max_steps, max_replans
        self.out, self.video_format = Path(out), video_format

    def __call__(self, env_task: str, camera: str, seed: int, record: bool) -> dict:
        from robotics.envs import TaskEnv
        from robotics.execution import run_episode

        if self.env is None or (self.env.env_task, self.env.camera) != (env_task, camera):
            if self.env is not None:
                self.env.close()
            self.env = TaskEnv(env_task, camera, self.resolution)
        result = run_episode(self.env, self.planner, self.make_follower(), seed, max_steps=self.max_steps,
                             max_replans=self.max_replans, record=record)
        rec = result.summary()
        if hasattr(self.planner, "episode_record"):  # e.g. VideoAgent's refinement rounds and verdicts
            rec["planner"] = self.planner.episode_record()
        if record and result.frames:
            video = self.out / "videos" / f"{env_task}_{camera}_seed{seed}.{self.video_format}"
            write_side_by_side(video, result.frames, result.plans)
            rec["video"] = str(video.relative_to(self.out))
        return rec

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        if hasattr(self.planner, "close"):
            self.planner.close()


_worker_runner: _EpisodeRunner | None = None


def _start_worker(make_planner, make_follower, settings: dict) -> None:
    import atexit

    from gencond.pipeline import set_threads

    global _worker_runner
    set_threads(1)  # one process per core
    _worker_runner = _EpisodeRunner(make_planner(), make_follower, **settings)
    atexit.register(_worker_runner.close)


def _run_in_worker(episode: tuple) -> dict:
    return _worker_runner(*episode)
