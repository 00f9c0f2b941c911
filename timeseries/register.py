"""Registers TSDiff with the core: the ``tsdiff`` task, its ``sample`` and ``eval``, and the
``forecast`` and ``refine`` verbs."""
import warnings

from gencond.registry import register_command, register_task, register_task_verb

from .cli import (add_eval_arguments, add_forecast_arguments, add_refine_arguments, add_sample_arguments, eval_command,
                  forecast_command, refine_command, sample_command)
from .config import TSDiffConfig


def _build(cfg):
    from .task import build

    return build(cfg)


def _load_model(folder):
    from .model import TSDiffDenoiser

    return TSDiffDenoiser.from_pretrained(folder)


register_task("tsdiff", TSDiffConfig, _build, load_model=_load_model)
register_command("forecast", "forecast a trained TSDiff's test windows (or the future) by self-guidance",
                 add_forecast_arguments, forecast_command)
register_command("refine", "refine a base forecaster's predictions with a trained TSDiff (LMC / ML)",
                 add_refine_arguments, refine_command)
register_task_verb("tsdiff", "sample", "draw synthetic windows from an unconditional TSDiff (.npy + plot)",
                   add_sample_arguments, sample_command)
register_task_verb("tsdiff", "eval", "evaluate synthetic windows: Linear Predictive Score (--lps)",
                   add_eval_arguments, eval_command)

# pandas deprecates business-day Periods, which GluonTS uses for every "B" dataset: not the user's concern
warnings.filterwarnings("ignore", category=FutureWarning, message=r"(Period with BDay freq|PeriodDtype\[B\]) is deprecated")
