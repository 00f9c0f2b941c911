"""Does a video planner learn its instruction? A probe where only the text decides the motion.

    python benchmarks/video_text_probe.py                       # 4 variants x 800 steps, ~6 min on 1 core

Two training clips share their first frame (a square at x = 6 on a 16x16 grey frame); "door open"
moves it right, "door close" moves it left. A tiny VideoUNet (base 8, mult 1-2) is trained on them with
the core's diffusion loss (100-step cosine, v-prediction), and every ``--every`` steps the loss at a
high-noise step (``--t``, default 95: the steps where sampling decides which way things move) is
measured with the correct and with the swapped instruction on fixed noise. A gap between the two means
the text is used. Variants: min-SNR gamma 5 (AVDC) or the plain loss, and the text vector as a
scale-and-shift after the norm (guided-diffusion) or added before it (AVDC).
Writes benchmarks/results/video_text_probe.json for the default settings, otherwise a file named after
its settings. Measurement only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from gencond.config import DiffusionConfig
from gencond.diffusion import DiffusionProcess
from gencond.text import text_encoder
from video.data import frames_to_unit
from video.model import VideoUNet

RES = 16
DEFAULTS = dict(steps=800, every=200, t=95, lr=1e-3, seed=0)


def moving_square(direction: int, start: int = 6, steps: int = 12) -> np.ndarray:
    frames = np.full((steps, RES, RES, 3), 90, np.uint8)
    for k in range(steps):
        x = int(np.clip(start + direction * k, 0, RES - 4))
        frames[k, 6:10, x:x + 4] = 255
    return frames


def probe(min_snr_gamma, scale_shift: bool, args) -> list[dict]:
    torch.manual_seed(args.seed)
    text = text_encoder(16).encode(["door open", "door close"])
    right, left = (frames_to_unit(moving_square(d)[[0, 4, 8, 11]]) for d in (1, -1))
    video = torch.stack([right[1:], left[1:]]).movedim(1, 2)
    first = torch.stack([right[0], left[0]])
    model = VideoUNet(image_size=RES, base_channels=8, channel_mult=(1, 2), attention_resolutions=(), head_channels=8,
                      frames=3, scale_shift_norm=scale_shift)
    process = DiffusionProcess(DiffusionConfig(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                                               prediction_type="v_prediction", min_snr_gamma=min_snr_gamma))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    idx = torch.tensor([0, 1] * 4)
    t = torch.full((8,), args.t)
    noise = torch.randn(video[idx].shape, generator=torch.Generator().manual_seed(9))
    x_t, target = process.add_noise(video[idx], noise, t), process.target(video[idx], noise, t)
    rows = []
    for step in range(args.steps + 1):
        if step % args.every == 0:
            with torch.no_grad():
                losses = {}
                for name, which in (("correct", idx), ("swapped", 1 - idx)):
                    cond = {"first_frame": first[idx], "text": text.tokens[which], "text_mask": text.mask[which]}
                    losses[name] = round(float((model(x_t, t, cond) - target).square().mean()), 4)
            rows.append({"step": step, **losses})
            print(f"  step {step}: loss at t={args.t} with the correct text {losses['correct']}, swapped {losses['swapped']}")
        if step == args.steps:
            break
        cond = {"first_frame": first[idx], "text": text.tokens[idx], "text_mask": text.mask[idx]}
        loss, _ = process.training_loss(model, video[idx], cond=cond, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, value in DEFAULTS.items():
        p.add_argument(f"--{key}", type=type(value), default=value)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {"machine": f"{platform.machine()}, torch {torch.__version__}", "settings": vars(args), "variants": []}
    for gamma in (5.0, None):
        for scale_shift in (True, False):
            name = f"min-SNR {gamma if gamma else 'off'}, text vector {'scale-shift' if scale_shift else 'added'}"
            print(name)
            started = time.perf_counter()
            rows = probe(gamma, scale_shift, args)
            results["variants"].append({"min_snr_gamma": gamma, "scale_shift_norm": scale_shift, "rows": rows,
                                        "seconds": round(time.perf_counter() - started, 1)})
    changed = {k: v for k, v in vars(args).items() if k in DEFAULTS and v != DEFAULTS[k]}
    stem = "video_text_probe" + "".join(f"_{k}{v}" for k, v in changed.items())
    out = Path(__file__).resolve().parent / "results" / f"{stem}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
