"""HOI-shapes evaluators, trained only on rendered ground truth.

Interaction accuracy given the boxes: a small CNN (the Fréchet-distance classifier of
:mod:`vision.frechet`, cached the same way: safetensors + JSON) sees the image and two mask channels,
the subject's box and the object's, and names the verb that links them. It is trained on renders of the
``train`` split and tested on renders of the held-out ``single`` and ``double`` splits (other seed); its
accuracy there is the ceiling any generated image is scored against. Its 128-d features also serve
for a Fréchet distance between generated images and renders of the same conditions.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .annotations import Triplet
from .model import image_tensor
from .scenes import ACTIONS, HOIShapes, Scene

TRAIN_SEED, TEST_SEED = 0, 1


def box_mask(box, size: int) -> torch.Tensor:
    """(size, size) with 1 inside the normalised box (pixel centres), -1 elsewhere."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    x = (centres >= box[0]) & (centres <= box[2])
    y = (centres >= box[1]) & (centres <= box[3])
    return (y[:, None] & x[None, :]).float() * 2 - 1


def ink_in_boxes(images: torch.Tensor, boxes) -> float:
    """How much of what is drawn lies in the given boxes (per image a list of xyxy boxes): the share of each
    image's ink (distance from the background colour) inside its boxes, over the share of the image they
    cover, averaged over images (1: drawn anywhere; higher: drawn in the boxes). Coarse; needs no detector."""
    from .scenes import BACKGROUND

    background = torch.tensor(BACKGROUND, dtype=images.dtype).view(1, 3, 1, 1) / 127.5 - 1
    ink = (images - background).abs().sum(1)  # (B, S, S)
    ratios = []
    for image_ink, image_boxes in zip(ink, boxes):
        inside = torch.zeros_like(image_ink, dtype=torch.bool)
        for box in image_boxes:
            inside |= box_mask(box, image_ink.shape[-1]) > 0
        share = image_ink[inside].sum() / image_ink.sum().clamp_min(1e-6)
        ratios.append((share / inside.float().mean().clamp_min(1e-6)).item())
    return sum(ratios) / len(ratios)


def pair_inputs(images: torch.Tensor, triplets: Sequence[Sequence[Triplet]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, 5, H, W) inputs — RGB in [-1, 1], subject-box mask, object-box mask — one per triplet of each
    image, and the (M,) verb labels (index into ``ACTIONS``; -1 for a verb HOI-shapes does not draw)."""
    size = images.shape[-1]
    inputs, labels = [], []
    for image, ts in zip(images, triplets):
        for t in ts:
            inputs.append(torch.cat([image, box_mask(t.subject_box, size)[None], box_mask(t.object_box, size)[None]]))
            labels.append(ACTIONS.index(t.action) if t.action in ACTIONS else -1)
    if not inputs:
        return torch.zeros(0, 5, size, size), torch.zeros(0, dtype=torch.long)
    return torch.stack(inputs), torch.tensor(labels)


def rendered(split: str, count: int, seed: int, size: int) -> tuple[torch.Tensor, list[Scene]]:
    """Renders (N, 3, size, size) of the first ``count`` scenes of a HOI-shapes split, and the scenes."""
    hoi = HOIShapes(split, seed, size)
    scenes = [hoi.scene(i) for i in range(count)]
    return torch.stack([image_tensor(s.render(size)) for s in scenes]), scenes


def rendered_pairs(split: str, count: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluator's inputs and verb labels for the renders of a split (:func:`pair_inputs`)."""
    images, scenes = rendered(split, count, seed, size)
    return pair_inputs(images, [s.triplets for s in scenes])


def verb_classifier(size: int = 32, train_scenes: int = 4000, test_scenes: int = 500, steps: int = 1500):
    """(classifier, {split: held-out accuracy on renders}) for the ``single`` and ``double`` splits;
    trained once per setting and cached."""
    from vision.frechet import trained_classifier

    train = rendered_pairs("train", train_scenes, TRAIN_SEED, size)
    tests = {split: rendered_pairs(split, test_scenes, TEST_SEED, size) for split in ("single", "double")}
    model, acc = trained_classifier(f"hoi-verbs-{size}px", train, tests["single"], len(ACTIONS), steps=steps)
    accuracy = {"single": acc, "double": interaction_accuracy(model, *tests["double"])}
    return model, accuracy


@torch.no_grad()
def predict_verbs(model, inputs: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """(M,) the verb the classifier names for each pair input."""
    if not len(inputs):
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([model(inputs[i:i + batch_size]).argmax(1) for i in range(0, len(inputs), batch_size)])


def interaction_accuracy(model, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of pairs whose verb the classifier names correctly."""
    if not len(inputs):
        return float("nan")
    return (predict_verbs(model, inputs) == labels).float().mean().item()
