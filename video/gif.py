"""Labelled side-by-side GIFs of video plans (a column per video, a label strip above each)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

MIN_WIDTH = 128  # columns are upscaled (nearest neighbour) to at least this many pixels


def labelled_frames(columns: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Frames of equal-length uint8 videos (T, H, W, 3) side by side, each under its label."""
    from robotics.evaluate import _label

    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"videos of different lengths {sorted(lengths)} cannot be shown side by side")
    scale = max(1, -(-MIN_WIDTH // max(v.shape[2] for v in columns.values())))
    big = {k: v.repeat(scale, axis=1).repeat(scale, axis=2) for k, v in columns.items()}
    out = []
    for t in range(lengths.pop()):
        parts = []
        for name, video in big.items():
            parts.append(np.concatenate([_label(name, video.shape[2]), video[t]], axis=0))
            parts.append(np.full((parts[-1].shape[0], 2, 3), 255, np.uint8))
        out.append(np.concatenate(parts[:-1], axis=1))
    return out


def write_labelled_gif(path: str | Path, columns: dict[str, np.ndarray], fps: float = 4) -> Path:
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(path, labelled_frames(columns), duration=1000 / fps, loop=0)
    return path
