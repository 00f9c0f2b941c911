"""DDAE's linear probe: noise each image at timestep t, pool one block's output, train a linear
classifier on the training split's features and report its accuracy on the test split."""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gencond.diffusion import DiffusionProcess


def probe_subset(images: torch.Tensor, labels: torch.Tensor, count: Optional[int], seed: int = 0):
    """(images, labels) of ``count`` examples drawn at random with a fixed seed (all of them when ``count`` is
    None or not smaller): datasets stored by class (MNIST's offline copy is) would give a first-n slice of a few
    classes only."""
    if count is None or count >= len(images):
        return images, labels
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
    return images[pick], labels[pick]


def default_probe_blocks(model) -> list[int]:
    """Every other block from the encoder's last block on (DDAE's best layers sit mid-decoder)."""
    return list(range(model.num_encoder_blocks - 1, model.num_blocks, 2))


@torch.no_grad()
def extract_features(model, process: DiffusionProcess, images: torch.Tensor, t: int, blocks: Iterable[int],
                     batch_size: int = 256, seed: int = 0) -> dict[int, torch.Tensor]:
    """{block: (N, D)} pooled features of ``images`` noised at timestep ``t`` (fixed noise per seed)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    blocks = sorted(set(blocks))
    out = {b: [] for b in blocks}
    model.eval()
    for i in range(0, len(images), batch_size):
        x0 = images[i:i + batch_size]
        noise = torch.randn(x0.shape, generator=gen)
        tt = torch.full((len(x0),), int(t), dtype=torch.long)
        x_t = process.add_noise(x0, noise, tt).to(device)
        feats = model.block_features(x_t, tt.to(device), blocks=blocks)
        for b in blocks:
            out[b].append(feats[b].float().cpu())
    return {b: torch.cat(v) for b, v in out.items()}


def train_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                       num_classes: int, epochs: int = 15, batch_size: int = 128, lr: float = 1e-3,
                       seed: int = 0, min_updates: int = 1000) -> float:
    """Test accuracy of a linear classifier on standardised features (Adam, cosine schedule); small
    training sets get more epochs so that the classifier makes at least ``min_updates`` updates."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(train_x.shape[1], num_classes)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    per_epoch = math.ceil(len(train_x) / batch_size)
    epochs = max(epochs, math.ceil(min_updates / per_epoch))
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(train_x), generator=gen)
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    with torch.no_grad():
        return (head(test_x).argmax(1) == test_y).float().mean().item()


def probe_grid(model, process: DiffusionProcess, train: tuple[torch.Tensor, torch.Tensor],
               test: tuple[torch.Tensor, torch.Tensor], num_classes: int, blocks: Iterable[int],
               timesteps: Iterable[int], epochs: int = 15, batch_size: int = 128, lr: float = 1e-3,
               progress: bool = True, feature_batch: Optional[int] = None) -> list[dict]:
    """Linear-probe accuracy for every (block, t) of the grid: rows {block, t, accuracy}."""
    rows = []
    blocks = sorted(set(int(b) for b in blocks))
    for t in tqdm(list(timesteps), desc="linear probe", disable=not progress, leave=False):
        ftr = extract_features(model, process, train[0], t, blocks, feature_batch or 256, seed=1)
        fte = extract_features(model, process, test[0], t, blocks, feature_batch or 256, seed=2)
        for b in blocks:
            acc = train_linear_probe(ftr[b], train[1], fte[b], test[1], num_classes, epochs, batch_size, lr)
            rows.append({"block": b, "t": int(t), "accuracy": acc})
    return rows


def raw_pixel_baselines(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                        num_classes: int, patch: int, epochs: int = 15, batch_size: int = 128,
                        lr: float = 1e-3) -> dict[str, float]:
    """What a probe must beat for the features to be features: the same linear probe on the raw pixels
    (flattened) and on the mean over the image's raw ``patch`` x ``patch`` patches (a pooled token's worth
    of pixels, as the model's features are pooled tokens)."""
    def pooled(images: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(images.float(), kernel_size=patch, stride=patch)  # (N, C*p*p, L)
        return patches.mean(-1)

    flat = lambda images: images.float().flatten(1)  # noqa: E731
    return {"raw_pixels": train_linear_probe(flat(train[0]), train[1], flat(test[0]), test[1], num_classes,
                                             epochs, batch_size, lr),
            f"pooled_raw_patches_{patch}x{patch}": train_linear_probe(pooled(train[0]), train[1], pooled(test[0]),
                                                                      test[1], num_classes, epochs, batch_size, lr)}
