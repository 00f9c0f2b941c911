"""Fréchet distance between generated and real images.

With ``pytorch-fid`` installed and its Inception weights already in torch's hub cache, this is the
standard FID. Otherwise (as on machines without network) the features come from a small CNN
classifier trained in the project on the run's own training split — reported as
"FD-<dataset>-classifier", never as FID. The classifier is cached under $GENCOND_CACHE_DIR
(default ~/.cache/gencond) as safetensors weights plus JSON metadata (no pickle is ever loaded), and
its test accuracy is reported with the distance; below MIN_RELIABLE_ACCURACY the distance is flagged
as unreliable.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from gencond import cache_dir

FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets (N, D)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # near-singular covariances (e.g. dead ReLU features) are handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps).dot(s2 + eps))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray) -> float:
    """KID (Bińkowski et al.): the unbiased squared MMD of two feature sets (N, D) under the polynomial
    kernel k(x, y) = (x . y / D + 1)^3; unlike the Fréchet distance it has no bias at small N."""
    d = a.shape[1]
    kxx, kyy, kxy = ((x @ y.T / d + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    m, n = len(a), len(b)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


class FeatureClassifier(nn.Module):
    """A small CNN classifier; its 128-d penultimate activations are the Fréchet features."""

    def __init__(self, channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * width, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# A Fréchet distance on the features of a classifier scoring below this test accuracy is flagged as
# unreliable by ``gencond eval`` (printed warning, ``"reliable": false`` in the eval JSON): a classifier
# that cannot tell the classes apart has features that need not separate good samples from bad ones.
# 0.9 sits well below what the recipe reaches on MNIST (~0.97) and digits (~0.95 with 1500 steps).
MIN_RELIABLE_ACCURACY = 0.9

# Bumped whenever the training recipe or the cache format changes: older cache files are not reused.
# v2: safetensors + JSON cache (v1 pickled .pt files are never opened); shifts scaled to the image size.
RECIPE_VERSION = 2


def weak_classifier_warning(accuracy: float) -> str | None:
    """The warning ``gencond eval`` prints and records when the FD classifier is too weak, else None."""
    if accuracy is not None and accuracy >= MIN_RELIABLE_ACCURACY:
        return None
    return (f"the Fréchet distance rests on a weak feature classifier (test accuracy {accuracy:.2f} < "
            f"{MIN_RELIABLE_ACCURACY}); it is not a reliable quality measure (train it longer: "
            f"eval.fd_classifier_steps)")


def max_shift(image_size: int) -> int:
    """Random-translation range of the classifier's training: 2 px from 28 px up, none on 8x8 digits,
    where a wrapped 2-px roll moves a quarter of the image and the classifier learned far slower."""
    return min(2, image_size // 14)


def _fingerprint(images: torch.Tensor, labels: torch.Tensor, steps: int) -> str:
    h = hashlib.sha1()
    h.update(images[:: max(1, len(images) // 256)].numpy().tobytes())
    h.update(labels.numpy().tobytes())
    h.update(f"{tuple(images.shape)}-{steps}".encode())
    return h.hexdigest()[:12]


def _cache_paths(name: str, images: torch.Tensor, labels: torch.Tensor, steps: int) -> tuple[Path, Path]:
    stem = f"{name}-{_fingerprint(images, labels, steps)}-v{RECIPE_VERSION}"
    folder = cache_dir() / "fd_classifiers"
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def load_cached(weights: Path, meta: Path, model: nn.Module, expected: dict) -> dict | None:
    """The cached metadata after loading the cached weights into ``model``; None when there is no cache.
    Only safetensors and JSON are read — never a pickle — so a crafted file cannot run code; an
    unreadable cache, or one whose metadata differs from ``expected``, raises ValueError (retrain)."""
    if not (weights.is_file() and meta.is_file()):
        return None
    from safetensors.torch import load_file

    try:
        info = json.loads(meta.read_text())
        if not isinstance(info, dict) or any(info.get(k) != v for k, v in expected.items()):
            raise ValueError("its metadata does not match this dataset and recipe")
        model.load_state_dict(load_file(str(weights), device="cpu"))
    except Exception as e:  # noqa: BLE001 - any unreadable cache is retrained, never trusted
        raise ValueError(f"{type(e).__name__}: {e}") from None
    return info


def save_cached(weights: Path, meta: Path, model: nn.Module, info: dict) -> None:
    """Write ``model``'s weights (atomically) and ``info`` as the cache :func:`load_cached` reads."""
    from safetensors.torch import save_file

    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(weights.name + ".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    meta.write_text(json.dumps(info, indent=2))


def _load_cached(weights: Path, meta: Path, model: FeatureClassifier, expected: dict) -> float | None:
    """The cached test accuracy (see :func:`load_cached`); ValueError when it is not a number."""
    info = load_cached(weights, meta, model, expected)
    if info is None:
        return None
    acc = info.get("test_accuracy")
    if not isinstance(acc, (int, float)) or isinstance(acc, bool):
        raise ValueError("its test accuracy is not a number")
    return float(acc)


def trained_classifier(name: str, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                       num_classes: int, steps: int = 1500, batch_size: int = 128, seed: int = 0) -> tuple[FeatureClassifier, float]:
    """(classifier, test accuracy), trained on ``train`` once and cached by a fingerprint of the data.

    The cache is ``<name>-<fingerprint>-v<RECIPE_VERSION>.safetensors`` (weights) plus a ``.json`` of its
    metadata (test accuracy, steps, shapes); an unreadable or tampered cache is retrained with a warning."""
    images, labels = train
    weights, meta = _cache_paths(name, images, labels, steps)
    model = FeatureClassifier(images.shape[1], num_classes)  # the cached weights are loaded into it
    expected = {"recipe_version": RECIPE_VERSION, "name": name, "steps": steps, "channels": int(images.shape[1]),
                "num_classes": int(num_classes), "seed": seed, "batch_size": batch_size}
    try:
        acc = _load_cached(weights, meta, model, expected)
        if acc is not None:
            return model.eval(), acc
    except ValueError as e:
        warnings.warn(f"ignoring the unreadable cached FD classifier {weights} ({e}); retraining it", stacklevel=2)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = FeatureClassifier(images.shape[1], num_classes)  # initialised under the seed
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    shift_range = max_shift(min(images.shape[-2:]))
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        shift = torch.randint(-shift_range, shift_range + 1, (2,), generator=gen).tolist()  # against overfitting
        x = torch.roll(images[idx], shifts=shift, dims=(2, 3))
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(test[0][i:i + 500]).argmax(1) for i in range(0, len(test[0]), 500)])
    acc = (pred == test[1]).float().mean().item() if len(test[0]) else float("nan")
    save_cached(weights, meta, model, {**expected, "test_accuracy": acc, "test_images": len(test[0]),
                                       "image_shape": list(images.shape[1:])})
    return model, acc


def inception_available() -> bool:
    """True when pytorch-fid is installed and its FID Inception weights are already downloaded."""
    try:
        import pytorch_fid  # noqa: F401
    except ImportError:
        return False
    return (Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS).is_file()


@torch.no_grad()
def inception_features(images: torch.Tensor, batch_size: int = 100) -> np.ndarray:
    """2048-d pool features of the standard FID Inception network, images in [-1, 1]."""
    from pytorch_fid.inception import InceptionV3

    net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    feats = []
    for i in range(0, len(images), batch_size):
        x = (images[i:i + batch_size] + 1) / 2
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        feats.append(net(x)[0].flatten(1))
    return torch.cat(feats).numpy()


@torch.no_grad()
def classifier_features(model: FeatureClassifier, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    return torch.cat([model.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).numpy()
