"""DDAE++ feature conditioning and contrastive self-distillation, as architecture-agnostic modules.

:class:`FeatureConditioning` pools a block's tokens into one vector per sample and scales it by a
learned, zero-initialised function of the timestep embedding, so a network that adds the result to
its decoder-side conditioning starts out exactly as the baseline. :func:`moco_v3_loss` is the
symmetric InfoNCE loss of MoCo v3 between a student's predictions and an EMA teacher's projections.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn


class FeatureConditioning(nn.Module):
    """tokens (B, N, D), timestep embedding (B, E) -> vector (B, E) to add to the decoder's condition.

    vector = s(t_emb) * MLP(LayerNorm(mean_N tokens)), with s a linear map initialised to zero.
    """

    def __init__(self, width: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.proj = Mlp(width, width, cond_dim, act_layer=nn.SiLU)
        self.time_scale = nn.Linear(cond_dim, cond_dim)
        nn.init.zeros_(self.time_scale.weight)
        nn.init.zeros_(self.time_scale.bias)

    def forward(self, tokens: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        return self.time_scale(t_emb) * self.proj(self.norm(tokens.mean(dim=1)))


def projection_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """MoCo v3's projector / predictor shape: Linear-BN-ReLU-Linear (BN without affine at the end)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim), nn.BatchNorm1d(out_dim, affine=False))


def moco_v3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of predictions q (B, P) against teacher keys k (B, P): positives on the diagonal, x 2 tau."""
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    logits = q @ k.t() / temperature
    labels = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits, labels) * (2 * temperature)


@torch.no_grad()
def momentum_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, for every parameter and float buffer the teacher has."""
    source = dict(student.named_parameters())
    source.update((n, b) for n, b in student.named_buffers() if b.is_floating_point())
    for name, value in list(teacher.named_parameters()) + list(teacher.named_buffers()):
        if name in source and value.is_floating_point():
            value.mul_(momentum).add_(source[name].detach(), alpha=1 - momentum)
