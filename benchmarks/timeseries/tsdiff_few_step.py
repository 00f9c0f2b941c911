"""TSDiff forecasting with few sampler steps against DDPM-100, on one trained run and the same windows.

Each spec is ``scheduler:steps`` with optional ``,eta=E`` (DDIM stochasticity), ``,scale=S`` (the
guidance scale; default the run's ``forecast.scale``), ``,spacing=leading|trailing|linspace`` (where
the few steps lie; default the scheduler's, leading) and ``,timesteps=FIRST:LAST:STRIDE+...`` or ``,timesteps=powerR`` (listed timesteps,
``sampling.timesteps``; e.g. ``ddpm:56,timesteps=99:51:12+50:0:1``, ``ddpm:25,timesteps=power1.5``) ``,guidance=plain`` (TSDiff's own loss gradient, ``forecast.proximal_guidance=false``, the sampler before
2026-12-05; default the run's config, now its Moreau envelope at the step's size) and ``,weight=jump`` (ablation: a strided DDPM
step's guidance scaled by the jump's own posterior variance, the sampler's rule before 2026-12-03,
instead of the spanned timesteps' sum) and ``,step=unit-prior`` (ablation: proximal guidance's step size with the
Jacobian d x0_hat / d x_t of a unit-variance Gaussian prior, sqrt(abar_t), instead of the sampler's I / sqrt(abar_t))
(with r = 1 below), ``,step=rule`` (ablation: the rule's I / sqrt(abar_t) at every step, r = 1: the sampler of 2026-12-05
to 2026-12-07) or ``,step=measured`` (ablation: the rule times r^2 at every step, r the network's own shrinkage along
the guidance gradient measured at each sample's previous step, gencond.sampling.guidance_shrinkage);
``,step=measured-snr1`` is the sampler's own (r^2 where abar_t / (1 - abar_t) >= 1, the rule above that noise).
Each row keeps the mean measured r per timestep (``mean_shrinkage_by_t``). Every spec forecasts the same test windows with
the same seed; the table reports CRPS, its ratio to the reference spec (DDPM-100), network evaluations
per sample and forecast seconds per series. Rows already in --out are kept (an interrupted benchmark
resumes); a run's canonical results are never written here.

    python benchmarks/timeseries/tsdiff_few_step.py runs/exchange_rate_nips --threads 1 --max-series 20 \\
        --specs ddpm:100 ddim:25 ddim:25,eta=1 ddim:25,scale=16 --out runs/bench/few_step.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from gencond.arguments import timestep_ranges
from gencond.pipeline import Pipeline, set_threads
from gencond.sampling import (GuidanceRule, ddpm_jump, guidance_shrinkage, guidance_step_size, guidance_weight,
                              micro_batch_rows)
from timeseries.config import power_timesteps
from timeseries.forecast import forecast_and_evaluate
from timeseries.task import load_data, make_forecaster, window_builder


def parse_spec(spec: str) -> dict:
    """'ddim:25,eta=1,scale=16' -> {scheduler, num_steps, eta, scale}; a malformed spec is a SystemExit."""
    head, *options = spec.split(",")
    scheduler, _, steps = head.partition(":")
    if not steps.isdigit() or int(steps) < 1:
        raise SystemExit(f"'{spec}' is not scheduler:steps[,eta=E][,scale=S], e.g. ddim:25,eta=1")
    out = {"scheduler": scheduler, "num_steps": int(steps)}
    for option in options:
        key, _, value = option.partition("=")
        if key not in ("eta", "scale", "spacing", "weight", "timesteps", "guidance", "step"):
            raise SystemExit(f"'{spec}': unknown option '{key}' (eta, scale, spacing, weight, timesteps, guidance, step)")
        if key == "timesteps":
            out[key] = value
            spec_timesteps(value, out["num_steps"], 1000, spec)  # checked now, resolved for the run's T later
            continue
        if key == "weight" and value != "jump":
            raise SystemExit(f"'{spec}': weight must be 'jump' (the default is the sampler's own)")
        if key == "guidance" and value not in ("plain", "proximal"):
            raise SystemExit(f"'{spec}': guidance must be 'plain' or 'proximal'")
        if key == "step" and value not in ("rule", "unit-prior", "measured", "measured-snr1"):
            raise SystemExit(f"'{spec}': step must be 'rule', 'unit-prior', 'measured' or 'measured-snr1' (the last is "
                             "the sampler's own)")
        if key in ("spacing", "weight", "guidance", "step"):
            out[key] = value
            continue
        try:
            out[key] = float(value)
        except ValueError:
            raise SystemExit(f"'{spec}': {key} must be a number") from None
    return out


def spec_timesteps(value: str, num_steps: int, num_train_timesteps: int, spec: str) -> list[int]:
    """Decreasing timesteps from '99:51:12+50:0:1' (ranges FIRST:LAST:STRIDE, LAST included, joined by +;
    exactly num_steps of them) or 'powerR' (round((T-1) (i/(num_steps-1))^R), i = 0..num_steps-1, the
    repeats dropped: R > 1 packs the steps towards t = 0)."""
    if value.startswith("power"):
        try:
            return power_timesteps(num_steps, num_train_timesteps, float(value[5:]))
        except ValueError:
            raise SystemExit(f"'{spec}': power timesteps are powerR with a number R, e.g. power1.5") from None
    try:
        steps = timestep_ranges(value)  # the --timesteps syntax of gencond forecast
    except argparse.ArgumentTypeError as e:
        raise SystemExit(f"'{spec}': timesteps {e}, or powerR (e.g. power1.5)") from None
    if len(steps) != num_steps:
        raise SystemExit(f"'{spec}': the listed timesteps are {len(steps)} steps, not {num_steps}")
    return steps


def jump_variance_weight(sched, t: int) -> float:
    """The ablation's guidance weight: DDPM's mean moves by -s * (the jump's own posterior variance) * grad E."""
    if not isinstance(sched, DDPMScheduler):
        return guidance_weight(sched, t)
    abar, prev = sched.alphas_cumprod[t].double(), sched.previous_timestep(t)
    abar_prev = sched.alphas_cumprod[prev].double() if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
    return float((1 - abar_prev) * (abar / abar_prev).sqrt() / (1 - abar).sqrt())


def unit_prior_step_size(sched, t: int):
    """The proximal step size with d x0_hat / d x_t of a unit-variance Gaussian prior, sqrt(abar) I (PiGDM's
    r_t), for both the step's own estimate and the next one's: V_t sqrt(abar_t abar_prev)."""
    if not isinstance(sched, DDPMScheduler):
        return None
    abar, abar_prev, variance = ddpm_jump(sched, t)
    return float(variance * (abar * abar_prev).sqrt())


class ShrinkageLog:
    """Wraps gencond.sampling.guidance_shrinkage (a GuidanceRule's shrinkage): keeps the mean measured r per abar_t (a diagnostic); with
    ``fixed`` it returns ones instead (the sampler's rule I / sqrt(abar_t) at every step, its default before
    2026-12-07's last session)."""

    def __init__(self, fixed: bool = False):
        self.fixed, self.by_abar = fixed, {}

    def __call__(self, grad_x, grad_x0, abar):
        r = guidance_shrinkage(grad_x, grad_x0, abar)
        self.by_abar.setdefault(abar, []).append(float(r.mean()))
        return torch.ones_like(r) if self.fixed else r


def rows_per_call(args) -> int:
    """Rows of the sampler's first network call (gencond.sampling)."""
    first = micro_batch_rows(args.micro_batch or None, args.batch_size)[0]
    return first.stop - first.start


def spec_rule(s: dict, log: ShrinkageLog) -> GuidanceRule:
    """The guidance rule of a parsed spec: the sampler's own, or an ablation's weight, step size or shrinkage."""
    return GuidanceRule(weight=jump_variance_weight if s.get("weight") == "jump" else guidance_weight,
                        step_size=unit_prior_step_size if s.get("step") == "unit-prior" else guidance_step_size,
                        shrinkage=log, min_snr=0.0 if s.get("step") == "measured" else GuidanceRule().min_snr)


def run_spec(run_dir: str, spec: str, args) -> dict:
    s = parse_spec(spec)
    log = ShrinkageLog(fixed=s.get("step") in ("rule", "unit-prior"))
    pipeline = Pipeline.from_run(run_dir, args.weights, task="tsdiff", device="cpu")
    cfg, model = pipeline.cfg, pipeline.model
    listed = s.get("timesteps") and spec_timesteps(s["timesteps"], s["num_steps"], cfg.diffusion.num_train_timesteps, spec)
    cfg.sampling.scheduler, cfg.sampling.eta = s["scheduler"], s.get("eta", 0.0)
    cfg.sampling.timesteps, cfg.sampling.num_steps = (listed, None) if listed else (None, s["num_steps"])
    cfg.sampling.timestep_spacing = s.get("spacing")
    cfg.sampling.micro_batch = args.micro_batch or None
    cfg.forecast.batch_size = args.batch_size
    if "guidance" in s:
        cfg.forecast.proximal_guidance = s["guidance"] == "proximal"
    data = load_data(cfg)
    entries = data.test[: args.max_series] if args.max_series else data.test
    forecaster = make_forecaster(cfg, model, window_builder(cfg, data), num_samples=args.samples, seed=args.seed,
                                 scale=s.get("scale", cfg.forecast.scale), progress=not args.quiet,
                                 calibration_windows=0, rule=spec_rule(s, log))  # the samplers as they sample (tsdiff_calibration.py: recalibrated)
    start = time.perf_counter()
    _, metrics = forecast_and_evaluate(forecaster, entries, data.freq, data.prediction_length, seed=args.seed)
    seconds = time.perf_counter() - start
    return {"spec": spec, "scheduler": s["scheduler"], "steps": s["num_steps"], "eta": cfg.sampling.eta,
            "spacing": s.get("spacing", "listed" if s.get("timesteps") else "leading"), "timesteps": listed or None,
            "micro_batch": args.micro_batch,
            "rows_per_call": rows_per_call(args),
            "guidance_weight": s.get("weight", "spanned"), "step_size": s.get("step", "sampler"), "proximal_guidance": forecaster.proximal,
            "scale": forecaster.scale, "nfe_per_sample": len(listed) if listed else s["num_steps"], "series": len(entries),
            "samples": args.samples, "seed": args.seed, "threads": args.threads,
            **{k: metrics[k] for k in ("CRPS", "ND", "NRMSE")}, "forecast_s_per_series": seconds / len(entries),
            **{k: v for k, v in metrics.items() if k.startswith("coverage") or k in ("MSIS", "WIS", "calibration")},
            "mean_shrinkage_by_t": shrinkage_by_t(log, pipeline.process.alphas_cumprod.tolist())}


def shrinkage_by_t(log: ShrinkageLog, abar: list[float]) -> dict:
    """The logged mean r per training timestep (keyed by abar_t in the log), from t = T - 1 down."""
    t_of = {a: t for t, a in enumerate(abar)}
    return {t_of[a]: sum(v) / len(v) for a, v in sorted(log.by_abar.items()) if a in t_of}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--specs", nargs="+", default=["ddpm:100", "ddim:25", "ddim:25,eta=1"],
                   help="sampler specs, run in this order")
    p.add_argument("--reference", default="ddpm:100", help="the spec CRPS ratios are taken against (default ddpm:100)")
    p.add_argument("--weights", default="best")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-series", type=int, help="only the first N test windows")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--micro-batch", type=int, default=10, help="rows per network call (sampling.micro_batch; on several threads the calls run side by side; 0 = the whole batch)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True, help="results JSON (rows kept and extended)")
    args = p.parse_args()
    for spec in args.specs:
        parse_spec(spec)
    set_threads(args.threads)
    out = Path(args.out)
    key = {"run": str(Path(args.run_dir).resolve()), "weights": args.weights, "max_series": args.max_series,
           "samples": args.samples, "seed": args.seed}
    saved = json.loads(out.read_text()) if out.exists() else {"key": key, "rows": []}
    if saved["key"] != key:
        raise SystemExit(f"{out} holds results of other settings ({saved['key']}); give another --out")
    rows = saved["rows"]
    for spec in args.specs:
        if any(r["spec"] == spec and r["threads"] == args.threads and r.get("micro_batch", 0) == args.micro_batch
               and r.get("rows_per_call") == rows_per_call(args) for r in rows):  # rows of another rule of rows per call rerun
            continue
        rows.append(run_spec(args.run_dir, spec, args))
        print(json.dumps(rows[-1]), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(saved, indent=2))
    ref = next((r for r in rows if r["spec"] == args.reference), None)
    print(f"\n| spec | sampler | eta | scale | NFE/sample | CRPS | vs {args.reference} | ND | NRMSE | 80 % interval covers | s/series | threads |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['CRPS'] / ref['CRPS']:.3f}" if ref else "-"
        print(f"| `{r['spec']}` | {r['scheduler']}-{r['steps']} | {r['eta']:g} | {r['scale']:g} | {r['nfe_per_sample']} | {r['CRPS']:.5f} | "
              f"{ratio} | {r['ND']:.4f} | {r['NRMSE']:.4f} | {r['coverage_80'] if 'coverage_80' in r else float('nan'):.3f} | "
              f"{r['forecast_s_per_series']:.1f} | {r['threads']} |")


if __name__ == "__main__":
    main()
