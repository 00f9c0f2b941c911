"""A HOI-shapes entity detector, trained only on renders: triplet recall at IoU 0.5 and box alignment.

A small fully convolutional CenterNet (Zhou et al. 2019) at the image's resolution: per pixel a heatmap
for each entity class (the subjects, then the object shapes), the box size at the centre, and the
object's colour. Detections are the 3x3 local maxima above a score. With the verb classifier of
:mod:`.evaluators` they give the two localization metrics of the benchmark:

- **triplet recall @ IoU 0.5** (standing in for HOI mAP): a given triplet is recalled when a detected
  subject of its class and a detected object of its phrase overlap the given boxes with IoU >= 0.5 and the
  verb classifier, shown the *detected* boxes, names its action;
- **box alignment**: the mean IoU of each given box with the best detection of its class (0 if none).

Trained once per setting and cached (safetensors + JSON, like the evaluators' classifiers).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .annotations import Triplet
from .scenes import COLOURS, SHAPES, SUBJECTS, parse_object

CLASSES = (*SUBJECTS, *SHAPES)
RECIPE_VERSION = 1


def entity_class(name: str) -> tuple[int, int]:
    """(class index into CLASSES, colour index or -1) of a subject or an object phrase."""
    if name in SUBJECTS:
        return SUBJECTS.index(name), -1
    colour, shape = parse_object(name)
    return len(SUBJECTS) + SHAPES.index(shape), list(COLOURS).index(colour)


def entities(triplets: Sequence[Triplet]) -> list[tuple[int, int, tuple]]:
    """The distinct (class, colour, box) of a scene's subjects and objects."""
    seen = {}
    for t in triplets:
        for name, box in ((t.subject, t.subject_box), (t.object, t.object_box)):
            cls, colour = entity_class(name)
            seen[(cls, tuple(box))] = (cls, colour, tuple(box))
    return list(seen.values())


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class EntityDetector(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> heatmap logits (B, classes, S, S), box size (B, 2, S, S) as a fraction of
    the image, colour logits (B, colours, S, S)."""

    def __init__(self, width: int = 48):
        super().__init__()

        def block(i, o, **kw):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=kw.get("dilation", 1), **kw), nn.GroupNorm(8, o), nn.SiLU())

        self.stem = nn.Sequential(block(3, width), block(width, width))
        self.down = nn.Sequential(block(width, 2 * width, stride=2), block(2 * width, 2 * width, dilation=2),
                                  block(2 * width, 2 * width, dilation=4))
        self.fuse = block(3 * width, width)
        self.heat = nn.Conv2d(width, len(CLASSES), 1)
        self.size = nn.Conv2d(width, 2, 1)
        self.colour = nn.Conv2d(width, len(COLOURS), 1)
        nn.init.constant_(self.heat.bias, -2.2)  # CenterNet's prior: few pixels are centres

    def forward(self, x):
        a = self.stem(x)
        b = F.interpolate(self.down(a), size=a.shape[-2:], mode="nearest")
        h = self.fuse(torch.cat([a, b], 1))
        return self.heat(h), self.size(h).sigmoid(), self.colour(h)


def targets(triplets: Sequence[Sequence[Triplet]], size: int):
    """Gaussian centre heatmaps (B, classes, S, S), and per centre pixel its size and colour."""
    b = len(triplets)
    heat = torch.zeros(b, len(CLASSES), size, size)
    box_size, colour = torch.zeros(b, 2, size, size), torch.full((b, size, size), -1, dtype=torch.long)
    centre_mask = torch.zeros(b, size, size, dtype=torch.bool)
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    for i, ts in enumerate(triplets):
        for cls, col, box in entities(ts):
            cx, cy = (box[0] + box[2]) / 2 * size, (box[1] + box[3]) / 2 * size
            w, h = (box[2] - box[0]) * size, (box[3] - box[1]) * size
            sigma = max(0.6, min(w, h) / 6)
            g = torch.exp(-((grid[None, :] - cx) ** 2 + (grid[:, None] - cy) ** 2) / (2 * sigma ** 2))
            heat[i, cls] = torch.maximum(heat[i, cls], g)
            px, py = min(size - 1, int(cx)), min(size - 1, int(cy))
            heat[i, cls, py, px] = 1.0
            box_size[i, :, py, px] = torch.tensor([box[2] - box[0], box[3] - box[1]])
            colour[i, py, px] = col
            centre_mask[i, py, px] = True
    return heat, box_size, colour, centre_mask


def loss(model: EntityDetector, images, heat, box_size, colour, centre_mask):
    logits, size, colour_logits = model(images)
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    focal = -(pos * (1 - p) ** 2 * p.log() + (1 - pos) * (1 - heat) ** 4 * p ** 2 * (1 - p).log()).sum()
    focal = focal / pos.sum().clamp_min(1)
    m = centre_mask[:, None].expand_as(size)
    size_loss = F.l1_loss(size[m], box_size[m]) if m.any() else size.sum() * 0
    has_colour = colour >= 0
    colour_loss = (F.cross_entropy(colour_logits.permute(0, 2, 3, 1)[has_colour], colour[has_colour])
                   if has_colour.any() else colour_logits.sum() * 0)
    return focal + 5 * size_loss + colour_loss


@torch.no_grad()
def detect(model: EntityDetector, images: torch.Tensor, threshold: float = 0.3, top: int = 10) -> list[list[dict]]:
    """Per image, detections {class, colour, box (normalised x0, y0, x1, y1), score}."""
    logits, sizes, colours = model(images)
    p = logits.sigmoid()
    peaks = (p == F.max_pool2d(p, 3, stride=1, padding=1)) & (p >= threshold)
    s = images.shape[-1]
    out = []
    for i in range(len(images)):
        found = []
        cls, ys, xs = torch.nonzero(peaks[i], as_tuple=True)
        scores = p[i, cls, ys, xs]
        for k in scores.argsort(descending=True)[:top].tolist():
            c, y, x = int(cls[k]), int(ys[k]), int(xs[k])
            w, h = sizes[i, :, y, x].tolist()
            cx, cy = (x + 0.5) / s, (y + 0.5) / s
            found.append({"class": c, "colour": int(colours[i, :, y, x].argmax()) if c >= len(SUBJECTS) else -1,
                          "box": (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), "score": float(scores[k])})
        out.append(found)
    return out


def _matches(detections: list[dict], name: str, box, iou: float = 0.5) -> list[dict]:
    cls, colour = entity_class(name)
    return [d for d in detections if d["class"] == cls and (colour < 0 or d["colour"] == colour)
            and box_iou(d["box"], box) >= iou]


def entity_recall(detections: Sequence[list[dict]], triplets: Sequence[Sequence[Triplet]], iou: float = 0.5) -> float:
    """Share of the given entities (subjects and objects) detected with IoU >= ``iou`` and the right class."""
    hits = total = 0
    for found, ts in zip(detections, triplets):
        for t in ts:
            for name, box in ((t.subject, t.subject_box), (t.object, t.object_box)):
                total += 1
                hits += bool(_matches(found, name, box, iou))
    return hits / total if total else float("nan")


def box_alignment(detections: Sequence[list[dict]], triplets: Sequence[Sequence[Triplet]]) -> float:
    """Mean IoU of each given box with the best detection of its class (and colour); 0 where none."""
    ious = []
    for found, ts in zip(detections, triplets):
        for t in ts:
            for name, box in ((t.subject, t.subject_box), (t.object, t.object_box)):
                cls, colour = entity_class(name)
                same = [box_iou(d["box"], box) for d in found if d["class"] == cls and (colour < 0 or d["colour"] == colour)]
                ious.append(max(same, default=0.0))
    return sum(ious) / len(ious) if ious else float("nan")


def triplet_recall(detections: Sequence[list[dict]], images: torch.Tensor, triplets: Sequence[Sequence[Triplet]],
                   verb_model, iou: float = 0.5) -> list[bool]:
    """Per given triplet: recalled (see the module docstring)."""
    from .evaluators import pair_inputs, predict_verbs

    hits = []
    for found, image, ts in zip(detections, images, triplets):
        for t in ts:
            subjects, objects = _matches(found, t.subject, t.subject_box, iou), _matches(found, t.object, t.object_box, iou)
            if not subjects or not objects:
                hits.append(False)
                continue
            s = max(subjects, key=lambda d: box_iou(d["box"], t.subject_box))
            o = max(objects, key=lambda d: box_iou(d["box"], t.object_box))
            detected = Triplet(t.subject, t.action, t.object, s["box"], o["box"])
            inputs, labels = pair_inputs(image[None], [[detected]])
            hits.append(bool(predict_verbs(verb_model, inputs)[0] == labels[0]))
    return hits


def entity_detector(size: int = 32, train_scenes: int = 3000, test_scenes: int = 500, steps: int = 1200,
                    batch_size: int = 64, seed: int = 0):
    """(detector, {split: entity recall @ IoU 0.5 on held-out renders}), trained on renders of the
    ``train`` split once per setting and cached."""
    import warnings

    from gencond import cache_dir
    from vision.frechet import load_cached, save_cached

    from .evaluators import TEST_SEED, TRAIN_SEED, rendered

    images, scenes = rendered("train", train_scenes, TRAIN_SEED, size)
    key = hashlib.sha1(f"{size}-{train_scenes}-{steps}-{batch_size}-{seed}-v{RECIPE_VERSION}".encode()
                       + images[::max(1, len(images) // 64)].numpy().tobytes()).hexdigest()[:12]
    weights = cache_dir() / "fd_classifiers" / f"hoi-detector-{size}px-{key}.safetensors"
    meta = weights.with_suffix(".json")
    expected = {"recipe_version": RECIPE_VERSION, "steps": steps, "train_scenes": train_scenes,
                "batch_size": batch_size, "seed": seed}
    model = EntityDetector()  # the cached weights are loaded into it
    try:
        info = load_cached(weights, meta, model, expected)
        if info is not None and isinstance(info.get("entity_recall"), dict):
            return model.eval(), info["entity_recall"]
    except ValueError as e:
        warnings.warn(f"ignoring the unreadable cached HOI-shapes detector {weights} ({e}); retraining it", stacklevel=2)
    torch.manual_seed(seed)
    model = EntityDetector()
    heat, box_size, colour, centre = targets([s.triplets for s in scenes], size)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        value = loss(model, images[idx], heat[idx], box_size[idx], colour[idx], centre[idx])
        opt.zero_grad()
        value.backward()
        opt.step()
        sched.step()
    model.eval()
    recall = {}
    for split in ("single", "double"):
        test_images, test_scenes_ = rendered(split, test_scenes, TEST_SEED, size)
        recall[split] = round(entity_recall(detect(model, test_images), [s.triplets for s in test_scenes_]), 4)
    save_cached(weights, meta, model, {**expected, "entity_recall": recall})
    return model, recall
