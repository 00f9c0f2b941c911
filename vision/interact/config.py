"""Config schema of the ``interact`` task (text-to-image with triplet grounding: base, GLIGEN-style,
InteractDiffusion); light: no torch import."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from gencond.config import DiffusionConfig, RunConfig, SamplingConfig, TrainConfig, at_least, between, one_of, ranged


@dataclass
class InteractDataConfig:
    dataset: str = "hoi-shapes"  # hoi-shapes (generated, deterministic per seed) | an annotations .jsonl file
    image_size: int = ranged(32, at_least(8))
    num_train: int = ranged(20_000, at_least(1))  # hoi-shapes: the first N scenes of the train split
    seed: int = 0  # hoi-shapes: the scene generator's seed
    hflip: bool = True  # random horizontal flips (boxes mirrored with the image)
    split: str = ranged("train", one_of("train", "single"))  # hoi-shapes split trained on: train (one or two pairs) | single (one pair: the positive control)
    val_scenes: int = ranged(32, at_least(2))  # held-out scenes of the validation (grounding gap): hoi-shapes scenes num_train.. of the split


@dataclass
class InteractModelConfig:
    grounding: str = ranged("interact", one_of("none", "gligen", "interact"))  # none (text only: the base) | gligen (boxes + phrases) | interact (triplets)
    base: Optional[str] = None  # grounded runs: the base UNet, a gencond run of grounding none or a diffusers folder
    from_gligen: Optional[str] = None  # interact: start from a GLIGEN-style run on the same base (its gated
    # layers, and its MLP in both of the interaction tokenizer's MLPs: the official initialisation)
    interaction_embedding: bool = True  # interact: instance + role embeddings (False: the ablation)
    max_interactions: int = ranged(30, at_least(1))
    text_max_tokens: int = ranged(24, at_least(2))  # caption tokens (MiniLM, [CLS] and [SEP] included)
    caption_drop: float = ranged(0.5, between(0, 1))  # training: caption replaced by the null caption (official: "" with p = 0.5)
    grounding_drop: float = ranged(0.1, between(0, 1))  # training: grounding replaced by the null grounding (official: 0.1)
    # the base UNet built from scratch (model.base unset): vision.interact.adapter.small_unet
    block_out_channels: List[int] = ranged(domain=at_least(1), factory=lambda: [32, 64, 128])
    attention_levels: List[bool] = field(default_factory=lambda: [False, True, True])
    layers_per_block: int = ranged(1, at_least(1))
    head_dim: int = ranged(16, at_least(1))


def _diffusion() -> DiffusionConfig:
    return DiffusionConfig(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")


def _train() -> TrainConfig:
    return TrainConfig(max_steps=20_000, batch_size=16, lr=2e-4, grad_clip=1.0, ema_decay=0.999, warmup_steps=200,
                       checkpoint_every=500, log_every=50, threads=1)


def _sampling() -> SamplingConfig:
    return SamplingConfig(scheduler="ddim", num_steps=50, cfg_scale=3.0)


@dataclass
class InteractConfig(RunConfig):
    task: str = "interact"
    train: TrainConfig = field(default_factory=_train)
    diffusion: DiffusionConfig = field(default_factory=_diffusion)
    sampling: SamplingConfig = field(default_factory=_sampling)
    data: InteractDataConfig = field(default_factory=InteractDataConfig)
    model: InteractModelConfig = field(default_factory=InteractModelConfig)
