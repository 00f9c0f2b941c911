"""A trained model ready to sample, from a run or an export folder: ``Pipeline.from_run(path)``.

One object holds what every verb that samples needs: the run's config (``cfg``), the network in eval mode on
its ``device`` (``model``), its :class:`~gencond.diffusion.DiffusionProcess` (``process``), the sampling
settings (``sampling``, the config's section), seeded generators (:meth:`Pipeline.generator`) and
``sample``. Verbs build it from their flags (:meth:`Pipeline.from_args` of
:func:`gencond.arguments.add_sampling_arguments`); the thread count of a process is set in one place,
:func:`set_threads`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .arguments import check_sampling_steps
from .diffusion import DiffusionProcess
from .errors import UserError
from .runs import load_run
from .sampling import sample

SEED_STRIDES = (1, 7_919_009)  # how the parts after the seed enter the mix (seed_mix)


def seed_mix(seed: int, *parts: int) -> int:
    """The one seed mix of gencond's draws: ``seed * 1_000_003 + parts[0] + 7_919_009 * parts[1]`` (a chunk's,
    an episode's, a draw's noise depends on these numbers only, not on what ran before)."""
    if len(parts) > len(SEED_STRIDES):
        raise ValueError(f"seed_mix takes a seed and at most {len(SEED_STRIDES)} parts, got {len(parts)}")
    return seed * 1_000_003 + sum(p * s for p, s in zip(parts, SEED_STRIDES))


def seeded_generator(seed: int, *parts: int) -> torch.Generator:
    """A CPU generator seeded by :func:`seed_mix` (``seeded_generator(seed)`` alone: ``seed * 1_000_003``)."""
    return torch.Generator().manual_seed(seed_mix(seed, *parts))


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads for this process (None leaves them as they are)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"threads must be an integer ≥ 1, got {threads!r}")
    torch.set_num_threads(threads)


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Pipeline:
    """A trained model with its config, diffusion process and sampling settings, on one device."""

    def __init__(self, cfg: DictConfig, model: torch.nn.Module, device: str | torch.device | None = None,
                 path: Path | None = None, weights: str = "best"):
        self.cfg, self.path, self.weights = cfg, None if path is None else Path(path), weights
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.process = DiffusionProcess(cfg.diffusion)

    @classmethod
    def from_run(cls, path: str | Path, weights: str = "best", task: str | tuple[str, ...] | None = None,
                 device: str | torch.device | None = None, threads: int | None = None,
                 needed_by: str = "this command") -> Pipeline:
        """The pipeline of a run (its ``best`` or ``last`` weights) or an export, through
        :func:`gencond.runs.load_run`; ``task``: the task(s) the caller can use; ``device``: default the GPU
        when there is one; ``threads``: torch CPU threads (default: as they are)."""
        set_threads(threads)
        cfg, model = load_run(path, weights, task=task, needed_by=needed_by)
        return cls(cfg, model, device, path, weights)

    @classmethod
    def from_args(cls, args: argparse.Namespace, task: str | tuple[str, ...] | None = None,
                  needed_by: str = "this command", device: str | torch.device | None = None,
                  **sampling) -> Pipeline:
        """The pipeline of ``args.run_dir`` with the flags of :func:`gencond.arguments.add_sampling_arguments`:
        the weights, the threads (default the run's ``train.threads``) and the sampler flags, plus ``sampling``
        keys (those that are not None) into ``cfg.sampling``."""
        pipeline = cls.from_run(args.run_dir, getattr(args, "weights", "best"), task, device, needed_by=needed_by)
        set_threads(getattr(args, "threads", None) or pipeline.cfg.train.threads or None)
        chosen = {"scheduler": getattr(args, "scheduler", None), "num_steps": getattr(args, "steps", None),
                  "timesteps": getattr(args, "timesteps", None), "eta": getattr(args, "eta", None),
                  "micro_batch": getattr(args, "micro_batch", None), **sampling}
        pipeline.configure(**chosen)
        return pipeline

    def configure(self, steps_name: str = "--steps", **sampling) -> None:
        """Put ``sampling`` keys (those that are not None) into ``cfg.sampling``, refusing steps beyond the
        model's training timesteps (an error naming ``steps_name``); listed ``timesteps`` without ``num_steps``
        clear the config's num_steps."""
        chosen = {k: v for k, v in sampling.items() if v is not None}
        if "timesteps" in chosen and "num_steps" not in chosen:
            chosen["num_steps"] = None  # the config's num_steps would win over the listed steps asked for
        check_sampling_steps(chosen, self.cfg.diffusion.num_train_timesteps, steps_name)
        self.cfg.sampling = OmegaConf.merge(self.cfg.sampling, chosen)

    @property
    def sampling(self):
        """The sampling settings (the config's ``sampling`` section)."""
        return self.cfg.sampling

    generator = staticmethod(seeded_generator)

    def sample(self, shape: tuple[int, ...], **options) -> torch.Tensor:
        """:func:`gencond.sampling.sample` of this model with these settings (``options``: cond, guidance, start,
        input_self_cond, carry_self_cond, generator, callback, progress)."""
        return sample(self.model, self.process, shape, self.sampling, **options)
