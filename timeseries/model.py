"""TSDiff denoiser: a stack of bidirectional S4D residual blocks predicting the diffusion noise.

Follows Kollovieh et al. (NeurIPS 2023), "small" config: sinusoidal step embedding (128) -> MLP to
the hidden width; input projection Linear+ReLU; residual blocks of [pre-LayerNorm S4 layer with the
step embedding added, residual] -> tanh*sigmoid gate -> residual and skip 1x1 convs; the sum of skips
-> MLP -> noise. All activations are channels-last (B, L, H), so the 1x1 convs are Linears and no
permutes are needed outside the FFT inside the S4 layer.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F

from gencond.models import RenamedArguments
from timeseries.s4 import S4DLayer

from .config import TSDiffModelConfig

_SECTION = TSDiffModelConfig()  # the model section's defaults: the constructor's

__all__ = ["TSDiffDenoiser", "TSDiffResidualBlock"]


class _TanhSigmoidGate(torch.autograd.Function):
    """tanh(h) * sigmoid(h), with tanh(h) = 2 sigmoid(2h) - 1 (torch's CPU tanh is several times slower than
    its sigmoid) and a fused backward: d/dh = s (1 + th (1 - s - th)), s = sigmoid(h), th = tanh(h)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(h)
        th = torch.sigmoid(h * 2).mul_(2).sub_(1)
        ctx.save_for_backward(s, th)
        return th * s

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        s, th = ctx.saved_tensors
        return (th * (1 - s - th)).add_(1).mul_(s).mul_(grad)


def tanh_sigmoid_gate(h: torch.Tensor) -> torch.Tensor:
    """The WaveNet gate tanh(h) * sigmoid(h)."""
    return _TanhSigmoidGate.apply(h)


class TSDiffResidualBlock(nn.Module):
    """x -> (residual output, skip output), both (B, L, H).

    The last block of a stack has no residual 1x1 conv (``residual=False``; its residual output would be
    discarded and the weights would never receive a gradient) and returns (None, skip).
    """

    def __init__(
        self,
        hidden_channels: int,
        state_size: int,
        bidirectional: bool = True,
        dropout: float = 0.0,
        residual: bool = True,
    ):
        super().__init__()
        self.step_projection = nn.Linear(hidden_channels, hidden_channels)
        self.norm = nn.LayerNorm(hidden_channels)
        self.s4 = S4DLayer(hidden_channels, state_size, bidirectional=bidirectional, dropout=dropout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.residual = residual
        # The residual and skip 1x1 convolutions fused in one Linear: [residual | skip] output channels.
        self.residual_skip = nn.Linear(hidden_channels, (2 if residual else 1) * hidden_channels)

    def forward(self, x: torch.Tensor, step_embedding: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        h = x + self.step_projection(step_embedding)[:, None, :]
        h = h + self.dropout(self.s4(self.norm(h)))
        out = self.residual_skip(tanh_sigmoid_gate(h))
        if not self.residual:
            return None, out
        residual, skip = out.chunk(2, dim=-1)
        return x + residual, skip


class TSDiffDenoiser(RenamedArguments, ModelMixin, ConfigMixin):
    """epsilon_theta(x_t, t) for TSDiff: (B, L, C) scaled series (channel 0 target, the rest lags) -> (B, L, C).

    ``t`` holds the diffusion steps, shape (B,) or a scalar, integer or float. ``cond`` must be None
    (TSDiff is unconditional) unless ``cond_channels`` > 0: then the model is TSDiff-Cond and ``cond``
    (B, L, cond_channels) — the known values and their mask — is read by the input projection. With
    ``input_self_condition`` (input self-conditioning) the input projection also reads ``self_cond`` (the
    previous x0 estimate; zeros when None). ``init_skip`` adds x_t to the output. ``bidirectional`` (default
    True, the paper's model) exists for the causal ablation. The config's ``model`` section
    (:class:`timeseries.config.TSDiffModelConfig`) holds the other arguments and their defaults. The default
    config with in_channels=11 has 175,371 parameters (paper: about 0.19 M with the official S4 layer).
    """

    # the config.json of models saved before the rename names input self-conditioning self_condition
    RENAMED_ARGUMENTS: ClassVar[dict[str, str]] = {"self_condition": "input_self_condition"}

    @register_to_config
    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = _SECTION.hidden_channels,
        num_blocks: int = _SECTION.num_blocks,
        state_size: int = _SECTION.state_size,
        step_embedding_dim: int = _SECTION.step_embedding_dim,
        init_skip: bool = _SECTION.init_skip,
        input_self_condition: bool = False,
        dropout: float = _SECTION.dropout,
        bidirectional: bool = True,
        cond_channels: int = 0,
    ):
        super().__init__()
        if in_channels < 1 or num_blocks < 1:
            raise ValueError(f"in_channels and num_blocks must be >= 1, got {in_channels} and {num_blocks}")
        self.in_channels = in_channels
        self.input_self_condition = input_self_condition
        self.init_skip = init_skip
        self.cond_channels = cond_channels

        projected = (2 * in_channels if input_self_condition else in_channels) + cond_channels
        self.input_projection = nn.Linear(projected, hidden_channels)
        self.step_sinusoid = Timesteps(step_embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1)
        self.step_mlp = nn.Sequential(
            nn.Linear(step_embedding_dim, hidden_channels),
            nn.SiLU(),
            nn.Linear(hidden_channels, hidden_channels),
            nn.SiLU(),
        )
        self.blocks = nn.ModuleList(
            TSDiffResidualBlock(
                hidden_channels, state_size, bidirectional=bidirectional, dropout=dropout, residual=i < num_blocks - 1
            )
            for i in range(num_blocks)
        )
        self.output_mlp = nn.Sequential(
            nn.Linear(hidden_channels, hidden_channels),
            nn.ReLU(),
            nn.Linear(hidden_channels, in_channels),
        )

    def _check_inputs(self, x_t, t, cond, self_cond) -> torch.Tensor:
        if x_t.ndim != 3 or x_t.shape[-1] != self.in_channels:
            raise ValueError(
                f"x_t must have shape (batch, length, {self.in_channels}) [in_channels={self.in_channels}], "
                f"got {tuple(x_t.shape)}"
            )
        if self.cond_channels == 0 and cond is not None:
            raise ValueError("this TSDiffDenoiser is unconditional: cond must be None (condition through guidance)")
        if self.cond_channels and (cond is None or cond.shape != (*x_t.shape[:2], self.cond_channels)):
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"this TSDiff-Cond denoiser needs cond of shape {(*x_t.shape[:2], self.cond_channels)}, got {got}")
        if self_cond is not None:
            if not self.input_self_condition:
                raise ValueError("self_cond was given but the model was built with input_self_condition=False")
            if self_cond.shape != x_t.shape:
                raise ValueError(
                    f"self_cond must have the shape of x_t {tuple(x_t.shape)}, got {tuple(self_cond.shape)}"
                )
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"t must be a scalar or have shape ({x_t.shape[0]},), got {tuple(t.shape)}")
        return t

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | int | float,
        cond: torch.Tensor | None = None,
        self_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        t = self._check_inputs(x_t, t, cond, self_cond)
        h = x_t
        if self.input_self_condition:
            h = torch.cat([x_t, self_cond if self_cond is not None else torch.zeros_like(x_t)], dim=-1)
        if self.cond_channels:
            h = torch.cat([h, cond.to(h.dtype)], dim=-1)
        h = F.relu(self.input_projection(h))
        step = self.step_mlp(self.step_sinusoid(t).to(h.dtype))

        skips = None
        for block in self.blocks:
            h, skip = block(h, step)
            skips = skip if skips is None else skips + skip
        out = self.output_mlp(skips)
        if self.init_skip:
            out = out + x_t
        return out
