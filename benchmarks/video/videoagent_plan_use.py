"""Does a VideoAgent checkpoint use its previous-plan input? The plan-use probe on training and held-out clips.

For each clip: the network's loss on the real future with the matching draft, another episode's draft and an
empty slot, at several noise levels, the same noise for all (`video.plan_refinement.plan_use`). A network that
uses the plan has a matched loss below both others (a positive gap). Drafts are what the run trained on: the
planner's own plans (`plan_refinement.plans_from`, generated for held-out clips and cached in the planner's
output folder) or the real future plus noise (`plan_refinement.drafts=noised_future`, the positive control).

  python benchmarks/video/videoagent_plan_use.py runs/metaworld_small_videoagent --heldout-seeds 5-9
  python benchmarks/video/videoagent_plan_use.py RUN --weights last --heldout-root OTHER_DEMOS

Appends one record per run to benchmarks/results/video/videoagent_plan_use.jsonl (with commit, machine,
threads and date); measurement only.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from gencond.pipeline import set_threads

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def drafts_for(cfg, clips, items, seed: int) -> torch.Tensor:
    from video.plan_refinement import cached_plans

    sc = cfg.plan_refinement
    if sc.drafts == "noised_future":
        future = torch.stack([clips.clip(e, s)[1:].movedim(0, 1) for e, s in items])
        noise = sc.draft_noise * torch.randn(future.shape, generator=torch.Generator().manual_seed(seed))
        return (future + noise).clamp(-1, 1)
    cache = cached_plans(clips, sc.plans_from, sc.starts_per_episode, cfg.seed, sc.batch_size, steps=sc.draft_steps)
    where = {(int(e), int(s)): i for i, (e, s) in enumerate(zip(cache.episode, cache.start))}
    return torch.stack([cache.plans[where[item]].float() for item in items])


def probe(run: str, weights: str, seeds, root, count: int, timesteps, seed: int) -> dict:
    from omegaconf import OmegaConf

    from gencond.pipeline import Pipeline
    from gencond.text import text_encoder
    from video.plan_refinement import clip_starts, plan_use
    from video.task import load_clips

    pipeline = Pipeline.from_run(run, weights, task="video-planner", device="cpu", needed_by="the plan-use probe")
    cfg = pipeline.cfg
    if not cfg.model.previous_plan:
        raise SystemExit(f"{run} has no previous-plan input; probe a VideoAgent run")
    data = OmegaConf.merge(cfg.data, {k: v for k, v in {"seeds": seeds, "root": root}.items() if v is not None})
    clips = load_clips(OmegaConf.merge(cfg, {"data": data}))
    text = text_encoder(cfg.model.text_max_tokens).encode(clips.texts)
    items = clip_starts(clips, cfg.plan_refinement.starts_per_episode, cfg.seed)
    items = [items[i] for i in torch.linspace(0, len(items) - 1, min(count, len(items))).long().tolist()]
    result = plan_use(pipeline.model, pipeline.process, clips, text, items,
                      drafts_for(cfg, clips, items, seed), timesteps, seed)
    return {"clips": len(items), "seeds": sorted({clips.episodes[e].seed for e, _ in items}), **result}


def main(argv=None) -> dict:
    from robotics.register import parse_seeds

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a VideoAgent run or export")
    p.add_argument("--weights", default="best", choices=["best", "last"])
    p.add_argument("--heldout-seeds", help="demo seeds not trained on (e.g. 5-9), from the run's demos or --heldout-root")
    p.add_argument("--heldout-root", help="another demos folder for the held-out clips")
    p.add_argument("--clips", type=int, default=48, help="clips per split (default 48)")
    p.add_argument("--timesteps", default="30,60,90,99")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--label", help="the record's run label (default: run name, weights and time)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/video/videoagent_plan_use.jsonl")
    args = p.parse_args(argv)
    set_threads(args.threads)
    steps = [int(t) for t in args.timesteps.split(",")]
    out = {"run": str(args.run), "weights": args.weights,
           "train": probe(args.run, args.weights, None, None, args.clips, steps, args.seed)}
    if args.heldout_seeds or args.heldout_root:
        seeds = parse_seeds(args.heldout_seeds) if args.heldout_seeds else None
        out["heldout"] = probe(args.run, args.weights, seeds, args.heldout_root, args.clips, steps, args.seed)
    for split in ("train", "heldout"):
        if split in out:
            gaps = ", ".join(f"t={t}: {g:+.4f}" for t, g in out[split]["gap"].items())
            print(f"{split} ({out[split]['clips']} clips): gap (min(other, empty) - matched) {gaps}")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from record import append_record

    label = args.label or f"{Path(args.run).name}_{args.weights}_{time.strftime('%Y%m%dT%H%M%S')}"
    append_record(args.out, out, run=label, threads=args.threads)
    return out


if __name__ == "__main__":
    main()
