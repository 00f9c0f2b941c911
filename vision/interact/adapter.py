"""Plugging a grounding tokenizer into any diffusers ``UNet2DConditionModel``.

:func:`gated_unet` rebuilds a base UNet with ``attention_type="gated"`` (diffusers gives every transformer
block a ``GatedSelfAttentionDense`` fuser, after self-attention and before cross-attention, gates at 0),
copies the base weights, puts an interaction or GLIGEN tokenizer in ``position_net`` and freezes the base,
so only the fusers and the tokenizer train and, at initialisation, the model is its base exactly.
Grounding goes in as ``unet(x, t, text, cross_attention_kwargs={"gligen": tokenizer_kwargs})``; without
it the fusers are skipped (text only).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import GatedSelfAttentionDense

from gencond.errors import UserError

from .tokenizer import MAX_INTERACTIONS, make_tokenizer



def is_new_parameter(name: str) -> bool:
    """True for the weights grounding adds to a base UNet: the tokenizer and the fusers."""
    return name.startswith("position_net.") or ".fuser." in name


def small_unet(image_size: int = 32, channels: int = 3, block_out_channels=(32, 64, 128),
               attention_levels=(False, True, True), cross_attention_dim: int = 384, layers_per_block: int = 1,
               head_dim: int = 16, norm_num_groups: int = 8) -> UNet2DConditionModel:
    """A small pixel-space text-to-image UNet built from scratch (no download): self- and cross-attention
    blocks at the resolution levels marked True; the base model of HOI-shapes and of the tests."""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels))
    heads = tuple(max(1, c // head_dim) for c in block_out_channels)
    return UNet2DConditionModel(sample_size=image_size, in_channels=channels, out_channels=channels,
                                down_block_types=down, up_block_types=up, block_out_channels=tuple(block_out_channels),
                                layers_per_block=layers_per_block, cross_attention_dim=cross_attention_dim,
                                attention_head_dim=heads, norm_num_groups=norm_num_groups)


def load_base_unet(path: Union[str, Path]) -> UNet2DConditionModel:
    """A UNet from a diffusers folder: the UNet's own folder or a pipeline folder with ``unet/``."""
    path = Path(path)
    folder = path / "unet" if (path / "unet" / "config.json").is_file() else path
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path} is not a diffusers UNet folder: no config.json there nor in {path / 'unet'}; "
                        "give a Stable Diffusion folder in diffusers format (save_pretrained)")
    try:
        cls_name = json.loads(config_file.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{config_file} is not a readable diffusers config ({e})") from None
    if cls_name != "UNet2DConditionModel":
        raise UserError(f"{config_file} describes a {cls_name}, not a UNet2DConditionModel; give the folder of "
                        "a text-to-image UNet (e.g. Stable Diffusion's unet/)")
    try:
        return UNet2DConditionModel.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the UNet in {folder}: {e}") from None


def gated_unet(base: Union[UNet2DConditionModel, str, Path], tokenizer: str = "interact",
               phrase_dim: int = 384, max_interactions: int = MAX_INTERACTIONS, interaction_embedding: bool = True,
               freeze_base: bool = True) -> UNet2DConditionModel:
    """A gated copy of ``base`` (a UNet or a diffusers folder) with an ``interact`` or ``gligen`` tokenizer
    taking ``phrase_dim``-d phrase embeddings; the base weights are copied (and frozen by default)."""
    if not isinstance(base, UNet2DConditionModel):
        base = load_base_unet(base)
    config = {k: v for k, v in base.config.items() if not k.startswith("_")}
    config["attention_type"] = "gated"
    unet = UNet2DConditionModel.from_config(config)
    cross_dim = unet.config.cross_attention_dim
    if not isinstance(cross_dim, int):
        raise UserError(f"the base UNet has per-block cross_attention_dim {cross_dim}; one integer is needed")
    unet.position_net = make_tokenizer(tokenizer, phrase_dim, cross_dim, max_interactions, interaction_embedding)
    # A gated base (a grounded run continued) brings its fusers; its tokenizer is replaced.
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("position_net.")}
    missing, unexpected = unet.load_state_dict(state, strict=False)
    wrong = [k for k in missing if not is_new_parameter(k)] + list(unexpected)
    if wrong:
        raise UserError(f"the base UNet's weights do not fit its own config ({len(wrong)} keys, e.g. {wrong[0]})")
    if (unet.device, unet.dtype) != (base.device, base.dtype):
        unet.to(device=base.device, dtype=base.dtype)
    if freeze_base:
        for name, p in unet.named_parameters():
            p.requires_grad_(is_new_parameter(name))
    return unet


def new_parameters(unet: UNet2DConditionModel) -> dict[str, torch.nn.Parameter]:
    """The parameters grounding adds (fusers and tokenizer): what an optimizer should train."""
    return {name: p for name, p in unet.named_parameters() if is_new_parameter(name)}


def set_gated_layers(unet: UNet2DConditionModel, enabled: bool) -> None:
    """Switch every gated self-attention layer on or off (scheduled sampling: on for the first β of steps)."""
    for module in unet.modules():
        if isinstance(module, GatedSelfAttentionDense):
            module.enabled = enabled


def set_gates(unet: UNet2DConditionModel, value: float) -> None:
    """Set both gates α_attn, α_dense of every fuser (0: the base model exactly)."""
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, GatedSelfAttentionDense):
                module.alpha_attn.fill_(value)
                module.alpha_dense.fill_(value)
