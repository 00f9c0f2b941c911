"""Registers TSDiff with the core: the ``tsdiff`` task and the ``forecast`` verb."""
from gencond.registry import register_command, register_task

from .cli import add_forecast_arguments, forecast_command
from .task import TSDiffConfig, build

register_task("tsdiff", TSDiffConfig, build)
register_command("forecast", "forecast a trained TSDiff's test windows (or the future) by self-guidance",
                 add_forecast_arguments, forecast_command)
