"""The positive control of grounding (issue 40): with the caption always dropped and one pair per scene, where
the subject and the object are is given only by their boxes, so a model that uses its grounding places them
there and one that does not (its base, or itself fed the null grounding) places them anywhere.

:func:`control_samples` draws held-out ``single`` scenes with the null caption; :func:`control_scores` scores
them: box alignment with the HOI-shapes detector (:func:`.detector.box_alignment`: mean IoU of each given box
with the best detection of its class) and the detector-free :func:`.evaluators.ink_in_boxes`.
"""
from __future__ import annotations

import torch

from .model import generate, null_grounding, null_text


def triplet_boxes(triplets) -> list[list]:
    """Per image, the subject and object boxes of its triplets."""
    return [[box for t in ts for box in (t.subject_box, t.object_box)] for ts in triplets]


@torch.no_grad()
def control_samples(model, process, sampling, count: int = 64, seed: int = 0, grounding: str = "real",
                    max_tokens: int = 24, max_interactions: int = 30, batch_size: int = 64):
    """(images (count, 3, S, S), their triplets): held-out ``single`` scenes (the evaluators' test seed) drawn
    with the null caption and the ``real`` or ``null`` grounding (a base without grounding ignores it)."""
    from .evaluators import TEST_SEED
    from .scenes import HOIShapes
    from .task import condition

    scenes = [HOIShapes("single", TEST_SEED).scene(i) for i in range(count)]
    generator = torch.Generator().manual_seed(seed)
    images = []
    for i in range(0, count, batch_size):
        batch = scenes[i:i + batch_size]
        cond = null_text(condition([""] * len(batch), [s.triplets for s in batch], max_tokens, model.grounded,
                                   max_interactions))
        if grounding == "null" and model.grounded:
            cond = null_grounding(cond)
        images.append(generate(model, process, sampling, cond, len(batch), generator))
    return torch.cat(images), [s.triplets for s in scenes]


def control_scores(images: torch.Tensor, triplets, detector=None) -> dict[str, float]:
    """``ink_in_boxes`` and, with the HOI-shapes detector, ``box_alignment`` of control samples."""
    from .detector import box_alignment, detect
    from .evaluators import ink_in_boxes

    scores = {"ink_in_boxes": ink_in_boxes(images, triplet_boxes(triplets))}
    if detector is not None:
        scores["box_alignment"] = box_alignment(detect(detector, images), triplets)
    return scores
