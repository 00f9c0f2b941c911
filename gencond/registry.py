"""Task and command registry: how domain packages make themselves known to the core.

The core never imports a domain. Each domain lists a module under the ``gencond.domains``
entry-point group (see pyproject.toml); importing that module calls :func:`register_task`
and :func:`register_command`. :func:`load_domains` imports them all on first use.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Optional

TASKS: dict[str, "Task"] = {}
COMMANDS: dict[str, "Command"] = {}
TASK_VERBS: dict[tuple[str, str], "Command"] = {}  # (task, verb) -> how that task runs a shared verb
SHARED_VERBS = {"sample": "draw samples from a trained run (RUN_DIR --help: the task's options)",
                "eval": "evaluate a trained run (RUN_DIR --help: the task's options)"}
_loaded = False


@dataclass(frozen=True)
class Task:
    """A trainable task: its typed config schema, a builder returning a ``TrainingJob``, and
    ``load_model(folder)`` reading the weights a run saved (used by ``gencond.runs.load_run``)."""

    name: str
    schema: type
    build: Callable[[Any], Any]
    load_model: Optional[Callable[[Any], Any]] = None
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


def _check_new(kind: str, name: str, existing: Optional[Any], module: str) -> None:
    if existing is not None and existing.module != module:
        raise ValueError(f"{kind} '{name}' is registered twice: by {existing.module} and by {module}; rename one")


def register_task(name: str, schema: type, build: Callable[[Any], Any],
                  load_model: Optional[Callable[[Any], Any]] = None) -> None:
    """Register a task so that ``gencond train`` accepts configs with ``task: <name>``."""
    module = _caller_module()
    _check_new("task", name, TASKS.get(name), module)
    TASKS[name] = Task(name, schema, build, load_model, module)


def register_command(name: str, help: str, add_arguments, run) -> None:
    """Register a domain verb for the ``gencond`` CLI (e.g. ``forecast``, ``collect``)."""
    module = _caller_module()
    if name in ("train", *SHARED_VERBS):
        raise ValueError(f"command '{name}' (registered by {module}) is a core verb; choose another name")
    _check_new("command", name, COMMANDS.get(name), module)
    COMMANDS[name] = Command(name, help, add_arguments, run, module)


def register_task_verb(task: str, verb: str, help: str, add_arguments, run) -> None:
    """How ``task`` implements a shared verb (``sample``, ``eval``): ``gencond VERB RUN_DIR ...``
    reads the run's task and hands the remaining arguments to this parser and ``run(args)``,
    where ``args.run_dir`` is the run directory."""
    if verb not in SHARED_VERBS:
        raise ValueError(f"unknown shared verb '{verb}'; shared verbs: {', '.join(SHARED_VERBS)}")
    module = _caller_module()
    _check_new(f"'{verb}' of task", task, TASK_VERBS.get((task, verb)), module)
    TASK_VERBS[(task, verb)] = Command(verb, help, add_arguments, run, module)


def get_task_verb(task: str, verb: str) -> "Command":
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
            warnings.warn(f"gencond domain '{ep.name}' is unavailable: {e}", stacklevel=2)


def get_task(name: str) -> Task:
    """The registered task called ``name``, or a one-line error listing the known ones."""
    load_domains()
    if name not in TASKS:
        known = ", ".join(sorted(TASKS)) or "none (is gencond installed with `pip install -e .`?)"
        raise KeyError(f"unknown task '{name}'; known tasks: {known}")
    return TASKS[name]
