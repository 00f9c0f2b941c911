"""Drawing images from a trained denoiser with the core sampler, in batches, with class labels."""
from __future__ import annotations

import time
from typing import Optional

import torch

from gencond.pipeline import Pipeline


def generate_images(pipeline: Pipeline, num: int, *, batch_size: int = 64, seed: int = 0,
                    labels: Optional[torch.Tensor] = None, progress: bool = False) -> tuple[torch.Tensor, float]:
    """(images (num, C, H, W) in [-1, 1], images per second). Class-conditional models get ``labels``
    (default: classes in turn) and classifier-free guidance when ``sampling.cfg_scale`` is set."""
    cfg, device = pipeline.cfg, pipeline.device
    c, s = cfg.data.channels, cfg.data.image_size
    num_classes = pipeline.model.config.num_classes
    if num_classes and labels is None:
        labels = torch.arange(num) % num_classes
    gen = torch.Generator().manual_seed(seed)
    out = []
    start = time.perf_counter()
    for i in range(0, num, batch_size):
        n = min(batch_size, num - i)
        cond = labels[i:i + n].to(device) if num_classes else None
        x = pipeline.sample((n, c, s, s), cond=cond, generator=gen, progress=progress)
        out.append(x.clamp(-1, 1).cpu())
    seconds = time.perf_counter() - start
    return torch.cat(out), num / max(seconds, 1e-9)
