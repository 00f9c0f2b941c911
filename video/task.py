"""The ``video-planner`` task: AVDC's video diffusion planner trained by the core trainer.

One function, :func:`plan_condition`, assembles the network's condition in training and in
sampling alike (first frame, text token states and mask, and for VideoAgent the previous plan), so
the two can never disagree on order or scaling.
"""
from __future__ import annotations

from typing import Optional

import torch
from omegaconf import DictConfig

from gencond.diffusion import DiffusionProcess
from gencond.errors import UserError
from gencond.training import TrainingJob

from .data import DemoClips


def plan_condition(first_frame: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                   previous_plan: Optional[torch.Tensor] = None) -> dict:
    """The condition dict of :class:`video.model.VideoUNet`; every video tensor in [-1, 1]:
    first_frame (B, C, H, W), text (B, L, D) token states, text_mask (B, L), previous_plan (B, C, T, H, W)
    (clamped to [-1, 1]: a sampled plan may overshoot the range of a real video)."""
    cond = {"first_frame": first_frame, "text": text_tokens, "text_mask": text_mask}
    if previous_plan is not None:
        if previous_plan.shape[:2] != first_frame.shape[:2] or previous_plan.shape[-2:] != first_frame.shape[-2:]:
            raise ValueError(f"previous plan {tuple(previous_plan.shape)} does not fit first frame "
                             f"{tuple(first_frame.shape)}; it must be (B, C, T, H, W) of the same B, C, H, W")
        cond["previous_plan"] = previous_plan.clamp(-1, 1)  # a sample may overshoot; a video does not
    return cond


def build_model(cfg: DictConfig, instructions=()):
    from .model import VideoUNet

    m, d = cfg.model, cfg.data
    return VideoUNet(channels=4 if d.depth else 3, frames=d.frames - 1, image_size=d.resolution,
                     base_channels=m.base_channels, channel_mult=tuple(m.channel_mult),
                     num_res_blocks=m.num_res_blocks, attention_resolutions=tuple(m.attention_resolutions),
                     head_channels=m.head_channels, text_latents=m.text_latents,
                     text_max_tokens=m.text_max_tokens,
                     text_pooled_skip=m.text_pooled_skip, dropout=m.dropout, previous_plan=m.previous_plan,
                     scale_shift_norm=m.scale_shift_norm,
                     instructions=tuple(instructions))


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
    sc = cfg.consistency
    if sc.drafts == "noised_future":  # the positive control: informative drafts
        from .consistency import NoisedFutureClips

        if not cfg.model.previous_plan:
            raise UserError("consistency.drafts=noised_future needs model.previous_plan: true (the previous-plan input)")
        clips = NoisedFutureClips(clips, sc.draft_noise, sc.plan_prob)
    elif sc.plans_from:  # VideoAgent: self-conditioning consistency on the planner's own cached plans
        from .consistency import ConsistencyClips, cached_plans

        if not cfg.model.previous_plan:
            raise UserError("consistency.plans_from needs model.previous_plan: true (the network's previous-plan input)")
        clips = ConsistencyClips(clips, cached_plans(clips, sc.plans_from, sc.starts_per_episode, cfg.seed,
                                                     sc.batch_size), sc.plan_prob)

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


def _plan_use_validation(cfg: DictConfig, clips, text, process, count: int = 16):
    """VideoAgent's validation: :func:`video.consistency.plan_use` on a fixed set of its training drafts
    (the cached plans, or noised futures), logged as the mean losses over t = 50, 80, 95 and the gap."""
    from .consistency import ConsistencyClips, clip_starts, plan_use

    if isinstance(clips, ConsistencyClips):
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
    from .model import VideoUNet

    return VideoUNet.from_pretrained(folder)
