import json

import numpy as np
import torch

from gencond.config import DiffusionConfig
from gencond.diffusion import DiffusionProcess
from vision.frechet import FeatureClassifier, frechet_distance, trained_classifier
from vision.probe import extract_features, train_linear_probe


def test_linear_probe_separates_an_easy_case_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (600,), generator=gen)
    centers = torch.randn(4, 16, generator=gen) * 3
    feats = centers[labels] + torch.randn(600, 16, generator=gen)
    acc = train_linear_probe(feats[:400], labels[:400], feats[400:], labels[400:], 4, epochs=5, min_updates=200)
    assert acc > 0.95
    noise = torch.randn(600, 16, generator=gen)
    chance = train_linear_probe(noise[:400], labels[:400], noise[400:], labels[400:], 4, epochs=5, min_updates=200)
    assert chance < 0.45


class _ToyFeatures(torch.nn.Module):
    """block b's feature = the image mean times (b + 1): lets the test check noising and pooling."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def block_features(self, x, t, cond=None, blocks=()):
        return {b: x.mean(dim=(1, 2, 3))[:, None] * (b + 1) * self.w for b in blocks}


def test_probe_features_are_taken_at_the_requested_timestep():
    process = DiffusionProcess(DiffusionConfig())
    images = torch.ones(20, 1, 4, 4)
    clean = extract_features(_ToyFeatures(), process, images, t=0, blocks=[0, 2], batch_size=8)
    noisy = extract_features(_ToyFeatures(), process, images, t=999, blocks=[0, 2], batch_size=8)
    assert clean[0].shape == (20, 1) and torch.allclose(clean[2], 3 * clean[0])
    assert (clean[0] - 1).abs().max() < 0.05  # t=0: nearly the clean mean
    assert noisy[0].abs().mean() < 0.2  # t=999: the signal is gone


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8))
    assert abs(frechet_distance(a, a)) < 1e-6
    shifted = frechet_distance(a, a + 2.0)
    assert abs(shifted - 8 * 4.0) < 0.5  # ||mu shift||^2 = 8 * 2^2
    assert frechet_distance(a, a + 1.0) < shifted


def test_fd_classifier_is_trained_once_then_cached(fd_cache):
    from vision.data import load_digits

    d = load_digits()
    model, acc = trained_classifier("digits", (d.train_images, d.train_labels), (d.test_images, d.test_labels), 10,
                                    steps=80)
    assert isinstance(model, FeatureClassifier) and acc > 0.5
    files = sorted(p.name for p in (fd_cache / "fd_classifiers").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")  # no pickle
    assert json.loads((fd_cache / "fd_classifiers" / files[0]).read_text())["test_accuracy"] == acc
    again, acc2 = trained_classifier("digits", (d.train_images, d.train_labels), (d.test_images, d.test_labels), 10,
                                     steps=80)
    assert acc2 == acc and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_a_probe_subset_of_class_sorted_data_holds_every_class():
    """MNIST's offline training copy is stored by class: a first-n slice would hold only the first classes."""
    from vision.probe import probe_subset

    images, labels = torch.arange(1000.0).view(1000, 1, 1, 1), torch.arange(10).repeat_interleave(100)
    x, y = probe_subset(images, labels, 200)
    assert len(x) == 200 and set(y.tolist()) == set(range(10)) and torch.equal(labels[x.view(-1).long()], y)
    assert torch.equal(probe_subset(images, labels, 200)[0], x)  # the same subset every time
    assert probe_subset(images, labels, None)[0] is images and probe_subset(images, labels, 5000)[0] is images
