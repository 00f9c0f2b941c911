"""HOI-shapes: procedural human-object-interaction scenes with exact triplets, boxes and captions.

A scene is one or two (subject, action, object) pairs. Subjects are a person (stick figure) or a robot;
objects are coloured shapes (``red ball``, ``blue kite``, ...). The action is drawn by which part of the
subject touches the object — one hand (holding), both hands (pushing), a foot (kicking), the head
(heading) or none, with a dotted line of sight (looking at). Layouts are sampled before and independently
of the action: the object sits beside the subject's body box at a random height, so the boxes never
give the action away, and the subject's box is its body (head to feet) whatever the limbs do. The
image is a pure function of the triplets (:func:`render`), so "renders of the same conditions" exist.

Splits (each its own random stream; a scene is a pure function of split, seed and index):
``train`` (one pair, or two pairs, no held-out triplet); ``single`` (one pair); ``double`` (two pairs with
the same subject and object phrase and different actions: the caption cannot tell who does what);
``no_caption`` (the ``single`` scenes with an empty caption); ``unseen`` (one pair whose
(subject, action, object shape) is in :data:`HELD_OUT`, never in ``train``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw

from .annotations import Annotation, Triplet, write_annotations

SUBJECTS = ("person", "robot")
ACTIONS = ("holding", "pushing", "kicking", "heading", "looking at")
SHAPES = ("ball", "box", "bar", "kite", "ring", "cone")
COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (40, 80, 215), "yellow": (230, 195, 25),
           "purple": (145, 60, 185), "orange": (240, 125, 25)}
# (width, height) of each shape relative to its size
SHAPE_ASPECT = {"ball": (1.0, 1.0), "box": (1.0, 1.0), "bar": (1.6, 0.45), "kite": (0.8, 1.15),
                "ring": (1.0, 1.0), "cone": (0.85, 1.0)}
# One held-out (subject, action, shape) per shape, rotating subjects and actions: 6 of 60 triplets.
HELD_OUT = frozenset((SUBJECTS[i % len(SUBJECTS)], ACTIONS[i % len(ACTIONS)], shape) for i, shape in enumerate(SHAPES))
SPLITS = ("train", "single", "double", "no_caption", "unseen")
_STREAM = {"train": 0, "single": 1, "double": 2, "no_caption": 1, "unseen": 3}
BACKGROUND = (238, 236, 228)


@dataclass
class Scene:
    """A caption and its triplets; ``render(size)`` draws the image."""

    caption: str
    triplets: list[Triplet]

    def render(self, size: int = 32, supersample: int = 4) -> Image.Image:
        return render(self.triplets, size, supersample)


def object_phrase(colour: str, shape: str) -> str:
    return f"{colour} {shape}"


def parse_object(phrase: str) -> tuple[str, str]:
    """``"red ball"`` -> ("red", "ball"), or a ValueError for a phrase HOI-shapes cannot draw."""
    parts = phrase.split()
    if len(parts) != 2 or parts[0] not in COLOURS or parts[1] not in SHAPES:
        raise ValueError(f"HOI-shapes cannot draw object '{phrase}'; objects are '<colour> <shape>' with colours "
                         f"{', '.join(COLOURS)} and shapes {', '.join(SHAPES)}")
    return parts[0], parts[1]


def triplet_key(t: Triplet) -> tuple[str, str, str]:
    """(subject, action, object shape): what :data:`HELD_OUT` lists."""
    return t.subject, t.action, parse_object(t.object)[1]


def caption_of(triplets: list[Triplet]) -> str:
    def article(phrase):
        return ("an " if phrase[0] in "aeiou" else "a ") + phrase

    return " and ".join(f"{article(t.subject)} {t.action} {article(t.object)}" for t in triplets)


# ---------------------------------------------------------------- layouts (sampled without the action)

def _pair_boxes(rng: np.random.Generator, x_lo: float, x_hi: float, height: tuple[float, float], shape: str):
    """Subject and object boxes of one pair inside the band [x_lo, x_hi] of the image."""
    h = rng.uniform(*height)
    w = 0.45 * h
    size = h * rng.uniform(0.3, 0.42)
    ow, oh = SHAPE_ASPECT[shape][0] * size, SHAPE_ASPECT[shape][1] * size
    gap = rng.uniform(0.0, 0.06) * h
    right = rng.random() < 0.5
    margin = 0.02
    fit = min(1.0, (x_hi - x_lo - 2 * margin) / (w + gap + ow))  # long objects shrink the pair to fit
    h, w, ow, oh, gap = h * fit, w * fit, ow * fit, oh * fit, gap * fit
    span = w + gap + ow
    left = x_lo + margin + rng.uniform(0.0, max(0.0, x_hi - x_lo - 2 * margin - span))
    y0 = rng.uniform(0.03, 0.97 - h)
    oy = rng.uniform(y0 + oh / 2, y0 + h - oh / 2)
    if right:
        sx, ox = left, left + w + gap
    else:
        ox, sx = left, left + ow + gap
    subject = (sx, y0, sx + w, y0 + h)
    obj = (ox, oy - oh / 2, ox + ow, oy + oh / 2)
    return tuple(round(v, 4) for v in subject), tuple(round(v, 4) for v in obj)


def _classes(rng: np.random.Generator, held_out: bool):
    """(subject, action, shape, colour): uniform over the triplets in (held_out) or not in HELD_OUT."""
    while True:
        if held_out:
            subject, action, shape = sorted(HELD_OUT)[rng.integers(len(HELD_OUT))]
        else:
            subject = SUBJECTS[rng.integers(len(SUBJECTS))]
            action = ACTIONS[rng.integers(len(ACTIONS))]
            shape = SHAPES[rng.integers(len(SHAPES))]
            if (subject, action, shape) in HELD_OUT:
                continue
        return subject, action, shape, list(COLOURS)[rng.integers(len(COLOURS))]


def _other_action(rng: np.random.Generator, subject: str, action: str, shape: str) -> str:
    """Another action the subject may do to the shape in training (not held out)."""
    choices = [a for a in ACTIONS if a != action and (subject, a, shape) not in HELD_OUT]
    return choices[rng.integers(len(choices))]


def sample_scene(rng: np.random.Generator, kind: str) -> Scene:
    """One scene: ``kind`` is ``single``, ``unseen``, ``double`` (confusable pairs) or ``two`` (independent)."""
    if kind in ("single", "unseen"):
        subject, action, shape, colour = _classes(rng, held_out=kind == "unseen")
        sbox, obox = _pair_boxes(rng, 0.0, 1.0, (0.55, 0.8), shape)
        triplets = [Triplet(subject, action, object_phrase(colour, shape), sbox, obox)]
    elif kind in ("double", "two"):
        first = _classes(rng, held_out=False)
        if kind == "double":  # same subject and object phrase, another action
            second = first[0], _other_action(rng, *first[:3]), first[2], first[3]
        else:
            second = _classes(rng, held_out=False)
        triplets = []
        for (subject, action, shape, colour), band in zip((first, second), ((0.0, 0.5), (0.5, 1.0))):
            sbox, obox = _pair_boxes(rng, *band, (0.4, 0.55), shape)
            triplets.append(Triplet(subject, action, object_phrase(colour, shape), sbox, obox))
        if rng.random() < 0.5:  # slot order says nothing about left and right
            triplets.reverse()
    else:
        raise ValueError(f"unknown scene kind '{kind}'")
    return Scene(caption_of(triplets), triplets)


class HOIShapes:
    """The HOI-shapes scenes of one split: ``scene(i)`` is deterministic in (split, seed, i)."""

    def __init__(self, split: str = "train", seed: int = 0, size: int = 32, supersample: int = 4):
        if split not in SPLITS:
            raise ValueError(f"unknown HOI-shapes split '{split}'; splits: {', '.join(SPLITS)}")
        self.split, self.seed, self.size, self.supersample = split, seed, size, supersample

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _STREAM[self.split], index])

    def scene(self, index: int) -> Scene:
        rng = self.rng(index)
        if self.split == "train":
            kind = ("single", "two", "double")[rng.choice(3, p=[0.4, 0.3, 0.3])]
        else:
            kind = {"single": "single", "no_caption": "single", "double": "double", "unseen": "unseen"}[self.split]
        scene = sample_scene(rng, kind)
        if self.split == "no_caption":
            scene.caption = ""
        return scene

    def image(self, index: int) -> Image.Image:
        return self.scene(index).render(self.size, self.supersample)

    def write(self, folder: Union[str, Path], count: int, start: int = 0) -> Path:
        """Write scenes start..start+count-1 as PNGs plus ``annotations.jsonl``; returns the latter."""
        folder = Path(folder)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        annotations = []
        for i in range(start, start + count):
            scene = self.scene(i)
            path = folder / "images" / f"{self.split}-{i:06d}.png"
            scene.render(self.size, self.supersample).save(path)
            annotations.append(Annotation(path, scene.caption, scene.triplets))
        write_annotations(folder / "annotations.jsonl", annotations)
        return folder / "annotations.jsonl"


# ---------------------------------------------------------------- drawing (a pure function of the triplets)

def render(triplets: list[Triplet], size: int = 32, supersample: int = 4) -> Image.Image:
    """The RGB image of ``triplets`` (HOI-shapes vocabulary), drawn at ``supersample`` × and reduced."""
    big = size * supersample
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for t in triplets:
        _draw_object(draw, t.object, [v * big for v in t.object_box])
    for t in triplets:
        if t.subject not in SUBJECTS:
            raise ValueError(f"HOI-shapes cannot draw subject '{t.subject}'; subjects: {', '.join(SUBJECTS)}")
        if t.action not in ACTIONS:
            raise ValueError(f"HOI-shapes cannot draw action '{t.action}'; actions: {', '.join(ACTIONS)}")
        _draw_subject(draw, t.subject, t.action, [v * big for v in t.subject_box],
                      [v * big for v in t.object_box])
    return image.resize((size, size), Image.LANCZOS) if supersample > 1 else image


def _darker(colour, f=0.6):
    return tuple(int(c * f) for c in colour)


def _draw_object(draw: ImageDraw.ImageDraw, phrase: str, box) -> None:
    colour, shape = parse_object(phrase)
    fill = COLOURS[colour]
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    line = max(1, round(0.08 * min(w, h)))
    if shape == "ball":
        draw.ellipse(box, fill=fill, outline=_darker(fill), width=line)
    elif shape in ("box", "bar"):
        draw.rectangle(box, fill=fill, outline=_darker(fill), width=line)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, round(0.25 * min(w, h))))
    elif shape == "kite":
        cx = (x0 + x1) / 2
        draw.polygon([(cx, y0), (x1, y0 + 0.4 * h), (cx, y1), (x0, y0 + 0.4 * h)], fill=fill, outline=_darker(fill))
        draw.line([(cx, y0), (cx, y1)], fill=_darker(fill), width=line)
    elif shape == "cone":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill, outline=_darker(fill))


def _touch_point(point, box, inset: float):
    """The point of ``box`` nearest to ``point``, moved ``inset`` into the box (so the contact is visible)."""
    x0, y0, x1, y1 = box
    x = min(max(point[0], x0 + inset), x1 - inset) if x1 - x0 > 2 * inset else (x0 + x1) / 2
    y = min(max(point[1], y0 + inset), y1 - inset) if y1 - y0 > 2 * inset else (y0 + y1) / 2
    return x, y


def _draw_subject(draw: ImageDraw.ImageDraw, subject: str, action: str, box, obj) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    side = 1 if (obj[0] + obj[2]) / 2 > cx else -1  # the object's side
    robot = subject == "robot"
    limb_colour = (60, 60, 70) if robot else (45, 45, 95)
    width = max(1, round((0.1 if robot else 0.07) * h))
    r = 0.12 * h
    head = (cx, y0 + r)
    shoulder_y, hip_y = y0 + 0.28 * h, y0 + 0.6 * h
    dx = 0.22 * w if robot else 0.0  # robots have two shoulder and hip joints
    shoulders = {s: (cx + s * dx, shoulder_y) for s in (1, -1)}
    hips = {s: (cx + s * 0.6 * dx, hip_y) for s in (1, -1)}
    inset = 0.04 * h
    hands = {s: (cx + s * 0.4 * w, y0 + 0.55 * h) for s in (1, -1)}
    feet = {s: (cx + s * 0.35 * w, y1) for s in (1, -1)}
    if action == "holding":
        hands[side] = _touch_point(shoulders[side], obj, inset)
    elif action == "pushing":
        oy0, oy1 = obj[1], obj[3]
        for s, f in ((side, 0.3), (-side, 0.7)):
            near = (obj[0] if side > 0 else obj[2], oy0 + f * (oy1 - oy0))
            hands[s] = _touch_point(near, obj, inset)
    elif action == "kicking":
        feet[side] = _touch_point(hips[side], obj, inset)
    elif action == "heading":
        touch = _touch_point(head, obj, inset)
        d = math.hypot(head[0] - touch[0], head[1] - touch[1]) or 1.0
        head = (touch[0] + (head[0] - touch[0]) * 0.8 * r / d, touch[1] + (head[1] - touch[1]) * 0.8 * r / d)
    neck = (cx, shoulder_y)
    # body: torso, neck, legs, arms
    if robot:
        draw.rectangle([cx - 0.25 * w, shoulder_y - 0.02 * h, cx + 0.25 * w, hip_y], fill=(150, 150, 160))
    else:
        draw.line([neck, (cx, hip_y)], fill=limb_colour, width=width)
    draw.line([neck, head], fill=limb_colour, width=max(1, width // 2 if robot else width))
    for s in (1, -1):
        draw.line([hips[s], feet[s]], fill=limb_colour, width=width)
        draw.line([shoulders[s], hands[s]], fill=limb_colour, width=width)
        hr = 0.6 * width
        draw.ellipse([hands[s][0] - hr, hands[s][1] - hr, hands[s][0] + hr, hands[s][1] + hr], fill=limb_colour)
    # head with an eye on the object's side
    if robot:
        draw.rectangle([head[0] - r, head[1] - r, head[0] + r, head[1] + r], fill=(175, 175, 185),
                       outline=limb_colour, width=max(1, width // 2))
    else:
        draw.ellipse([head[0] - r, head[1] - r, head[0] + r, head[1] + r], fill=(235, 195, 155),
                     outline=limb_colour, width=max(1, width // 2))
    eye = (head[0] + side * 0.5 * r, head[1] - 0.15 * r)
    er = max(1.0, 0.22 * r)
    draw.ellipse([eye[0] - er, eye[1] - er, eye[0] + er, eye[1] + er], fill=(200, 30, 30) if robot else (20, 20, 20))
    if action == "looking at":  # a dotted line of sight from the eye to the object
        target = _touch_point(eye, obj, inset)
        n = max(2, int(math.hypot(target[0] - eye[0], target[1] - eye[1]) / (0.07 * h)))
        dr = max(1.0, 0.35 * width)
        for k in range(1, n + 1):
            px, py = eye[0] + (target[0] - eye[0]) * k / n, eye[1] + (target[1] - eye[1]) * k / n
            draw.ellipse([px - dr, py - dr, px + dr, py + dr], fill=(20, 20, 20))
