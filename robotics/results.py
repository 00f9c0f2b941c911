"""Result files of plan-execution evaluations (benchmarks/robotics): a name that carries every setting that is
not the default, a save that never replaces a result of more episodes, and one success table from evaluations
of one planner on disjoint seeds."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from gencond.errors import UserError

EVALUATE_DEFAULTS = {"tasks": None, "cameras": None, "plan_frames": None, "resolution": 128, "plan_resolution": None,
                     "seeds": "100-104", "max_replans": 5}
NAME_PARTS = {"tasks": "_tasks-{}", "cameras": "_cameras-{}", "plan_frames": "_frames{}", "resolution": "_res{}",
              "plan_resolution": "_plan{}px", "seeds": "_seeds{}", "max_replans": "_replans{}"}


def planner_name(planner: str) -> str:
    """A file-name part for --planner: 'video:runs/metaworld_small' -> 'video-metaworld_small'."""
    if ":" not in planner:
        return planner
    prefix, arg = planner.split(":", 1)
    return f"{prefix}-{Path(arg.rstrip('/')).name or arg}".replace(":", "-").replace(".", "-")


def evaluate_name(planner: str, extractor: str, tag: str = "", **settings) -> str:
    """An evaluation's result name: planner, extractor, each of ``settings`` (keys of :data:`EVALUATE_DEFAULTS`)
    that is not the default, and the tag, e.g. 'evaluate_oracle_avdc_seeds100-100'."""
    unknown = set(settings) - set(EVALUATE_DEFAULTS)
    if unknown:
        raise UserError(f"unknown evaluation setting(s) {sorted(unknown)}; known: {', '.join(EVALUATE_DEFAULTS)}")
    name = f"evaluate_{planner_name(planner)}_{extractor}"
    for key, part in NAME_PARTS.items():
        value = settings.get(key, EVALUATE_DEFAULTS[key])
        if value != EVALUATE_DEFAULTS[key]:
            name += part.format(str(value).replace(",", "+"))
    return name + (f"_{tag}" if tag else "")


def save_result(path: str | Path, payload: dict) -> None:
    """Write ``payload`` as JSON to ``path``, unless ``path`` holds a result of more episodes (a one-line error)."""
    path = Path(path)
    old = json.loads(path.read_text()).get("episodes", 0) if path.exists() else 0
    if "episodes" in payload and old > payload["episodes"]:
        raise UserError(f"{path} holds a run of {old} episodes; not overwriting it with {payload['episodes']} "
                        "(pass --tag to name this run)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))


def episode_records(out: str | Path, tasks, cameras, seeds) -> list[dict]:
    """The episode records of the evaluation in ``out``, in protocol order (task, camera, seed), those it ran:
    kept beside its table so that a later evaluation on the same seeds can be paired with it (McNemar)."""
    from .evaluate import EPISODES_FILE, _read_done

    done = _read_done(Path(out) / EPISODES_FILE)
    return [done[key] for key in itertools.product(tasks, cameras, seeds) if key in done]


def _whole_count(rate: float, n: int) -> int:
    k = rate * n / 100
    if abs(k - round(k)) > 0.06:
        raise UserError(f"a rate of {rate} % over {n} episodes is not a whole count")
    return round(k)


def combine_tables(tables: list[dict]) -> dict:
    """One success table from evaluations of one identity (planner, weights, extractor, settings) on
    disjoint seeds: per task and camera, the success counts are recovered from the rates and summed."""
    first = tables[0]
    for t in tables[1:]:
        if t["identity"] != first["identity"]:
            raise UserError(f"cannot combine evaluations of different identities: {first['identity']} vs "
                            f"{t['identity']}")
        if set(t["per_task"]) != set(first["per_task"]):
            raise UserError("cannot combine evaluations of different task lists")
    seeds = [s for t in tables for s in t["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"the evaluations share seeds {sorted({s for s in seeds if seeds.count(s) > 1})}; "
                        "combine only disjoint seed sets")
    per_task, wins, total = {}, 0, 0
    for task, row in first["per_task"].items():
        cams = {c: 0 for c in row["cameras"]}
        for t in tables:
            for c in cams:
                cams[c] += _whole_count(t["per_task"][task]["cameras"][c], len(t["seeds"]))
        n = len(seeds) * len(cams)
        per_task[task] = {"success": round(100 * sum(cams.values()) / n, 1), "episodes": n,
                          "cameras": {c: round(100 * k / len(seeds), 1) for c, k in cams.items()}}
        wins, total = wins + sum(cams.values()), total + n
    return {"overall": round(100 * wins / total, 1), "episodes": total, "per_task": per_task,
            "errors": sum(t["errors"] for t in tables),
            "mean_steps": round(sum(t["mean_steps"] * t["episodes"] for t in tables) / total, 1),
            "seeds": sorted(seeds), "identity": first["identity"]}
