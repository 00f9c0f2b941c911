"""Is the grounding used? Measurements logged while a grounded model trains (issue 40).

- :func:`grounding_gap`: the denoising loss on a fixed held-out batch with the real grounding, the null
  grounding and the grounding of another image of the batch (shuffled), at a few noise levels, with the
  same noise every time. While the gated layers act as extra capacity the three are equal; the gap
  ``null - real`` (and ``shuffled - real``) turns positive when the boxes start being used.
- ``x0_ink_{real,null}_t<t>``: where the denoised estimate x0_hat puts its ink, scored against the real boxes
  (:func:`.evaluators.ink_in_boxes`; 1 = anywhere): at high noise it says whether the layout follows the boxes.
- :func:`gate_openness`: mean and max |tanh α| over the gates of every gated self-attention layer.
"""
from __future__ import annotations

import torch
from diffusers.models.attention import GatedSelfAttentionDense

from gencond.diffusion import DiffusionProcess

from .evaluators import ink_in_boxes
from .model import GROUNDING_KEYS, null_grounding

GAP_FRACTIONS = (0.1, 0.5, 0.9)  # noise levels of the gap, as fractions of the training timesteps


def gate_openness(model: torch.nn.Module) -> dict[str, float]:
    """``gate_mean`` and ``gate_max`` of |tanh α| over α_attn and α_dense of every fuser (0: the base)."""
    alphas = [m.alpha_attn for m in model.modules() if isinstance(m, GatedSelfAttentionDense)]
    alphas += [m.alpha_dense for m in model.modules() if isinstance(m, GatedSelfAttentionDense)]
    if not alphas:
        return {}
    gates = torch.stack([a.detach().float().reshape(()) for a in alphas]).tanh().abs()
    return {"gate_mean": gates.mean().item(), "gate_max": gates.max().item()}


def given_boxes(cond: dict) -> list[list]:
    """Per image, the subject and object boxes of its filled slots (from the tokenizer keywords)."""
    keep = cond["masks"].bool().cpu()
    return [[*sb[m].tolist(), *ob[m].tolist()] for sb, ob, m in
            zip(cond["subject_boxes"].cpu(), cond["object_boxes"].cpu(), keep)]


def shuffled_grounding(cond: dict) -> dict:
    """Each image gets the grounding of the next image of the batch (its caption stays)."""
    return {k: v.roll(1, dims=0) if k in GROUNDING_KEYS else v for k, v in cond.items()}


@torch.no_grad()
def grounding_gap(model: torch.nn.Module, process: DiffusionProcess, x0: torch.Tensor, cond: dict,
                  fractions=GAP_FRACTIONS, seed: int = 0) -> dict[str, float]:
    """Unweighted denoising losses on ``(x0, cond)`` with the real, null and shuffled grounding at the
    timesteps ``fractions`` × T (noise fixed by ``seed``): ``val_loss`` (real, mean over the levels),
    ``val_loss_null``, ``val_loss_shuffled`` and per level ``gap_null_t<t>``, ``gap_shuffled_t<t>``
    (that loss minus the real one; > 0 when the grounding helps)."""
    device = next(model.parameters()).device
    x0 = x0.to(device)
    conds = {"real": cond, "null": null_grounding(cond), "shuffled": shuffled_grounding(cond)}
    if not all(k in cond for k in GROUNDING_KEYS):  # a base: only its loss
        conds = {"real": cond}
    conds = {k: {n: v.to(device) for n, v in c.items()} for k, c in conds.items()}
    gen = torch.Generator().manual_seed(seed)
    out, totals = {}, {k: 0.0 for k in conds}
    boxes = given_boxes(cond) if len(conds) > 1 else None
    for frac in fractions:
        step = min(process.num_timesteps - 1, int(round(frac * process.num_timesteps)))
        t = torch.full((x0.shape[0],), step, dtype=torch.long, device=device)
        noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype).to(device)
        x_t, target = process.add_noise(x0, noise, t), process.target(x0, noise, t)
        outputs = {k: model(x_t, t, c) for k, c in conds.items()}
        losses = {k: (o - target).float().square().mean().item() for k, o in outputs.items()}
        if boxes is not None:
            for k in ("real", "null"):
                x0_hat = process.x0_and_eps(x_t, outputs[k], t)[0].clamp(-1, 1).cpu()
                out[f"x0_ink_{k}_t{step}"] = ink_in_boxes(x0_hat, boxes)
        for k in conds:
            totals[k] += losses[k] / len(fractions)
            if k != "real":
                out[f"gap_{k}_t{step}"] = losses[k] - losses["real"]
    return {"val_loss": totals.pop("real"), **{f"val_loss_{k}": v for k, v in totals.items()}, **out}
