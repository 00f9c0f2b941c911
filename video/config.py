"""Config schema of the ``video-planner`` task (AVDC's text- and first-frame-conditioned video
diffusion, trained on MetaWorld expert demonstrations); light: no torch import."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from gencond.config import DiffusionConfig, RunConfig, SamplingConfig, TrainConfig


@dataclass
class VideoDataConfig:
    root: str = "runs/robotics/demos"  # a folder written by `gencond collect`
    resolution: int = 32  # square frames the model sees (AVDC: 128)
    frames: int = 8  # frames per clip: the first is the condition, the rest are predicted (AVDC: 8)
    depth: bool = False  # RGB-D plans: also predict metric depth (the demos must hold depth: collect --depth)
    tasks: Optional[List[str]] = None  # None = every task in the demos
    cameras: Optional[List[str]] = None  # None = every camera in the demos
    seeds: Optional[List[int]] = None  # demo seeds to train on (None = all); evaluation seeds must differ


@dataclass
class VideoModelConfig:
    """AVDC's factorized space-time UNet (video.model.VideoUNet)."""

    base_channels: int = 32  # AVDC: 128
    channel_mult: List[int] = field(default_factory=lambda: [1, 2, 2])  # AVDC: [1, 2, 3, 4, 5]
    num_res_blocks: int = 1  # per level (AVDC: 2)
    attention_resolutions: List[int] = field(default_factory=lambda: [8])  # feature-map sizes with spatial attention
    head_channels: int = 32
    text_latents: int = 8  # Perceiver-resampler latents over the text's token states (AVDC: 64)
    text_max_tokens: int = 16
    text_pooled_skip: bool = True  # add the tokens' masked mean to the resampler's output (AVDC: no)
    dropout: float = 0.0
    scale_shift_norm: bool = True  # time+text vector as a scale and shift after the norm (AVDC: added before it)
    previous_plan: bool = False  # VideoAgent: also conditioned on an earlier plan (plan self-conditioning)


def _video_diffusion() -> DiffusionConfig:
    return DiffusionConfig(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                           min_snr_gamma=5.0, cond_drop_prob=0.1)


def _video_train() -> TrainConfig:
    return TrainConfig(max_steps=60_000, batch_size=8, lr=2e-4, grad_clip=1.0, ema_decay=0.999, warmup_steps=200,
                       checkpoint_every=250, log_every=25, keep_checkpoints=2, threads=1)


def _video_sampling() -> SamplingConfig:
    return SamplingConfig(scheduler="ddim", num_steps=25)


@dataclass
class VideoPlannerConfig(RunConfig):
    task: str = "video-planner"
    train: TrainConfig = field(default_factory=_video_train)
    diffusion: DiffusionConfig = field(default_factory=_video_diffusion)
    sampling: SamplingConfig = field(default_factory=_video_sampling)
    data: VideoDataConfig = field(default_factory=VideoDataConfig)
    model: VideoModelConfig = field(default_factory=VideoModelConfig)
