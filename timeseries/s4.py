"""Bidirectional diagonal state-space layer (S4D) with an FFT convolution, for the TSDiff denoiser.

A diagonal SSM  x' = A x + B u,  y = 2 Re(C x)  with N/2 complex modes per channel (the conjugate
halves are implicit), discretised with zero-order hold (step dt = exp(log_dt)), is a long convolution
with the kernel

    K[l] = 2 Re( sum_n  C_n B_n (exp(dt A_n) - 1) / A_n  exp(dt A_n l) ),    l = 0..L-1.

A starts from S4D-Lin (-1/2 + i pi n) or S4D-Inv, B from ones, C from CN(0, 1); Re(A) < 0 is kept by
storing log(-Re A). The Vandermonde exp(dt A l) is factored into two small ones (see ``kernel``).

Bidirectional (summed, not split): every channel has two kernels that share A, B and dt but have their
own C: a causal one (lags 0..L-1) and an anti-causal one applied to the future (lags 1..L-1, i.e. the
time-reversed SSM read one step later, so that lag 0 and D are counted once). Both, and D, are placed
in one length-n circular kernel (causal part at the front, reversed anti-causal part at the back,
n >= 2L so nothing wraps; n is the next 2^a 3^b 5^c size), so the two directions cost one rfft/irfft
pair on the activations:

    y[i] = sum_{j<=i} K_fwd[i-j] u[j] + sum_{j>i} K_bwd[j-i-1] u[j] + D u[i]

The layer works channels-last, (batch, length, channels), like the rest of the denoiser; only the
kernel, of size (H, N/2, ~sqrt(L)), is handled with complex numbers (as pairs of real tensors).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["S4DLayer", "fft_length", "s4d_init"]


@functools.lru_cache(maxsize=None)
def fft_length(n: int) -> int:
    """Smallest size >= n whose prime factors are 2, 3 and 5 only (a fast size for the FFT libraries)."""
    m = max(1, n)
    while True:
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


def s4d_init(channels: int, half_state: int, kind: str = "lin") -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of the diagonal A, shape (channels, half_state): S4D-Lin or S4D-Inv."""
    n = torch.arange(half_state, dtype=torch.float32)
    real = torch.full((channels, half_state), -0.5)
    if kind == "lin":
        imag = math.pi * n
    elif kind == "inv":
        full = 2 * half_state
        imag = full / math.pi * (full / (2 * n + 1) - 1)
    else:
        raise ValueError(f"unknown S4D initialisation {kind!r}; use 'lin' or 'inv'")
    return real, imag.expand(channels, half_state).clone()


class _FFTConvolution(torch.autograd.Function):
    """y = (u circularly convolved with k over n points)[:L] for channels-last u (B, L, H), k (H, n).

    A hand-written backward: autograd's own backward of rfft/irfft goes through full complex FFTs and
    zero-filled slicing buffers; here each gradient costs one real FFT pair, and the spectrum of u
    is kept only when the kernel needs a gradient (not in guided sampling, where only x_t does).
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, k: Optional[torch.Tensor], keep_u_hat: bool,
                k_hat: Optional[torch.Tensor] = None, n_fft: Optional[int] = None) -> torch.Tensor:
        length = u.shape[1]
        n_fft = k.shape[-1] if n_fft is None else n_fft
        u_hat = torch.fft.rfft(u.transpose(1, 2).contiguous(), n=n_fft)  # (B, H, F); a contiguous copy: MKL transforms the strided view slower
        if k_hat is None:
            k_hat = torch.fft.rfft(k, n=n_fft)  # (H, F)
        if keep_u_hat:
            y_hat = u_hat * k_hat
            u_hat_conj = u_hat.conj_physical_()  # in place: cheaper than resolving a conj view in backward
        else:
            y_hat, u_hat_conj = u_hat.mul_(k_hat), None
        ctx.save_for_backward(u_hat_conj, k_hat)
        ctx.length, ctx.n_fft = length, n_fft
        y = torch.fft.irfft(y_hat, n=n_fft)[..., :length]
        return y.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        u_hat_conj, k_hat = ctx.saved_tensors
        n_fft = ctx.n_fft
        g_hat = torch.fft.rfft(grad_y.transpose(1, 2).contiguous(), n=n_fft)  # (B, H, F); contiguous, as in forward
        grad_u = grad_k = None
        if ctx.needs_input_grad[1]:
            # dL/dk[m] = sum_b sum_i g[i] u[i - m], a cross-correlation: G * conj(U) in frequency.
            grad_k = torch.fft.irfft((g_hat * u_hat_conj).sum(0), n=n_fft)
        if ctx.needs_input_grad[0]:
            # dL/du[j] = sum_i g[i] k[i - j]: G * conj(K).
            grad_u = torch.fft.irfft(g_hat.mul_(k_hat.conj()), n=n_fft)[..., : ctx.length]
            grad_u = grad_u.transpose(1, 2).contiguous()
        return grad_u, grad_k, None, None, None


def fft_convolution(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(u conv k)[:L] over n = k.shape[-1] points (circular), u (B, L, H), k (H, n) -> (B, L, H)."""
    if u.shape[-1] != k.shape[0] or k.shape[-1] < u.shape[1]:
        raise ValueError(f"kernel {tuple(k.shape)} does not fit input {tuple(u.shape)}")
    return _FFTConvolution.apply(u, k, k.requires_grad and torch.is_grad_enabled())


class S4DLayer(nn.Module):
    """Bidirectional S4D convolution + D skip, then GELU and a GLU output projection; (B, L, H) -> (B, L, H)."""

    reuse_spectrum = True  # False rebuilds the kernel at every call, as before the cache (for benchmarks)

    def __init__(
        self,
        channels: int,
        state_size: int = 128,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        init: str = "lin",
        bidirectional: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if state_size % 2:
            raise ValueError(f"state_size must be even (conjugate pairs), got {state_size}")
        self.channels = channels
        self.half_state = state_size // 2
        self.bidirectional = bidirectional
        directions = 2 if bidirectional else 1

        log_dt = torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        a_real, a_imag = s4d_init(channels, self.half_state, init)
        self.log_a_real = nn.Parameter(torch.log(-a_real))  # keeps Re(A) < 0: a stable SSM
        self.a_imag = nn.Parameter(a_imag)
        # Complex parameters stored as (..., 2) = (real, imag). B starts at 1 (S4D), C ~ CN(0, 1), one C per direction.
        b = torch.zeros(channels, self.half_state, 2)
        b[..., 0] = 1.0
        self.b = nn.Parameter(b)
        self.c = nn.Parameter(torch.randn(directions, channels, self.half_state, 2) * math.sqrt(0.5))
        self.d = nn.Parameter(torch.randn(channels))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output_linear = nn.Linear(channels, 2 * channels)
        self._spectrum_cache: Optional[tuple] = None  # (key, rfft of the circular kernel); see kernel_spectrum

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """ZOH: (Re, Im) of dt*A, shape (H, N/2), and of C*B_bar, shape (dirs, H, N/2), B_bar = (exp(dtA)-1)/A * B."""
        dt = self.log_dt.exp()[:, None]
        dta_real = -self.log_a_real.exp() * dt
        dta_imag = self.a_imag * dt
        e_real = dta_real.exp()
        z_real = e_real * torch.cos(dta_imag) - 1.0  # exp(dtA) - 1
        z_imag = e_real * torch.sin(dta_imag)
        # (exp(dtA) - 1) / A = (exp(dtA) - 1) * conj(dtA) * dt / |dtA|^2
        scale = dt / (dta_real.square() + dta_imag.square())
        q_real = (z_real * dta_real + z_imag * dta_imag) * scale
        q_imag = (z_imag * dta_real - z_real * dta_imag) * scale
        b_real, b_imag = self.b[..., 0], self.b[..., 1]
        bb_real = q_real * b_real - q_imag * b_imag
        bb_imag = q_real * b_imag + q_imag * b_real
        c_real, c_imag = self.c[..., 0], self.c[..., 1]
        return dta_real, dta_imag, c_real * bb_real - c_imag * bb_imag, c_real * bb_imag + c_imag * bb_real

    def kernel(self, length: int) -> torch.Tensor:
        """The SSM convolution kernels K[l] = 2 Re(C A_bar^l B_bar), shape (dirs, H, length): [causal, anti-causal].

        The Vandermonde matrix exp(dtA l) is factored as exp(dtA s a) * exp(dtA b) with l = s a + b and
        s ~ sqrt(L): the transcendental functions are evaluated on (H, N/2, ~2 sqrt(L)) entries only and
        the rest is one small batched matmul, instead of exp/cos/sin over the full (H, N/2, L).
        """
        dta_real, dta_imag, cb_real, cb_imag = self.discretize()
        inner = math.isqrt(max(length - 1, 0)) + 1  # s, with s * s >= length
        outer = -(-length // inner)
        steps = torch.arange(inner, device=dta_real.device, dtype=dta_real.dtype)
        # exp(dtA * b), b < s: (H, N/2, s); exp(dtA * s * a), a < L/s: (H, N/2, a)
        mag_in, phase_in = torch.exp(dta_real[..., None] * steps), dta_imag[..., None] * steps
        steps_out = torch.arange(outer, device=steps.device, dtype=steps.dtype) * inner
        mag_out, phase_out = torch.exp(dta_real[..., None] * steps_out), dta_imag[..., None] * steps_out
        p_real, p_imag = mag_in * torch.cos(phase_in), mag_in * torch.sin(phase_in)
        q_real, q_imag = mag_out * torch.cos(phase_out), mag_out * torch.sin(phase_out)
        # W = C B_bar exp(dtA s a): (dirs, H, N/2, a); K[a, b] = 2 Re sum_n W[n, a] exp(dtA_n b).
        w_real = cb_real[..., None] * q_real - cb_imag[..., None] * q_imag
        w_imag = cb_real[..., None] * q_imag + cb_imag[..., None] * q_real
        directions, channels = cb_real.shape[:2]
        lhs = torch.cat([w_real, -w_imag], dim=2).permute(1, 0, 3, 2).reshape(channels, directions * outer, -1)
        rhs = torch.cat([p_real, p_imag], dim=1)  # (H, N, s)
        k = 2.0 * torch.bmm(lhs, rhs)  # (H, dirs * a, s)
        return k.reshape(channels, directions, outer * inner)[..., :length].transpose(0, 1)

    def circular_kernel(self, length: int, n_fft: int) -> torch.Tensor:
        """Both directions and D in one length-n_fft circular kernel, shape (H, n_fft).

        Causal lags 0..L-1 at the front (D added at lag 0); anti-causal lag m = 1..L-1 at position n_fft - m.
        """
        k = self.kernel(length)
        parts = [k[0, :, :1] + self.d[:, None], k[0, :, 1:]]
        if self.bidirectional:
            parts += [k.new_zeros(self.channels, n_fft - 2 * length + 1), k[1, :, : length - 1].flip(-1)]
        else:
            parts.append(k.new_zeros(self.channels, n_fft - length))
        return torch.cat(parts, dim=-1)

    def kernel_parameters(self) -> tuple[torch.Tensor, ...]:
        return (self.log_dt, self.log_a_real, self.a_imag, self.b, self.c, self.d)

    def kernel_spectrum(self, length: int, n_fft: int, dtype: torch.dtype) -> torch.Tensor:
        """rfft of :meth:`circular_kernel`, (H, n_fft // 2 + 1), cached while the kernel's parameters are
        unchanged (same tensors, same in-place version): frozen weights, e.g. at every sampling step."""
        params = self.kernel_parameters()
        key = (length, n_fft, dtype, tuple((p.data_ptr(), p._version, p.device) for p in params))
        cached = self._spectrum_cache
        if cached is None or cached[0] != key:
            with torch.no_grad():
                k_hat = torch.fft.rfft(self.circular_kernel(length, n_fft).to(dtype), n=n_fft)
            self._spectrum_cache = cached = (key, k_hat)
        return cached[1]

    def convolve(self, u: torch.Tensor) -> torch.Tensor:
        """SSM part only: the (bidirectional) kernel convolution plus D u, on (B, L, H). With the kernel's
        parameters frozen (no gradient wanted for them) its spectrum is reused from call to call."""
        length = u.shape[1]
        n_fft = fft_length(2 * length)
        rebuild = not self.reuse_spectrum or (torch.is_grad_enabled() and any(p.requires_grad for p in self.kernel_parameters()))
        if rebuild:
            return fft_convolution(u, self.circular_kernel(length, n_fft))
        return _FFTConvolution.apply(u, None, False, self.kernel_spectrum(length, n_fft, u.dtype), n_fft)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.convolve(u))
        y = self.dropout(y)
        return F.glu(self.output_linear(y), dim=-1)
