"""Does a video planner learn its instruction? A probe where only the text decides the motion.

    python benchmarks/video/video_text_probe.py                       # 6 variants x 800 steps, ~9 min on 1 core
    python benchmarks/video/video_text_probe.py --data clips          # AVDC clips of demos, pooled skip on/off

Two training clips share their first frame (a square at x = 6 on a 16x16 grey frame); "door open"
moves it right, "door close" moves it left. A tiny VideoUNet (base 8, mult 1-2) is trained on them with
the core's diffusion loss (100-step cosine, v-prediction), and every ``--every`` steps the loss at a
high-noise step (``--t``, default 95: the steps where sampling decides which way things move) is
measured with the correct and with the swapped instruction on fixed noise. A gap between the two means
the text is used. Variants: min-SNR gamma 5 (AVDC) or the plain loss, and the text vector as a
scale-and-shift after the norm (guided-diffusion) or added before it (AVDC), and the text resampler
with or without the pooled skip (``video.model.TextResampler``).
With ``--data clips`` the model trains on AVDC's random clips (``video.data.DemoClips``) of two
synthetic demonstrations that start from the same frame (the square moves 2 px a frame, right or left,
for 5 frames); only clips that start at the episode's start leave the way to the text, and the loss is
measured on those. Plain loss and scale-shift; pooled skip on and off.
Writes benchmarks/results/video/video_text_probe.json for the default settings, otherwise a file named after
its settings. Measurement only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gencond.config import DiffusionConfig
from gencond.diffusion import DiffusionProcess
from gencond.pipeline import set_threads
from gencond.text import text_encoder
from video.data import frames_to_unit
from video.model import VideoUNet

RES = 16
DEFAULTS = dict(steps=800, every=200, t=95, lr=1e-3, seed=0)


def moving_square(velocity: int, start: int = 6, steps: int = 12) -> np.ndarray:
    frames = np.full((steps, RES, RES, 3), 90, np.uint8)
    for k in range(steps):
        x = int(np.clip(start + velocity * k, 0, RES - 4))
        frames[k, 6:10, x:x + 4] = 255
    return frames


def demo_clips(root: Path):
    """Two synthetic demonstrations from one start frame ('door open' right, 'door close' left)."""
    from robotics.collect import save_demonstration, write_index
    from robotics.experts import Demonstration
    from video.data import DemoClips

    for task, direction in (("door-open", 1), ("door-close", -1)):
        frames = moving_square(2 * direction, steps=5)
        n = len(frames)
        demo = Demonstration(env_task=task, camera="corner", seed=0, frames=frames, actions=np.zeros((n - 1, 4), np.float32),
                             states=np.zeros((n, 39), np.float32), success=True, success_step=n - 1,
                             intrinsics=np.eye(3), world_to_camera=np.eye(4), first_depth=np.ones((RES, RES), np.float32),
                             first_segmentation=np.zeros((RES, RES), np.int32), object_geom_ids=np.zeros(1, np.int32))
        save_demonstration(demo, root / task / "corner" / "seed_0.npz")
    write_index(root, (RES, RES))
    return DemoClips(root, RES, frames=4)


def probe(min_snr_gamma, scale_shift: bool, pooled_skip: bool, args, clips=None) -> list[dict]:
    torch.manual_seed(args.seed)
    texts = ["door open", "door close"] if clips is None else clips.texts
    text = text_encoder(16).encode(texts)
    if clips is None:
        right, left = (frames_to_unit(moving_square(d)[[0, 4, 8, 11]]) for d in (1, -1))
    else:  # the clips that start at the shared first frame
        right, left = (clips.clip(texts.index(name), 0) for name in ("door open", "door close"))
    video = torch.stack([right[1:], left[1:]]).movedim(1, 2)
    first = torch.stack([right[0], left[0]])
    model = VideoUNet(image_size=RES, base_channels=8, channel_mult=(1, 2), attention_resolutions=(), head_channels=8,
                      frames=3, scale_shift_norm=scale_shift, text_pooled_skip=pooled_skip)
    process = DiffusionProcess(DiffusionConfig(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                                               prediction_type="v_prediction", min_snr_gamma=min_snr_gamma,
                                               cond_drop_prob=0.0 if clips is None else 0.1))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    idx = torch.tensor([0, 1] * 4)
    order = [texts.index("door open"), texts.index("door close")]
    t = torch.full((8,), args.t)
    noise = torch.randn(video[idx].shape, generator=torch.Generator().manual_seed(9))
    x_t, target = process.add_noise(video[idx], noise, t), process.target(video[idx], noise, t)
    text_of = torch.tensor(order)[idx]
    rows = []
    for step in range(args.steps + 1):
        if step % args.every == 0:
            with torch.no_grad():
                losses = {}
                for name, which in (("correct", text_of), ("swapped", torch.tensor(order)[1 - idx])):
                    cond = {"first_frame": first[idx], "text": text.tokens[which], "text_mask": text.mask[which]}
                    losses[name] = round(float((model(x_t, t, cond) - target).square().mean()), 4)
            rows.append({"step": step, **losses})
            print(f"  step {step}: loss at t={args.t} with the correct text {losses['correct']}, swapped {losses['swapped']}")
        if step == args.steps:
            break
        g = torch.Generator().manual_seed(step)
        if clips is None:
            which, batch_first, batch_video = text_of, first[idx], video[idx]
        else:
            batch = clips.batch(8, g)
            which, batch_first, batch_video = batch["text_index"], batch["first_frame"], batch["video"]
        cond = {"first_frame": batch_first, "text": text.tokens[which], "text_mask": text.mask[which]}
        loss, _ = process.training_loss(model, batch_video, cond=cond, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, value in DEFAULTS.items():
        p.add_argument(f"--{key}", type=type(value), default=value)
    p.add_argument("--data", choices=("shared", "clips"), default="shared",
                   help="two fixed clips sharing a first frame (default), or AVDC's random clips of two demos")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    set_threads(args.threads)
    results = {"machine": f"{platform.machine()}, torch {torch.__version__}", "settings": vars(args), "variants": []}
    if args.data == "shared":
        variants = [(g, ss, True) for g in (5.0, None) for ss in (True, False)] + [(g, True, False) for g in (5.0, None)]
    else:
        variants = [(None, True, skip) for skip in (True, False)]
    with tempfile.TemporaryDirectory() as tmp:
        clips = demo_clips(Path(tmp)) if args.data == "clips" else None
        for gamma, scale_shift, skip in variants:
            name = (f"min-SNR {gamma if gamma else 'off'}, text vector {'scale-shift' if scale_shift else 'added'}, "
                    f"pooled skip {'on' if skip else 'off'}")
            print(name)
            started = time.perf_counter()
            rows = probe(gamma, scale_shift, skip, args, clips)
            results["variants"].append({"min_snr_gamma": gamma, "scale_shift_norm": scale_shift, "text_pooled_skip": skip,
                                        "rows": rows, "seconds": round(time.perf_counter() - started, 1)})
    changed = {k: v for k, v in vars(args).items() if k in {**DEFAULTS, "data": "shared"} and v != {**DEFAULTS, "data": "shared"}[k]}
    stem = "video_text_probe" + "".join(f"_{k}{v}" for k, v in changed.items())
    out = Path(__file__).resolve().parents[1] / "results" / "video" / f"{stem}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
