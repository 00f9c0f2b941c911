"""Speed of the video denoiser (video.model.VideoUNet, AVDC's factorized space-time UNet) on CPU.

    python benchmarks/video/video_model_speed.py                      # small config at 32, 48, 64 px
    python benchmarks/video/video_model_speed.py --avdc               # also one forward of the AVDC-scale model

Per resolution: forward (no grad, as in sampling) and forward+backward (a training step without the
optimizer), batch 8, 7 predicted frames (8-frame clips), median and minimum of --repeats runs after one
warm-up, wall-clock and this process's CPU time (on a shared machine the CPU time and the minimum are
the least disturbed numbers). ``--avdc`` times one forward at batch 1, 128x128, of the paper-scale model
(base 128, mult 1-2-3-4-5, 2 res blocks, attention at 16 and 8, 64 text latents; ~200 M parameters).
Writes runs/bench/video_model_speed.json for the default settings, otherwise a file named after
its settings. Measurement only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from gencond.pipeline import set_threads
from video.model import VideoUNet

AVDC_SCALE = dict(base_channels=128, channel_mult=(1, 2, 3, 4, 5), num_res_blocks=2, attention_resolutions=(16, 8),
                  text_latents=64, image_size=128)
DEFAULTS = dict(sizes=[32, 48, 64], batch=8, frames=7, threads=1, repeats=5, avdc=False)


def inputs(model: VideoUNet, batch: int, seed: int = 0):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    s, c = cfg.image_size, cfg.channels
    x = torch.randn(batch, c, cfg.frames, s, s, generator=g)
    cond = {"first_frame": torch.rand(batch, c, s, s, generator=g) * 2 - 1,
            "text": torch.randn(batch, cfg.text_max_tokens, cfg.text_dim, generator=g),
            "text_mask": torch.ones(batch, cfg.text_max_tokens, dtype=torch.bool)}
    return x, torch.randint(0, 100, (batch,), generator=g), cond


def measure(functions: dict, repeats: int) -> dict:
    """Median and minimum wall time and median CPU time of each function after one warm-up; the functions
    take turns, so that a burst of load from other processes hits all of them alike."""
    for fn in functions.values():
        fn()
    wall = {name: [] for name in functions}
    cpu = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return {name: {"median_s": statistics.median(wall[name]), "min_s": min(wall[name]),
                   "cpu_median_s": statistics.median(cpu[name])} for name in functions}


def measure_small(size: int, batch: int, frames: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = VideoUNet(image_size=size, frames=frames)
    x, t, cond = inputs(model, batch)

    def forward():
        with torch.no_grad():
            model(x, t, cond=cond)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(x, t, cond=cond).square().mean().backward()

    out = {"image_size": size, "params": model.num_parameters(), "attention_sizes": model.attention_sizes}
    out.update(measure({"forward": forward, "forward_backward": forward_backward}, repeats))
    out["train_steps_per_s"] = 1.0 / out["forward_backward"]["median_s"]
    out["train_steps_per_hour"] = 3600.0 / out["forward_backward"]["median_s"]
    return out


def measure_avdc(frames: int) -> dict:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = VideoUNet(frames=frames, **AVDC_SCALE).eval()
    built = time.perf_counter() - t0
    x, t, cond = inputs(model, 1)
    with torch.no_grad():
        w0, c0 = time.perf_counter(), time.process_time()
        model(x, t, cond=cond)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in AVDC_SCALE.items()},
            "params": model.num_parameters(), "construct_s": built,
            "forward_batch1": {"wall_s": wall, "cpu_s": cpu}}


def output_path(args) -> Path:
    settings = {k: getattr(args, k) for k in DEFAULTS}
    if settings == DEFAULTS:
        return Path("runs/bench/video_model_speed.json")
    parts = [f"s{'-'.join(map(str, args.sizes))}", f"b{args.batch}", f"f{args.frames}", f"t{args.threads}",
             f"r{args.repeats}"] + (["avdc"] if args.avdc else [])
    return Path(f"runs/bench/video_model_speed_{'_'.join(parts)}.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=DEFAULTS["sizes"])
    parser.add_argument("--batch", type=int, default=DEFAULTS["batch"])
    parser.add_argument("--frames", type=int, default=DEFAULTS["frames"], help="predicted frames (clip length - 1)")
    parser.add_argument("--threads", type=int, default=DEFAULTS["threads"])
    parser.add_argument("--repeats", type=int, default=DEFAULTS["repeats"])
    parser.add_argument("--avdc", action="store_true", help="also one forward of the AVDC-scale model (~30 s)")
    parser.add_argument("--out", type=Path, default=None, help="default: named after the settings")
    args = parser.parse_args()

    set_threads(args.threads)
    rows = []
    print(f"VideoUNet small config, batch {args.batch}, {args.frames} predicted frames, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(f"{'size':>5} {'params':>9} {'attn at':>9} {'fwd s':>7} {'fwd+bwd s':>10} {'(cpu s)':>8} {'steps/h':>8}")
    for size in args.sizes:
        r = measure_small(size, args.batch, args.frames, args.repeats)
        rows.append(r)
        fb = r["forward_backward"]
        print(f"{size:>5} {r['params'] / 1e6:>8.2f}M {','.join(map(str, sorted(set(r['attention_sizes'])))) or '-':>9} "
              f"{r['forward']['median_s']:>7.2f} {fb['median_s']:>10.2f} {fb['cpu_median_s']:>8.2f} "
              f"{r['train_steps_per_hour']:>8.0f}")
    avdc = None
    if args.avdc:
        avdc = measure_avdc(args.frames)
        fwd = avdc["forward_batch1"]
        print(f"AVDC scale ({avdc['params'] / 1e6:.1f} M parameters, built in {avdc['construct_s']:.1f} s): "
              f"one forward at batch 1, 128x128: {fwd['wall_s']:.1f} s (cpu {fwd['cpu_s']:.1f} s)")
    result = {"settings": {k: getattr(args, k) for k in DEFAULTS}, "small": rows, "avdc": avdc,
              "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
              "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
              "note": "forward = no-grad forward; forward_backward = loss.backward() without the optimizer step"}
    out = args.out or output_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
