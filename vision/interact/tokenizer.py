"""Grounding tokenizers: they replace diffusers' ``unet.position_net`` on a gated UNet.

Both take the same keyword arguments (what ``cross_attention_kwargs["gligen"]`` holds), all batched,
N interaction slots per image (empty slots have mask 0):
``subject_boxes``, ``object_boxes`` (B, N, 4) normalised xyxy in [0, 1]; ``masks`` (B, N);
``subject_embeddings``, ``object_embeddings``, ``action_embeddings`` (B, N, phrase_dim).

* :class:`InteractionTokenizer` — InteractDiffusion's interaction tokens (official ``HOIPositionNetV5``):
  3N tokens ordered [all subjects, all actions, all objects].
* :class:`GligenTokenizer` — GLIGEN's boxes + phrases (diffusers' ``GLIGENTextBoundingboxProjection``),
  fed the subject and the object of each triplet as two entities (the action is not seen): 2N tokens.
"""
from __future__ import annotations

import torch
from diffusers.models.embeddings import GLIGENTextBoundingboxProjection, get_fourier_embeds_from_boundingbox
from torch import nn

FOURIER_FREQS = 8  # frequencies 100^(k/8), k = 0..7
BOX_FEATURES = FOURIER_FREQS * 2 * 4  # sin and cos of x0, y0, x1, y1 per frequency = 64
MAX_INTERACTIONS = 30
# Row of each role in the role embedding, as the official code indexes it (subject 0, object 1, action 2).
ROLE_SUBJECT, ROLE_OBJECT, ROLE_ACTION = 0, 1, 2


def box_features(boxes: torch.Tensor) -> torch.Tensor:
    """Fourier features of xyxy boxes (..., N, 4) -> (..., N, 64): per frequency, sin of the four
    coordinates then cos of the four (diffusers' and the official code's order)."""
    return get_fourier_embeds_from_boundingbox(FOURIER_FREQS, boxes)


def between_box(subject_boxes: torch.Tensor, object_boxes: torch.Tensor) -> torch.Tensor:
    """The box between two boxes (..., 4) xyxy: the middle two of their four x values, likewise for y.

    It is the intersection when the boxes overlap and the gap between them when they are apart
    (subject [.1,.1,.4,.9], object [.3,.5,.7,.8] -> [.3,.5,.4,.8]); the action token's location.
    """
    xs = torch.cat([subject_boxes[..., 0::2], object_boxes[..., 0::2]], dim=-1).sort(dim=-1).values
    ys = torch.cat([subject_boxes[..., 1::2], object_boxes[..., 1::2]], dim=-1).sort(dim=-1).values
    return torch.stack([xs[..., 1], ys[..., 1], xs[..., 2], ys[..., 2]], dim=-1)


def phrase_box_mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    """GLIGEN's token MLP: [phrase; box features] -> 512 -> SiLU -> 512 -> SiLU -> out."""
    return nn.Sequential(nn.Linear(in_dim + BOX_FEATURES, 512), nn.SiLU(), nn.Linear(512, 512), nn.SiLU(),
                         nn.Linear(512, out_dim))


def _check_slots(boxes: torch.Tensor, max_slots: int) -> None:
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (B, N, 4) xyxy, got {tuple(boxes.shape)}")
    if boxes.shape[1] > max_slots:
        raise ValueError(f"{boxes.shape[1]} interaction slots, at most {max_slots}")


class InteractionTokenizer(nn.Module):
    """InteractDiffusion's interaction tokenizer and interaction embedding.

    Subject and object tokens share ``linears`` (phrase + own box), the action token has ``linear_action``
    (action phrase + the between-box). Empty slots get learned null features: one null phrase shared by
    subject and object, one for the action, one null box for all three. With ``interaction_embedding``
    a learned instance embedding (slot 0..N-1) and a learned role embedding (subject / action / object),
    both N(0, 0.02), are added; the instance embedding is tied to the slot, so it is what tells the
    attention which subject, action and object belong together (and makes the tokens depend on slot order).
    Parameter names follow the official code so its checkpoints map one to one.
    """

    def __init__(self, phrase_dim: int, out_dim: int, max_interactions: int = MAX_INTERACTIONS,
                 interaction_embedding: bool = True):
        super().__init__()
        self.phrase_dim, self.out_dim, self.max_interactions = phrase_dim, out_dim, max_interactions
        self.linears = phrase_box_mlp(phrase_dim, out_dim)
        self.linear_action = phrase_box_mlp(phrase_dim, out_dim)
        self.null_positive_feature = nn.Parameter(torch.zeros(phrase_dim))
        self.null_action_feature = nn.Parameter(torch.zeros(phrase_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(BOX_FEATURES))
        self.interaction_embedding = None
        self.role_embedding = None
        if interaction_embedding:
            self.interaction_embedding = nn.Embedding(max_interactions, out_dim)
            self.role_embedding = nn.Embedding(3, out_dim)
            nn.init.normal_(self.interaction_embedding.weight, std=0.02)
            nn.init.normal_(self.role_embedding.weight, std=0.02)

    def forward(self, subject_boxes, object_boxes, masks, subject_embeddings, object_embeddings,
                action_embeddings) -> torch.Tensor:
        """(B, 3N, out_dim) tokens: [subjects, actions, objects]."""
        _check_slots(subject_boxes, self.max_interactions)
        n = subject_boxes.shape[1]
        m = masks.to(subject_boxes.dtype).unsqueeze(-1)

        def fill(values, null):  # real values where m = 1, the learned null where m = 0
            return values * m + (1 - m) * null.view(1, 1, -1)

        box_null = self.null_position_feature
        subjects = self.linears(torch.cat([fill(subject_embeddings, self.null_positive_feature),
                                           fill(box_features(subject_boxes), box_null)], dim=-1))
        objects = self.linears(torch.cat([fill(object_embeddings, self.null_positive_feature),
                                          fill(box_features(object_boxes), box_null)], dim=-1))
        actions = self.linear_action(torch.cat([fill(action_embeddings, self.null_action_feature),
                                                fill(box_features(between_box(subject_boxes, object_boxes)),
                                                     box_null)], dim=-1))
        if self.interaction_embedding is not None:
            instance = self.interaction_embedding.weight[:n].unsqueeze(0)
            roles = self.role_embedding.weight
            subjects = subjects + instance + roles[ROLE_SUBJECT]
            actions = actions + instance + roles[ROLE_ACTION]
            objects = objects + instance + roles[ROLE_OBJECT]
        return torch.cat([subjects, actions, objects], dim=1)

    @torch.no_grad()
    def init_from_gligen(self, gligen: GLIGENTextBoundingboxProjection) -> None:
        """Start from a GLIGEN text-grounding tokenizer: its MLP into both MLPs, its null features into ours
        (the official initialisation, GLIGEN's MLP copied into the action MLP)."""
        state = gligen.linears.state_dict()
        self.linears.load_state_dict(state)
        self.linear_action.load_state_dict(state)
        self.null_positive_feature.copy_(gligen.null_positive_feature)
        self.null_action_feature.copy_(gligen.null_positive_feature)
        self.null_position_feature.copy_(gligen.null_position_feature)


class GligenTokenizer(GLIGENTextBoundingboxProjection):
    """GLIGEN's grounding tokenizer (diffusers' own module and parameter names, so GLIGEN checkpoints load),
    taking the interaction keywords: each triplet gives two entities, subject and object, with their
    phrases and boxes; the action is dropped. Tokens (B, 2N, out_dim): [subjects, objects]."""

    def __init__(self, phrase_dim: int, out_dim: int, max_interactions: int = MAX_INTERACTIONS):
        super().__init__(positive_len=phrase_dim, out_dim=out_dim, feature_type="text-only",
                         fourier_freqs=FOURIER_FREQS)
        self.max_interactions = max_interactions

    def forward(self, subject_boxes, object_boxes, masks, subject_embeddings, object_embeddings,
                action_embeddings=None) -> torch.Tensor:
        _check_slots(subject_boxes, self.max_interactions)
        return super().forward(boxes=torch.cat([subject_boxes, object_boxes], dim=1),
                               masks=torch.cat([masks, masks], dim=1).to(subject_boxes.dtype),
                               positive_embeddings=torch.cat([subject_embeddings, object_embeddings], dim=1))


TOKENIZERS = {"interact": InteractionTokenizer, "gligen": GligenTokenizer}


def make_tokenizer(kind: str, phrase_dim: int, out_dim: int, max_interactions: int = MAX_INTERACTIONS,
                   interaction_embedding: bool = True) -> nn.Module:
    """``interact`` (InteractDiffusion; ``interaction_embedding=False`` is the ablation) or ``gligen``."""
    if kind == "interact":
        return InteractionTokenizer(phrase_dim, out_dim, max_interactions, interaction_embedding)
    if kind == "gligen":
        return GligenTokenizer(phrase_dim, out_dim, max_interactions)
    raise ValueError(f"unknown grounding tokenizer '{kind}'; choose one of {', '.join(TOKENIZERS)}")
