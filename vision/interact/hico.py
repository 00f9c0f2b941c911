"""HICO-DET to gencond's HOI annotation format (JSON lines, :mod:`.annotations`).

    python -m vision.interact.hico --annotations trainval_hico.json --images hico_20160224_det/images/train2015 \\
        --verbs hico_verb_list.txt --out runs/hico/train.jsonl

Input: the HICO-DET annotation JSON of PPDM / QPIC (``trainval_hico.json``, ``test_hico.json``): a list of
``{"file_name", "annotations": [{"bbox": [x0, y0, x1, y1] in pixels, "category_id": COCO id}],
"hoi_annotation": [{"subject_id", "object_id", "category_id": verb id (1-based)}]}``. ``--verbs``
names the verbs, one per line in id order (a leading id column is allowed, as in HICO's
``hico_verb_list.txt``); objects are named by their COCO category. Boxes are normalised by the image's
size (read from the image header); ``no_interaction`` pairs are dropped; at most 30 interactions per image
are kept, those of the largest subject + object area (as the official code does); the caption is
written from the triplets ("a person riding a bicycle and a person holding a cup" style: subject, verb,
object). Images without a kept interaction are skipped and counted.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from gencond.errors import UserError
from gencond.files import parsing, read_text

from .annotations import Annotation, Triplet, read_json, write_annotations
from .tokenizer import MAX_INTERACTIONS

# COCO's 80 category names by their (non-contiguous) ids, as HICO-DET's object annotations use them.
COCO_NAMES = dict(zip(
    (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35,
     36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65,
     67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90),
    ("person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
     "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
     "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
     "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
     "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
     "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
     "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
     "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")))


def read_verbs(path: str | Path) -> list[str]:
    """Verb names in id order from a file of one verb per line (``1 adjust`` or ``adjust``)."""
    lines = [line.split() for line in read_text(path, "--verbs", "one verb per line").splitlines() if line.strip()]
    if not lines:
        raise UserError(f"--verbs {path} is empty; expected one verb per line (`1 adjust` or `adjust`)")
    bare = next((n for n, parts in enumerate(lines, 1) if len(parts) == 1 and parts[0].isdigit()), None)
    if bare:
        raise UserError(f"--verbs {path}: verb {bare} is only an id ({lines[bare - 1][0]}); expected `ID VERB` or `VERB` per line")
    return [(parts[1] if len(parts) > 1 and parts[0].isdigit() else parts[0]).replace("_", " ") for parts in lines]


def caption_of(triplets: Sequence[Triplet]) -> str:
    return " and ".join(f"a {t.subject} {t.action} a {t.object}" for t in triplets)


def convert_image(item: dict, images: Path, verbs: Sequence[str], where: str) -> Annotation | None:
    """One HICO-DET image as an Annotation (None when it has no interaction to keep)."""
    from PIL import Image

    path = images / item["file_name"]
    if not path.is_file():
        raise UserError(f"{where}: image {path} does not exist (check --images)")
    with parsing(path, f"{where}: image", "an image PIL can decode"), Image.open(path) as im:
        width, height = im.size
    boxes = item.get("annotations", [])
    pairs = []
    for h in item.get("hoi_annotation", []):
        try:
            subject, obj = boxes[h["subject_id"]], boxes[h["object_id"]]
            verb = verbs[h["category_id"] - 1]
        except (IndexError, KeyError, TypeError) as e:
            raise UserError(f"{where}: a hoi_annotation entry does not fit its boxes or --verbs ({e!r})") from None
        if verb == "no interaction":
            continue

        def norm(b):
            x0, y0, x1, y1 = (float(v) for v in b["bbox"])
            x0, x1 = sorted((min(max(x0 / width, 0.0), 1.0), min(max(x1 / width, 0.0), 1.0)))
            y0, y1 = sorted((min(max(y0 / height, 0.0), 1.0), min(max(y1 / height, 0.0), 1.0)))
            return x0, y0, max(x1, x0 + 1e-4), max(y1, y0 + 1e-4)

        sb, ob = norm(subject), norm(obj)
        area = (sb[2] - sb[0]) * (sb[3] - sb[1]) + (ob[2] - ob[0]) * (ob[3] - ob[1])
        name = COCO_NAMES.get(obj.get("category_id"), "object")
        pairs.append((area, Triplet(COCO_NAMES.get(subject.get("category_id"), "person"), verb, name, sb, ob)))
    if not pairs:
        return None
    kept = [t for _, t in sorted(pairs, key=lambda p: -p[0])[:MAX_INTERACTIONS]]
    return Annotation(path, caption_of(kept), kept)


def convert(annotations: str | Path, images: str | Path, verbs: str | Path, out: str | Path) -> dict:
    """Write ``out`` (JSON lines); returns counts of written and skipped images."""
    items = read_json(annotations, "--annotations")
    if not isinstance(items, list):
        raise UserError(f"--annotations {annotations}: expected a list of images (PPDM / QPIC format)")
    names = read_verbs(verbs)
    converted = [convert_image(item, Path(images), names, f"{annotations} image {i} ({item.get('file_name')})")
                 for i, item in enumerate(items)]
    kept = [a for a in converted if a is not None]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_annotations(out, kept)
    return {"images": len(kept), "skipped_without_interaction": len(converted) - len(kept),
            "triplets": sum(len(a.triplets) for a in kept)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", required=True, help="trainval_hico.json or test_hico.json (PPDM / QPIC)")
    p.add_argument("--images", required=True, help="the folder of the images (train2015 or test2015)")
    p.add_argument("--verbs", required=True, help="verb names, one per line in id order")
    p.add_argument("--out", required=True, help="the JSON-lines file to write")
    args = p.parse_args(argv)
    try:
        counts = convert(args.annotations, args.images, args.verbs, args.out)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {args.out}: {counts['images']} images, {counts['triplets']} triplets "
          f"({counts['skipped_without_interaction']} images without an interaction skipped)")


if __name__ == "__main__":
    main()
