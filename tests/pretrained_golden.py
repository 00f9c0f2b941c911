"""Golden outputs of the shipped models: a fixed seed and a few sampling steps through each task's public
entry point, kept as small arrays in ``tests/golden/<name>.npz`` so that any change that alters what a
shipped model does fails the suite.

After a deliberate change (a new model in ``pretrained/``, or a sampler change that is meant to alter
outputs), rewrite a model's golden file and say why in the commit::

    python -m tests.pretrained_golden pretrained/NAME
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"


def _gencond(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "gencond", *argv], check=True, capture_output=True, text=True)


def _tsdiff(model: Path, scratch: Path) -> dict:
    """One test window of the first series, 8 samples, 3 DDPM steps, through ``gencond forecast``."""
    import pandas as pd

    _gencond("forecast", str(model), "--max-series", "1", "--samples", "8", "--steps", "3", "--seed", "0",
             "--threads", "1", "--no-recalibrate", "--quiet", "--out", str(scratch / "f"))
    table = pd.read_csv(scratch / "f" / "forecasts.csv")
    return {"quantiles": table[[f"q{q / 10:.1f}" for q in range(1, 10)]].to_numpy(np.float64)}


def _ddae(model: Path, scratch: Path) -> dict:
    """Four images, DDIM-3, seed 0 (``gencond sample`` runs too, for the verb)."""
    from gencond.pipeline import Pipeline
    from vision.generate import generate_images

    _gencond("sample", str(model), "--num", "4", "--steps", "3", "--quiet", "--out", str(scratch / "grid.png"))
    pipeline = Pipeline.from_run(model, device="cpu", threads=1)
    pipeline.configure(num_steps=3)
    images, _ = generate_images(pipeline, 4, batch_size=4, seed=0, progress=False)
    return {"images": images.numpy().astype(np.float64)}


def _video_planner(model: Path, scratch: Path) -> dict:
    """A door-open plan from a fixed synthetic first frame, DDIM-3, seed 0 (uint8 frames)."""
    from video.planner import VideoPlanner

    torch.set_num_threads(1)
    planner = VideoPlanner(model, steps=3, seed=0)
    size = planner.resolution
    first = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    plan = planner.plan(first, "door open", "corner")
    return {"plan": np.asarray(plan, np.float64)}


def _interact(model: Path, scratch: Path) -> dict:
    """Two images of one caption (and one triplet where the model is grounded), DDIM-3, seed 0."""
    from gencond.diffusion import DiffusionProcess
    from gencond.runs import load_run
    from omegaconf import OmegaConf
    from vision.interact.model import generate
    from vision.interact.task import condition

    (scratch / "p.json").write_text('{"caption": "a person holding a red kite"}')
    _gencond("sample", str(model), "--triplets", str(scratch / "p.json"), "--num", "1", "--steps", "3", "--quiet",
             "--out", str(scratch / "s"))
    cfg, net = load_run(model)
    torch.set_num_threads(1)
    sampling = OmegaConf.merge(cfg.sampling, {"num_steps": 3, "scheduler": "ddim"})
    cond = condition(["a person holding a red kite"] * 2, [[]] * 2, cfg.model.text_max_tokens, net.grounded,
                     cfg.model.max_interactions)
    images = generate(net, DiffusionProcess(cfg.diffusion), sampling, cond, 2, torch.Generator().manual_seed(0))
    return {"images": images.numpy().astype(np.float64)}


GOLDEN_OF = {"tsdiff": _tsdiff, "ddae": _ddae, "video-planner": _video_planner, "interact": _interact}
TOLERANCE = {"tsdiff": 1e-4, "ddae": 1e-4, "video-planner": 2.0, "interact": 1e-4}  # absolute; plans are uint8 levels


def golden_output(model: Path) -> dict:
    from gencond.export import check_export

    task = check_export(model)["task"]
    if task not in GOLDEN_OF:
        raise KeyError(f"no golden output is defined for task '{task}'; add one to {__file__}")
    with tempfile.TemporaryDirectory() as scratch:
        return GOLDEN_OF[task](model, Path(scratch))


def golden_path(model: Path) -> Path:
    return GOLDEN / f"{Path(model).name}.npz"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        out = golden_path(Path(arg))
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out, **golden_output(Path(arg)))
        print(f"wrote {out}")
