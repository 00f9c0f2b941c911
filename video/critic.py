"""The learned critic: P(a plan succeeds when executed) from (observation + plan, instruction).

A small video classifier on the planner's factorized convs and ResBlocks (the instruction's pooled
MiniLM vector enters where the planner's time embedding does), trained by the core trainer on
executed plans' outcomes (``video.executions``: first plans of episodes without replanning) with
class-balanced batches. ``gencond eval CRITIC_RUN --executions DIR`` reports accuracy on held-out
scenes. :class:`video.feedback.CriticFeedback` makes it VideoAgent's feedback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from gencond.errors import UserError
from gencond.training import TrainingJob

from .config import CriticModelConfig
from .model import Downsample, FactorizedConv, ResBlock, group_norm

TASK = "video-critic"
_SECTION = CriticModelConfig()  # the model section's defaults: the constructor's


class PlanCritic(ModelMixin, ConfigMixin):
    """``critic(video, text) -> logits (B,)``: video (B, 3, frames, H, W) in [-1, 1], the observation
    first; text (B, 384) pooled instruction embeddings. ``instructions``: those it was trained on (kept
    in its config: a critic is refused for another task's plans). The config's ``model`` section
    (:class:`video.config.CriticModelConfig`) holds the other arguments and their defaults."""

    @register_to_config
    def __init__(self, frames: int = 8, image_size: int = 32, base_channels: int = _SECTION.base_channels,
                 channel_mult: Sequence[int] = tuple(_SECTION.channel_mult), text_dim: int = 384,
                 dropout: float = _SECTION.dropout, instructions: Sequence[str] = ()):
        super().__init__()
        emb = 4 * base_channels
        self.text_proj = nn.Sequential(nn.Linear(text_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = base_channels * channel_mult[0]
        self.conv_in = FactorizedConv(3, ch)
        blocks = []
        for level, mult in enumerate(channel_mult):
            blocks.append(ResBlock(ch, base_channels * mult, emb, dropout))
            ch = base_channels * mult
            if level != len(channel_mult) - 1:
                blocks.append(Downsample(ch))
        self.blocks = nn.ModuleList(blocks)
        self.norm = group_norm(ch)
        self.head = nn.Linear(ch, 1)

    def forward(self, video: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = video.shape
        if (c, t, h) != (3, self.config.frames, self.config.image_size) or w != h:
            s = self.config.image_size
            raise ValueError(f"expected video (B, 3, {self.config.frames}, {s}, {s}), got {tuple(video.shape)}")
        x = video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        emb = self.text_proj(text.to(video.dtype))
        x = self.conv_in(x, t)
        for block in self.blocks:
            x = block(x, emb, t)
        x = F.silu(self.norm(x)).reshape(b, t, x.shape[1], -1).mean(dim=(1, 3))
        return self.head(x).squeeze(-1)


# ---- data ------------------------------------------------------------------------------------------------
def plans_to_video(plans: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 plans (B, frames, H, W, 3) -> (B, 3, frames, res, res) in [-1, 1]."""
    from robotics.frames import resize_frames

    from .data import frames_to_unit

    b, f = plans.shape[:2]
    small = resize_frames(plans.reshape(b * f, *plans.shape[2:]), (resolution, resolution))
    return frames_to_unit(small).reshape(b, f, 3, resolution, resolution).movedim(1, 2)


class ExecutedPlans:
    """First plans of executed episodes without replanning, with their outcome, from execution folders."""

    def __init__(self, folders: Sequence[str], resolution: int, frames: int):
        from robotics.planners import plan_rgb

        from .executions import read_episodes

        if not folders:
            raise UserError("data.executions is empty; make executed plans with `gencond video-execute PLANNER_RUN "
                            "--seeds 0-4 --draws 4 --out runs/video/executions_train`")
        plans, labels, texts, scenes = [], [], [], []
        for folder in map(Path, folders):
            records = read_episodes(folder)
            if not records:
                raise UserError(f"{folder} holds no executed plans (no episodes.jsonl); write them with "
                                "`gencond video-execute PLANNER_RUN --out " + str(folder) + "`")
            for r in records:
                if "plan" not in r or r.get("replans", 0):
                    continue  # only a plan executed to the end alone is labelled by the outcome
                with np.load(folder / r["plan"], allow_pickle=False) as z:
                    plan, text = plan_rgb(z["plan"]), str(z["text"])
                if len(plan) != frames:
                    raise UserError(f"{folder / r['plan']} has {len(plan)} frames, the critic data.frames is {frames}")
                plans.append(plan)
                labels.append(bool(r["success"]))
                texts.append(text)
                scenes.append((r["task"], r["camera"], r["seed"]))
        if not plans:
            raise UserError(f"no plan executed without replanning in {', '.join(map(str, folders))}")
        self.video = plans_to_video(np.stack(plans), resolution)
        self.labels = torch.tensor(labels)
        self.texts = sorted(set(texts))
        self.text_index = torch.tensor([self.texts.index(t) for t in texts])
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.labels)

    def balanced_batch(self, size: int, generator: torch.Generator) -> dict:
        """Half successes, half failures (when both exist), drawn with replacement."""
        pos, neg = torch.nonzero(self.labels).flatten(), torch.nonzero(~self.labels).flatten()
        if len(pos) and len(neg):
            which = torch.where(torch.arange(size) % 2 == 0, pos[torch.randint(0, len(pos), (size,), generator=generator)],
                                neg[torch.randint(0, len(neg), (size,), generator=generator)])
        else:
            which = torch.randint(0, len(self.labels), (size,), generator=generator)
        return {"index": which}


def pooled_text(texts: Sequence[str]) -> torch.Tensor:
    from gencond.text import text_encoder

    return text_encoder().encode(list(texts)).pooled


def scores(model: PlanCritic, data: ExecutedPlans, text: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Success probabilities of every plan in ``data``."""
    out = []
    with torch.no_grad():
        for i in range(0, len(data), batch):
            idx = torch.arange(i, min(i + batch, len(data)))
            out.append(torch.sigmoid(model(data.video[idx], text[data.text_index[idx]])))
    return torch.cat(out)


def accuracy_table(p: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> dict:
    pred = p >= threshold
    pos, neg = labels, ~labels
    tpr = float((pred & pos).sum() / pos.sum()) if pos.any() else None
    tnr = float((~pred & neg).sum() / neg.sum()) if neg.any() else None
    return {"accuracy": round(float((pred == labels).float().mean()), 4),
            "balanced_accuracy": None if tpr is None or tnr is None else round((tpr + tnr) / 2, 4),
            "true_positive_rate": tpr, "true_negative_rate": tnr,
            "precision_of_accepts": round(float((pred & pos).sum() / pred.sum()), 4) if pred.any() else None,
            "success_rate": round(float(labels.float().mean()), 4), "plans": int(len(labels)), "threshold": threshold}


def build(cfg) -> TrainingJob:
    from omegaconf import OmegaConf

    d = cfg.data
    data = ExecutedPlans(d.executions, d.resolution, d.frames)
    text = pooled_text(data.texts)
    model = PlanCritic(**OmegaConf.to_container(cfg.model), frames=d.frames, image_size=d.resolution,
                       text_dim=text.shape[1], instructions=tuple(data.texts))
    val = ExecutedPlans(d.val_executions, d.resolution, d.frames) if d.val_executions else None
    val_text = pooled_text(val.texts) if val else None

    def loss_fn(model, batch, generator):
        idx = batch["index"]
        logits = model(data.video[idx], text[data.text_index[idx]])
        loss = F.binary_cross_entropy_with_logits(logits, data.labels[idx].float())
        return loss, {"train_accuracy": float(((logits > 0) == data.labels[idx]).float().mean())}

    def validate(model):
        p = scores(model, val, val_text).clamp(1e-6, 1 - 1e-6)
        table = accuracy_table(p, val.labels)
        # balanced: a critic that always rejects must not look good on data with few successes
        loss = float(F.binary_cross_entropy(p, val.labels.float(), weight=torch.where(
            val.labels, 0.5 / val.labels.float().mean().clamp_min(1e-6), 0.5 / (1 - val.labels.float().mean()).clamp_min(1e-6))))
        return {"val_loss": loss, "val_balanced_accuracy": table["balanced_accuracy"] or 0.0}

    return TrainingJob(model, lambda step, g: data.balanced_batch(cfg.train.batch_size, g), loss_fn,
                       validate=validate if val else None)


def load_model(folder):
    return PlanCritic.from_pretrained(folder)


class LoadedCritic:
    """A trained critic that scores plans: ``success_probability(plan, instruction) -> float``."""

    def __init__(self, run_dir: str | Path, weights: str = "best"):
        from gencond.runs import load_run, weights_fingerprint, weights_folder

        self.cfg, self.model = load_run(run_dir, weights, task=TASK, needed_by="a critic feedback")
        self.fingerprint = weights_fingerprint(weights_folder(Path(run_dir), weights))
        self._text: dict[str, torch.Tensor] = {}

    def success_probability(self, plan, instruction: str) -> float:
        from robotics.planners import plan_rgb

        frames = plan_rgb(plan)
        if len(frames) != self.model.config.frames:
            raise UserError(f"the critic scores plans of {self.model.config.frames} frames (observation first); "
                            f"got {len(frames)}: a critic of another planner's frame count")
        if instruction not in self._text:
            trained = list(self.model.config.instructions or ())
            if trained and instruction not in trained:
                raise UserError(f"this critic was trained on plans for: {', '.join(trained)}; it cannot judge "
                                f"'{instruction}' (train one on executions of that task)")
            self._text[instruction] = pooled_text([instruction])
        video = plans_to_video(frames[None], self.model.config.image_size)
        with torch.no_grad():
            return float(torch.sigmoid(self.model(video, self._text[instruction]))[0])


def load_critic(run_dir: str | Path, weights: str = "best") -> LoadedCritic:
    return LoadedCritic(run_dir, weights)
