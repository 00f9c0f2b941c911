"""Training data of VideoAgent's plan refinement (the paper's "self-conditioning consistency").

A planner run's own plans for a fixed set of training clips (each demonstration's first frame and
``starts_per_episode - 1`` seeded random starts) are generated once and cached in that run's folder
(``plan_cache/<key>/``, chunk by chunk, so an interrupted fill resumes). Training then conditions on
a cached plan and targets the real future of the same clip; the rest of each batch keeps the
first-frame-only mode (previous-plan slot empty, i.e. zeros). Plans stay in the sampler's [-1, 1]
floats, as the refinement rounds at inference pass them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from gencond.errors import UserError
from gencond.pipeline import seeded_generator

from .data import DemoClips, observation
from .model import plan_condition

CACHE_FORMAT = "gencond-video-plan-cache/1"


@dataclass
class PlanCache:
    plans: torch.Tensor  # (N, C, T, H, W) float16 in [-1, 1]
    episode: torch.Tensor  # (N,) index into DemoClips.episodes
    start: torch.Tensor  # (N,) the clip's start frame

    def __len__(self) -> int:
        return len(self.episode)


def clip_starts(clips: DemoClips, per_episode: int, seed: int) -> list[tuple[int, int]]:
    """(episode, start) of every cached clip: start 0 and ``per_episode - 1`` seeded random starts."""
    if per_episode < 1:
        raise UserError(f"plan_refinement.starts_per_episode is {per_episode}; use 1 or more")
    out = []
    for e, episode in enumerate(clips.episodes):
        g = seeded_generator(seed, e)
        length = len(episode.video)
        out += [(e, 0)] + [(e, int(s)) for s in torch.randint(0, length, (per_episode - 1,), generator=g)]
    return out


def _condition(clips: DemoClips, text, items: list[tuple[int, int]]) -> dict:
    first = observation(torch.stack([clips.clip(e, s)[0] for e, s in items]))
    idx = clips.text_index[[e for e, _ in items]]
    return plan_condition(first, text.tokens[idx], text.mask[idx])


def cached_plans(clips: DemoClips, plans_from: str, per_episode: int, seed: int = 0, batch_size: int = 8,
                 progress: bool = True, steps: int | None = None) -> PlanCache:
    """The plans of run ``plans_from`` (``RUN_DIR[:best|last]``) for :func:`clip_starts`, from its cache
    or generated now (resumable by chunk; each chunk's noise depends on its index only); ``steps``: sampler
    steps of these drafts (default the run's own)."""
    from omegaconf import OmegaConf
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    from gencond.pipeline import Pipeline
    from gencond.runs import output_dir, weights_fingerprint, weights_folder
    from gencond.text import text_encoder

    run, _, which = plans_from.partition(":")
    which = which or "best"
    folder = weights_folder(Path(run), which)
    pipeline = Pipeline.from_run(run, which, task="video-planner", device="cpu", needed_by="plan_refinement.plans_from")
    pipeline.configure(num_steps=steps, steps_name="plan_refinement.draft_steps")
    cfg, model = pipeline.cfg, pipeline.model
    c, frames, size = model.config.channels, model.config.frames, model.config.image_size
    clip_c = clips.episodes[0].video.shape[1]
    if (c, frames + 1, size) != (clip_c, clips.frames, clips.episodes[0].video.shape[-1]):
        raise UserError(f"plan_refinement.plans_from {run} plans {frames + 1} frames of {c} channels at {size} px, "
                        f"but this run's clips are {clips.frames} frames of {clip_c} channels at "
                        f"{clips.episodes[0].video.shape[-1]} px; use a planner trained on the same data settings")
    items = clip_starts(clips, per_episode, seed)
    identity = {"format": CACHE_FORMAT, "weights": weights_fingerprint(folder), "seed": seed,
                "sampling": OmegaConf.to_container(cfg.sampling, resolve=True), "batch_size": batch_size,
                "clips": [[clips.episodes[e].env_task, clips.episodes[e].camera, clips.episodes[e].seed,
                           len(clips.episodes[e].video), s] for e, s in items]}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    out = output_dir(run) / "plan_cache" / key
    out.mkdir(parents=True, exist_ok=True)
    (out / "identity.json").write_text(json.dumps(identity))
    text = text_encoder(model.config.text_max_tokens).encode(clips.texts)
    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    todo = [i for i in range(len(chunks)) if not (out / f"chunk_{i:05d}.safetensors").is_file()]
    for i in tqdm(todo, desc=f"plans of {Path(run).name} for plan refinement training", unit="chunk",
                  disable=not progress or not todo):
        chunk = chunks[i]
        cond = _condition(clips, text, chunk)
        plans = pipeline.sample((len(chunk), c, frames, size, size), cond=cond, generator=pipeline.generator(seed, i),
                                progress=False)
        tmp = out / f"chunk_{i:05d}.tmp"
        save_file({"plans": plans.half().contiguous()}, str(tmp))
        tmp.rename(out / f"chunk_{i:05d}.safetensors")
    plans = torch.cat([load_file(str(out / f"chunk_{i:05d}.safetensors"))["plans"] for i in range(len(chunks))])
    return PlanCache(plans, torch.tensor([e for e, _ in items]), torch.tensor([s for _, s in items]))


class RefinementClips:
    """Training batches of plan refinement: a fraction ``plan_prob`` of the clips are
    cached ones with their plan as ``previous_plan``; the others are random clips with the slot empty."""

    def __init__(self, clips: DemoClips, cache: PlanCache, plan_prob: float):
        if not 0.0 <= plan_prob <= 1.0:
            raise UserError(f"plan_refinement.plan_prob is {plan_prob}; it is a fraction in [0, 1]")
        self.clips, self.cache, self.plan_prob = clips, cache, plan_prob
        self.texts = clips.texts

    def batch(self, size: int, generator: torch.Generator) -> dict:
        out = self.clips.batch(size, generator)
        use_plan = torch.rand(size, generator=generator) < self.plan_prob
        pick = torch.randint(0, len(self.cache), (size,), generator=generator)
        previous = torch.zeros_like(out["video"])
        for i in torch.nonzero(use_plan).flatten().tolist():
            j = int(pick[i])
            e, s = int(self.cache.episode[j]), int(self.cache.start[j])
            clip = self.clips.clip(e, s)
            out["video"][i] = clip[1:].movedim(0, 1)
            out["first_frame"][i] = observation(clip[0])
            out["text_index"][i] = self.clips.text_index[e]
            previous[i] = self.cache.plans[j].float()
        out["previous_plan"] = previous
        return out


class NoisedFutureClips:
    """The positive control of plan refinement training: the previous-plan slot of a fraction ``plan_prob`` of
    the clips holds the clip's own real future plus Gaussian noise of std ``noise`` (further from the truth
    than a plan, but informative about it); the others keep the slot empty."""

    def __init__(self, clips: DemoClips, noise: float, plan_prob: float):
        if not noise > 0:
            raise UserError(f"plan_refinement.draft_noise is {noise}; the noised-future drafts need a std > 0")
        self.clips, self.noise, self.plan_prob = clips, noise, plan_prob
        self.texts = clips.texts

    def batch(self, size: int, generator: torch.Generator) -> dict:
        out = self.clips.batch(size, generator)
        use = (torch.rand(size, generator=generator) < self.plan_prob).view(-1, 1, 1, 1, 1)
        noisy = out["video"] + self.noise * torch.randn(out["video"].shape, generator=generator)
        out["previous_plan"] = torch.where(use, noisy.clamp(-1, 1), torch.zeros_like(noisy))
        return out


def plan_use(model, process, clips: DemoClips, text, items: list[tuple[int, int]], plans: torch.Tensor,
             timesteps=(30, 60, 90), seed: int = 0) -> dict:
    """Does a VideoAgent network use its previous-plan input? Its loss on the real futures of ``items``
    ((episode, start) clips) with the matching ``plans`` (N, C, T, H, W), another episode's plan and an empty
    slot, at each of ``timesteps`` with the same noise. A network that uses the
    plan has a matched loss below both others; ``gap`` is min(other, empty) - matched per timestep."""
    device = next(model.parameters()).device
    future = torch.stack([clips.clip(e, s)[1:].movedim(0, 1) for e, s in items]).to(device)
    cond = _condition(clips, text, items)
    base = {k: v.to(device) for k, v in cond.items()}
    plans = plans.float().to(device)
    episodes = [e for e, _ in items]  # another clip: the batch rolled far enough that no episode meets itself
    shift = next((k for k in range(1, len(items)) if all(episodes[i] != episodes[(i + k) % len(items)]
                                                          for i in range(len(items)))), 1)
    conds = {name: plan_condition(base["first_frame"], base["text"], base["text_mask"], p)
             for name, p in (("matched", plans), ("other_clip", plans.roll(-shift, 0)),
                             ("empty", torch.zeros_like(plans)))}
    losses = process.condition_losses(model, future, conds, timesteps, seed)
    gap = {t: min(losses["other_clip"][t], losses["empty"][t]) - losses["matched"][t] for t in losses["matched"]}
    return {**losses, "gap": gap}
