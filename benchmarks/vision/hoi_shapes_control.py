"""The grounding positive control of issue 40, scored: a control run (``configs/vision/hoi_shapes_control.yaml``:
caption always dropped, one pair per scene) draws held-out ``single`` scenes with its real and with the null
grounding, its base draws the same scenes; the HOI-shapes detector scores box alignment (mean IoU of each given
box with the best detection of its class) per image, with paired bootstrap differences (real vs null, real vs
base). A grid of the real-grounding samples with their boxes is written beside the JSON.

    python benchmarks/vision/hoi_shapes_control.py $GENCOND_RUNS_DIR/hoi_control --num 64 \\
        --out runs/bench/hoi_control.json
    python benchmarks/record.py benchmarks/results/vision/hoi_shapes_control.jsonl runs/bench/hoi_control.json \\
        --run control_b8234_step1000 --threads 1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hoi_shapes_table import paired_difference  # noqa: E402


def per_image_alignment(detector, images, triplets) -> list[float]:
    """Box alignment of each image on its own."""
    from vision.interact.detector import box_alignment, detect

    found = detect(detector, images)
    return [box_alignment([f], [t]) for f, t in zip(found, triplets)]


def grid(images, triplets, path: Path, columns: int = 8, scale: int = 4) -> None:
    """The first ``columns`` x 2 samples enlarged, with their boxes drawn."""
    from PIL import Image

    from vision.interact.cli import overlay

    tiles = []
    for image, ts in list(zip(images, triplets))[:2 * columns]:
        array = ((image.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
        tiles.append(overlay(Image.fromarray(array), ts, scale))
    w, h = tiles[0].size
    canvas = Image.new("RGB", (w * columns, h * ((len(tiles) + columns - 1) // columns)))
    for i, tile in enumerate(tiles):
        canvas.paste(tile, ((i % columns) * w, (i // columns) * h))
    canvas.save(path)


def main() -> None:
    from gencond.pipeline import Pipeline, set_threads
    from vision.interact.control import control_samples
    from vision.interact.detector import entity_detector

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the control run (or export) folder")
    p.add_argument("--base", help="its base (default: the run's model.base)")
    p.add_argument("--num", type=int, default=64, help="held-out scenes (default 64)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="the result JSON; the grid goes beside it as .png")
    args = p.parse_args()
    set_threads(args.threads)

    control = Pipeline.from_run(args.run, task="interact", device="cpu")
    control.configure(num_steps=args.steps)
    base = Pipeline.from_run(args.base or control.cfg.model.base, task="interact", device="cpu")
    base.configure(num_steps=args.steps)
    size = control.model.unet.config.sample_size
    detector, recall = entity_detector(size)
    slots = control.cfg.model.max_interactions
    real, triplets = control_samples(control.model, control.process, control.sampling, args.num, args.seed,
                                     "real", max_interactions=slots)
    null, _ = control_samples(control.model, control.process, control.sampling, args.num, args.seed, "null",
                              max_interactions=slots)
    drawn, _ = control_samples(base.model, base.process, base.sampling, args.num, args.seed, "real",
                               max_interactions=slots)
    scores = {name: per_image_alignment(detector, images, triplets)
              for name, images in (("real", real), ("null", null), ("base", drawn))}
    result = {"run": str(args.run), "base": str(args.base or control.cfg.model.base), "num": args.num,
              "steps": args.steps, "seed": args.seed, "detector_entity_recall_on_renders": recall,
              "box_alignment": {k: sum(v) / len(v) for k, v in scores.items()}}
    for other in ("null", "base"):
        diff, interval, pvalue = paired_difference(scores["real"], scores[other])
        result[f"real_minus_{other}"] = {"mean": diff, "interval_95": interval, "p": pvalue}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    grid(real, triplets, out.with_suffix(".png"))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
