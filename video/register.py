"""Registers the video tasks — ``video-planner`` (AVDC's planner, VideoAgent when trained with
``model.previous_plan``) and ``video-critic`` (VideoAgent's learned feedback) — with their ``sample`` /
``eval`` verbs, the ``video-execute`` / ``video-online`` commands, and the ``video:`` / ``videoagent:``
planners of ``gencond evaluate-planner`` (robotics' planner registry).

Kept light: torch and the models are imported when a command runs.
"""
from gencond.registry import register_command, register_task, register_task_verb
from robotics.planners import register_planner

from .agent_cli import (add_critic_eval_arguments, add_execute_arguments, add_online_arguments, critic_eval_command,
                        execute_command, online_command)
from .cli import add_eval_arguments, add_sample_arguments, eval_command, sample_command
from .config import VideoCriticConfig, VideoPlannerConfig


def _build(cfg):
    from .task import build

    return build(cfg)


def _load_model(folder):
    from .task import load_model

    return load_model(folder)


def _build_critic(cfg):
    from .critic import build

    return build(cfg)


def _load_critic(folder):
    from .critic import load_model

    return load_model(folder)


def _video_planner(run_dir: str):
    from .planner import VideoPlanner

    return VideoPlanner(run_dir)


def _videoagent_planner(spec: str):
    from .agent import make_videoagent_planner

    return make_videoagent_planner(spec)


register_task("video-planner", VideoPlannerConfig, _build, load_model=_load_model)
register_task("video-critic", VideoCriticConfig, _build_critic, load_model=_load_critic)
register_task_verb("video-planner", "sample", "a plan from a scene's first frame beside the expert's real future (GIF); "
                   "--rounds N: every VideoAgent refinement round", add_sample_arguments, sample_command)
register_task_verb("video-planner", "eval", "plan quality on held-out scenes, no robot: frame PSNR and object-track error "
                   "for the planner, the repeat-first floor and the oracle", add_eval_arguments, eval_command)
register_task_verb("video-critic", "eval", "the critic's accuracy on executed plans of held-out scenes",
                   add_critic_eval_arguments, critic_eval_command)
register_command("video-execute", "execute a video planner's plans in MetaWorld and keep plans, outcomes and "
                 "successful executions (critic data, online clips)", add_execute_arguments, execute_command)
register_command("video-online", "VideoAgent-Online: execute refined plans, finetune on the successes, evaluate; "
                 "per iteration, resumable", add_online_arguments, online_command)
register_planner("video", _video_planner, "video:RUN_DIR", "a trained video planner", "a run folder")
register_planner("videoagent", _videoagent_planner, "videoagent:RUN_DIR[,rounds=4,critic=CRITIC_RUN,from=noise|plan,"
                 "strength=0.5,feedback=none|critic|simulator]", "VideoAgent's refined plans", "a run folder")
