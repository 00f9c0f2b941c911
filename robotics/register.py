"""Registers the robotics verbs (``collect``, ``evaluate-planner``) and the ``robotics-idm`` task.

Kept light: heavy modules (mujoco, metaworld, torch) are imported inside the ``run`` functions.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from gencond.arguments import positive_int
from gencond.errors import UserError
from gencond.registry import register_command, register_task
from gencond.runs import default_runs_dir

from robotics.idm_config import IdmConfig

BUILT_IN_PLANNERS = ("oracle", "oracle-rgbd", "repeat-first")
EXTRACTORS = ("avdc", "idm")
PLAN_FRAMES = 8  # frames per plan of the built-in planners, first included (AVDC: 8)


def parse_seeds(text: str) -> list[int]:
    """'5' -> 0..4, '0-4' -> 0..4, '1,3,7' -> [1, 3, 7]; an empty, reversed or repeating one is an error."""
    hint = "use a count (5), a range (0-4) or a list (1,3,7)"
    try:
        if "-" in text:
            lo, hi = text.split("-")
            seeds = list(range(int(lo), int(hi) + 1))
        elif "," in text:
            seeds = [int(s) for s in text.split(",")]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise UserError(f"bad --seeds '{text}'; {hint}") from None
    if not seeds:
        raise UserError(f"--seeds '{text}' selects no seeds (a count is at least 1, a range runs low-high); {hint}")
    if len(set(seeds)) < len(seeds):
        raise UserError(f"--seeds '{text}' repeats a seed")
    return seeds


def parse_list(text: str | None, default):
    if text in (None, "", "all"):
        return list(default)
    return [item.strip() for item in text.split(",") if item.strip()]


def _common_arguments(p: argparse.ArgumentParser, default_out: str, default_seeds: str) -> None:
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: the 11 benchmark tasks)")
    p.add_argument("--cameras", default=None, help="comma-separated cameras (default: corner,corner2,corner3)")
    p.add_argument("--seeds", default=default_seeds,
                   help=f"a count (5), a range (0-4) or a list (1,3,7); default {default_seeds}")
    p.add_argument("--resolution", type=int, default=128, help="square image size (default 128)")
    p.add_argument("--out", default=default_out, help=f"output directory (default {default_out})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_collect_arguments(p: argparse.ArgumentParser) -> None:
    _common_arguments(p, str(Path(default_runs_dir()) / "robotics" / "demos"), "0-4")
    p.add_argument("--depth", action="store_true",
                   help="also store every frame's metric depth (float16 metres; for RGB-D video planners)")


def collect_command(args: argparse.Namespace) -> dict:
    from robotics.collect import collect
    from robotics.envs import BENCHMARK_TASKS, CAMERAS

    index = collect(args.out, parse_list(args.tasks, BENCHMARK_TASKS), parse_list(args.cameras, CAMERAS),
                    parse_seeds(args.seeds), args.resolution, progress=not args.quiet, depth=args.depth)
    ok = sum(e["success"] for e in index["episodes"])
    print(f"{len(index['episodes'])} episodes ({ok} successful) in {args.out}")
    return index


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    # evaluation seeds default to ones no collected demonstration (seeds 0-4) used
    _common_arguments(p, str(Path(default_runs_dir()) / "robotics" / "eval"), "100-104")
    from robotics.planners import planner_plugins

    plugins = "".join(f"{plugin.form} ({plugin.help}), " for plugin in planner_plugins().values())
    p.add_argument("--planner", default="oracle",
                   help=f"{', '.join(BUILT_IN_PLANNERS)}, {plugins}or MODULE:ATTR (a Planner, or a function of no "
                        "arguments returning one, importable from Python)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="processes the episodes are split across (one torch thread each; default 1)")
    p.add_argument("--extractor", default="avdc", help=f"one of: {', '.join(EXTRACTORS)}")
    p.add_argument("--idm", default=None, help="run directory of a trained inverse-dynamics model (--extractor idm)")
    p.add_argument("--plan-frames", type=int, help=f"frames per plan, first included (default {PLAN_FRAMES}); the "
                   "built-in planners only: a trained planner plans as many frames as its model")
    p.add_argument("--plan-resolution", type=int, default=None,
                   help="oracle planners: plans at this square size (expert frames shrunk to it; the execution "
                        "enlarges them to --resolution), as a video model of that size delivers them "
                        "(default: --resolution)")
    p.add_argument("--max-replans", type=int, default=5)
    p.add_argument("--videos", type=int, default=1, help="episodes per task and camera saved as videos")
    p.add_argument("--video-format", default="gif", help="gif or mp4")


def check_plan_resolution(plan_resolution: int | None) -> None:
    if plan_resolution is not None and plan_resolution < 8:
        raise UserError(f"--plan-resolution {plan_resolution} is too small; use at least 8 pixels")


def make_planner(name: str, plan_frames: int | None, resolution: int, plan_resolution: int | None = None):
    """A planner by its command-line name; ``oracle-rgbd`` gives RGB-D plans (the expert's rendered depth),
    ``PREFIX:ARG`` a registered planner family (:func:`robotics.planners.register_planner`; e.g.
    ``video:RUN_DIR``, a trained ``video-planner`` run), ``MODULE:ATTR`` any importable Planner (or a
    function of no arguments returning one)."""
    from robotics.planners import OraclePlanner, RepeatFirstFramePlanner

    check_plan_resolution(plan_resolution)
    if ":" in name and plan_frames is not None:
        raise UserError(f"--plan-frames applies to the built-in planners; --planner {name} plans as many frames "
                        "as its model does (drop --plan-frames)")
    plan_frames = PLAN_FRAMES if plan_frames is None else plan_frames
    if name in ("oracle", "oracle-rgbd"):
        return OraclePlanner(plan_frames, resolution, depth=name == "oracle-rgbd", plan_resolution=plan_resolution)
    if name == "repeat-first":
        if plan_resolution is not None:
            raise UserError("--plan-resolution applies to the oracle planners, not 'repeat-first'")
        return RepeatFirstFramePlanner(plan_frames)
    if ":" not in name:
        raise UserError(f"unknown planner '{name}'; valid planners: {', '.join(_planner_forms())}")
    if plan_resolution is not None:
        raise UserError("--plan-resolution applies to the oracle planners; a trained planner plans at its own size")
    return _plugin_planner(name)


def _planner_forms() -> list[str]:
    from robotics.planners import planner_plugins

    return [*BUILT_IN_PLANNERS, *(f"{prefix}:..." for prefix in planner_plugins()), "MODULE:ATTR"]


def _plugin_planner(name: str):
    """``PREFIX:ARG`` of a registered planner family, else ``MODULE:ATTR``; a one-line error otherwise."""
    from robotics.planners import is_planner_factory, planner_plugins

    prefix, arg = name.split(":", 1)
    plugin = planner_plugins().get(prefix)
    if plugin is not None:
        if not arg:
            raise UserError(f"--planner {prefix}: needs {plugin.argument}, e.g. {plugin.form}")
        return plugin.make(arg)
    found = _import(name)
    planner = found() if is_planner_factory(found) else found
    if not hasattr(planner, "plan"):
        raise UserError(f"--planner {name} is a {type(planner).__name__}, not a planner (it needs a "
                        "plan(frame, instruction, camera) method)")
    return planner


def _import(spec: str):
    """``module:attr`` imported, or a one-line error naming it and the registered planner prefixes."""
    import importlib

    from gencond.registry import UNAVAILABLE
    from robotics.planners import planner_plugins

    module, attr = spec.split(":", 1)
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        prefixes = ", ".join(f"{p}:" for p in planner_plugins()) or "none"
        missing = "".join(f"; domain '{d}' did not load ({why})" for d, why in sorted(UNAVAILABLE.items()))
        raise UserError(f"--planner {spec}: cannot import '{attr}' from module '{module}' ({e}); registered "
                        f"planner prefixes: {prefixes}{missing}") from None


def make_follower_factory(name: str, idm_path: str | None):
    if name == "avdc":
        from robotics.avdc import AvdcFollower

        return AvdcFollower
    if name == "idm":
        import functools

        if not idm_path:
            raise UserError("--extractor idm needs --idm RUN_DIR (a model trained with "
                            "`gencond train configs/robotics/idm.yaml`)")
        from gencond.pipeline import set_threads
        from robotics.idm import IdmFollower, load_idm

        # a small CNN gains nothing from threads, and on a shared CPU extra OpenMP threads thrash
        set_threads(1)
        return functools.partial(IdmFollower, load_idm(idm_path))
    raise UserError(f"unknown extractor '{name}'; valid extractors: {', '.join(EXTRACTORS)}")


def evaluation_identity(planner: str, extractor: str, plan_frames: int | None, idm_path: str | None,
                        plan_resolution: int | None = None) -> dict:
    """What the command-line settings add to an evaluation's identity (see robotics.evaluate.evaluate).
    ``plan_resolution`` is recorded only when set, so earlier evaluations (without it) still resume."""
    # a trained or user planner (NAME:ARG) is identified by its own description (run, weights, sampler,
    # and so its frame count)
    identity = {} if ":" in planner else {"planner": planner, "plan_frames": plan_frames or PLAN_FRAMES}
    identity.update(extractor=extractor, idm=None)
    if plan_resolution is not None:
        identity["plan_resolution"] = plan_resolution
    if extractor == "idm":
        from robotics.idm import describe_idm

        identity["idm"] = describe_idm(idm_path)
    return identity


def evaluate_command(args: argparse.Namespace) -> dict:
    import functools

    from robotics.envs import BENCHMARK_TASKS, CAMERAS
    from robotics.evaluate import evaluate

    planner = functools.partial(make_planner, args.planner, args.plan_frames, args.resolution, args.plan_resolution)
    factory = make_follower_factory(args.extractor, args.idm)
    table = evaluate(planner, factory, parse_list(args.tasks, BENCHMARK_TASKS), parse_list(args.cameras, CAMERAS),
                     parse_seeds(args.seeds), args.out, resolution=args.resolution,
                     max_replans=args.max_replans, videos=args.videos, video_format=args.video_format,
                     title=f"{args.planner} planner + {args.extractor} extractor", progress=not args.quiet,
                     identity=evaluation_identity(args.planner, args.extractor, args.plan_frames, args.idm,
                                                  args.plan_resolution),
                     workers=args.workers)
    ran = table["episodes_run_now"]
    speed = (f"{ran} run now, {table['episodes_per_minute']} episodes/min" if ran else
             f"all {table['episodes']} episodes resumed from {args.out}/episodes.jsonl")
    print(f"overall success {table['overall']}% over {table['episodes']} episodes ({speed}); "
          f"tables in {args.out}/results.md")
    return table


def _build_idm(cfg):
    from robotics.idm import build

    return build(cfg)


register_command("collect", "run MetaWorld's scripted experts and write a demonstration dataset",
                 add_collect_arguments, collect_command)
register_command("evaluate-planner", "execute video plans in MetaWorld and report success (AVDC protocol)",
                 add_evaluate_arguments, evaluate_command)
def _load_idm(folder):
    from robotics.idm import InverseDynamicsModel

    return InverseDynamicsModel.from_pretrained(folder)


register_task("robotics-idm", IdmConfig, _build_idm, load_model=_load_idm)
