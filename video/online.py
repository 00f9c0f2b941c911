"""VideoAgent-Online: execute refined plans, keep the successes as clips, finetune, evaluate, repeat.

Iteration k of ``online(run_dir, out, ...)`` has three resumable steps, each in its own folder::

    <out>/iter_<k>/executions/   refined plans executed on the training scenes (video.executions)
    <out>/iter_<k>/model/        a run finetuned from the previous weights on the demonstrations plus every
                                 success so far, by plan refinement training on the previous model's plans
    <out>/iter_<k>/evaluation/   VideoAgent's success on the held-out scenes (robotics.evaluate)

and one line per finished iteration in ``<out>/online.jsonl``. An interrupted iteration resumes
where it stopped: finished episodes are not rerun, training resumes from its checkpoint.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence

from gencond.errors import UserError
from gencond.runs import read_resume_log

LOG = "online.jsonl"


def finetune_config(base_run: Path, previous: Path, run_dir: Path, successes: Sequence[Path], steps: int):
    """The config of one finetuning step: the base run's settings, started from ``previous``'s last
    weights, its data extended by ``successes``, its plan condition the previous model's own plans."""
    from gencond.config import load_config
    from gencond.runs import CONFIG

    cfg = load_config(base_run / CONFIG)
    if not cfg.model.previous_plan:
        raise UserError(f"{base_run} has no previous-plan input; online finetuning starts from a VideoAgent run "
                        "(configs/video/metaworld_small_videoagent.yaml)")
    cfg.name, cfg.runs_dir = run_dir.name, str(run_dir.parent)
    cfg.train.init_from = f"{previous}:last"
    cfg.train.max_steps, cfg.train.max_minutes = steps, None
    cfg.data.extra_roots = [*cfg.data.extra_roots, *map(str, successes)]
    cfg.plan_refinement.plans_from = f"{previous}:last"
    return cfg


def _demonstration_seeds(run_dir: Path) -> set[int]:
    """The scene seeds of the demonstrations a VideoAgent run was trained on (empty when they are gone)."""
    from gencond.config import load_config
    from gencond.runs import CONFIG
    from robotics.collect import read_index

    cfg = load_config(Path(run_dir) / CONFIG)
    seeds = set()
    for root in [cfg.data.root, *cfg.data.extra_roots]:
        if (Path(root) / "index.json").is_file():
            seeds |= {int(e["seed"]) for e in read_index(root)["episodes"]}
    return seeds if cfg.data.seeds is None else seeds & set(cfg.data.seeds)


def train_run(cfg, run_dir: Path, progress: bool = True):
    """Train (or resume) ``cfg`` in ``run_dir`` through the core trainer."""
    from gencond.config import save_config
    from gencond.registry import get_task
    from gencond.runs import CONFIG
    from gencond.training import train

    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / CONFIG)
    return train(cfg, get_task(cfg.task).build(cfg), run_dir, progress=progress)


def online(run_dir: str | Path, out: str | Path, iterations: int, env_tasks: Sequence[str], cameras: Sequence[str],
           seeds: Sequence[int], eval_seeds: Sequence[int], steps: int = 500, max_rounds: int = 4,
           critic: Optional[str] = None, max_replans: int = 5, resolution: int = 128, workers: int = 1,
           progress: bool = True) -> list[dict]:
    """Run (or resume) ``iterations`` online iterations from the VideoAgent run ``run_dir``; returns the log."""
    import functools

    from robotics.avdc import AvdcFollower
    from robotics.evaluate import evaluate

    from .agent import make_planner
    from .executions import execute_plans, read_episodes

    run_dir, out = Path(run_dir), Path(out)
    if iterations < 1:
        raise UserError(f"--iterations {iterations}: run at least 1 iteration")
    overlap = sorted(set(seeds) & set(eval_seeds))
    if overlap:
        raise UserError(f"training seeds and evaluation seeds overlap ({overlap[:5]}); online data must come "
                        "from scenes the evaluation does not use")

    demo_seeds = _demonstration_seeds(run_dir)
    if set(seeds) & demo_seeds:
        raise UserError(f"online scenes {sorted(set(seeds) & demo_seeds)[:5]} are the demonstrations' own scenes; "
                        "online data must come from new scenes (e.g. --seeds 5-29)")

    planner = functools.partial(make_planner, rounds=max_rounds, critic=critic, weights="last")

    log_path = out / LOG
    done = {r["iteration"]: r for r in read_resume_log(log_path, ("iteration",))}
    previous, successes = run_dir, []
    for k in range(1, iterations + 1):
        folder = out / f"iter_{k}"
        clock = time.perf_counter()
        records = execute_plans(planner(previous), env_tasks, cameras, seeds, folder / "executions",
                                resolution=resolution, max_replans=max_replans, progress=progress,
                                identity={"online_iteration": k})
        successes.append(folder / "executions" / "successes")
        seconds = {"execute": time.perf_counter() - clock}
        model_dir = folder / "model"
        clock = time.perf_counter()
        result = train_run(finetune_config(run_dir, previous, model_dir, successes, steps), model_dir, progress)
        seconds["finetune"], clock = time.perf_counter() - clock, time.perf_counter()
        table = evaluate(functools.partial(planner, model_dir), AvdcFollower, env_tasks, cameras, eval_seeds,
                         folder / "evaluation", resolution=resolution, max_replans=max_replans, progress=progress,
                         title=f"VideoAgent-Online iteration {k}", workers=workers)
        entry = {"iteration": k, "executed": len(records), "execution_success": sum(r["success"] for r in records),
                 "clips_added": sum(bool(r.get("kept_as_clip")) for r in read_episodes(folder / "executions")),
                 "finetune_steps": result.step, "eval_success": table["overall"], "eval_episodes": table["episodes"],
                 "model": str(model_dir)}
        seconds["evaluate"] = time.perf_counter() - clock
        if k not in done or {**done[k], "seconds_this_call": None} != {**entry, "seconds_this_call": None}:
            # seconds spent in the call that finished the iteration (resumed steps cost ~0 here)
            done[k] = {**entry, "seconds_this_call": {key: round(v, 1) for key, v in seconds.items()}}
            log_path.write_text("".join(json.dumps(done[i]) + "\n" for i in sorted(done)))
        previous = model_dir
    return [done[k] for k in range(1, iterations + 1)]
