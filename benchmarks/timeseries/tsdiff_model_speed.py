"""Speed of the TSDiff denoiser on CPU: forward, forward+backward (training), input-only gradient (guidance).

    python benchmarks/timeseries/tsdiff_model_speed.py --batch 64 --length 390 --channels 11 --threads 2 --repeats 20

Reports medians (and minima: on a shared machine the minimum is the least disturbed run) in milliseconds
and writes them as JSON. Measurement only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from gencond.pipeline import set_threads

from timeseries.model import TSDiffDenoiser
from timeseries.s4 import S4DLayer


def tune_glibc_malloc() -> bool:
    """Keep large freed blocks in the heap (no mmap/munmap per tensor); saves page faults on every step.

    Same effect as MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1000000000 in the environment.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def measure(functions: dict, repeats: int, warmup: int = 3) -> dict:
    """Median and minimum time of each function; the functions take turns (round robin) so that a burst of
    load from other processes on a shared machine hits all measurements alike."""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {
        name: {"median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts)} for name, ts in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=390)
    parser.add_argument("--channels", type=int, default=11)
    parser.add_argument("--guidance-batch", type=int, default=100, help="batch of the input-gradient measurement")
    parser.add_argument("--micro-batch", type=int, default=10,
                        help="rows per call in the micro-batched input-gradient row, one call after another (the "
                             "sampler's sampling.micro_batch; on several threads it runs calls side by side)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tune-malloc", action="store_true", help="raise glibc's mmap/trim thresholds first")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/tsdiff_model_speed.json"),
                        help="this run's JSON; add it to the study with benchmarks/record.py")
    args = parser.parse_args()

    malloc_tuned = tune_glibc_malloc() if args.tune_malloc else False
    set_threads(args.threads)
    torch.manual_seed(0)
    model = TSDiffDenoiser(in_channels=args.channels)
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.randn(args.batch, args.length, args.channels)
    t = torch.randint(0, 100, (args.batch,))
    x_guide = torch.randn(args.guidance_batch, args.length, args.channels)
    t_guide = torch.randint(0, 100, (args.guidance_batch,))

    def forward():
        model(x, t)

    def forward_no_grad():
        with torch.no_grad():
            model(x, t)

    def forward_inference_mode():
        with torch.inference_mode():
            model(x, t)

    def train_step():
        model.zero_grad(set_to_none=True)
        model(x, t).square().mean().backward()

    def input_gradient():
        x_in = x_guide.detach().requires_grad_()
        torch.autograd.grad(model(x_in, t_guide).square().sum(), x_in)

    def input_gradient_no_weight_grads():
        model.requires_grad_(False)
        try:
            input_gradient()
        finally:
            model.requires_grad_(True)

    def input_gradient_micro_batched():
        model.requires_grad_(False)
        try:
            for lo in range(0, args.guidance_batch, args.micro_batch):
                x_in = x_guide[lo:lo + args.micro_batch].detach().requires_grad_()
                torch.autograd.grad(model(x_in, t_guide[lo:lo + args.micro_batch]).square().sum(), x_in)
        finally:
            model.requires_grad_(True)

    def input_gradient_kernel_rebuilt():
        S4DLayer.reuse_spectrum = False
        try:
            input_gradient_no_weight_grads()
        finally:
            S4DLayer.reuse_spectrum = True

    b, gb = args.batch, args.guidance_batch
    rows = [
        (f"forward (batch {b})", forward),
        (f"forward, no_grad (batch {b})", forward_no_grad),
        (f"forward, inference_mode (batch {b})", forward_inference_mode),
        (f"forward+backward, parameter grads (batch {b})", train_step),
        (f"forward+backward, input grad only, frozen weights (batch {gb})", input_gradient_no_weight_grads),
        (f"same, S4 kernel rebuilt every call (before the cache) (batch {gb})", input_gradient_kernel_rebuilt),
        (f"same, in micro-batches of {args.micro_batch} rows (batch {gb})", input_gradient_micro_batched),
        (f"forward+backward, input grad, weights require grad (batch {gb})", input_gradient),
    ]
    results = measure(dict(rows), args.repeats)

    print(f"TSDiffDenoiser: {n_params:,} parameters; input ({b}, {args.length}, {args.channels}); "
          f"torch {torch.__version__}, {args.threads} threads, malloc tuned: {malloc_tuned}")
    width = max(len(name) for name in results)
    print(f"{'measurement':<{width}}  median ms  min ms")
    for name, r in results.items():
        print(f"{name:<{width}}  {r['median_ms']:9.1f}  {r['min_ms']:6.1f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "parameters": n_params,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "malloc_tuned": malloc_tuned,
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
