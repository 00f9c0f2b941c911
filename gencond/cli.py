"""The ``gencond`` command: ``train`` for every task, plus the verbs that domains register."""
from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

from omegaconf import OmegaConf

from .config import ConfigError, load_config, save_config
from .errors import Interrupted, UserError
from .registry import COMMANDS, SHARED_VERBS, get_task, get_task_verb, load_domains


# Keys that may change between a run and its resumption without changing what is trained.
RESUMABLE_KEYS = {"max_steps", "max_minutes", "threads", "log_every", "checkpoint_every", "validate_every", "keep_checkpoints"}


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    keys = []
    for k in set(old) | set(new):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return sorted(keys)


def train_command(args: argparse.Namespace) -> None:
    import torch

    from .runs import CONFIG, RunLock, check_run_folder, check_run_name, remove_run
    from .training import process_state, train

    given = Path(args.config)
    from .export import is_export

    if is_export(given):
        raise UserError(f"{given} is an exported model, not a run to resume; to train on from it: `gencond train "
                        f"{given / CONFIG} name=NEW train.init_from={given} train.init_continue=true`")
    if given.is_dir():  # resume this folder, wherever it is now
        if not (given / CONFIG).is_file():
            raise UserError(f"{given} is a folder without {CONFIG}; pass a config file or a run directory")
        moved = [o for o in args.overrides if o.split("=", 1)[0] in ("name", "runs_dir")]
        if moved:
            raise UserError(f"{moved[0]}: a run directory is resumed where it is; to start a new run, "
                            "pass its config file (or `train.init_from`)")
        cfg = load_config(given / CONFIG, args.overrides)
        run_dir = given
    else:
        cfg = load_config(given, args.overrides)
        run_dir = Path(cfg.runs_dir) / check_run_name(cfg.name)
    state = process_state()
    main_process = state.is_main_process  # when launched as several processes, one writes
    if main_process:  # nothing is written to the run before these checks pass and its lock is held
        check_run_folder(run_dir, restart=args.restart)
        if not args.restart:
            _check_resumable(cfg, run_dir)
    with RunLock(run_dir) if main_process else nullcontext():
        if main_process:
            if args.restart:
                remove_run(run_dir)
            else:
                _check_resumable(cfg, run_dir)  # again: another trainer may have checkpointed meanwhile
            save_config(cfg, run_dir / CONFIG)
        state.wait_for_everyone()
        if not main_process:
            _check_resumable(cfg, run_dir)
        torch.manual_seed(cfg.seed)
        job = get_task(cfg.task).build(cfg)
        result = train(cfg, job, run_dir, progress=not args.quiet)
    if main_process:
        print(f"{result.stopped}: step {result.step}, {result.elapsed_s:.0f} s of training; run directory: {run_dir}")
    if result.stopped == "interrupted":
        raise Interrupted(f"interrupted at step {result.step}, checkpoint saved; rerun the same command to resume")


def _check_resumable(cfg, run_dir: Path) -> None:
    """Refuse to resume a run that has checkpoints with a config that changes what it trains."""
    from .checkpoints import latest_checkpoint
    from .runs import CONFIG

    saved = run_dir / CONFIG
    if not (saved.exists() and latest_checkpoint(run_dir) is not None):
        return
    try:  # the saved config on today's schema: keys added since then take their defaults
        old = OmegaConf.to_container(load_config(saved), resolve=True)
    except ConfigError:
        old = OmegaConf.to_container(OmegaConf.load(saved))
    new = OmegaConf.to_container(cfg, resolve=True)
    changed = [k for k in _changed_keys(old, new) if not (k.startswith("train.") and k[6:] in RESUMABLE_KEYS)
               and not k.startswith("sampling.") and k not in ("name", "runs_dir")]
    if changed:
        raise ConfigError(
            f"{run_dir} was trained with a different config ({', '.join(changed)}); "
            f"pass --restart to start over, or name=<new name> for a new run"
        )


def shared_verb_command(args: argparse.Namespace):
    """``gencond sample|eval RUN_DIR ...``: dispatch to the run's task, which parses the rest."""
    from .runs import run_task

    try:
        cmd = get_task_verb(run_task(args.run_dir), args.verb)
    except KeyError as e:
        raise UserError(e.args[0]) from None
    parser = argparse.ArgumentParser(prog=f"gencond {args.verb} RUN_DIR", description=cmd.help)
    cmd.add_arguments(parser)
    task_args = parser.parse_args(args.rest)
    task_args.run_dir, task_args.verb = str(args.run_dir), args.verb
    return cmd.run(task_args)


def build_parser() -> argparse.ArgumentParser:
    load_domains()
    parser = argparse.ArgumentParser(prog="gencond", description="Self-conditioned diffusion models.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("train", help="train a model from a YAML config (resumes an existing run)")
    p.add_argument("config", help="a YAML config, or a run directory to resume")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.max_steps=200")
    p.add_argument("--restart", action="store_true", help="delete the run (only a gencond run folder) and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=train_command)
    from .export import add_export_arguments, export_command

    p = verbs.add_parser("export", help="write a trained run as a self-contained model folder (weights, config, model card)")
    add_export_arguments(p)
    p.set_defaults(run=export_command)
    for verb, help in SHARED_VERBS.items():
        p = verbs.add_parser(verb, help=help)
        p.add_argument("run_dir", help="a run directory written by `gencond train`, or an export")
        p.add_argument("rest", nargs=argparse.REMAINDER, help="the task's own options (see RUN_DIR --help)")
        p.set_defaults(run=shared_verb_command)
    for name in sorted(COMMANDS):
        cmd = COMMANDS[name]
        sub = verbs.add_parser(name, help=cmd.help)
        cmd.add_arguments(sub)
        sub.set_defaults(run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may also come after flags
        if args.verb != "train" or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    try:
        args.run(args)
    except UserError as e:
        print(f"gencond {args.verb}: error: {e.args[0]}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"gencond {args.verb}: {e.args[0]}", file=sys.stderr)
        return Interrupted.EXIT_STATUS
    except KeyboardInterrupt:
        print(f"gencond {args.verb}: interrupted; rerun the same command to resume", file=sys.stderr)
        return Interrupted.EXIT_STATUS
    except OSError as e:
        if e.filename is None:  # not about a file: a bug, shown with its traceback
            raise
        print(f"gencond {args.verb}: error: {file_error(e)}", file=sys.stderr)
        return 2
    return 0


def file_error(e: OSError) -> str:
    """One line for a file-system error (permission denied, read-only, name too long, disk full, ...)."""
    where = f"{e.filename} -> {e.filename2}" if getattr(e, "filename2", None) else str(e.filename)
    return f"{where}: {e.strerror or type(e).__name__}"


if __name__ == "__main__":
    sys.exit(main())
