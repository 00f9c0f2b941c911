"""Config schema of the ``robotics-idm`` training task (light: no torch import)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from gencond.config import RunConfig, TrainConfig, at_least, ranged


@dataclass
class IdmDataConfig:
    root: str = "???"  # a dataset written by `gencond collect`
    tasks: Optional[List[str]] = None  # None = all in the dataset
    cameras: Optional[List[str]] = None
    val_seeds: List[int] = field(default_factory=list)  # seeds held out for validation
    gap_min: int = ranged(2, at_least(1))
    gap_max: int = ranged(16, at_least(1))


@dataclass
class IdmModelConfig:
    image_size: int = ranged(64, at_least(8))
    chunk: int = ranged(4, at_least(1))
    width: int = ranged(32, at_least(1))


@dataclass
class IdmConfig(RunConfig):
    task: str = "robotics-idm"
    data: IdmDataConfig = field(default_factory=IdmDataConfig)
    model: IdmModelConfig = field(default_factory=IdmModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=3000, batch_size=64, lr=1e-3,
                                                                   lr_schedule="cosine", warmup_steps=100,
                                                                   checkpoint_every=1000, log_every=100))


