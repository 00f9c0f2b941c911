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


class DictConditioned(nn.Module):
    """A linear denoiser with a dict condition {"label": (B, D), "frame": (B, D)}; its null condition
    replaces only "label" (the way a video model drops the text but keeps the first frame)."""

    def __init__(self, dim: int = 4):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.label_gain = nn.Parameter(torch.tensor(2.0))

    def forward(self, x_t, t, cond=None, self_cond=None):
        out = self.lin(x_t)
        if cond is not None:
            out = out + self.label_gain * cond["label"] + 0.5 * cond["frame"]
        return out

    def null_condition(self, cond):
        return {**cond, "label": torch.zeros_like(cond["label"])}


class LabelDenoiser(nn.Module):
    """A small class-conditional denoiser with input self-conditioning and a null label (CFG)."""

    def __init__(self, dim: int = 8, classes: int = 4):
        super().__init__()
        self.classes = classes
        self.label = nn.Embedding(classes + 1, 16)
        self.net = nn.Sequential(nn.Linear(2 * dim + 17, 32), nn.SiLU(), nn.Linear(32, dim))

    def forward(self, x_t, t, cond=None, self_cond=None):
        cond = torch.full((len(x_t),), self.classes) if cond is None else cond
        sc = torch.zeros_like(x_t) if self_cond is None else self_cond
        return self.net(torch.cat([x_t, sc, self.label(cond), t.float()[:, None] / 50], dim=1))

    def null_condition(self, cond):
        return torch.full_like(cond, self.classes)


def register_ddp_toy_task() -> str:
    """'toy-ddp': LabelDenoiser on 4 labelled blobs with CFG dropout and input self-conditioning. A
    batch is ``train.ranks_in_batch`` sub-batches, each with its own noise seed; the loss is their
    mean, so one process with ranks_in_batch=2 sees the global batch of two processes with 1."""
    from dataclasses import dataclass

    from gencond.config import RunConfig
    from gencond.registry import TASKS, register_task
    from gencond.training import TrainingJob, step_generator

    @dataclass
    class ToyDdpConfig(RunConfig):
        ranks_in_batch: int = 1

    def build(cfg):
        process = DiffusionProcess(cfg.diffusion)
        centers = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
        reported = []

        def sub_batch(g):
            labels = torch.randint(0, 4, (cfg.train.batch_size,), generator=g)
            return centers[labels], labels, int(torch.randint(0, 2**31, (1,), generator=g))

        def batch_fn(step, g):
            if cfg.ranks_in_batch == 1:
                return [sub_batch(g)]
            return [sub_batch(step_generator(cfg.seed, step, r)) for r in range(cfg.ranks_in_batch)]

        def loss_fn(model, batch, g):
            if not reported:
                world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
                print(f"world={world} model={type(model).__name__}", flush=True)
                reported.append(True)
            losses = [process.training_loss(model, x, cond=y, generator=torch.Generator().manual_seed(seed))[0]
                      for x, y, seed in batch]
            loss = torch.stack(losses).mean()
            return loss, {"loss": loss.item()}

        return TrainingJob(LabelDenoiser(), batch_fn, loss_fn)

    if "toy-ddp" not in TASKS:
        register_task("toy-ddp", ToyDdpConfig, build)
    return "toy-ddp"
