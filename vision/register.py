"""Registers the ``ddae`` task (image diffusion, DDAE / DDAE++) and its ``sample`` / ``eval`` verbs.

Kept light: torch and the models are imported when a command runs.
"""
from gencond.registry import register_task, register_task_verb

from .cli import add_eval_arguments, add_sample_arguments, eval_command, sample_command
from .config import ImageDiffusionConfig
from .interact.cli import add_eval_arguments as add_interact_eval_arguments
from .interact.cli import add_sample_arguments as add_interact_sample_arguments
from .interact.cli import eval_command as interact_eval_command
from .interact.cli import sample_command as interact_sample_command
from .interact.config import InteractConfig


def _build(cfg):
    from .task import build

    return build(cfg)


def _load_model(folder):
    from .models import load_denoiser

    return load_denoiser(folder)


register_task("ddae", ImageDiffusionConfig, _build, load_model=_load_model)
register_task_verb("ddae", "sample", "draw images from a trained ddae run into a PNG grid",
                   add_sample_arguments, sample_command)
register_task_verb("ddae", "eval", "linear-probe accuracy (DDAE grid over blocks and t) and Fréchet distance",
                   add_eval_arguments, eval_command)


def _build_interact(cfg):
    from .interact.task import build

    return build(cfg)


def _load_interact(folder):
    from .interact.task import load_model

    return load_model(folder)


register_task("interact", InteractConfig, _build_interact, load_model=_load_interact)
register_task_verb("interact", "sample", "images for a caption and (subject, action, object) triplets with boxes, "
                   "clean and with the boxes overlaid", add_interact_sample_arguments, interact_sample_command)
register_task_verb("interact", "eval", "HOI-shapes: interaction accuracy given the boxes and a Fréchet distance, "
                   "against renders of the same scenes", add_interact_eval_arguments, interact_eval_command)
