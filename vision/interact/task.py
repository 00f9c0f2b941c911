"""The ``interact`` task: a text-to-image base, or a GLIGEN-style / InteractDiffusion model grounded on top
of a frozen base, trained by the core trainer.

Data: HOI-shapes scenes rendered on the fly (``data.dataset: hoi-shapes``) or an annotation file in the
JSON-lines format of :mod:`.annotations`. Each training sample drops its caption with probability
``model.caption_drop`` and, independently, its grounding with ``model.grounding_drop`` (the official
recipe: 0.5 and 0.1), so classifier-free guidance has both unconditional parts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from omegaconf import DictConfig

from gencond.conditions import select_condition
from gencond.diffusion import DiffusionProcess
from gencond.errors import UserError
from gencond.files import parsing
from gencond.training import TrainingJob

from .annotations import Triplet
from .grounding import flip_triplets, grounding_inputs
from .model import GroundedUNet, image_tensor, null_grounding, null_text

TASK = "interact"


class TrainingScenes:
    """(image, caption, triplets) of the training set: HOI-shapes scenes or annotated images."""

    def __init__(self, data: DictConfig):
        self.size = data.image_size
        if data.dataset == "hoi-shapes":
            from .scenes import HOIShapes

            self.hoi = HOIShapes(data.split, data.seed, data.image_size)
            self.count, self.annotations = data.num_train, None
        else:
            from .annotations import load_annotations

            self.hoi, self.annotations = None, load_annotations(data.dataset)
            self.count = len(self.annotations)
            if not self.count:
                raise UserError(f"{data.dataset} holds no annotation")

    def __len__(self) -> int:
        return self.count

    def held_out(self, count: int) -> list[tuple[torch.Tensor, str, list[Triplet]]]:
        """Validation scenes: hoi-shapes scenes ``num_train ..`` of the split (never trained on); for an
        annotation file its last ``count`` items (also trained on: files have no held-out part here)."""
        if self.hoi is not None:
            scenes = [self.hoi.scene(self.count + i) for i in range(count)]
            return [(image_tensor(sc.render(self.size)), sc.caption, sc.triplets) for sc in scenes]
        return [self.item(i) for i in range(max(0, self.count - count), self.count)]

    def item(self, index: int) -> tuple[torch.Tensor, str, list[Triplet]]:
        if self.hoi is not None:
            scene = self.hoi.scene(index)
            return image_tensor(scene.render(self.size)), scene.caption, scene.triplets
        from PIL import Image

        a = self.annotations[index]
        with parsing(a.image, "image", "an image PIL can decode (named by the annotations)"), Image.open(a.image) as im:
            image = im.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        return image_tensor(image), a.caption, a.triplets


def condition(captions: Sequence[str], triplets: Sequence[Sequence[Triplet]], max_tokens: int,
              grounded: bool, max_interactions: int) -> dict:
    """The model's condition for a batch: caption token states and mask, and the grounding keywords."""
    from gencond.text import text_encoder

    text = text_encoder(max_tokens).encode(list(captions))
    cond = {"text": text.tokens, "text_mask": text.mask}
    if grounded:
        cond.update(grounding_inputs(triplets, slots=max_interactions))
    return cond


def build_model(cfg: DictConfig) -> GroundedUNet:
    """From scratch (grounding none, or a grounded model on a fresh base) or grounded on ``model.base``."""
    m = cfg.model
    if m.from_gligen is not None and m.grounding != "interact":
        raise UserError("model.from_gligen starts an InteractDiffusion run (model.grounding interact) from a GLIGEN-style run")
    if m.base is not None:
        if m.grounding == "none":
            raise UserError("model.base is for grounded runs (model.grounding gligen or interact)")
        model = GroundedUNet.from_base(load_base(m.base), m.grounding, max_interactions=m.max_interactions,
                                       interaction_embedding=m.interaction_embedding)
        if m.from_gligen is not None:
            init_from_gligen(model, m.from_gligen)
        return model
    from .adapter import small_unet

    unet = small_unet(cfg.data.image_size, 3, tuple(m.block_out_channels), tuple(m.attention_levels),
                      layers_per_block=m.layers_per_block, head_dim=m.head_dim)
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    return GroundedUNet(config, m.grounding, max_interactions=m.max_interactions,
                        interaction_embedding=m.interaction_embedding)


def init_from_gligen(model: GroundedUNet, run_dir: str) -> None:
    """InteractDiffusion's initialisation from a GLIGEN-style run of the same base: its gated layers copied,
    its tokenizer MLP into both interaction MLPs (``InteractionTokenizer.init_from_gligen``)."""
    from gencond.runs import load_run

    cfg, gligen = load_run(run_dir, "best", task=TASK, needed_by="model.from_gligen")
    if gligen.config.grounding != "gligen":
        raise UserError(f"model.from_gligen: {run_dir} is a grounding '{gligen.config.grounding}' run, not 'gligen'")
    fusers = {k: v for k, v in gligen.unet.state_dict().items() if ".fuser." in k}
    own = model.unet.state_dict()
    if set(fusers) != {k for k in own if ".fuser." in k} or any(own[k].shape != v.shape for k, v in fusers.items()):
        raise UserError(f"model.from_gligen: {run_dir} was grounded on another base UNet (its gated layers do not fit)")
    model.unet.load_state_dict(fusers, strict=False)
    model.unet.position_net.init_from_gligen(gligen.unet.position_net)


def load_base(spec: str):
    """``model.base``: a gencond ``interact`` run (its UNet, best weights) or a diffusers UNet/pipeline folder."""
    path = Path(spec)
    if (path / "config.yaml").is_file():
        from gencond.runs import load_run

        _, model = load_run(path, "best", task=TASK, needed_by="model.base")
        return model.unet
    return path


def build(cfg: DictConfig) -> TrainingJob:
    scenes = TrainingScenes(cfg.data)
    model = build_model(cfg)
    process = DiffusionProcess(cfg.diffusion)
    m, batch_size = cfg.model, cfg.train.batch_size

    def batch_fn(step: int, generator: torch.Generator):
        idx = torch.randint(0, len(scenes), (batch_size,), generator=generator).tolist()
        flips = (torch.rand(batch_size, generator=generator) < 0.5).tolist() if cfg.data.hflip else [False] * batch_size
        images, captions, triplets = [], [], []
        for i, flip in zip(idx, flips):
            image, caption, ts = scenes.item(i)
            images.append(image.flip(-1) if flip else image)
            captions.append(caption)
            triplets.append(flip_triplets(ts) if flip else ts)
        return {"image": torch.stack(images), "captions": captions, "triplets": triplets}

    def loss_fn(model, batch, generator):
        device = next(model.parameters()).device
        cond = condition(batch["captions"], batch["triplets"], m.text_max_tokens, m.grounding != "none",
                         m.max_interactions)
        b = len(batch["captions"])
        drop_text = torch.rand(b, generator=generator) < m.caption_drop
        cond = select_condition(drop_text, null_text(cond), cond)
        if m.grounding != "none":
            drop_grounding = torch.rand(b, generator=generator) < m.grounding_drop
            cond = select_condition(drop_grounding, null_grounding(cond), cond)
        cond = {k: v.to(device) for k, v in cond.items()}
        return process.training_loss(model, batch["image"].to(device), cond=cond, generator=generator)

    return TrainingJob(model, batch_fn, loss_fn, validate=grounding_validation(cfg, scenes, process))


def grounding_validation(cfg: DictConfig, scenes: TrainingScenes, process: DiffusionProcess):
    """``validate(model)``: the loss on ``data.val_scenes`` held-out scenes (``val_loss``) and, for a grounded
    model, the grounding gap and the gates' |tanh α| (:mod:`.grounding_gap`). The caption is kept unless
    training always drops it (``model.caption_drop: 1``)."""
    from .grounding_gap import gate_openness, grounding_gap

    m = cfg.model
    batch = {}  # made at the first validation

    def validate(model) -> dict[str, float]:
        if not batch:
            held = scenes.held_out(cfg.data.val_scenes)
            cond = condition([caption for _, caption, _ in held], [ts for _, _, ts in held], m.text_max_tokens,
                             m.grounding != "none", m.max_interactions)
            batch.update(x0=torch.stack([image for image, _, _ in held]),
                         cond=null_text(cond) if m.caption_drop >= 1 else cond)
        return {**grounding_gap(model, process, batch["x0"], batch["cond"], seed=cfg.seed), **gate_openness(model)}

    return validate


def load_model(folder):
    return GroundedUNet.from_pretrained(folder)
