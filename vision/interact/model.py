"""``GroundedUNet``: a diffusers text-to-image UNet as a gencond denoiser, with optional triplet grounding.

``model(x_t, t, cond)`` with ``cond`` a flat dict (the core's structured condition): the caption's token
states ``text`` (B, L, 384) and ``text_mask`` (B, L), and, for a grounded model, the tokenizer keywords
of :func:`vision.interact.grounding.grounding_inputs` (:data:`GROUNDING_KEYS`). ``grounding`` is
``"none"`` (a plain text-to-image base), ``"gligen"`` (boxes + phrases) or ``"interact"``
(InteractDiffusion's triplet tokens); grounded models are gated (diffusers' ``attention_type="gated"``),
their tokenizer sits in ``unet.position_net``. ``ModelMixin`` + ``ConfigMixin``: the wrapper's config
holds the UNet's, so a saved run rebuilds the custom tokenizer from its own folder.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from gencond.errors import UserError

from .adapter import gated_unet, is_new_parameter, set_gated_layers
from .tokenizer import MAX_INTERACTIONS, make_tokenizer

TEXT_KEYS = ("text", "text_mask")
GROUNDING_KEYS = ("subject_boxes", "object_boxes", "masks", "subject_embeddings", "object_embeddings",
                  "action_embeddings")
GROUNDINGS = ("none", "gligen", "interact")


def null_text(cond: dict) -> dict:
    """The caption dropped: zero token states, no valid token (cross-attention then averages zeros)."""
    out = dict(cond)
    out["text"] = torch.zeros_like(cond["text"])
    out["text_mask"] = torch.zeros_like(cond["text_mask"], dtype=torch.bool)
    return out


def null_grounding(cond: dict) -> dict:
    """Every interaction slot empty: the tokenizer gives only its learned null tokens."""
    return {k: torch.zeros_like(v) if k in GROUNDING_KEYS else v for k, v in cond.items()}


def image_tensor(image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


class GroundedUNet(ModelMixin, ConfigMixin):
    """A ``UNet2DConditionModel`` (built from ``unet_config``) with a grounding tokenizer."""

    @register_to_config
    def __init__(self, unet_config: dict, grounding: str = "interact", phrase_dim: int = 384,
                 max_interactions: int = MAX_INTERACTIONS, interaction_embedding: bool = True):
        super().__init__()
        if grounding not in GROUNDINGS:
            raise UserError(f"model.grounding '{grounding}' is not one of {', '.join(GROUNDINGS)}")
        config = {k: v for k, v in dict(unet_config).items() if not k.startswith("_")}
        if grounding != "none":
            config["attention_type"] = "gated"
        self.unet = UNet2DConditionModel.from_config(config)
        if grounding != "none":
            self.unet.position_net = make_tokenizer(grounding, phrase_dim, self.unet.config.cross_attention_dim,
                                                    max_interactions, interaction_embedding)

    @classmethod
    def from_base(cls, base: Union[UNet2DConditionModel, str, Path], grounding: str = "interact",
                  phrase_dim: int = 384, max_interactions: int = MAX_INTERACTIONS,
                  interaction_embedding: bool = True) -> "GroundedUNet":
        """A grounded model around a base UNet (or a diffusers folder), the base copied and frozen: only the
        fusers and the tokenizer train, and at initialisation the model is its base exactly."""
        if grounding == "none":
            raise UserError("model.grounding 'none' has nothing to add to a base; use gligen or interact")
        unet = gated_unet(base, grounding, phrase_dim, max_interactions, interaction_embedding)
        config = {k: v for k, v in unet.config.items() if not k.startswith("_") and k != "attention_type"}
        model = cls(config, grounding, phrase_dim, max_interactions, interaction_embedding)
        model.unet = unet
        return model

    @property
    def grounded(self) -> bool:
        return self.config.grounding != "none"

    def new_parameter_names(self) -> list[str]:
        """What grounding adds to the base (the parameters a grounded run trains)."""
        return [n for n, _ in self.named_parameters() if is_new_parameter(n.removeprefix("unet."))]

    def null_condition(self, cond: dict) -> dict:
        """Caption and grounding both dropped (classifier-free guidance's unconditional branch)."""
        if not isinstance(cond, dict) or "text" not in cond:
            raise TypeError("GroundedUNet conditions are dicts with 'text' and 'text_mask'")
        return null_grounding(null_text(cond)) if self.grounded else null_text(cond)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[dict] = None,
                self_cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self_cond is not None:
            raise ValueError("GroundedUNet has no input self-conditioning; set diffusion.self_condition_prob=0")
        if not isinstance(cond, dict) or "text" not in cond:
            raise ValueError("GroundedUNet needs cond = {'text': (B, L, D), 'text_mask': (B, L), ...}")
        kwargs = None
        if self.grounded and all(k in cond for k in GROUNDING_KEYS):
            kwargs = {"gligen": {k: cond[k].to(x_t.dtype) for k in GROUNDING_KEYS}}  # popped by the UNet: fresh
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        mask = cond.get("text_mask")
        return self.unet(x_t, t, encoder_hidden_states=cond["text"].to(x_t.dtype),
                         encoder_attention_mask=None if mask is None else mask.to(x_t.dtype),
                         cross_attention_kwargs=kwargs).sample


def generate(model, process, sampling, cond: dict, count: int, generator, beta: float = 1.0,
             progress: bool = False):
    """``count`` images (B, 3, S, S) in [-1, 1] for ``cond``, with scheduled sampling: the gated layers are
    on for the first ``beta`` of the steps (all of them for an ungrounded model), then switched off."""
    from gencond.sampling import sample

    steps = sampling.num_steps or process.num_timesteps
    cutoff = math.ceil(beta * steps) if model.grounded else steps

    def scheduled(step, t, x_t, x0_hat):  # runs after step `step`'s network call
        if step + 1 == cutoff:
            set_gated_layers(model.unet, False)

    size = model.unet.config.sample_size
    set_gated_layers(model.unet, cutoff > 0)
    try:
        return sample(model, process, (count, 3, size, size), sampling, cond=cond, generator=generator,
                      progress=progress, callback=scheduled).clamp(-1, 1)
    finally:
        set_gated_layers(model.unet, True)
