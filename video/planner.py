"""A trained video planner as a robotics :class:`~robotics.planners.Planner`.

``VideoPlanner(run_dir).plan(frame, instruction, camera)`` resizes the observation to the model's
resolution, samples the predicted frames with the core sampler (DDIM by default), and returns the
observation followed by the plan (uint8 RGB; with an RGB-D model a ``RgbdPlan`` that also carries
metric depth). The robotics evaluator fits plan frames to the camera view.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gencond.errors import UserError
from gencond.pipeline import Pipeline
from gencond.runs import weights_fingerprint, weights_folder
from robotics.frames import resize_frames
from robotics.planners import RgbdPlan

from .data import frames_to_unit, unit_to_depth, unit_to_frames
from .model import plan_condition

TASK = "video-planner"


class VideoPlanner:
    """Plans with a trained ``video-planner`` run (its EMA weights; 'best' when validated)."""

    def __init__(self, run_dir: str | Path, weights: str = "best", scheduler: Optional[str] = None,
                 steps: Optional[int] = None, cfg_scale: Optional[float] = None, seed: int = 0,
                 device: Optional[str] = None):
        self.run_dir = Path(run_dir)
        self.pipeline = Pipeline.from_run(run_dir, weights, task=TASK, device=device, needed_by="a video planner")
        self.pipeline.configure(scheduler=scheduler, num_steps=steps, cfg_scale=cfg_scale)
        self.cfg, self.model, self.process, self.device = (self.pipeline.cfg, self.pipeline.model, self.pipeline.process,
                                                          self.pipeline.device)
        self.resolution = self.model.config.image_size
        self.depth = self.model.config.channels == 4
        self.generator = torch.Generator().manual_seed(seed)
        self._texts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.weights, self.seed = weights, seed
        self.draw = 0  # which independent plan of a scene (video.executions draws several per scene)
        self.fingerprint = weights_fingerprint(weights_folder(self.run_dir, weights))

    @property
    def training_seeds(self) -> list[int]:
        """The scene seeds of the demonstrations this planner was trained on (from its run's config and
        the demos' index; empty when the demos are no longer there)."""
        from robotics.collect import read_index

        d = self.cfg.data
        if not (Path(d.root) / "index.json").is_file():
            return []
        seeds = {int(e["seed"]) for e in read_index(d.root)["episodes"] if e["success"]}
        return sorted(seeds if d.seeds is None else seeds & set(d.seeds))

    def __repr__(self) -> str:  # an evaluation's identity (robotics.evaluate)
        s = self.cfg.sampling
        return (f"VideoPlanner({self.run_dir.resolve()}, weights={self.weights}, scheduler={s.scheduler}, "
                f"steps={s.num_steps}, cfg_scale={s.cfg_scale}, seed={self.seed}, sha256={self.fingerprint})")

    def begin_episode(self, env_task: str, camera: str, seed: int) -> None:
        """Plans of an episode depend on its seed (and :attr:`draw`) only, not on what ran before:
        resumable evaluations."""
        self.generator = self.pipeline.generator(self.seed, seed, self.draw)

    def _text(self, text: str):
        if text not in self._texts:
            from gencond.text import text_encoder

            trained = list(self.model.config.instructions or ())
            if trained and text not in trained:
                warnings.warn(f"instruction '{text}' was never seen in training; the planner was trained on: "
                              + ", ".join(trained), stacklevel=3)
            emb = text_encoder(self.model.config.text_max_tokens).encode([text])
            self._texts[text] = (emb.tokens.to(self.device), emb.mask.to(self.device))
        return self._texts[text]

    def first_frame(self, frame: np.ndarray) -> torch.Tensor:
        """The observation (H, W, 3) uint8 of any size, as the model's (1, C, res, res) condition."""
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            got = type(frame).__name__ if not isinstance(frame, np.ndarray) else f"{frame.dtype} {frame.shape}"
            raise UserError(f"a first frame must be a uint8 RGB array (H, W, 3), got {got}")
        x = frames_to_unit(resize_frames(frame[None], (self.resolution, self.resolution)))
        if self.depth:  # the observation's depth is not given: the model predicts every frame's depth
            x = torch.cat([x, torch.zeros_like(x[:, :1])], 1)
        return x.to(self.device)

    @torch.no_grad()
    def sample_plan(self, frame: np.ndarray, instruction: str, previous_plan: Optional[torch.Tensor] = None,
                    **sampler) -> torch.Tensor:
        """The predicted frames (1, C, T, res, res) in [-1, 1]."""
        first = self.first_frame(frame)
        tokens, mask = self._text(instruction)
        cond = plan_condition(first, tokens, mask, previous_plan)
        c, t = self.model.config.channels, self.model.config.frames
        return self.pipeline.sample((1, c, t, self.resolution, self.resolution), cond=cond, generator=self.generator,
                                    progress=False, **sampler)

    def to_plan(self, frame: np.ndarray, predicted: torch.Tensor):
        """The observation (at the model's resolution) followed by the predicted frames, as a robotics plan."""
        rgb = np.concatenate([resize_frames(frame[None], (self.resolution, self.resolution)),
                              unit_to_frames(predicted[0, :3].movedim(1, 0))])
        if not self.depth:
            return rgb
        depth = unit_to_depth(predicted[0, 3])
        return RgbdPlan(rgb, np.concatenate([depth[:1], depth]))

    def plan(self, frame: np.ndarray, instruction: str, camera: str):
        return self.to_plan(frame, self.sample_plan(frame, instruction))
