"""The ``video-planner`` task: AVDC's video diffusion planner trained by the core trainer.

The network's condition is assembled by :func:`video.model.plan_condition` in training and in sampling
alike (first frame, text token states and mask, and for VideoAgent the previous plan).
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from gencond.diffusion import DiffusionProcess
from gencond.errors import UserError
from gencond.training import TrainingJob

from .data import DemoClips
from .model import VideoUNet, plan_condition
from .plan_refinement import (
    NoisedFutureClips,
    RefinementClips,
    cached_plans,
    clip_starts,
    plan_use,
)


def build_model(cfg: DictConfig, instructions=()):
    """The config's :class:`video.model.VideoUNet`: its ``model`` section, and channels, frames and size from ``data``."""
    d = cfg.data
    return VideoUNet(**OmegaConf.to_container(cfg.model), channels=4 if d.depth else 3, frames=d.frames - 1,
                     image_size=d.resolution, instructions=tuple(instructions))


def load_clips(cfg: DictConfig) -> DemoClips:
    d = cfg.data
    return DemoClips(d.root, d.resolution, d.frames, d.depth, d.tasks, d.cameras, d.seeds, d.extra_roots)


def build(cfg: DictConfig) -> TrainingJob:
    """Training job: random demo clips, v-prediction loss with min-SNR, text dropped for CFG."""
    from gencond.text import text_encoder

    clips = load_clips(cfg)
    text = text_encoder(cfg.model.text_max_tokens).encode(clips.texts)
    model = build_model(cfg, clips.texts)
    process = DiffusionProcess(cfg.diffusion)
    batch_size = cfg.train.batch_size
    clips = _with_drafts(cfg, clips)

    def loss_fn(model, batch, generator):
        device = next(model.parameters()).device
        idx = batch["text_index"]
        previous = batch.get("previous_plan")
        cond = plan_condition(batch["first_frame"].to(device), text.tokens[idx].to(device), text.mask[idx].to(device),
                              None if previous is None else previous.to(device))
        return process.training_loss(model, batch["video"].to(device), cond=cond, generator=generator)

    validate = _plan_use_validation(cfg, clips, text, process) if cfg.model.previous_plan else None
    return TrainingJob(model, lambda step, g: clips.batch(batch_size, g), loss_fn, validate=validate,
                       monitor="plan_loss_matched")


def _with_drafts(cfg: DictConfig, clips: DemoClips):
    """The training clips with what fills the previous-plan slot (``plan_refinement``): the planner's own cached
    plans (VideoAgent), noised real futures (the positive control), or nothing (AVDC training)."""
    pr = cfg.plan_refinement
    if pr.drafts == "noised_future":  # the positive control: informative drafts
        if not cfg.model.previous_plan:
            raise UserError("plan_refinement.drafts=noised_future needs model.previous_plan: true (the previous-plan "
                            "input)")
        return NoisedFutureClips(clips, pr.draft_noise, pr.plan_prob)
    if pr.plans_from:  # VideoAgent: plan refinement trained on the planner's own cached plans
        if not cfg.model.previous_plan:
            raise UserError("plan_refinement.plans_from needs model.previous_plan: true (the network's previous-plan "
                            "input)")
        plans = cached_plans(clips, pr.plans_from, pr.starts_per_episode, cfg.seed, pr.batch_size, steps=pr.draft_steps)
        return RefinementClips(clips, plans, pr.plan_prob)
    return clips


def _plan_use_validation(cfg: DictConfig, clips, text, process, count: int = 16):
    """VideoAgent's validation: :func:`video.plan_refinement.plan_use` on a fixed set of its training drafts
    (the cached plans, or noised futures), logged as the mean losses over t = 50, 80, 95 and the gap."""
    if isinstance(clips, RefinementClips):
        take = torch.linspace(0, len(clips.cache) - 1, min(count, len(clips.cache))).long()
        items = [(int(clips.cache.episode[i]), int(clips.cache.start[i])) for i in take]
        drafts, demos = clips.cache.plans[take].float(), clips.clips
    else:
        demos = getattr(clips, "clips", clips)
        items = clip_starts(demos, 1, cfg.seed)[:count]
        future = torch.stack([demos.clip(e, s)[1:].movedim(0, 1) for e, s in items])
        noise = getattr(clips, "noise", 0.0) * torch.randn(future.shape, generator=torch.Generator().manual_seed(cfg.seed))
        drafts = (future + noise).clamp(-1, 1)

    def validate(model) -> dict:
        result = plan_use(model, process, demos, text, items, drafts, timesteps=(50, 80, 95), seed=cfg.seed)
        return {f"plan_loss_{k}": sum(result[k].values()) / len(result[k])
                for k in ("matched", "other_clip", "empty", "gap")}

    return validate


def load_model(folder):
    return VideoUNet.from_pretrained(folder)
