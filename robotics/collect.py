"""Expert demonstration datasets on disk: write (resumable, deterministic per seed) and read back.

Layout of a dataset directory (format ``gencond-robotics-demos/1``)::

    <root>/index.json                       format, resolution, depth (bool), one entry per episode
    <root>/<task>/<camera>/seed_<k>.npz     one episode (see :data:`EPISODE_KEYS`)

An episode file holds ``frames`` (T+1, H, W, 3) uint8, ``actions`` (T, 4) float32, ``states``
(T+1, 39) float32, ``success`` bool, ``success_step`` int, ``task`` (the MetaWorld task, ``env_task`` in
code), ``camera`` and ``text`` strings,
``seed`` int, ``intrinsics`` (3, 3), ``world_to_camera`` (4, 4, OpenCV convention),
``first_depth`` (H, W) metres, ``first_segmentation`` (H, W) geom ids and ``object_geom_ids``.
A dataset collected with ``depth=True`` (``gencond collect --depth``; ``"depth": true`` in the index)
also holds ``depth`` (T+1, H, W) float16: the metric depth of every frame (metres along the optical
axis), for planners that predict RGB-D plans.
Files are written to a temporary name and renamed, so an interrupted run never leaves half a file;
rerunning skips episodes whose file exists.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gencond.errors import UserError
from gencond.files import parsing, read_text

from robotics.envs import CameraFrame, TaskEnv, check_camera, check_env_task
from robotics.experts import Demonstration

FORMAT = "gencond-robotics-demos/1"
EPISODE_KEYS = ("frames", "actions", "states", "success", "success_step", "task", "camera", "text",
                "seed", "intrinsics", "world_to_camera", "first_depth", "first_segmentation",
                "object_geom_ids")
MIN_RESOLUTION = 16  # smaller renders are (nearly) empty images; 0 renders nothing at all


@dataclass
class RgbdDemonstration(Demonstration):
    """A :class:`~robotics.experts.Demonstration` with the metric depth of every frame: ``depth``
    (T+1, H, W) in metres (float16 as stored on disk), or None for an episode collected without depth."""

    depth: np.ndarray | None = None


class _DepthRecorder:
    """A :class:`TaskEnv` stand-in that renders depth with every frame and keeps it (the expert's
    rollout renders through it unchanged)."""

    def __init__(self, env: TaskEnv):
        self._env = env
        self.depths: list[np.ndarray] = []

    def __getattr__(self, name):
        return getattr(self._env, name)

    def reset(self, seed: int) -> np.ndarray:
        self.depths = []
        return self._env.reset(seed)

    def render(self, depth: bool = False, segmentation: bool = False) -> CameraFrame:
        view = self._env.render(depth=True, segmentation=segmentation)
        self.depths.append(view.depth)
        return view


def run_expert_with_depth(env: TaskEnv, seed: int, **kwargs) -> RgbdDemonstration:
    """:func:`robotics.experts.run_expert` that also renders the depth of every frame (float32 metres)."""
    from dataclasses import fields

    from robotics.experts import run_expert

    recorder = _DepthRecorder(env)
    demo = run_expert(recorder, seed, **kwargs)
    depth = np.stack(recorder.depths).astype(np.float32)
    if len(depth) != len(demo.frames):
        raise RuntimeError(f"rendered {len(depth)} depth maps for {len(demo.frames)} frames")
    return RgbdDemonstration(**{f.name: getattr(demo, f.name) for f in fields(Demonstration)}, depth=depth)


def check_resolution(resolution) -> None:
    """A one-line error for an image size too small to render a useful frame."""
    if min(np.atleast_1d(resolution)) < MIN_RESOLUTION:
        raise UserError(f"resolution {resolution} is too small; use at least {MIN_RESOLUTION} pixels")


def episode_path(root: str | Path, env_task: str, camera: str, seed: int) -> Path:
    return Path(root) / env_task / camera / f"seed_{seed}.npz"


def save_demonstration(demo: Demonstration, path: str | Path) -> Path:
    """Write one episode atomically (temporary file, then rename); a demonstration's ``depth`` (when it
    has one) is stored as float16 metres."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    depth = getattr(demo, "depth", None)
    extra = {} if depth is None else {"depth": np.asarray(depth).astype(np.float16)}
    np.savez_compressed(
        tmp, frames=demo.frames, actions=demo.actions, states=demo.states, success=demo.success,
        success_step=demo.success_step, task=demo.env_task, camera=demo.camera, text=demo.text,
        seed=demo.seed, intrinsics=demo.intrinsics, world_to_camera=demo.world_to_camera,
        first_depth=demo.first_depth.astype(np.float32),
        first_segmentation=demo.first_segmentation.astype(np.int32),
        object_geom_ids=demo.object_geom_ids.astype(np.int32), **extra)
    os.replace(tmp, path)
    return path


def load_demonstration(path: str | Path) -> RgbdDemonstration:
    """Read an episode file written by :func:`save_demonstration`; ``depth`` is None when the episode
    was collected without depth."""
    with parsing(path, "episode file", f"a {FORMAT} episode (.npz; collect it again)"), np.load(path, allow_pickle=False) as z:
        missing = [k for k in EPISODE_KEYS if k not in z.files]
        if missing:
            raise ValueError(f"{path} is not a {FORMAT} episode: missing {', '.join(missing)}")
        return RgbdDemonstration(
            env_task=str(z["task"]), camera=str(z["camera"]), seed=int(z["seed"]), frames=z["frames"],
            actions=z["actions"], states=z["states"], success=bool(z["success"]),
            success_step=int(z["success_step"]), intrinsics=z["intrinsics"],
            world_to_camera=z["world_to_camera"], first_depth=z["first_depth"],
            first_segmentation=z["first_segmentation"], object_geom_ids=z["object_geom_ids"],
            depth=z["depth"] if "depth" in z.files else None)


def _index_entry(root: Path, path: Path, demo_or_file) -> dict:
    if isinstance(demo_or_file, Demonstration):
        d = demo_or_file
        return {"file": str(path.relative_to(root)), "task": d.env_task, "camera": d.camera,
                "seed": d.seed, "steps": len(d), "success": d.success}
    with np.load(path, allow_pickle=False) as z:
        return {"file": str(path.relative_to(root)), "task": str(z["task"]), "camera": str(z["camera"]),
                "seed": int(z["seed"]), "steps": int(len(z["actions"])), "success": bool(z["success"])}


def write_index(root: str | Path, resolution: tuple[int, int], depth: bool = False) -> dict:
    """Rebuild ``index.json`` from the episode files present under ``root``; ``depth``: the episodes
    hold every frame's depth."""
    root = Path(root)
    entries = [_index_entry(root, p, p) for p in sorted(root.glob("*/*/seed_*.npz"))
               if not p.name.endswith(".tmp.npz")]
    index = {"format": FORMAT, "resolution": list(resolution), "depth": bool(depth), "episodes": entries}
    tmp = root / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, root / "index.json")
    return index


def read_index(root: str | Path) -> dict:
    """The dataset's index; a clear error if ``root`` is not a dataset."""
    path = Path(root) / "index.json"
    if not path.exists():
        raise UserError(f"no dataset at {root} (missing index.json); create one with "
                                f"`gencond collect --out {root}`")
    try:
        index = json.loads(read_text(path, "dataset index", "the JSON written by `gencond collect`"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); delete it and rerun "
                        "`gencond collect` with the dataset's options: it is rebuilt from the episode files") from None
    if not isinstance(index, dict) or not isinstance(index.get("episodes"), list):
        raise UserError(f"{path} is not a dataset index (a JSON object with 'episodes'); delete it and rerun "
                        "`gencond collect` with the dataset's options: it is rebuilt from the episode files")
    if index.get("format") != FORMAT:
        raise UserError(f"{path} has format {index.get('format')!r}, expected {FORMAT!r}")
    return index


def collect(root: str | Path, env_tasks, cameras, seeds, resolution: int = 128,
            progress: bool = True, depth: bool = False) -> dict:
    """Run the experts for tasks x cameras x seeds into ``root``; finished episodes are skipped.
    ``depth``: also store every frame's metric depth (a dataset is collected with or without it)."""
    from tqdm import tqdm

    from robotics.experts import run_expert

    check_resolution(resolution)
    root = Path(root)
    env_tasks = [check_env_task(t) for t in env_tasks]
    cameras = [check_camera(c) for c in cameras]
    if not (env_tasks and cameras and len(seeds)):
        raise UserError("no episodes to collect: the task, camera or seed list is empty")
    index = read_index(root) if (root / "index.json").exists() else None
    old = index["resolution"] if index else [resolution] * 2
    if old != [resolution] * 2:  # resuming must not mix image sizes in one dataset
        raise UserError(f"{root} holds a dataset at {old[0]} pixels, not {resolution}; use another --out")
    old_depth = bool(index.get("depth", False)) if index else depth
    if old_depth != depth:  # nor episodes with and without depth
        fix = "pass --depth to add to it" if old_depth else "drop --depth to add to it"
        raise UserError(f"{root} holds a dataset collected {'with' if old_depth else 'without'} per-frame "
                        f"depth; {fix}, or use another --out")
    todo = [(t, c, s) for t in env_tasks for c in cameras for s in seeds
            if not episode_path(root, t, c, s).exists()]
    total = len(env_tasks) * len(cameras) * len(seeds)
    bar = tqdm(total=total, initial=total - len(todo), desc="collect", unit="ep", disable=not progress)
    env, failures = None, 0
    for env_task, camera, seed in todo:
        if env is None or (env.env_task, env.camera) != (env_task, camera):
            if env is not None:
                env.close()
            env = TaskEnv(env_task, camera, resolution)
        demo = run_expert_with_depth(env, seed) if depth else run_expert(env, seed)
        save_demonstration(demo, episode_path(root, env_task, camera, seed))
        failures += not demo.success
        bar.set_postfix(task=env_task, camera=camera, failed=failures)
        bar.update()
    bar.close()
    if env is not None:
        env.close()
    return write_index(root, (resolution, resolution), depth)


def load_dataset(root: str | Path, env_tasks=None, cameras=None, successful_only: bool = True):
    """Episodes of a dataset, optionally filtered by task / camera / success."""
    root = Path(root)
    index = read_index(root)
    demos = []
    for entry in index["episodes"]:
        if env_tasks is not None and entry["task"] not in env_tasks:
            continue
        if cameras is not None and entry["camera"] not in cameras:
            continue
        if successful_only and not entry["success"]:
            continue
        demos.append(load_demonstration(root / entry["file"]))
    return demos
