"""Pixel-space image denoisers: U-ViT (Bao et al., long skips) and DiT (Peebles & Xie, adaLN-Zero),
built from timm transformer layers, with DDAE++ feature conditioning as a constructor switch.

Both follow the core's contract ``model(x_t, t, cond=None, self_cond=None) -> epsilon`` and add
``aug`` (augmentation parameters, EDM-style, zero at sampling). Blocks are numbered in execution
order; the first ``num_encoder_blocks`` are the encoder side (U-ViT: in-blocks and the middle block;
DiT: the first half). With ``feature_conditioning`` the output of ``source_block`` is pooled into a
vector that is added to the condition of every decoder-side block. (``self_cond`` is input
self-conditioning's previous estimate, a channel input, as in the core's contract.) The config's ``model``
and ``ddae`` sections (:mod:`vision.config`) hold the arguments' defaults.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import ClassVar, Iterable, Optional

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_2d_sincos_pos_embed
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from timm.layers import Attention, Mlp, PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from gencond.errors import UserError
from gencond.models import RenamedArguments

from .config import DDAEConfig, ImageModelConfig
from .feature_conditioning import FeatureConditioning, momentum_update, projection_mlp

_MODEL, _DDAE = ImageModelConfig(), DDAEConfig()  # the config sections' defaults: the constructors'

CONTRASTIVE_ROLES = ("off", "student", "teacher")


class _PatchDenoiser(RenamedArguments, ModelMixin, ConfigMixin):
    """What U-ViT and DiT share: patchify, time / class / augmentation embeddings, feature conditioning,
    the contrastive heads and the EMA teacher, and the block loop with feature taps."""

    # the config.json of models saved before the rename names feature conditioning self_conditioning
    RENAMED_ARGUMENTS: ClassVar[dict[str, str]] = {"self_conditioning": "feature_conditioning"}

    def _init_common(self, image_size, in_channels, patch_size, width, num_classes, augment_dim, depth,
                     num_encoder_blocks, source_block, input_self_condition):
        if image_size % patch_size:
            raise UserError(f"image size {image_size} is not a multiple of model.patch_size {patch_size}")
        self.num_blocks = depth
        self.num_encoder_blocks = num_encoder_blocks
        self.source_block = num_encoder_blocks - 1 if source_block is None else source_block
        if not 0 <= self.source_block < num_encoder_blocks:
            raise UserError(f"ddae.source_block {source_block} is not an encoder-side block (0..{num_encoder_blocks - 1})")
        net_in = in_channels * (2 if input_self_condition else 1)
        self.patch_embed = PatchEmbed(image_size, patch_size, net_in, width)
        self.num_patches = (image_size // patch_size) ** 2
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(width, width)
        self.label_embed = nn.Embedding(num_classes + 1, width) if num_classes else None  # last index = null
        self.augment_embed = nn.Linear(augment_dim, width, bias=False) if augment_dim else None
        self.out_proj = nn.Linear(width, patch_size * patch_size * in_channels)

    def _init_extensions(self, feature_conditioning: bool, role: str, width: int, projection_dim: int) -> None:
        """Created after the backbone is initialised, so that a baseline and a feature-conditioned model
        built under the same seed share every backbone weight. The feature conditioning module is named
        ``self_cond`` in the weights (as before its rename), so that saved weights load."""
        self.self_cond = FeatureConditioning(width, width) if feature_conditioning else None
        if role not in CONTRASTIVE_ROLES:
            raise ValueError(f"contrastive role '{role}' is not one of {CONTRASTIVE_ROLES}")
        self.projector = projection_mlp(width, 2 * width, projection_dim) if role != "off" else None
        self.predictor = projection_mlp(projection_dim, 2 * width, projection_dim) if role == "student" else None
        self.teacher = None
        if role == "student":
            teacher = copy.deepcopy(self)  # same weights; its own teacher/predictor are dropped below
            teacher.predictor = None
            teacher.register_to_config(contrastive="teacher")
            teacher.requires_grad_(False)
            self.teacher = teacher

    # ---- embeddings -------------------------------------------------------------------------------
    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The 'no label' index, for classifier-free guidance."""
        return torch.full_like(cond, self.config.num_classes)

    def _time_and_condition(self, t, cond, aug, batch: int, device):
        t = torch.as_tensor(t, device=device).reshape(-1).expand(batch)
        t_emb = self.time_embed(self.time_proj(t).to(self.dtype))
        y_emb = None
        if self.label_embed is not None:
            cond = self.null_condition(torch.zeros(batch, dtype=torch.long, device=device)) if cond is None else cond
            y_emb = self.label_embed(cond.long())
        if self.augment_embed is not None and aug is not None:
            t_emb_aug = t_emb + self.augment_embed(aug.to(t_emb.dtype))
        else:
            t_emb_aug = t_emb
        return t_emb, t_emb_aug, y_emb

    def _check_input(self, x: torch.Tensor, self_cond: Optional[torch.Tensor]) -> torch.Tensor:
        c, s = self.config.in_channels, self.config.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"expected images (B, {c}, {s}, {s}), got {tuple(x.shape)}")
        if self.config.input_self_condition:
            x = torch.cat([x, torch.zeros_like(x) if self_cond is None else self_cond], dim=1)
        return x

    def _unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        p, s = self.config.patch_size, self.config.image_size
        return rearrange(tokens, "b (h w) (p q c) -> b c (h p) (w q)", h=s // p, p=p, q=p)

    # ---- forward ----------------------------------------------------------------------------------
    def forward(self, x, t, cond=None, self_cond=None, aug=None, return_pooled: bool = False):
        """epsilon (B, C, H, W); with ``return_pooled`` also the pooled source-block features (B, D)."""
        out, taps = self._run(x, t, cond, self_cond, aug, taps={self.source_block} if return_pooled else set())
        return (out, taps[self.source_block]) if return_pooled else out

    def block_features(self, x, t, cond=None, blocks: Iterable[int] = (), aug=None) -> dict[int, torch.Tensor]:
        """Mean-pooled patch tokens after each of ``blocks`` (DDAE's probe features); stops after the last."""
        blocks = set(int(b) for b in blocks)
        bad = [b for b in blocks if not 0 <= b < self.num_blocks]
        if bad:
            raise UserError(f"block {bad[0]} does not exist; this model has blocks 0..{self.num_blocks - 1}")
        return self._run(x, t, cond, None, aug, taps=blocks, stop_after=max(blocks))[1]

    def teacher_projection(self, x, t, cond=None, aug=None) -> torch.Tensor:
        """The EMA teacher's projection of its pooled source-block features (no gradient)."""
        with torch.no_grad():
            pooled = self.teacher._run(x, t, cond, None, aug, taps={self.source_block}, stop_after=self.source_block)[1]
            return self.teacher.projector(pooled[self.source_block])

    def update_teacher(self, momentum: float) -> None:
        momentum_update(self.teacher, self, momentum)

    def _run(self, x, t, cond, self_cond, aug, taps: set, stop_after: Optional[int] = None):
        raise NotImplementedError


class UViTDenoiser(_PatchDenoiser):
    """U-ViT: time (and label) as tokens, long skips from in-blocks to out-blocks (concat + Linear)."""

    @register_to_config
    def __init__(self, image_size: int = 28, in_channels: int = 1, patch_size: int = _MODEL.patch_size,
                 width: int = _MODEL.width, depth: int = _MODEL.depth, heads: int = _MODEL.heads,
                 mlp_ratio: float = _MODEL.mlp_ratio, num_classes: int = 0,
                 feature_conditioning: bool = _DDAE.feature_conditioning,
                 source_block: Optional[int] = _DDAE.source_block,
                 input_self_condition: bool = False, augment_dim: int = 0, contrastive: str = "off",
                 projection_dim: int = _DDAE.projection_dim):
        super().__init__()
        if depth < 3 or depth % 2 == 0:
            raise UserError(f"U-ViT needs an odd model.depth ≥ 3 (in-blocks, a middle block, out-blocks), got {depth}")
        half = depth // 2
        self._init_common(image_size, in_channels, patch_size, width, num_classes, augment_dim, depth, half + 1,
                          source_block, input_self_condition)
        self.num_extra = 1 + (1 if num_classes else 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_extra + self.num_patches, width))
        block = lambda: Block(width, heads, mlp_ratio, qkv_bias=False)  # noqa: E731
        self.in_blocks = nn.ModuleList(block() for _ in range(half))
        self.mid_block = block()
        self.out_blocks = nn.ModuleList(block() for _ in range(half))
        self.skip_proj = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(half))
        self.norm = nn.LayerNorm(width)
        self.final_conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_vit_init)
        self._init_extensions(feature_conditioning, contrastive, width, projection_dim)

    def _run(self, x, t, cond, self_cond, aug, taps: set, stop_after: Optional[int] = None):
        x = self._check_input(x, self_cond)
        b = x.shape[0]
        t_emb, t_tok, y_emb = self._time_and_condition(t, cond, aug, b, x.device)
        extra = [t_tok[:, None]] + ([y_emb[:, None]] if y_emb is not None else [])
        h = torch.cat(extra + [self.patch_embed(x)], dim=1) + self.pos_embed
        n = self.num_extra
        found, skips, inject = {}, [], None
        blocks = list(self.in_blocks) + [self.mid_block] + list(self.out_blocks)
        for i, blk in enumerate(blocks):
            if i > len(self.in_blocks):  # an out-block: long skip, then the feature conditioning vector
                h = self.skip_proj[i - len(self.in_blocks) - 1](torch.cat([h, skips.pop()], dim=-1))
                if inject is not None:
                    h = h + inject[:, None]
            h = blk(h)
            if i < len(self.in_blocks):
                skips.append(h)
            if i in taps:
                found[i] = h[:, n:].mean(dim=1)
            if self.self_cond is not None and i == self.source_block:
                inject = self.self_cond(h[:, n:], t_emb)
            if stop_after is not None and i >= stop_after:
                return None, found
        out = self._unpatchify(self.out_proj(self.norm(h)[:, n:]))
        return self.final_conv(out), found


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero: the condition vector sets shift / scale / gate of both sublayers."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)
        h = h + gate1 * self.attn(self.norm1(h) * (1 + scale1) + shift1)
        return h + gate2 * self.mlp(self.norm2(h) * (1 + scale2) + shift2)


class DiTDenoiser(_PatchDenoiser):
    """DiT: fixed 2D sin-cos positions, condition = time + label embedding, adaLN-Zero blocks."""

    @register_to_config
    def __init__(self, image_size: int = 28, in_channels: int = 1, patch_size: int = _MODEL.patch_size,
                 width: int = _MODEL.width, depth: int = 6, heads: int = _MODEL.heads,
                 mlp_ratio: float = _MODEL.mlp_ratio, num_classes: int = 0,
                 feature_conditioning: bool = _DDAE.feature_conditioning,
                 source_block: Optional[int] = _DDAE.source_block,
                 input_self_condition: bool = False, augment_dim: int = 0, contrastive: str = "off",
                 projection_dim: int = _DDAE.projection_dim):
        super().__init__()
        if depth < 2:
            raise UserError(f"DiT needs model.depth ≥ 2 (an encoder and a decoder half), got {depth}")
        self._init_common(image_size, in_channels, patch_size, width, num_classes, augment_dim, depth, depth // 2,
                          source_block, input_self_condition)
        grid = image_size // patch_size
        self.register_buffer("pos_embed", get_2d_sincos_pos_embed(width, grid, base_size=grid).float()[None],
                             persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.apply(_dit_init)
        for mod in [blk.modulation[-1] for blk in self.blocks] + [self.final_modulation[-1], self.out_proj]:
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)
        self._init_extensions(feature_conditioning, contrastive, width, projection_dim)

    def _run(self, x, t, cond, self_cond, aug, taps: set, stop_after: Optional[int] = None):
        x = self._check_input(x, self_cond)
        t_emb, c, y_emb = self._time_and_condition(t, cond, aug, x.shape[0], x.device)
        if y_emb is not None:
            c = c + y_emb
        h = self.patch_embed(x) + self.pos_embed
        found = {}
        for i, blk in enumerate(self.blocks):
            h = blk(h, c)
            if i in taps:
                found[i] = h.mean(dim=1)
            if self.self_cond is not None and i == self.source_block:
                c = c + self.self_cond(h, t_emb)  # every later (decoder-side) block sees it
            if stop_after is not None and i >= stop_after:
                return None, found
        shift, scale = self.final_modulation(c)[:, None].chunk(2, dim=-1)
        out = self.out_proj(self.final_norm(h) * (1 + scale) + shift)
        return self._unpatchify(out), found


def _vit_init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _dit_init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


ARCH_CLASSES = {"uvit": UViTDenoiser, "dit": DiTDenoiser}


def make_denoiser(arch: str, **kwargs) -> _PatchDenoiser:
    """A denoiser by architecture name; an unknown name is a one-line error."""
    if arch not in ARCH_CLASSES:
        raise UserError(f"unknown architecture '{arch}'; model.arch must be one of {sorted(ARCH_CLASSES)}")
    return ARCH_CLASSES[arch](**kwargs)


def load_denoiser(path: str | Path) -> _PatchDenoiser:
    """Weights saved with ``save_pretrained``, whichever architecture they are."""
    name = json.loads((Path(path) / "config.json").read_text())["_class_name"]
    cls = {c.__name__: c for c in ARCH_CLASSES.values()}[name]
    return cls.from_pretrained(path)
