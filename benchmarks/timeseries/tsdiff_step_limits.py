"""How far one guided TSDiff sampling step is from the CPU's arithmetic limit, and what torch.compile gives.

Counts the matmul FLOPs of forward + input gradient (``torch.utils.flop_counter``) and estimates the FFTs'
(2.5 n log2 n per real FFT, 4 per S4 layer and sample-channel: forward rfft/irfft, backward rfft/irfft), then
measures what this machine's libraries reach on such work (``library``: GFLOP/s of a 1024^3 matmul, of the step's
own largest matmul shape and of its FFTs; from them the fastest the step's matmuls and FFTs could run here, with
every other operation free), times the step's transcendental elementwise ops alone on one micro-batch activation,
ATen's kernels against inductor's code for the same op (``elementwise_us``: where fusing could save memory traffic, these
set the pace), then times the eager and the ``torch.compile``d step in turns (medians and minima) and checks both give
the same outputs. Measurement only.

    python benchmarks/timeseries/tsdiff_step_limits.py --threads 1 --out runs/bench/step_limits.json

``--micro-batch N`` times the step as the sampler takes it (N rows per call, each call's backward after
its forward, one call after another as on 1 thread); the compiled model then reads each S4 layer's kernel
spectrum as a fixed tensor (``freeze_spectra``), so that dynamo traces the denoiser as one graph (the layer's cache check is a graph break).
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from gencond.pipeline import set_threads
from gencond.sampling import micro_batch_rows
from timeseries.model import TSDiffDenoiser
from timeseries.s4 import S4DLayer, _FFTConvolution, fft_length
from tsdiff_model_speed import measure  # this folder's sibling script (run from the checkout: python benchmarks/...)


def real_fft_flops(n: int) -> float:
    """The usual estimate for one real FFT (rfft or irfft) of length n: 2.5 n log2 n."""
    return 2.5 * n * math.log2(n)


def library_rates(rows: int, length: int, hidden: int, n_fft: int) -> dict:
    """GFLOP/s that torch's CPU libraries reach here, from the fastest of 20 calls of each, one
    after the other (tsdiff_model_speed.measure):
    a 1024^3 matmul (their peak), the step's largest matmul on a micro-batch of ``rows`` series of ``length``
    ((rows * length, hidden) @ (hidden, 2 hidden), the output projection) and an rfft + irfft pair over its
    rows * hidden sample-channels of length ``n_fft`` (counted 2.5 n log2 n per real FFT)."""
    big = torch.randn(1024, 1024)
    a, w = torch.randn(rows * length, hidden), torch.randn(hidden, 2 * hidden)
    signals = torch.randn(rows * hidden, n_fft)
    flops = {"matmul_1024": 2 * 1024 ** 3, "matmul_step_shape": 2 * rows * length * hidden * 2 * hidden,
             "rfft_irfft": 2 * signals.shape[0] * real_fft_flops(n_fft)}
    calls = {"matmul_1024": lambda: big @ big, "matmul_step_shape": lambda: a @ w,
             "rfft_irfft": lambda: torch.fft.irfft(torch.fft.rfft(signals), n=n_fft)}
    # One at a time, not in turns: each call then finds its operands in cache, as the step's micro-batches do.
    return {f"{name}_gflops": flops[name] / (measure({name: fn}, repeats=20)[name]["min_ms"] * 1e6)
            for name, fn in calls.items()}


def elementwise_rates(rows: int, length: int, hidden: int, compiled: bool) -> dict:
    """Fastest of 20 calls, in microseconds, of each transcendental op of the step on one micro-batch activation
    (rows, length, hidden) in cache: ATen's kernel (``eager``) and, with ``compiled``, inductor's code for the same
    function (``compiled``). ``gate`` is the block's tanh(h) * sigmoid(h): eager as the model computes it (two sigmoids,
    ``tanh_sigmoid_gate``), compiled as inductor fuses the plain tanh(h) * sigmoid(h)."""
    from timeseries.model import tanh_sigmoid_gate

    h = torch.randn(rows, length, hidden)
    ops = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "exp": torch.exp, "erf": torch.erf,
           "gelu": torch.nn.functional.gelu, "gate": tanh_sigmoid_gate}
    compiled_ops = {"gate": lambda v: torch.tanh(v) * torch.sigmoid(v)}  # what inductor fuses (no autograd.Function)
    out = {}
    for name, fn in ops.items():
        calls = {"eager": lambda fn=fn: fn(h)}
        if compiled:
            c = torch.compile(compiled_ops.get(name, fn), dynamic=False)
            calls["compiled"] = lambda c=c: c(h)
        out[name] = {kind: 1e3 * measure({kind: call}, repeats=20)[kind]["min_ms"] for kind, call in calls.items()}
    return out


def _frozen_convolve(k_hat: torch.Tensor, n_fft: int, u: torch.Tensor) -> torch.Tensor:
    return _FFTConvolution.apply(u, None, False, k_hat, n_fft)


def freeze_spectra(model: torch.nn.Module, length: int) -> None:
    """Give every S4 layer of a frozen model a convolve that uses its kernel spectrum, computed now, with no
    cache check (equal to the cached path; only valid while the weights do not change)."""
    n_fft = fft_length(2 * length)
    for layer in model.modules():
        if isinstance(layer, S4DLayer):
            k_hat = layer.kernel_spectrum(length, n_fft, torch.float32).clone()
            layer.convolve = functools.partial(_frozen_convolve, k_hat, n_fft)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--length", type=int, default=390)
    p.add_argument("--channels", type=int, default=11)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=0,
                   help="rows per call in the timed steps, as the sampler takes them (0: the whole batch)")
    p.add_argument("--no-compile", action="store_true", help="count FLOPs and time the eager step only")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    model = TSDiffDenoiser(in_channels=args.channels, init_skip=True).eval().requires_grad_(False)
    x = torch.randn(args.batch, args.length, args.channels)
    t = torch.randint(0, 100, (args.batch,))

    step_rows = micro_batch_rows(args.micro_batch or None, args.batch)

    def step(net):
        ys, grads = [], []
        for sl in step_rows:
            x_req = x[sl].detach().requires_grad_(True)
            y = net(x_req, t[sl])
            (grad,) = torch.autograd.grad(y.square().sum(), x_req)
            ys.append(y.detach())
            grads.append(grad)
        return torch.cat(ys), torch.cat(grads)

    with FlopCounterMode(display=False) as counter:
        x_req = x.detach().requires_grad_(True)
        model(x_req, t).square().sum().backward()
    n = fft_length(2 * args.length)
    blocks = model.config.num_blocks
    fft_flops = blocks * 4 * args.batch * model.config.hidden_channels * real_fft_flops(n)
    result = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "torch": torch.__version__,
              "matmul_gflop": counter.get_total_flops() / 1e9, "fft_gflop_estimate": fft_flops / 1e9}
    rows = micro_batch_rows(10, args.batch)[0]  # TSDiff's micro_batch=10
    rates = library_rates(rows.stop - rows.start, args.length, model.config.hidden_channels, n)
    rates["floor_ms"] = 1e3 * (result["matmul_gflop"] / rates["matmul_step_shape_gflops"]
                               + result["fft_gflop_estimate"] / rates["rfft_irfft_gflops"])
    result["library"] = rates
    result["elementwise_us"] = elementwise_rates(rows.stop - rows.start, args.length, model.config.hidden_channels,
                                                 compiled=not args.no_compile)
    nets = {"eager": model}
    if not args.no_compile:
        start = time.perf_counter()
        if args.micro_batch:
            compiled = copy.deepcopy(model)  # the eager model keeps the library's cached path
            freeze_spectra(compiled, args.length)
            nets["compiled"] = torch.compile(compiled, dynamic=False)
        else:
            nets["compiled"] = torch.compile(model)
        y_c, g_c = step(nets["compiled"])
        result["compile_s"] = time.perf_counter() - start
        from torch._dynamo.utils import counters  # dynamo's own tally of the graph breaks it met
        result["graph_breaks"] = sum(counters["graph_break"].values())
        y_e, g_e = step(model)
        result["max_abs_difference"] = {"output": (y_e - y_c).abs().max().item(), "input_grad": (g_e - g_c).abs().max().item()}
    times = measure({name: (lambda net=net: step(net)) for name, net in nets.items()}, args.repeats, warmup=1)
    result["ms"] = {name: {"median": r["median_ms"], "min": r["min_ms"]} for name, r in times.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
