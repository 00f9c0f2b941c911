"""``gencond sample RUN --triplets FILE.json`` for ``interact`` runs: images drawn for a caption and its
(subject, action, object) triplets, saved clean and with the boxes and triplet labels overlaid.

``FILE.json``: one prompt ``{"caption": "...", "triplets": [{"subject": ..., "action": ...,
"object": ..., "subject_box": [x0, y0, x1, y1], "object_box": [...]}]}`` or a list of them; without
``--triplets``, ``--caption`` alone (text only). Classifier-free guidance drops caption and grounding
together (``--cfg-scale``); ``--beta`` is scheduled sampling: the gated layers are on for the first β
fraction of the steps (InteractDiffusion: 1.0, GLIGEN's pipeline: 0.3).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from gencond.arguments import add_sampling_arguments, non_negative_float, positive_int
from gencond.errors import UserError
from gencond.runs import output_dir

LABEL_COLOURS = ((230, 40, 40), (40, 120, 230), (30, 160, 60), (200, 120, 0))


def unit_fraction(value: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
    return v


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--triplets", help="JSON file: {caption, triplets} or a list of them")
    p.add_argument("--caption", help="the caption (overrides the file's; the only condition without --triplets)")
    p.add_argument("--num", type=positive_int, default=4, help="images per prompt (default 4)")
    p.add_argument("--beta", type=unit_fraction, default=1.0,
                   help="scheduled sampling: gated layers on for the first BETA of the steps (default 1.0)")
    p.add_argument("--cfg-scale", type=non_negative_float, help="classifier-free guidance (default: the run's)")
    p.add_argument("--out", help="output folder (default RUN_DIR/samples)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_sampling_arguments(p)


def read_prompts(path, caption) -> list[tuple[str, list]]:
    """(caption, triplets) pairs from ``--triplets`` / ``--caption``; one-line errors naming the file."""
    from .annotations import parse_triplets, read_json

    if path is None:
        if caption is None:
            raise UserError("give --triplets FILE.json (caption and triplets) or at least --caption TEXT")
        return [(caption, [])]
    raw = read_json(path, "--triplets")
    if raw == []:
        raise UserError(f"--triplets {path} holds no prompt; expected {PROMPT_FORMAT} (or a list of them)")
    prompts = []
    for i, item in enumerate(raw if isinstance(raw, list) else [raw]):
        if not isinstance(item, dict):
            raise UserError(f"--triplets {path}: prompt {i} must be {PROMPT_FORMAT}")
        unknown = sorted(set(item) - {"caption", "triplets"})
        if unknown:
            raise UserError(f"--triplets {path}: prompt {i} has unknown key '{unknown[0]}'; a prompt is {PROMPT_FORMAT}")
        if not isinstance(item.get("caption", ""), str):
            raise UserError(f"--triplets {path}: prompt {i}: 'caption' must be a string, got {item['caption']!r}")
        try:
            triplets = parse_triplets(item.get("triplets", []))
        except ValueError as e:
            raise UserError(f"--triplets {path}: prompt {i}: {e}") from None
        prompts.append((caption if caption is not None else item.get("caption", ""), triplets))
    return prompts


PROMPT_FORMAT = '{"caption": "...", "triplets": [{"subject", "action", "object", "subject_box", "object_box"}, ...]}'


def overlay(image, triplets, scale: int):
    """The image enlarged ``scale`` x (nearest) with each triplet's boxes and a 'subject action object' label."""
    from PIL import Image, ImageDraw

    big = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    w, h = big.size
    for n, t in enumerate(triplets):
        colour = LABEL_COLOURS[n % len(LABEL_COLOURS)]
        for box, width in ((t.subject_box, 2), (t.object_box, 1)):
            draw.rectangle([box[0] * w, box[1] * h, box[2] * w - 1, box[3] * h - 1], outline=colour, width=width)
        draw.text((2, 2 + 10 * n), f"{t.subject} {t.action} {t.object}", fill=colour)
    return big


def sample_command(args: argparse.Namespace) -> Path:
    import torch
    from PIL import Image

    from gencond.pipeline import Pipeline

    from .model import generate
    from .task import TASK, condition

    prompts = read_prompts(args.triplets, args.caption)
    pipeline = Pipeline.from_args(args, task=TASK, needed_by="gencond sample --triplets", device="cpu",
                                  cfg_scale=args.cfg_scale)  # the conditions are made on the CPU
    cfg, model, process = pipeline.cfg, pipeline.model, pipeline.process
    size, grounded = model.unet.config.sample_size, model.grounded
    too_many = next((i for i, (_, ts) in enumerate(prompts) if len(ts) > cfg.model.max_interactions), None)
    if grounded and too_many is not None:
        raise UserError(f"--triplets {args.triplets}: prompt {too_many} has {len(prompts[too_many][1])} triplets; "
                        f"{args.run_dir} takes at most {cfg.model.max_interactions} (its model.max_interactions)")
    if not grounded and any(ts for _, ts in prompts):
        print(f"note: {args.run_dir} has no grounding (model.grounding none); the triplets only label the images")
    out = Path(args.out) if args.out else output_dir(args.run_dir) / "samples"
    out.mkdir(parents=True, exist_ok=True)
    scale = max(1, math.ceil(128 / size))
    generator = torch.Generator().manual_seed(args.seed)
    for k, (caption, triplets) in enumerate(prompts):
        cond = condition([caption] * args.num, [triplets] * args.num, cfg.model.text_max_tokens, grounded,
                         cfg.model.max_interactions)
        x = generate(model, process, cfg.sampling, cond, args.num, generator, args.beta, progress=not args.quiet)
        images = [Image.fromarray(((im + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
                  for im in x]
        clean = Image.new("RGB", (size * scale * len(images), size * scale))
        boxed = clean.copy()
        for i, im in enumerate(images):
            clean.paste(im.resize((size * scale,) * 2, Image.NEAREST), (i * size * scale, 0))
            boxed.paste(overlay(im, triplets, scale), (i * size * scale, 0))
        for name, picture in ((f"prompt{k}.png", clean), (f"prompt{k}_boxes.png", boxed)):
            picture.save(out / name)
        print(f"'{caption}', {len(triplets)} triplet(s): {out / f'prompt{k}.png'} and {out / f'prompt{k}_boxes.png'}")
    return out


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--splits", default="single,double,no_caption,unseen",
                   help="HOI-shapes evaluation splits (default single,double,no_caption,unseen)")
    p.add_argument("--num", type=positive_int, default=200, help="scenes per split (default 200)")
    p.add_argument("--batch-size", type=positive_int, default=50, help="images generated at once (default 50)")
    p.add_argument("--beta", type=unit_fraction, default=1.0, help="scheduled sampling (as for sample)")
    p.add_argument("--cfg-scale", type=non_negative_float, help="classifier-free guidance (default: the run's)")
    p.add_argument("--evaluator-scenes", type=positive_int, default=4000,
                   help="renders the verb evaluator trains on (default 4000; cached)")
    p.add_argument("--evaluator-steps", type=positive_int, default=1500, help="its training steps (default 1500)")
    p.add_argument("--detector-scenes", type=positive_int, default=3000,
                   help="renders the entity detector trains on (default 3000; cached)")
    p.add_argument("--detector-steps", type=positive_int, default=1200,
                   help="training steps of the entity detector (triplet recall, box alignment; default 1200; cached)")
    p.add_argument("--out", help="output folder (default RUN_DIR/eval/hoi_shapes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_sampling_arguments(p)


def bootstrap_interval(correct, draws: int = 1000, seed: int = 0) -> list[float]:
    """95 % bootstrap interval of a mean of 0/1 outcomes."""
    import numpy as np

    values = np.asarray(correct, dtype=float)
    if not len(values):
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (draws, len(values)))].mean(1)
    return [round(float(np.quantile(means, 0.025)), 4), round(float(np.quantile(means, 0.975)), 4)]


def eval_command(args: argparse.Namespace) -> dict:
    """Interaction accuracy given the boxes of images generated for held-out HOI-shapes scenes, beside the
    renders of the same scenes, and a Fréchet distance and KID in the evaluator's features against those
    renders (features of the image with the pair's box masks, one per triplet)."""
    import torch

    from gencond.pipeline import Pipeline

    from .detector import entity_detector
    from .evaluators import TEST_SEED, rendered, verb_classifier
    from .task import TASK

    splits = _eval_splits(args.splits)
    pipeline = Pipeline.from_args(args, task=TASK, needed_by="gencond eval", device="cpu", cfg_scale=args.cfg_scale)
    cfg, model = pipeline.cfg, pipeline.model
    size = model.unet.config.sample_size
    classifier, evaluator_accuracy = verb_classifier(size, args.evaluator_scenes, steps=args.evaluator_steps)
    detector, detector_recall = entity_detector(size, args.detector_scenes, steps=args.detector_steps)
    generator = torch.Generator().manual_seed(args.seed)
    results = {"run": str(args.run_dir), "grounding": cfg.model.grounding, "sampling": dict(cfg.sampling),
               "beta": args.beta, "evaluator_accuracy_on_renders": evaluator_accuracy,
               "detector_entity_recall_on_renders": detector_recall, "splits": {}}
    for split in splits:
        renders, scenes = rendered(split, args.num, TEST_SEED, size)
        generated = _generate_scenes(pipeline, scenes, args, generator, desc=f"generate {split}")
        r = results["splits"][split] = _score_split(classifier, detector, generated, renders, [s.triplets for s in scenes])
        print(f"{split}: interaction accuracy {r['interaction_accuracy']:.3f} {r['interval_95']} over {r['pairs']} pairs "
              f"(renders {r['renders_accuracy']:.3f}); triplet recall@0.5 {r['triplet_recall_iou50']:.3f} "
              f"(renders {r['renders_triplet_recall_iou50']:.3f}); box alignment {r['box_alignment']:.3f} "
              f"(renders {r['renders_box_alignment']:.3f}); FD {r['fd_evaluator_features']:.2f}, KID {r['kid_evaluator_features']:.4f}")
    out = Path(args.out) if args.out else output_dir(args.run_dir) / "eval" / "hoi_shapes"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"results in {out / 'results.json'}")
    return results


def _eval_splits(text: str) -> list[str]:
    """--splits as a list of HOI-shapes evaluation splits; a one-line error names an unknown one."""
    from .scenes import SPLITS

    splits = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in splits if s not in SPLITS or s == "train"]
    if unknown or not splits:
        raise UserError(f"--splits: unknown split '{unknown[0] if unknown else ''}'; evaluation splits: "
                        + ", ".join(s for s in SPLITS if s != "train"))
    return splits


def _generate_scenes(pipeline, scenes, args: argparse.Namespace, generator, desc: str):
    """Images of ``scenes`` (their captions and triplets with boxes), ``args.batch_size`` at a time."""
    import torch
    from tqdm import tqdm

    from .model import generate
    from .task import condition

    cfg, model = pipeline.cfg, pipeline.model
    generated = []
    for i in tqdm(range(0, len(scenes), args.batch_size), desc=desc, disable=args.quiet):
        batch = scenes[i:i + args.batch_size]
        cond = condition([s.caption for s in batch], [s.triplets for s in batch], cfg.model.text_max_tokens,
                         model.grounded, cfg.model.max_interactions)
        generated.append(generate(model, pipeline.process, cfg.sampling, cond, len(batch), generator, args.beta))
    return torch.cat(generated)


def _score_split(classifier, detector, generated, renders, triplets) -> dict:
    """One split's scores of the generated images, beside the renders of the same scenes: interaction accuracy,
    triplet recall and box alignment (with 95 % intervals), FD and KID in the evaluator's features."""
    import torch

    from vision.frechet import classifier_features, frechet_distance, kernel_inception_distance

    from .detector import box_alignment, detect, triplet_recall
    from .evaluators import pair_inputs, predict_verbs

    gen_inputs, labels = pair_inputs(generated, triplets)
    real_inputs, _ = pair_inputs(renders, triplets)
    correct = (predict_verbs(classifier, gen_inputs) == labels).tolist()
    real_correct = (predict_verbs(classifier, real_inputs) == labels).tolist()
    with torch.no_grad():
        fg, fr = classifier_features(classifier, gen_inputs), classifier_features(classifier, real_inputs)
        fd = frechet_distance(fg, fr) if len(gen_inputs) > 2 else float("nan")
        kid = kernel_inception_distance(fg, fr) if len(gen_inputs) > 1 else float("nan")
    found, found_real = detect(detector, generated), detect(detector, renders)
    recalled = triplet_recall(found, generated, triplets, classifier)
    recalled_real = triplet_recall(found_real, renders, triplets, classifier)
    return {
        "pairs": len(labels), "interaction_accuracy": round(sum(correct) / max(len(correct), 1), 4),
        "interval_95": bootstrap_interval(correct), "renders_accuracy": round(sum(real_correct) / max(len(real_correct), 1), 4),
        "triplet_recall_iou50": round(sum(recalled) / max(len(recalled), 1), 4),
        "triplet_recall_interval_95": bootstrap_interval(recalled),
        "renders_triplet_recall_iou50": round(sum(recalled_real) / max(len(recalled_real), 1), 4),
        "box_alignment": round(box_alignment(found, triplets), 4),
        "renders_box_alignment": round(box_alignment(found_real, triplets), 4),
        "fd_evaluator_features": round(fd, 3), "kid_evaluator_features": round(kid, 5),
        "pair_correct": [int(c) for c in correct], "triplet_recalled": [int(r) for r in recalled]}
