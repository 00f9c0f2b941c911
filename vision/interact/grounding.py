"""From triplets to the tokenizers' inputs: phrase embeddings, padded boxes and masks.

Phrases are embedded by the toolkit's one text encoder (all-MiniLM-L6-v2, :mod:`gencond.text`): its
pooled sentence vector, unit norm, rescaled to ``PHRASE_NORM`` — the norm of the official CLIP ViT-L/14
phrase vectors (≈ 29) that GLIGEN's and InteractDiffusion's tokenizer MLPs were trained on.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from gencond.text import DIM as TEXT_DIM

from .annotations import Triplet
from .tokenizer import MAX_INTERACTIONS

PHRASE_NORM = 29.0
PHRASE_MAX_TOKENS = 16  # phrases are a few words
PhraseEmbedder = Callable[[list[str]], torch.Tensor]  # N phrases -> (N, D)


def phrase_embeddings(phrases: Sequence[str], norm: float = PHRASE_NORM) -> torch.Tensor:
    """(N, 384) pooled MiniLM vectors of ``phrases``, each of L2 norm ``norm`` (cached on disk)."""
    from gencond.text import text_encoder

    pooled = text_encoder(PHRASE_MAX_TOKENS).encode(list(phrases)).pooled
    return torch.nn.functional.normalize(pooled, dim=-1) * norm


def grounding_inputs(batch: Sequence[Sequence[Triplet]], embed: PhraseEmbedder = phrase_embeddings,
                     slots: int = MAX_INTERACTIONS, phrase_dim: int = TEXT_DIM) -> dict[str, torch.Tensor]:
    """The tokenizer keywords for a batch of triplet lists, padded to ``slots`` interactions (the official
    code always uses all 30, empty ones masked to their null features). Each distinct phrase is embedded
    once; ``phrase_dim`` sizes the (null) embeddings of a batch without any triplet."""
    if any(len(ts) > slots for ts in batch):
        raise ValueError(f"an image has {max(len(ts) for ts in batch)} triplets, at most {slots}")
    phrases = list(dict.fromkeys(p for ts in batch for t in ts for p in (t.subject, t.action, t.object)))
    vectors = embed(phrases) if phrases else None
    dim = vectors.shape[1] if vectors is not None else phrase_dim
    index = {p: i for i, p in enumerate(phrases)}
    B = len(batch)
    out = {"subject_boxes": torch.zeros(B, slots, 4), "object_boxes": torch.zeros(B, slots, 4),
           "masks": torch.zeros(B, slots)}
    for role in ("subject", "object", "action"):
        out[f"{role}_embeddings"] = torch.zeros(B, slots, dim)
    for b, triplets in enumerate(batch):
        for n, t in enumerate(triplets):
            out["subject_boxes"][b, n] = torch.tensor(t.subject_box)
            out["object_boxes"][b, n] = torch.tensor(t.object_box)
            out["masks"][b, n] = 1.0
            for role in ("subject", "object", "action"):
                out[f"{role}_embeddings"][b, n] = vectors[index[getattr(t, role)]]
    return out


def null_grounding(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same inputs with every slot empty: the tokenizer gives only null tokens (the unconditional
    branch of classifier-free guidance and grounding dropout)."""
    return {k: torch.zeros_like(v) for k, v in inputs.items()}


def flip_triplets(triplets: Sequence[Triplet]) -> list[Triplet]:
    """The triplets of the horizontally mirrored image (x -> 1 - x)."""
    def flip(box):
        x0, y0, x1, y1 = box
        return (1.0 - x1, y0, 1.0 - x0, y1)

    return [Triplet(t.subject, t.action, t.object, flip(t.subject_box), flip(t.object_box)) for t in triplets]
