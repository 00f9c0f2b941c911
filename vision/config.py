"""Config schema of the ``ddae`` task (image diffusion, DDAE / DDAE++); light: no torch import."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

from gencond.config import DiffusionConfig, RunConfig, SamplingConfig, TrainConfig, above, at_least, between, one_of, ranged

ARCHITECTURES = ("uvit", "dit")


@dataclass
class ImageDataConfig:
    dataset: str = "???"  # digits | mnist | a torchvision dataset (cifar10, fashionmnist, ...) | a folder of images
    root: Optional[str] = None  # where the dataset lives (else $GENCOND_DATA_DIR/<dataset>)
    image_size: int = ranged(28, at_least(1))  # images must be image_size x image_size ...
    channels: int = ranged(1, at_least(1))  # ... with this many channels, unless resize is on
    resize: bool = False  # image folders: resize / convert images that do not match instead of refusing them
    download: bool = False  # torchvision datasets: allow downloading into root
    test_fraction: float = ranged(0.1, between(0, 1, high_open=True))  # image folders: share of images held out as the test split
    max_train: Optional[int] = ranged(None, at_least(1))  # use only the first N training images
    max_test: Optional[int] = ranged(None, at_least(1))
    hflip: bool = False  # random horizontal flips of training images (not for digits)


@dataclass
class ImageModelConfig:
    """The denoiser: the arguments of :class:`vision.models.UViTDenoiser` / ``DiTDenoiser`` that a config sets,
    declared here once (the constructors' defaults are these), the architecture and whether labels condition."""

    TASK_KEYS: ClassVar[tuple[str, ...]] = ("arch", "class_conditional")  # not arguments

    arch: str = ranged("uvit", one_of(*ARCHITECTURES))  # uvit (Bao et al., long skips) | dit (Peebles & Xie, adaLN-Zero)
    patch_size: int = ranged(4, at_least(1))
    width: int = ranged(192, at_least(1))
    depth: int = ranged(7, at_least(1))  # transformer blocks; U-ViT: (depth-1)/2 in-blocks, a middle block, (depth-1)/2 out-blocks
    heads: int = ranged(4, at_least(1))
    mlp_ratio: float = ranged(4.0, above(0))
    class_conditional: bool = False  # labels as condition; with diffusion.cond_drop_prob > 0, CFG at sampling


@dataclass
class DDAEConfig:
    """The DDAE++ switches."""

    feature_conditioning: bool = False  # DDAE++ feature conditioning: pooled encoder features -> decoder blocks
    source_block: Optional[int] = None  # block whose output is pooled (default: the last encoder-side block)
    contrastive: bool = False  # contrastive self-distillation (MoCo-v3 loss, EMA teacher, augmentation)
    contrastive_weight: float = 0.1
    temperature: float = ranged(0.2, above(0))
    teacher_momentum: float = ranged(0.99, between(0, 1))
    projection_dim: int = ranged(128, at_least(1))
    contrastive_max_t: int = 500  # pairs count only when both views are noised below this timestep
    augment_prob: float = ranged(0.5, between(0, 1))  # chance of each augmentation (translate, rotate, scale, brightness, flip)
    augment_xflip: bool = False  # horizontal flip among the augmentations (off for digits)


@dataclass
class ImageEvalConfig:
    """``gencond eval``: DDAE linear probe over a grid, and a Fréchet distance."""

    probe_blocks: Optional[List[int]] = None  # default: every other block from the middle on
    probe_timesteps: List[int] = field(default_factory=lambda: [10, 50, 100, 200])
    probe_epochs: int = ranged(15, at_least(1))
    probe_batch_size: int = ranged(128, at_least(1))
    probe_lr: float = ranged(1e-3, above(0))
    probe_max_train: Optional[int] = ranged(None, at_least(1))
    probe_max_test: Optional[int] = ranged(None, at_least(1))
    validation_probe_images: int = ranged(0, at_least(0))  # >0: every validation also logs a linear probe
    # (probe_timesteps[0], the default probe blocks) on this many training and this many test images: the curve
    fd_samples: int = ranged(2000, at_least(2))
    fd_batch_size: int = ranged(250, at_least(1))
    fd_classifier_steps: int = ranged(1500, at_least(1))  # training steps of the in-project feature classifier (cached)
    sample_batch_size: int = ranged(64, at_least(1))


def _image_diffusion() -> DiffusionConfig:
    return DiffusionConfig(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")


def _image_sampling() -> SamplingConfig:
    return SamplingConfig(scheduler="ddim", num_steps=50)


def _image_train() -> TrainConfig:
    return TrainConfig(max_steps=20_000, batch_size=128, lr=2e-4, weight_decay=0.03, warmup_steps=500,
                       grad_clip=1.0, ema_decay=0.999, checkpoint_every=1000, log_every=100, validate_every=1000)


@dataclass
class ImageDiffusionConfig(RunConfig):
    task: str = "ddae"
    train: TrainConfig = field(default_factory=_image_train)
    diffusion: DiffusionConfig = field(default_factory=_image_diffusion)
    sampling: SamplingConfig = field(default_factory=_image_sampling)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    model: ImageModelConfig = field(default_factory=ImageModelConfig)
    ddae: DDAEConfig = field(default_factory=DDAEConfig)
    eval: ImageEvalConfig = field(default_factory=ImageEvalConfig)
    RENAMED_KEYS: ClassVar[dict] = {"ddae.self_conditioning": "ddae.feature_conditioning"}  # old name -> new
