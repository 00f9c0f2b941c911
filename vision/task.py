"""The ``ddae`` task: an image denoiser (U-ViT or DiT) trained by the core trainer, optionally with
DDAE++ feature conditioning and contrastive self-distillation."""
from __future__ import annotations

from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf

from gencond.conditions import unwrap
from gencond.diffusion import DiffusionProcess
from gencond.errors import UserError
from gencond.training import TrainingJob

from .augment import AUGMENT_DIM, augment
from .config import ImageModelConfig
from .data import load_images
from .feature_conditioning import moco_v3_loss
from .models import make_denoiser

VALIDATION_IMAGES = 512


def build_model(cfg: DictConfig, num_classes: int) -> torch.nn.Module:
    """The config's denoiser: its ``model`` section (but the architecture's name and the label switch), DDAE++'s
    switches from ``ddae``, and what follows from the data and the diffusion."""
    m, d = cfg.model, cfg.ddae
    section = {k: v for k, v in OmegaConf.to_container(m).items() if k not in ImageModelConfig.TASK_KEYS}
    return make_denoiser(
        m.arch, **section, image_size=cfg.data.image_size, in_channels=cfg.data.channels,
        num_classes=num_classes if m.class_conditional else 0, feature_conditioning=d.feature_conditioning,
        source_block=d.source_block, input_self_condition=cfg.diffusion.self_condition_prob > 0,
        augment_dim=AUGMENT_DIM if d.contrastive else 0, contrastive="student" if d.contrastive else "off",
        projection_dim=d.projection_dim,
    )


class _ViewModel:
    """Calls the denoiser with augmentation parameters and keeps its pooled features and timesteps,
    so the core's ``training_loss`` drives the denoising pass the contrastive loss reuses."""

    def __init__(self, model, aug: torch.Tensor):
        self.model, self.aug = model, aug
        self.null_condition = unwrap(model).null_condition
        self.pooled = self.t = self.x_t = self.cond = None

    def __call__(self, x_t, t, cond=None, self_cond=None):
        out, pooled = self.model(x_t, t, cond=cond, self_cond=self_cond, aug=self.aug, return_pooled=True)
        if torch.is_grad_enabled():  # the graded pass (not input self-conditioning's first pass)
            self.pooled, self.t, self.x_t, self.cond = pooled, t, x_t, cond
        return out


def contrastive_loss(model, view: _ViewModel, batch: int, cfg: DictConfig) -> Optional[torch.Tensor]:
    """MoCo-v3 loss between the student's two views (i, i + batch) and the EMA teacher's; pairs count
    only when both views are noised below ``ddae.contrastive_max_t``; None if fewer than 4 pairs."""
    d = cfg.ddae
    t = view.t
    keep = (t[:batch] < d.contrastive_max_t) & (t[batch:] < d.contrastive_max_t)
    if int(keep.sum()) < 4:
        return None
    idx = torch.nonzero(keep).squeeze(1)
    both = torch.cat([idx, idx + batch])
    q = model.predictor(model.projector(view.pooled[both]))
    cond = None if view.cond is None else view.cond[both]
    k = model.teacher_projection(view.x_t[both], t[both], cond, view.aug[both])
    n = len(idx)
    return moco_v3_loss(q[:n], k[n:], d.temperature) + moco_v3_loss(q[n:], k[:n], d.temperature)


def validation_probe(model, process: DiffusionProcess, splits, e) -> dict[str, float]:
    """With ``eval.validation_probe_images`` = n > 0: the linear probe of the default blocks at the first probe
    timestep, trained on n training images and scored on n test images (``probe_acc`` the best, at
    ``probe_block``); the probe-accuracy curve of a long run, logged as it trains."""
    n = e.validation_probe_images
    if not n or not splits.num_classes > 1:
        return {}
    from .probe import default_probe_blocks, probe_grid, probe_subset

    rows = probe_grid(model, process, probe_subset(splits.train_images, splits.train_labels, n),
                      probe_subset(splits.test_images, splits.test_labels, n), splits.num_classes,
                      default_probe_blocks(model), e.probe_timesteps[:1], epochs=e.probe_epochs,
                      batch_size=e.probe_batch_size, lr=e.probe_lr, progress=False)
    best = max(rows, key=lambda r: r["accuracy"])
    return {"probe_acc": best["accuracy"], "probe_block": best["block"], "probe_t": best["t"]}


def build(cfg: DictConfig) -> TrainingJob:
    """Training job of an image config: random training images, denoising loss (+ contrastive)."""
    splits = load_images(cfg.data)
    if len(splits.train_images) == 0:
        raise UserError(f"dataset '{cfg.data.dataset}' has no training images")
    model = build_model(cfg, splits.num_classes)
    process = DiffusionProcess(cfg.diffusion)
    class_cond = cfg.model.class_conditional
    batch_size = cfg.train.batch_size
    images, labels = splits.train_images, splits.train_labels

    def batch_fn(step: int, generator: torch.Generator):
        idx = torch.randint(0, len(images), (batch_size,), generator=generator)
        x = images[idx]
        if cfg.data.hflip:
            flip = torch.rand(batch_size, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, labels[idx]

    def loss_fn(model, batch, generator):
        x, y = batch
        device = next(model.parameters()).device
        x, y = x.to(device), y.to(device)
        cond = y if class_cond else None
        if not cfg.ddae.contrastive:
            return process.training_loss(model, x, cond=cond, generator=generator)
        inner = unwrap(model)
        views, params = zip(*(augment(x.cpu(), generator, cfg.ddae.augment_prob, cfg.ddae.augment_xflip) for _ in range(2)))
        view = _ViewModel(model, torch.cat(params).to(device))
        two = None if cond is None else torch.cat([cond, cond])
        loss, metrics = process.training_loss(view, torch.cat(views).to(device), cond=two, generator=generator)
        ctr = contrastive_loss(inner, view, len(x), cfg)
        if ctr is not None:
            loss = loss + cfg.ddae.contrastive_weight * ctr
            metrics["contrastive"] = ctr.item()
        return loss, metrics

    val_x = splits.test_images[:VALIDATION_IMAGES]
    val_y = splits.test_labels[:VALIDATION_IMAGES]

    def validate(model) -> dict[str, float]:
        """Denoising loss on held-out images, with fixed noise: comparable between validations."""
        gen = torch.Generator().manual_seed(12345)
        device = next(model.parameters()).device
        total, n = 0.0, 0
        with torch.no_grad():  # the trainer calls validate() in eval mode
            for i in range(0, len(val_x), 128):
                x = val_x[i:i + 128].to(device)
                cond = val_y[i:i + 128].to(device) if class_cond else None
                loss, _ = process.training_loss(model, x, cond=cond, generator=gen)
                total, n = total + loss.item() * len(x), n + len(x)
        return {"val_loss": total / max(n, 1), **validation_probe(unwrap(model), process, splits, cfg.eval)}

    def move_teacher(model, step: int) -> None:
        """The EMA teacher follows the student once per optimizer step (not per micro-batch)."""
        model.update_teacher(cfg.ddae.teacher_momentum)

    return TrainingJob(model, batch_fn, loss_fn, validate if len(val_x) else None, monitor="val_loss",
                       after_step=move_teacher if cfg.ddae.contrastive else None)
