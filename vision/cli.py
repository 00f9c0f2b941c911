"""``gencond sample RUN_DIR`` (PNG grids) and ``gencond eval RUN_DIR`` (linear probe + Fréchet distance)
for ``ddae`` runs."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from gencond.arguments import add_sampling_arguments, non_negative_float
from gencond.errors import UserError
from gencond.runs import output_dir

MIN_CELL_PX = 64  # sample grids are upscaled so that each sample is at least this wide


def _int_list(text: str | None, what: str):
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad {what} '{text}'; give comma-separated integers, e.g. 3,5") from None


def _common_arguments(p: argparse.ArgumentParser) -> None:
    add_sampling_arguments(p)
    p.add_argument("--cfg-scale", type=non_negative_float, help="classifier-free guidance weight (class-conditional runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _load(args):
    """The run's :class:`~gencond.pipeline.Pipeline` with the sampling flags applied."""
    from gencond.pipeline import Pipeline

    pipeline = Pipeline.from_args(args, task="ddae", needed_by=f"gencond {getattr(args, 'verb', 'sample')}",
                                  cfg_scale=args.cfg_scale)
    if pipeline.sampling.cfg_scale is not None and not pipeline.model.config.num_classes:
        raise UserError("--cfg-scale needs a class-conditional run (model.class_conditional=true)")
    return pipeline


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num", type=int, default=64, help="images to draw (default 64)")
    p.add_argument("--label", type=int, help="class-conditional runs: draw only this class (default: classes in turn)")
    p.add_argument("--out", help="PNG path (default RUN_DIR/samples/<settings>.png)")
    p.add_argument("--scale", type=int, help="nearest-neighbour upscaling of the PNG grid (default: the smallest "
                   f"integer factor that shows each sample at least {MIN_CELL_PX} px wide)")
    _common_arguments(p)


def grid_scale(image_size: int) -> int:
    """The default integer upscaling of a sample grid: each sample at least MIN_CELL_PX wide (8x8 digits x8,
    28x28 MNIST x3, 32x32 CIFAR x2, 64 px and up x1)."""
    return max(1, math.ceil(MIN_CELL_PX / image_size))


def save_grid(images, out: Path, nrow: int, scale: int) -> None:
    """A PNG grid of ``images`` in [-1, 1] (1 px padding), upscaled by ``scale`` with nearest neighbour so
    that small images are viewable; the images themselves are not changed."""
    from torchvision.utils import make_grid, save_image

    grid = make_grid((images + 1) / 2, nrow=nrow, padding=1)
    if scale > 1:
        grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    save_image(grid, out)


def sample_command(args: argparse.Namespace) -> Path:
    import torch

    from .generate import generate_images

    if args.scale is not None and args.scale < 1:
        raise UserError(f"--scale {args.scale}: give a positive integer upscaling factor")
    pipeline = _load(args)
    cfg, model = pipeline.cfg, pipeline.model
    labels = None
    if args.label is not None:
        if not 0 <= args.label < model.config.num_classes:
            raise UserError(f"--label {args.label} is not a class of this run (0..{model.config.num_classes - 1}; "
                            f"unconditional runs take no label)")
        labels = torch.full((args.num,), args.label)
    images, rate = generate_images(pipeline, args.num, batch_size=cfg.eval.sample_batch_size, seed=args.seed,
                                   labels=labels, progress=not args.quiet)
    s = cfg.sampling
    tag = f"{s.scheduler}{s.num_steps or cfg.diffusion.num_train_timesteps}_seed{args.seed}" + (
        f"_cfg{s.cfg_scale:g}" if s.cfg_scale is not None else "") + (f"_label{args.label}" if labels is not None else "")
    out = Path(args.out) if args.out else output_dir(args.run_dir) / "samples" / f"{tag}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    scale = args.scale or grid_scale(cfg.data.image_size)
    save_grid(images, out, nrow=max(1, int(math.ceil(math.sqrt(args.num)))), scale=scale)
    print(f"wrote {args.num} samples to {out} (shown at {scale}x; {rate:.1f} images/s)")
    return out


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probe-blocks", help="comma-separated blocks to probe (default: the config's eval.probe_blocks)")
    p.add_argument("--probe-timesteps", help="comma-separated timesteps (default: the config's eval.probe_timesteps)")
    p.add_argument("--probe-epochs", type=int, help="linear-probe epochs (default: the config's)")
    p.add_argument("--fd-samples", type=int, help="generated images for the Fréchet distance (default: the config's)")
    p.add_argument("--skip-probe", action="store_true")
    p.add_argument("--skip-fd", action="store_true")
    p.add_argument("--out", help="JSON path (default RUN_DIR/eval/<settings>.json)")
    _common_arguments(p)


def evaluate_run(pipeline, *, probe_blocks=None, probe_timesteps=None, probe_epochs=None, fd_samples=None,
                 skip_probe=False, skip_fd=False, seed=0, progress=True) -> dict:
    """Linear-probe grid and Fréchet distance of a loaded run, on its dataset's test split."""
    from .data import load_images
    from .frechet import (classifier_features, frechet_distance, inception_available, inception_features,
                          trained_classifier, weak_classifier_warning)
    from .generate import generate_images
    from .probe import default_probe_blocks, probe_grid, probe_subset, raw_pixel_baselines

    cfg, model = pipeline.cfg, pipeline.model
    splits = load_images(cfg.data)
    if len(splits.test_images) == 0:
        raise UserError(f"dataset '{cfg.data.dataset}' has no test images to evaluate on")
    e = cfg.eval
    result: dict = {"run": cfg.name, "dataset": splits.name, "train_images": len(splits.train_images),
                    "test_images": len(splits.test_images)}
    if not skip_probe:
        blocks = probe_blocks or (list(e.probe_blocks) if e.probe_blocks else default_probe_blocks(model))
        timesteps = probe_timesteps or list(e.probe_timesteps)
        ptr = probe_subset(splits.train_images, splits.train_labels, e.probe_max_train)
        pte = probe_subset(splits.test_images, splits.test_labels, e.probe_max_test)
        start = time.perf_counter()
        rows = probe_grid(model, pipeline.process, ptr, pte, splits.num_classes, blocks, timesteps,
                          epochs=probe_epochs or e.probe_epochs, batch_size=e.probe_batch_size, lr=e.probe_lr,
                          progress=progress)
        best = max(rows, key=lambda r: r["accuracy"])
        baselines = raw_pixel_baselines(ptr, pte, splits.num_classes, getattr(model.config, "patch_size", 4),
                                        epochs=probe_epochs or e.probe_epochs, batch_size=e.probe_batch_size, lr=e.probe_lr)
        result["linear_probe"] = {"best_accuracy": best["accuracy"], "best_block": best["block"], "best_t": best["t"],
                                  "grid": rows, "baselines": baselines,
                                  "beats_raw_pixels": best["accuracy"] > baselines["raw_pixels"],
                                  "seconds": time.perf_counter() - start}
    if not skip_fd:
        n = fd_samples or e.fd_samples
        fake, rate = generate_images(pipeline, n, batch_size=e.fd_batch_size, seed=seed, progress=progress)
        real = splits.test_images
        s = cfg.sampling
        fd = {"samples": n, "real_images": len(real), "sampler": f"{s.scheduler}-{s.num_steps or cfg.diffusion.num_train_timesteps}",
              "cfg_scale": s.cfg_scale, "sampling_images_per_s": rate}
        if inception_available() and real.shape[1] in (1, 3):
            fd.update(metric="FID-Inception", value=frechet_distance(inception_features(fake), inception_features(real)))
        elif splits.num_classes > 1:
            clf, acc = trained_classifier(splits.name, (splits.train_images, splits.train_labels),
                                          (splits.test_images, splits.test_labels), splits.num_classes,
                                          steps=e.fd_classifier_steps)
            fd.update(metric=f"FD-{splits.name.upper() if splits.name in ('mnist', 'digits') else splits.name}-classifier",
                      value=frechet_distance(classifier_features(clf, fake), classifier_features(clf, real)),
                      feature_classifier_test_accuracy=acc)
            warning = weak_classifier_warning(acc)
            fd["reliable"] = warning is None
            if warning:
                fd["warning"] = warning
        else:
            fd.update(metric=None, value=None, note="no Inception weights and a single class: no feature network to train")
        result["frechet"] = fd
    return result


def eval_command(args: argparse.Namespace) -> dict:
    pipeline = _load(args)
    cfg = pipeline.cfg
    result = evaluate_run(pipeline, probe_blocks=_int_list(args.probe_blocks, "--probe-blocks"),
                          probe_timesteps=_int_list(args.probe_timesteps, "--probe-timesteps"),
                          probe_epochs=args.probe_epochs, fd_samples=args.fd_samples, skip_probe=args.skip_probe,
                          skip_fd=args.skip_fd, seed=args.seed, progress=not args.quiet)
    s = cfg.sampling
    tag = f"{args.weights}_{s.scheduler}{s.num_steps or cfg.diffusion.num_train_timesteps}" + (
        f"_cfg{s.cfg_scale:g}" if s.cfg_scale is not None else "")
    out = Path(args.out) if args.out else output_dir(args.run_dir) / "eval" / f"{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if result.get("frechet", {}).get("warning"):
        print(f"gencond eval: warning: {result['frechet']['warning']}", file=sys.stderr)
    summary = {}
    if "linear_probe" in result:
        lp = result["linear_probe"]
        summary["linear_probe_accuracy"] = round(lp["best_accuracy"], 4)
        summary["probe_at"] = f"block {lp['best_block']}, t={lp['best_t']}"
        summary.update({f"probe_{k}": round(v, 4) for k, v in lp["baselines"].items()})
    if "frechet" in result and result["frechet"]["value"] is not None:
        fd = result["frechet"]
        summary[fd["metric"]] = round(fd["value"], 3)
        if "feature_classifier_test_accuracy" in fd:
            summary["feature_classifier_test_accuracy"] = round(fd["feature_classifier_test_accuracy"], 4)
        if fd.get("reliable") is False:
            summary["fd_reliable"] = False
        summary["sampling_images_per_s"] = round(fd["sampling_images_per_s"], 1)
    print(json.dumps(summary))
    print(f"wrote {out}")
    return result
