"""Small denoisers with known behaviour, for testing the core without a domain."""
import torch
from torch import nn

from gencond.diffusion import DiffusionProcess


class GaussianOracle(nn.Module):
    """The exact epsilon-predictor for data ~ N(0, sigma² I): E[eps | x_t] = sqrt(1-abar) x_t / (abar sigma² + 1 - abar)."""

    def __init__(self, process: DiffusionProcess, sigma: float = 1.0):
        super().__init__()
        self.process, self.sigma = process, sigma
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t, cond=None, self_cond=None):
        abar = self.process.alphas_cumprod[t].float().reshape(-1, *([1] * (x_t.ndim - 1)))
        return (1 - abar).sqrt() * x_t / (abar * self.sigma**2 + 1 - abar) + 0 * self.dummy


class Recorder(nn.Module):
    """A linear denoiser that records the self_cond / cond it is called with."""

    def __init__(self, dim: int = 4):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.calls = []

    def forward(self, x_t, t, cond=None, self_cond=None):
        self.calls.append({"self_cond": None if self_cond is None else self_cond.detach().clone(),
                           "cond": None if cond is None else cond.clone(), "grad": torch.is_grad_enabled()})
        out = self.lin(x_t)
        if cond is not None:
            out = out + cond.float().reshape(-1, *([1] * (x_t.ndim - 1)))
        return out

    def null_condition(self, cond):
        return torch.zeros_like(cond)


class TinyMLP(nn.Module):
    def __init__(self, dim: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, 32), nn.SiLU(), nn.Linear(32, dim))

    def forward(self, x_t, t, cond=None, self_cond=None):
        return self.net(torch.cat([x_t, t.float()[:, None] / 100], dim=1))


def register_toy_task() -> str:
    """A tiny trainable task ('toy-mlp') for CLI tests of the core: TinyMLP on 4 Gaussian blobs."""
    from gencond.config import RunConfig
    from gencond.registry import TASKS, register_task
    from gencond.training import TrainingJob

    def build(cfg):
        process = DiffusionProcess(cfg.diffusion)
        centers = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))

        def batch_fn(step, g):
            return centers[torch.randint(0, 4, (cfg.train.batch_size,), generator=g)]

        return TrainingJob(TinyMLP(8), batch_fn, lambda m, b, g: process.training_loss(m, b, generator=g))

    if "toy-mlp" not in TASKS:
        register_task("toy-mlp", RunConfig, build)
    return "toy-mlp"
