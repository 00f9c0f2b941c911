"""Task and command registry: how domain packages make themselves known to the core.

The core never imports a domain. Each domain lists a module under the ``gencond.domains``
entry-point group (see pyproject.toml); importing that module calls :func:`register_task`
and :func:`register_command`. :func:`load_domains` imports them all on first use.
"""
from __future__ import annotations

import argparse
import functools
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .errors import UserError

TASKS: dict[str, Task] = {}
COMMANDS: dict[str, Command] = {}
TASK_VERBS: dict[tuple[str, str], Command] = {}  # (task, verb) -> how that task runs a shared verb
SHARED_VERBS = {"sample": "draw samples from a trained run (RUN_DIR --help: the task's options)",
                "eval": "evaluate a trained run (RUN_DIR --help: the task's options)"}
UNAVAILABLE: dict[str, str] = {}  # extra -> why its domain module could not be imported
_loaded = False


@dataclass(frozen=True)
class Task:
    """A trainable task: its typed config schema, a builder returning a ``TrainingJob``, and
    ``load_model(folder)`` reading the weights a run saved (used by ``gencond.runs.load_run``)."""

    name: str
    schema: type
    build: Callable[[Any], Any]
    load_model: Callable[[Any], Any] | None = None
    module: str = ""


@dataclass(frozen=True)
class Command:
    """A CLI verb: ``add_arguments(parser)`` declares its flags, ``run(args)`` executes it."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Any]
    module: str = ""


def _caller_module() -> str:
    return sys._getframe(2).f_globals.get("__name__", "?")


def domain_extras() -> dict[str, str]:
    """Each installed domain's top-level package -> its pip extra (its entry point's name, e.g. timeseries)."""
    return {ep.value.split(".")[0]: ep.name for ep in entry_points(group="gencond.domains")}


def missing_extra(error: ImportError, module: str) -> str | None:
    """What to tell the user when ``module`` (of a domain) failed with ``error`` because a third-party package
    of its extra is not installed: the package and the ``pip install`` to run; None for any other error."""
    extras = domain_extras()
    extra, missing = extras.get(module.split(".")[0]), (getattr(error, "name", None) or "").split(".")[0]
    if not isinstance(error, ModuleNotFoundError) or extra is None or not missing or missing in ("gencond", *extras):
        return None
    return f"the {extra} domain needs the package '{missing}', which is not installed: pip install \"gencond[{extra}]\""


def needs_extra(fn: Callable | None, module: str) -> Callable | None:
    """``fn`` turning a missing package of the registering domain's extra into a one-line
    :class:`~gencond.errors.UserError` naming the ``pip install`` to run (domains register without them)."""
    if fn is None:
        return None

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ModuleNotFoundError as e:
            message = missing_extra(e, module)
            if message is None:
                raise  # not a domain's optional package: a bug, or a domain outside the entry points
            raise UserError(message) from None
    return run


def _check_new(kind: str, name: str, existing: Any | None, module: str) -> None:
    if existing is not None and existing.module != module:
        raise ValueError(f"{kind} '{name}' is registered twice: by {existing.module} and by {module}; rename one")


def register_task(name: str, schema: type, build: Callable[[Any], Any],
                  load_model: Callable[[Any], Any] | None = None) -> None:
    """Register a task so that ``gencond train`` accepts configs with ``task: <name>``."""
    module = _caller_module()
    _check_new("task", name, TASKS.get(name), module)
    TASKS[name] = Task(name, schema, needs_extra(build, module), needs_extra(load_model, module), module)


def register_command(name: str, help: str, add_arguments, run) -> None:
    """Register a domain verb for the ``gencond`` CLI (e.g. ``forecast``, ``collect``)."""
    module = _caller_module()
    if name in ("train", *SHARED_VERBS):
        raise ValueError(f"command '{name}' (registered by {module}) is a core verb; choose another name")
    _check_new("command", name, COMMANDS.get(name), module)
    COMMANDS[name] = Command(name, help, add_arguments, needs_extra(run, module), module)


def register_task_verb(task: str, verb: str, help: str, add_arguments, run) -> None:
    """How ``task`` implements a shared verb (``sample``, ``eval``): ``gencond VERB RUN_DIR ...``
    reads the run's task and hands the remaining arguments to this parser and ``run(args)``,
    where ``args.run_dir`` is the run directory."""
    if verb not in SHARED_VERBS:
        raise ValueError(f"unknown shared verb '{verb}'; shared verbs: {', '.join(SHARED_VERBS)}")
    module = _caller_module()
    _check_new(f"'{verb}' of task", task, TASK_VERBS.get((task, verb)), module)
    TASK_VERBS[(task, verb)] = Command(verb, help, add_arguments, needs_extra(run, module), module)


def get_task_verb(task: str, verb: str) -> Command:
    """The task's implementation of a shared verb, or a one-line error naming the tasks that have one."""
    load_domains()
    if (task, verb) not in TASK_VERBS:
        having = ", ".join(sorted(t for t, v in TASK_VERBS if v == verb)) or "none"
        raise KeyError(f"task '{task}' has no '{verb}' command; tasks with one: {having}")
    return TASK_VERBS[(task, verb)]


def load_domains() -> None:
    """Import every installed domain module listed under the ``gencond.domains`` entry points."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in entry_points(group="gencond.domains"):
        try:
            ep.load()
        except ImportError as e:  # a domain whose optional dependencies are missing
            UNAVAILABLE[ep.name] = missing_extra(e, ep.value) or str(e)
            warnings.warn(f"gencond domain '{ep.name}' is unavailable: {UNAVAILABLE[ep.name]}", stacklevel=2)


def get_task(name: str) -> Task:
    """The registered task called ``name``, or a one-line error listing the known ones."""
    load_domains()
    if name not in TASKS:
        known = ", ".join(sorted(TASKS)) or "none (is gencond installed with `pip install -e .`?)"
        off = "".join(f"; domain '{extra}' is unavailable: {why}" for extra, why in sorted(UNAVAILABLE.items()))
        raise KeyError(f"unknown task '{name}'; known tasks: {known}{off}")
    return TASKS[name]
