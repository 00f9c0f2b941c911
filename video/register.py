"""Registers the ``video-planner`` task (AVDC video diffusion planner) and its ``sample`` / ``eval`` verbs.

Kept light: torch and the model are imported when a command runs.
"""
from gencond.registry import register_task, register_task_verb

from .cli import add_eval_arguments, add_sample_arguments, eval_command, sample_command
from .config import VideoPlannerConfig


def _build(cfg):
    from .task import build

    return build(cfg)


def _load_model(folder):
    from .task import load_model

    return load_model(folder)


register_task("video-planner", VideoPlannerConfig, _build, load_model=_load_model)
register_task_verb("video-planner", "sample", "a plan from a scene's first frame beside the expert's real future (GIF)",
                   add_sample_arguments, sample_command)
register_task_verb("video-planner", "eval", "plan quality on held-out scenes, no robot: frame PSNR and object-track error "
                   "for the planner, the repeat-first floor and the oracle", add_eval_arguments, eval_command)
