"""AVDC's factorized space-time UNet (``VideoUNet``): a text- and first-frame-conditioned video denoiser.

Architecture (AVDC, flow-diffusion/AVDC ``flowdiffusion/unet.py`` UnetMW = guided-diffusion's UNet with
``dims=3``), sized by its constructor:

* every 3x3 conv is *factorized*: a 2-D spatial conv applied to each frame, then a 1-D temporal conv
  (kernel 3, zero padding) initialised to the identity (dirac weight, zero bias), so an untrained
  network treats the frames independently; 1x1 convs (the ResBlock skips) are spatial only, as in AVDC;
* ResBlocks: GroupNorm, SiLU, factorized conv, time(+text) embedding, GroupNorm, SiLU, dropout,
  factorized conv, a 1x1 skip when the width changes; down/upsampling is spatial only (stride-2 conv;
  nearest x2 then conv);
* spatial self-attention per frame (diffusers' ``Attention``; heads = channels // head_channels) at the
  feature-map sizes in ``attention_resolutions`` and in the middle block; no temporal attention;
* time embedding: diffusers ``Timesteps`` + ``TimestepEmbedding`` (width 4 x base_channels);
* text: the token states go through a Perceiver resampler (``text_latents`` learned latents attending
  to the masked tokens and to themselves, depth 2), a mean over the latents plus the tokens' masked mean
  (``text_pooled_skip``, see ``TextResampler``), a Linear, and the result
  is ADDED to the time embedding (no cross-attention); each ResBlock applies that vector as a scale and
  shift after its second GroupNorm (``scale_shift_norm=True``, guided-diffusion's
  ``use_scale_shift_norm``) or, as AVDC does, adds it before that norm (``False``). On a synthetic set
  where only the text decides the motion, scale-shift separated the instructions after 200 steps,
  adding after 400.

Network input (one place, used by training and sampling alike): the channel blocks listed in
``INPUT_ORDER``, each ``channels`` wide, concatenated per frame:
``[x_t, first_frame repeated over the T frames, previous_plan]`` (the last only with
``previous_plan=True``; zeros where the condition has no ``"previous_plan"``: first-frame-only mode).
AVDC's released code puts the noisy frames first too (its VideoAgent finetuning code swaps the order
between training and sampling; here the order is fixed by this module).

Deviations from AVDC, on purpose:

* GroupNorm statistics are taken per frame (AVDC's ResBlocks pool them over all frames of the clip), so
  that the untrained network is exactly frame-independent and the temporal convs are the only path
  between frames;
* GroupNorm uses 32 groups but keeps >= 4 channels per group in narrow layers (``norm_groups``): with one
  channel per group (``min(32, channels)`` at base width 32) the norm after the embedding would cancel
  the time and text embedding entirely; at AVDC's widths (>= 128) it is GroupNorm(32) as in AVDC;
* no zero-initialised layers (as in AVDC's code, which dropped guided-diffusion's ``zero_module``);
* the resampler works at the time-embedding width (4 x base_channels) after a Linear from ``text_dim``,
  has plain pre-LayerNorm attention (imagen's has l2-normalised q/k), and instead of AVDC's 4 extra
  mean-pooled latents the tokens' masked mean skips the attention (``TextResampler``); at AVDC's scale it
  holds 6.8 M parameters (AVDC: 7.9 M at CLIP's width 512).

Why not diffusers' ``UNet3DConditionModel`` (or ``UNetSpatioTemporalConditionModel``): a different
architecture (temporal self-attention layers and text cross-attention in every block instead of
factorized convs and a text vector added to the time embedding), and 6-10x slower on a 2-core CPU at
this size (shared/REFERENCE.md, "VideoAgent / AVDC on MetaWorld").
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from timm.layers import Mlp
from torch import nn

from .config import VideoModelConfig

_SECTION = VideoModelConfig()  # the model section's defaults: the constructor's

INPUT_ORDER = ("x_t", "first_frame", "previous_plan")
"""Channel blocks of the network input, in order (``previous_plan`` only when the model has it)."""

TEXT_KEYS = ("text", "text_mask")
"""The condition keys that ``null_condition`` drops (classifier-free guidance / condition dropout)."""


def plan_condition(first_frame: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                   previous_plan: torch.Tensor | None = None) -> dict:
    """The condition dict of :class:`VideoUNet`, assembled here for training and sampling alike (so the two
    never disagree on order or scaling); every video tensor in [-1, 1]: first_frame (B, C, H, W), text
    (B, L, D) token states, text_mask (B, L), previous_plan (B, C, T, H, W) (clamped to [-1, 1]: a sampled
    plan may overshoot the range of a real video)."""
    cond = {"first_frame": first_frame, "text": text_tokens, "text_mask": text_mask}
    if previous_plan is not None:
        if previous_plan.shape[:2] != first_frame.shape[:2] or previous_plan.shape[-2:] != first_frame.shape[-2:]:
            raise ValueError(f"previous plan {tuple(previous_plan.shape)} does not fit first frame "
                             f"{tuple(first_frame.shape)}; it must be (B, C, T, H, W) of the same B, C, H, W")
        cond["previous_plan"] = previous_plan.clamp(-1, 1)  # a sample may overshoot; a video does not
    return cond


def norm_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """GroupNorm groups: the largest divisor of ``channels`` that is <= ``max_groups`` and leaves at least
    ``min_group_size`` channels per group (when possible). Groups of one channel would cancel the additive
    time/text embedding (a per-channel constant is exactly what a one-channel group norm removes), which
    is what ``min(32, channels)`` would do to a 32-channel layer; at AVDC's widths (>= 128) this is
    GroupNorm(32) as in AVDC."""
    limit = max(1, min(max_groups, channels // min_group_size))
    return next(g for g in range(limit, 0, -1) if channels % g == 0)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels, eps=1e-5)


# ---- factorized convolution ------------------------------------------------------------------------------
class TemporalConv(nn.Conv1d):
    """A 1-D conv over frames (kernel 3, zero padding) on per-frame features (B*T, C, H, W).

    Stored as an ``nn.Conv1d`` (weight (C, C, 3)) and initialised to the identity. Computed as a 2-D conv
    with a (3, 1) kernel on the clip seen as (B, C, T, H*W): with channels-last features (memory order
    b, t, h, w, c, the layout ``VideoUNet`` runs in) that view is free; on a CPU this made a training step
    ~15 % faster (32x32, batch 8) than contiguous features with a literal Conv1d over (B*H*W, C, T).
    ``y[t] = W[..., 0] x[t-1] + W[..., 1] x[t] + W[..., 2] x[t+1] + b``.
    """

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, padding=1)
        nn.init.dirac_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:  # type: ignore[override]
        bt, c, h, w = x.shape
        clip = x.permute(0, 2, 3, 1).reshape(bt // frames, frames, h * w, c).permute(0, 3, 1, 2)
        y = F.conv2d(clip, self.weight.unsqueeze(-1), self.bias, padding=(1, 0))
        return y.permute(0, 2, 3, 1).reshape(bt, h, w, c).permute(0, 3, 1, 2)


class FactorizedConv(nn.Module):
    """A 2-D spatial conv per frame, then (kernel > 1) an identity-initialised temporal conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.spatial = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
        self.temporal = TemporalConv(out_channels) if kernel_size > 1 else None

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = self.spatial(x)
        return x if self.temporal is None else self.temporal(x, frames)


# ---- blocks (all on per-frame features (B*T, C, H, W)) ---------------------------------------------------
class ResBlock(nn.Module):
    """guided-diffusion's ResBlock on factorized convs. The clip's time(+text) vector enters after the
    second GroupNorm as a scale and shift (``scale_shift=True``, guided-diffusion's
    ``use_scale_shift_norm``) or is added before it (``False``, AVDC's setting)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float, scale_shift: bool = True):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = group_norm(in_channels)
        self.conv1 = FactorizedConv(in_channels, out_channels)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels if scale_shift else out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = FactorizedConv(out_channels, out_channels)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), frames)
        e = self.emb_proj(F.silu(emb)).repeat_interleave(frames, dim=0)[:, :, None, None]  # one per clip
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)), frames)
        return (x if self.skip is None else self.skip(x)) + h


class SpatialAttention(nn.Module):
    """Self-attention over the H*W positions of each frame (GroupNorm in front, residual)."""

    def __init__(self, channels: int, head_channels: int):
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"attention width {channels} is not a multiple of head_channels {head_channels}")
        self.attn = Attention(channels, heads=channels // head_channels, dim_head=head_channels, bias=True,
                              norm_num_groups=norm_groups(channels), eps=1e-5, residual_connection=True)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
        return self.attn(x)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = FactorizedConv(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
        return self.conv(x, frames)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = FactorizedConv(channels, channels, 3)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"), frames)


class Stage(nn.ModuleList):
    """Blocks run in sequence, each called as ``block(h, emb, frames)``."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:  # type: ignore[override]
        for block in self:
            x = block(x, emb, frames)
        return x


# ---- text: Perceiver resampler -----------------------------------------------------------------------------
class PerceiverAttention(nn.Module):
    """Latents attend to [masked tokens; latents] (the latents are always valid keys, so a text whose
    mask is all False gives a finite, text-independent result)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_tokens = nn.LayerNorm(width)
        self.norm_latents = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_kv = nn.Linear(width, 2 * width, bias=False)
        self.to_out = nn.Linear(width, width, bias=False)

    def forward(self, tokens: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, w = latents.shape
        lat = self.norm_latents(latents)
        kv_in = torch.cat([self.norm_tokens(tokens), lat], dim=1)
        q = self.to_q(lat)
        k, v = self.to_kv(kv_in).chunk(2, dim=-1)
        q, k, v = (a.reshape(b, a.shape[1], self.heads, w // self.heads).transpose(1, 2) for a in (q, k, v))
        keep = torch.cat([mask, mask.new_ones(b, n)], dim=1)[:, None, None, :]  # (B, 1, 1, L + N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return self.to_out(out.transpose(1, 2).reshape(b, n, w))


class TextResampler(nn.Module):
    """Token states (B, L, text_dim) + mask (B, L) -> a vector (B, out_dim): Linear in, learned positions,
    ``depth`` x [Perceiver attention, MLP] on ``num_latents`` latents, the mean over the latents plus
    (``pooled_skip``) the masked mean of the tokens, Linear out.

    The pooled skip carries the instruction from the first step. The learned latents are the same for
    every text and dominate the output at initialisation: without the skip "door open" and "door close"
    gave vectors 2 % apart (with AVDC's 4 extra mean-pooled latents, about 5 %), and a synthetic task where
    only the text decides the motion was not learned in 900 steps; with it they are 20-40 % apart and
    the task is learned (``benchmarks/video/video_text_probe.py``)."""

    def __init__(self, text_dim: int, width: int, out_dim: int, num_latents: int, max_tokens: int, depth: int = 2,
                 pooled_skip: bool = True):
        super().__init__()
        heads = max(1, width // 64)
        heads = heads if width % heads == 0 else 1
        self.max_tokens, self.pooled_skip = max_tokens, pooled_skip
        self.proj_in = nn.Linear(text_dim, width)
        self.pos_emb = nn.Parameter(torch.randn(max_tokens, width) * 0.02)
        self.latents = nn.Parameter(torch.randn(num_latents, width))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(width, heads), nn.Sequential(nn.LayerNorm(width), Mlp(width, 4 * width))])
            for _ in range(depth))
        self.proj_out = nn.Linear(width, out_dim)

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, _ = text.shape
        if length > self.max_tokens:
            raise ValueError(f"text has {length} tokens; this model takes at most text_max_tokens={self.max_tokens}")
        projected = self.proj_in(text)
        tokens = projected + self.pos_emb[:length]
        latents = self.latents.to(tokens.dtype).expand(b, -1, -1)
        for attn, mlp in self.layers:
            latents = latents + attn(tokens, latents, mask)
            latents = latents + mlp(latents)
        out = latents.mean(dim=1)
        if self.pooled_skip:
            keep = mask[..., None].to(projected.dtype)
            out = out + (projected * keep).sum(1) / keep.sum(1).clamp_min(1.0)  # an empty text adds zeros
        return self.proj_out(out)


# ---- the UNet ----------------------------------------------------------------------------------------------
class VideoUNet(ModelMixin, ConfigMixin):
    """``model(x_t, t, cond) -> output`` with x_t and output (B, channels, frames, H, W), H = W = image_size.

    ``cond``: ``{"first_frame": (B, C, H, W) in [-1, 1], "text": (B, L, text_dim) token states,
    "text_mask": (B, L) bool (True = a real token), "previous_plan": (B, C, T, H, W) in [-1, 1]}``;
    ``first_frame`` is required, the others optional (no text = the null text; ``previous_plan`` only
    with ``previous_plan=True``, zeros when absent). ``frames`` counts the predicted frames (clip - 1).
    ``instructions``: the training instructions, kept in the saved config for the planner; no effect on
    the network. The config's ``model`` section (:class:`video.config.VideoModelConfig`) holds the other
    arguments and their defaults; ``channels``, ``frames`` and ``image_size`` follow from its ``data``.
    """

    @register_to_config
    def __init__(self, channels: int = 3, frames: int = 7, image_size: int = 32,
                 base_channels: int = _SECTION.base_channels, channel_mult: Sequence[int] = tuple(_SECTION.channel_mult),
                 num_res_blocks: int = _SECTION.num_res_blocks,
                 attention_resolutions: Sequence[int] = tuple(_SECTION.attention_resolutions),
                 head_channels: int = _SECTION.head_channels, text_dim: int = 384,
                 text_latents: int = _SECTION.text_latents, text_max_tokens: int = _SECTION.text_max_tokens,
                 text_pooled_skip: bool = _SECTION.text_pooled_skip, dropout: float = _SECTION.dropout,
                 previous_plan: bool = _SECTION.previous_plan, scale_shift_norm: bool = _SECTION.scale_shift_norm,
                 instructions: Sequence[str] = ()):
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        attention_resolutions = tuple(int(r) for r in attention_resolutions)
        if not channel_mult:
            raise ValueError("channel_mult is empty")
        if image_size % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{len(channel_mult) - 1} "
                             f"({len(channel_mult)} levels in channel_mult)")
        emb_dim = 4 * base_channels
        in_channels = channels * (3 if previous_plan else 2)
        self.time_proj = Timesteps(base_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(base_channels, emb_dim)
        self.text_resampler = TextResampler(text_dim, emb_dim, emb_dim, text_latents, text_max_tokens,
                                            pooled_skip=text_pooled_skip)

        ch = base_channels * channel_mult[0]
        self.conv_in = FactorizedConv(in_channels, ch)
        skip_channels = [ch]
        self.down = nn.ModuleList()
        self.attention_sizes: list[int] = []  # feature-map sizes that got spatial attention (middle excluded)
        size = image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                blocks = [ResBlock(ch, base_channels * mult, emb_dim, dropout, scale_shift_norm)]
                ch = base_channels * mult
                if size in attention_resolutions:
                    blocks.append(SpatialAttention(ch, head_channels))
                    self.attention_sizes.append(size)
                self.down.append(Stage(blocks))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(Stage([Downsample(ch)]))
                skip_channels.append(ch)
                size //= 2
        self.middle = Stage([ResBlock(ch, ch, emb_dim, dropout, scale_shift_norm), SpatialAttention(ch, head_channels),
                             ResBlock(ch, ch, emb_dim, dropout, scale_shift_norm)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                blocks = [ResBlock(ch + skip_channels.pop(), base_channels * mult, emb_dim, dropout, scale_shift_norm)]
                ch = base_channels * mult
                if size in attention_resolutions:
                    blocks.append(SpatialAttention(ch, head_channels))
                    self.attention_sizes.append(size)
                if level and i == num_res_blocks:
                    blocks.append(Upsample(ch))
                    size *= 2
                self.up.append(Stage(blocks))
        self.norm_out = group_norm(ch)
        self.conv_out = FactorizedConv(ch, channels)

    def adapt_state_dict(self, state: dict) -> dict:
        """A planner's weights (no previous-plan input) for this VideoAgent model: the input conv gets
        zero weights for the previous-plan channels, so training starts from the planner exactly."""
        key = "conv_in.spatial.weight"
        w = state.get(key)
        if self.config.previous_plan and w is not None and w.shape[1] == 2 * self.config.channels:
            state = dict(state)
            state[key] = torch.cat([w, torch.zeros_like(w[:, : self.config.channels])], dim=1)
        return state

    # ---- conditions ----------------------------------------------------------------------------------
    def null_condition(self, cond: dict) -> dict:
        """The same dict with the text dropped ("text" zeroed, "text_mask" all False); the first frame and
        the previous plan are kept. Same keys as ``cond`` (the core's condition dropout needs that)."""
        if not isinstance(cond, dict):
            raise TypeError(f"VideoUNet conditions are dicts, got {type(cond).__name__}")
        out = dict(cond)
        text, mask = TEXT_KEYS
        if text in cond:
            out[text] = torch.zeros_like(cond[text])
        if mask in cond:
            out[mask] = torch.zeros_like(cond[mask], dtype=torch.bool)
        return out

    def _input(self, x_t: torch.Tensor, cond: dict) -> torch.Tensor:
        """The network input (B*T, len(INPUT_ORDER) * C, H, W) from x_t (B, C, T, H, W) and the condition."""
        c, s, frames = self.config.channels, self.config.image_size, self.config.frames
        if x_t.ndim != 5 or tuple(x_t.shape[1:]) != (c, frames, s, s):
            raise ValueError(f"expected x_t (B, {c}, {frames}, {s}, {s}), got {tuple(x_t.shape)}")
        b = x_t.shape[0]
        if not isinstance(cond, dict) or "first_frame" not in cond:
            raise ValueError("VideoUNet needs cond = {'first_frame': (B, C, H, W), ...}")
        first = cond["first_frame"]
        if tuple(first.shape) != (b, c, s, s):
            raise ValueError(f"expected cond['first_frame'] ({b}, {c}, {s}, {s}), got {tuple(first.shape)}")
        # built channels-last: (B, T, H, W, channel blocks), viewed as (B*T, channels, H, W)
        first = first.to(x_t.dtype).permute(0, 2, 3, 1)[:, None].expand(b, frames, s, s, c)
        parts = [x_t.permute(0, 2, 3, 4, 1), first]
        if self.config.previous_plan:
            plan = cond.get("previous_plan")
            if plan is None:
                parts.append(torch.zeros_like(parts[0]))  # first-frame-only mode
            elif plan.shape != x_t.shape:
                raise ValueError(f"expected cond['previous_plan'] {tuple(x_t.shape)}, got {tuple(plan.shape)}")
            else:
                parts.append(plan.to(x_t.dtype).permute(0, 2, 3, 4, 1))
        elif "previous_plan" in cond:
            raise ValueError("cond has 'previous_plan' but this model was built with previous_plan=False")
        return torch.cat(parts, dim=-1).reshape(b * frames, s, s, len(parts) * c).permute(0, 3, 1, 2)

    def _embedding(self, t: torch.Tensor, cond: dict, batch: int, device, dtype) -> torch.Tensor:
        t = torch.as_tensor(t, device=device).reshape(-1).expand(batch)
        emb = self.time_embed(self.time_proj(t).to(dtype))
        text = cond.get("text")
        if text is None:
            text = torch.zeros(batch, 0, self.config.text_dim, device=device, dtype=dtype)
        mask = cond.get("text_mask")
        if mask is None:
            mask = torch.ones(text.shape[:2], device=device, dtype=torch.bool)
        return emb + self.text_resampler(text.to(dtype), mask.to(device=device, dtype=torch.bool))

    # ---- forward -------------------------------------------------------------------------------------
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[dict] = None,
                self_cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Features run as (B*T, C, H, W) in channels-last memory (see ``TemporalConv``); the output is a
        contiguous (B, C, T, H, W) tensor."""
        if self_cond is not None:
            raise ValueError("VideoUNet has no input self-conditioning; set diffusion.self_condition_prob=0")
        cond = {} if cond is None else cond
        b, frames = x_t.shape[0], self.config.frames
        h = self._input(x_t, cond)
        emb = self._embedding(t, cond, b, x_t.device, x_t.dtype)
        h = self.conv_in(h, frames)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb, frames)
            skips.append(h)
        h = self.middle(h, emb, frames)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, frames)
        h = self.conv_out(F.silu(self.norm_out(h)), frames)
        s = self.config.image_size
        return h.permute(0, 2, 3, 1).reshape(b, frames, s, s, -1).permute(0, 4, 1, 2, 3).contiguous()
