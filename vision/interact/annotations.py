"""HOI annotations: the JSON-lines format and its loader.

One JSON object per line (blank lines are skipped), e.g.::

    {"image": "images/000001.png", "caption": "a person kicking a red ball",
     "triplets": [{"subject": "person", "action": "kicking", "object": "red ball",
                   "subject_box": [0.10, 0.20, 0.40, 0.95], "object_box": [0.42, 0.55, 0.60, 0.75]}]}

* ``image``: path of the image, relative to the annotation file's folder (or absolute).
* ``caption``: the text prompt ("" for none).
* ``triplets``: at most 30 interactions, each with exactly the roles ``subject``, ``action``, ``object``
  (free-text phrases) and ``subject_box``, ``object_box``: [x0, y0, x1, y1] normalised to the image
  (0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1, origin top-left). An empty list means text only.

Every problem is one :class:`~gencond.errors.UserError` naming the file and line.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Union

from gencond.errors import UserError
from gencond.files import read_text

from .tokenizer import MAX_INTERACTIONS

Box = tuple[float, float, float, float]
PHRASE_ROLES = ("subject", "action", "object")
BOX_ROLES = ("subject_box", "object_box")
ROLES = PHRASE_ROLES + BOX_ROLES


@dataclass(frozen=True)
class Triplet:
    """One interaction: who (subject) does what (action) to what (object), with both boxes."""

    subject: str
    action: str
    object: str
    subject_box: Box
    object_box: Box

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Annotation:
    """One annotated image (``image`` resolved to a path)."""

    image: Path
    caption: str
    triplets: list[Triplet] = field(default_factory=list)

    def to_json(self, root: Union[str, Path, None] = None) -> dict:
        image = self.image.relative_to(root) if root is not None else self.image
        return {"image": image.as_posix(), "caption": self.caption,
                "triplets": [t.to_json() for t in self.triplets]}


def check_box(box, what: str = "box") -> Box:
    """The box as a tuple of floats, or a ValueError saying what is wrong with it."""
    if not isinstance(box, (list, tuple)) or len(box) != 4 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        raise ValueError(f"{what} must be [x0, y0, x1, y1] (four numbers), got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
        raise ValueError(f"{what} {list(box)} is outside [0, 1]; boxes are normalised by the image size")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{what} {list(box)} is empty: it needs x0 < x1 and y0 < y1 (xyxy order)")
    return x0, y0, x1, y1


def parse_triplet(raw, index: int = 0) -> Triplet:
    """A triplet from its JSON object, or a ValueError naming the problem."""
    where = f"triplet {index}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object with {', '.join(ROLES)}, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in ROLES]
    if unknown:
        raise ValueError(f"{where} has unknown role '{unknown[0]}'; the roles are {', '.join(ROLES)}")
    missing = [k for k in ROLES if k not in raw]
    if missing:
        raise ValueError(f"{where} lacks '{missing[0]}'; each triplet needs {', '.join(ROLES)}")
    for role in PHRASE_ROLES:
        if not isinstance(raw[role], str) or not raw[role].strip():
            raise ValueError(f"{where}: '{role}' must be a non-empty phrase, got {raw[role]!r}")
    return Triplet(raw["subject"], raw["action"], raw["object"],
                   check_box(raw["subject_box"], f"{where} subject_box"),
                   check_box(raw["object_box"], f"{where} object_box"))


def parse_triplets(raw, max_interactions: int = MAX_INTERACTIONS) -> list[Triplet]:
    if not isinstance(raw, list):
        raise ValueError(f"'triplets' must be a list, got {type(raw).__name__}")
    if len(raw) > max_interactions:
        raise ValueError(f"{len(raw)} triplets, at most {max_interactions}; keep the {max_interactions} "
                         "largest (by subject + object area)")
    return [parse_triplet(t, i) for i, t in enumerate(raw)]


def parse_annotation(raw, root: Path, check_image: bool = True,
                     max_interactions: int = MAX_INTERACTIONS) -> Annotation:
    if not isinstance(raw, dict):
        raise ValueError(f"each line must be a JSON object, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in ("image", "caption", "triplets")]
    if unknown:
        raise ValueError(f"unknown key '{unknown[0]}'; a line has image, caption, triplets")
    if not isinstance(raw.get("image"), str) or not raw["image"]:
        raise ValueError("'image' (the image path) is missing")
    caption = raw.get("caption", "")
    if not isinstance(caption, str):
        raise ValueError(f"'caption' must be a string, got {type(caption).__name__}")
    image = Path(raw["image"])
    image = image if image.is_absolute() else root / image
    if check_image and not image.is_file():
        raise ValueError(f"image {image} does not exist")
    if check_image:
        check_image_decodes(image)
    return Annotation(image, caption, parse_triplets(raw.get("triplets", []), max_interactions))


def load_annotations(path: Union[str, Path], check_images: bool = True,
                     max_interactions: int = MAX_INTERACTIONS) -> list[Annotation]:
    """Every annotation of a JSON-lines file; a bad line is a UserError ``FILE:LINE: what is wrong``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"annotation file {path} does not exist; give a JSON-lines file (one image per line)")
    annotations = []
    text = read_text(path, "annotation file", 'JSON lines, {"image": ..., "caption": ..., "triplets": [...]} per line')
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
        try:
            annotations.append(parse_annotation(raw, path.parent, check_images, max_interactions))
        except ValueError as e:
            raise UserError(f"{path}:{number}: {e}") from None
    if not annotations:
        raise UserError(f"annotation file {path} holds no annotation; expected one JSON object per line")
    return annotations


def check_image_decodes(image: Path) -> None:
    """A ValueError unless ``image`` is an image PIL can read (its header and data are checked, not decoded)."""
    from PIL import Image

    try:
        with Image.open(image) as im:
            im.verify()
    except Exception as e:  # PIL raises UnidentifiedImageError, SyntaxError, OSError ... for damaged files
        raise ValueError(f"image {image} cannot be decoded ({type(e).__name__}); expected a PNG/JPEG/... image") from None


def read_json(path: Union[str, Path], flag: str):
    """The JSON document in ``path``, or a one-line UserError naming the command-line ``flag``."""
    try:
        return json.loads(read_text(path, flag, "a JSON document"))
    except json.JSONDecodeError as e:
        raise UserError(f"{flag} {path}: not valid JSON ({e})") from None


def write_annotations(path: Union[str, Path], annotations: Iterable[Annotation]) -> None:
    """Write annotations as JSON lines, image paths relative to the file's folder when inside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    with path.open("w", encoding="utf-8") as f:
        for a in annotations:
            image = a.image.resolve()
            rel = root if image.is_relative_to(root) else None
            f.write(json.dumps(Annotation(image, a.caption, a.triplets).to_json(rel)) + "\n")
