"""Config schema of the ``video-planner`` task (AVDC's text- and first-frame-conditioned video
diffusion, trained on MetaWorld expert demonstrations); light: no torch import."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

from gencond.config import DiffusionConfig, RunConfig, SamplingConfig, TrainConfig, above, at_least, between, one_of, ranged


@dataclass
class VideoDataConfig:
    root: str = "${runs_dir}/robotics/demos"  # a folder written by `gencond collect`
    resolution: int = ranged(32, at_least(8))  # square frames the model sees (AVDC: 128)
    frames: int = ranged(8, at_least(2))  # frames per clip: the first is the condition, the rest are predicted (AVDC: 8)
    depth: bool = False  # RGB-D plans: also predict metric depth (the demos must hold depth: collect --depth)
    tasks: Optional[List[str]] = None  # None = every task in the demos
    cameras: Optional[List[str]] = None  # None = every camera in the demos
    seeds: Optional[List[int]] = None  # demo seeds to train on (None = all); evaluation seeds must differ
    extra_roots: List[str] = field(default_factory=list)  # more demo folders (e.g. VideoAgent-Online's successes)


@dataclass
class VideoModelConfig:
    """AVDC's factorized space-time UNet: the arguments of :class:`video.model.VideoUNet` that a config sets,
    declared here once (the constructor's defaults are these); the others follow from the data section
    (channels, frames, image_size) and the instructions."""

    base_channels: int = ranged(32, at_least(1))  # AVDC: 128
    channel_mult: List[int] = ranged(domain=at_least(1), factory=lambda: [1, 2, 2])  # AVDC: [1, 2, 3, 4, 5]
    num_res_blocks: int = ranged(1, at_least(1))  # per level (AVDC: 2)
    attention_resolutions: List[int] = ranged(domain=at_least(1), factory=lambda: [8])  # feature-map sizes with spatial attention
    head_channels: int = ranged(32, at_least(1))
    text_latents: int = ranged(8, at_least(1))  # Perceiver-resampler latents over the text's token states (AVDC: 64)
    text_max_tokens: int = ranged(16, at_least(2))
    text_pooled_skip: bool = True  # add the tokens' masked mean to the resampler's output (AVDC: no)
    dropout: float = ranged(0.0, between(0, 1, high_open=True))
    scale_shift_norm: bool = True  # time+text vector as a scale and shift after the norm (AVDC: added before it)
    previous_plan: bool = False  # VideoAgent: also conditioned on an earlier plan (the input of plan refinement)


@dataclass
class PlanRefinementConfig:
    """VideoAgent's plan refinement, trained: a planner's own plans condition training, the real future is the
    target (needs ``model.previous_plan: true``; the section was called ``consistency`` before)."""

    plans_from: Optional[str] = None  # RUN_DIR[:best|last] whose plans are the condition (None: AVDC training)
    starts_per_episode: int = ranged(4, at_least(1))  # cached clips per demonstration: its first frame and k-1 seeded random starts
    plan_prob: float = ranged(0.5, between(0, 1))  # fraction of training clips given a cached plan; the rest first-frame-only (slot empty)
    batch_size: int = ranged(8, at_least(1))  # plans generated per sampler call while filling the cache
    drafts: str = ranged("own_plans", one_of("own_plans", "noised_future"))  # what fills the previous-plan slot in
    # training: own_plans = plans_from's cached plans (the paper); noised_future = the clip's real future plus
    # Gaussian noise of std draft_noise (the positive control: informative drafts, no plans_from needed)
    draft_noise: float = ranged(0.5, above(0))
    draft_steps: Optional[int] = ranged(None, at_least(1))  # own_plans drafted with this many sampler steps
    # (None: plans_from's own sampling): cheaper drafts than the refinement pass, the compute route (issue 39)


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
    plan_refinement: PlanRefinementConfig = field(default_factory=PlanRefinementConfig)
    RENAMED_KEYS: ClassVar[dict] = {"consistency": "plan_refinement"}  # old name -> new (old configs still load)


@dataclass
class CriticDataConfig:
    executions: List[str] = field(default_factory=list)  # folders written by video.executions (training seeds only)
    val_executions: List[str] = field(default_factory=list)  # held-out scenes: validation accuracy, best checkpoint
    resolution: int = ranged(32, at_least(8))  # the critic's square frame size
    frames: int = ranged(8, at_least(2))  # plan frames, observation first


@dataclass
class CriticModelConfig:
    """A factorized-conv video classifier over (observation + plan, instruction): the arguments of
    :class:`video.critic.PlanCritic` that a config sets, declared here once (the constructor's defaults)."""

    base_channels: int = ranged(32, at_least(1))
    channel_mult: List[int] = ranged(domain=at_least(1), factory=lambda: [1, 2, 2])
    dropout: float = ranged(0.1, between(0, 1, high_open=True))


def _critic_train() -> TrainConfig:
    return TrainConfig(max_steps=1500, batch_size=32, lr=5e-4, weight_decay=1e-2, grad_clip=1.0, ema_decay=0.0,
                       warmup_steps=50, checkpoint_every=250, log_every=25, validate_every=100, keep_checkpoints=2,
                       threads=1)


@dataclass
class VideoCriticConfig(RunConfig):
    """A learned feedback for VideoAgent: P(success) of executing a plan, trained on executed plans' outcomes."""

    task: str = "video-critic"
    train: TrainConfig = field(default_factory=_critic_train)
    data: CriticDataConfig = field(default_factory=CriticDataConfig)
    model: CriticModelConfig = field(default_factory=CriticModelConfig)
