"""Frame helpers shared by robotics and video: resizing frame stacks, label strips and labelled GIFs.

Frames are uint8 RGB arrays (T, H, W, 3) (depth: float (T, H, W)). OpenCV and imageio are imported
when a function runs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

LABEL_HEIGHT = 14  # the strip above labelled videos
MIN_WIDTH = 128  # labelled GIF columns are upscaled (nearest neighbour) to at least this many pixels


def resize_frames(frames: np.ndarray, size: tuple[int, int], depth: bool = False) -> np.ndarray:
    """Frames (T, H, W[, 3]) resized to ``size`` = (height, width). RGB and shrinking use area averaging;
    depth is enlarged by nearest neighbour (interpolating depth across an object's edge would make points
    that lie on neither the object nor what is behind it)."""
    import cv2

    if frames.shape[1:3] == tuple(size):
        return frames
    height, width = size
    shrink = height <= frames.shape[1] and width <= frames.shape[2]
    method = cv2.INTER_NEAREST if depth and not shrink else cv2.INTER_AREA
    return np.stack([cv2.resize(f, (width, height), interpolation=method) for f in frames])


def label_strip(text: str, width: int) -> np.ndarray:
    """A black strip LABEL_HEIGHT high with ``text`` centred in white (shrunk to fit narrow frames)."""
    import cv2

    strip = np.zeros((LABEL_HEIGHT, width, 3), np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    scale *= min(1.0, (width - 4) / cv2.getTextSize(text, font, scale, 1)[0][0])
    text_width = cv2.getTextSize(text, font, scale, 1)[0][0]
    cv2.putText(strip, text, ((width - text_width) // 2, LABEL_HEIGHT - 4), font, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return strip


def labelled_frames(columns: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Frames of equal-length uint8 videos (T, H, W, 3) side by side, each under its label."""
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"videos of different lengths {sorted(lengths)} cannot be shown side by side")
    scale = max(1, -(-MIN_WIDTH // max(v.shape[2] for v in columns.values())))
    big = {k: v.repeat(scale, axis=1).repeat(scale, axis=2) for k, v in columns.items()}
    out = []
    for t in range(lengths.pop()):
        parts = []
        for name, video in big.items():
            parts.append(np.concatenate([label_strip(name, video.shape[2]), video[t]], axis=0))
            parts.append(np.full((parts[-1].shape[0], 2, 3), 255, np.uint8))
        out.append(np.concatenate(parts[:-1], axis=1))
    return out


def write_labelled_gif(path: str | Path, columns: dict[str, np.ndarray], fps: float = 4) -> Path:
    """A looping GIF of :func:`labelled_frames` at ``path`` (its folder made)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(path, labelled_frames(columns), duration=1000 / fps, loop=0)
    return path
