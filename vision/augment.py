"""EDM-style augmentation whose parameters are handed to the network (so it can tell, and at
sampling be told with zeros, that nothing was applied).

Parameters per image (all 0 = identity): x-flip, x / y translation (fraction of the size),
rotation (fraction of 90°), log2 scale, brightness shift.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENT_DIM = 6
MAX_TRANSLATE, MAX_ROTATE, MAX_LOG2_SCALE, MAX_BRIGHTNESS = 0.125, 1 / 6, 0.2, 0.2


def augment(x: torch.Tensor, generator: torch.Generator, prob: float, xflip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(augmented images, parameters (B, AUGMENT_DIM)); each augmentation is applied with chance ``prob``."""
    b = x.shape[0]

    def draw(scale: float) -> torch.Tensor:
        on = (torch.rand(b, generator=generator) < prob).float()
        return on * (torch.rand(b, generator=generator) * 2 - 1) * scale

    flip = (torch.rand(b, generator=generator) < prob).float() * float(xflip)
    tx, ty, rot, log_scale, bright = draw(MAX_TRANSLATE), draw(MAX_TRANSLATE), draw(MAX_ROTATE), draw(MAX_LOG2_SCALE), draw(MAX_BRIGHTNESS)
    angle, zoom = rot * math.pi / 2, torch.exp2(log_scale)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    sign = 1 - 2 * flip
    theta = torch.stack([torch.stack([cos * sign, -sin, tx * 2], 1), torch.stack([sin * sign, cos, ty * 2], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    out = out + bright.to(x).reshape(-1, 1, 1, 1)
    params = torch.stack([flip, tx / MAX_TRANSLATE, ty / MAX_TRANSLATE, rot / MAX_ROTATE,
                          log_scale / MAX_LOG2_SCALE, bright / MAX_BRIGHTNESS], 1)
    return out, params.to(x)
