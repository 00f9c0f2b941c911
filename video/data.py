"""Training clips for the video planner, cut from `gencond collect` demonstrations as AVDC cuts them.

A clip starts at a random frame of an episode and takes ``frames`` frames evenly spaced from there
to the episode's end; its first frame is the condition, the others are what the model predicts.
Frames are resized once to the model's resolution and held in memory (165 episodes at 32 px are a
few MB). Pixels are scaled to [-1, 1]; depth (RGB-D plans) maps metres in [DEPTH_NEAR, DEPTH_FAR]
linearly to [-1, 1] as a fourth channel.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from gencond.errors import UserError

DEPTH_NEAR, DEPTH_FAR = 0.2, 2.5  # metres; MetaWorld's scenes lie between, seen from its cameras


def frames_to_unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)
    return x.movedim(-1, -3)


def unit_to_frames(x: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).cpu().numpy()


def depth_to_unit(depth: np.ndarray) -> torch.Tensor:
    """Metres (..., H, W) -> (..., 1, H, W) in [-1, 1]."""
    d = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)).clamp(DEPTH_NEAR, DEPTH_FAR)
    return (2 * (d - DEPTH_NEAR) / (DEPTH_FAR - DEPTH_NEAR) - 1).unsqueeze(-3)


def unit_to_depth(x: torch.Tensor) -> np.ndarray:
    """(..., H, W) in [-1, 1] -> metres (..., H, W) float32."""
    return ((x.detach().float().clamp(-1, 1) + 1) / 2 * (DEPTH_FAR - DEPTH_NEAR) + DEPTH_NEAR).cpu().numpy()


def observation(first_frames: torch.Tensor) -> torch.Tensor:
    """Clips' first frames (..., C, H, W) as the planner's condition: a copy with the depth channel (RGB-D)
    zeroed — the observation's depth is not an input, a planner is given RGB only."""
    first = first_frames.clone()
    first[..., 3:, :, :] = 0
    return first


def clip_indices(length: int, start: int, count: int) -> np.ndarray:
    """``count`` frame indices evenly spaced from ``start`` to the last frame (AVDC's clips); the same
    spacing as the oracle planner's plans from ``start`` (``robotics.planners.subsample_indices``)."""
    from robotics.planners import subsample_indices

    return start + subsample_indices(length - start, count)


@dataclass
class Episode:
    video: torch.Tensor  # (N, C, H, W) float16 in [-1, 1]; C = 3, or 4 with depth
    text: str
    env_task: str
    camera: str
    seed: int


class DemoClips:
    """Every successful demonstration of a dataset, ready to cut clips from."""

    def __init__(self, root: str | Path, resolution: int, frames: int = 8, depth: bool = False,
                 env_tasks: Optional[Sequence[str]] = None, cameras: Optional[Sequence[str]] = None,
                 seeds: Optional[Sequence[int]] = None, extra_roots: Sequence[str | Path] = ()):
        from robotics.collect import load_dataset

        root = Path(root)
        for folder in (root, *map(Path, extra_roots)):
            if not (folder / "index.json").is_file():
                raise UserError(f"no demonstrations at {folder}; make them with "
                                f"`gencond collect --out {folder}{' --depth' if depth else ''}` (about 3 minutes)")
        demos = [d for d in load_dataset(root, env_tasks, cameras) if seeds is None or d.seed in set(seeds)]
        for folder in extra_roots:  # ``seeds`` selects from ``root`` only
            demos += load_dataset(folder, env_tasks, cameras)
        if not demos:
            raise UserError(f"{root} holds no successful demonstration of the chosen tasks/cameras/seeds; "
                            f"collect some with `gencond collect --out {root}`")
        if frames < 2:
            raise UserError(f"data.frames is {frames}; a clip needs the first frame and at least one more")
        self.frames, self.depth = frames, depth
        self.episodes = [self._episode(d, resolution, depth, root) for d in demos]
        self.texts = sorted({e.text for e in self.episodes})
        self.text_index = torch.tensor([self.texts.index(e.text) for e in self.episodes])
        self.seeds = sorted({e.seed for e in self.episodes})

    @staticmethod
    def _episode(demo, resolution: int, depth: bool, root: Path) -> Episode:
        from robotics.envs import instruction_of
        from robotics.frames import resize_frames

        video = frames_to_unit(resize_frames(demo.frames, (resolution, resolution)))
        if depth:
            per_frame = getattr(demo, "depth", None)
            if per_frame is None:
                raise UserError(f"the demonstrations in {root} have no per-frame depth; data.depth=true needs "
                                f"`gencond collect --out {root} --depth` (into a new folder)")
            import cv2

            # nearest neighbour also when shrinking: an average across an object's edge is on neither side
            near = np.stack([cv2.resize(d, (resolution, resolution), interpolation=cv2.INTER_NEAREST) for d in per_frame])
            video = torch.cat([video, depth_to_unit(near)], 1)
        return Episode(video.half(), instruction_of(demo.env_task), demo.env_task, demo.camera, demo.seed)

    def __len__(self) -> int:
        return len(self.episodes)

    def clip(self, episode: int, start: int) -> torch.Tensor:
        """(frames, C, H, W) float32: the clip of ``episode`` from frame ``start``."""
        video = self.episodes[episode].video
        return video[clip_indices(len(video), start, self.frames)].float()

    def batch(self, size: int, generator: torch.Generator) -> dict:
        """Random clips: ``video`` (B, C, T, H, W) the predicted frames, ``first_frame`` (B, C, H, W)
        (its depth channel zero), ``text_index`` (B,) into :attr:`texts`."""
        which = torch.randint(0, len(self.episodes), (size,), generator=generator)
        clips = []
        for e in which.tolist():
            length = len(self.episodes[e].video)
            start = int(torch.randint(0, length, (1,), generator=generator))
            clips.append(self.clip(e, start))
        clips = torch.stack(clips)  # (B, frames, C, H, W)
        return {"video": clips[:, 1:].movedim(1, 2), "first_frame": observation(clips[:, 0]),
                "text_index": self.text_index[which]}
