"""Issue 10 (vision): a crafted FD-classifier cache never executes, a weak FD classifier is flagged,
and sample grids are upscaled to a viewable size."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gencond.cli import main

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "vision" / "digits_tiny.yaml")


class _Payload:
    """Unpickling this creates ``marker``: what a crafted cache file could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _digits():
    from vision.data import load_digits

    d = load_digits()
    return (d.train_images, d.train_labels), (d.test_images, d.test_labels)


def test_a_crafted_pickle_in_the_fd_cache_is_never_executed(fd_cache, tmp_path, monkeypatch, capsys):
    from vision.frechet import FeatureClassifier, trained_classifier

    train, test = _digits()
    model, acc = trained_classifier("digits", train, test, 10, steps=8)
    cached = [p for p in (fd_cache / "fd_classifiers").iterdir() if p.is_file()]
    assert cached
    marker = tmp_path / "pwned"
    for path in cached:  # every file the cache reads now holds a payload
        torch.save({"state_dict": _Payload(marker), "test_accuracy": _Payload(marker)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # even with unsafe torch.load defaults

    with pytest.warns(UserWarning, match="retrain"):
        again, acc2 = trained_classifier("digits", train, test, 10, steps=8)
    assert not marker.exists()
    assert isinstance(again, FeatureClassifier) and acc2 == acc  # retrained, deterministically
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    # the retrained classifier replaced the payload: the next call loads it without a warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, acc3 = trained_classifier("digits", train, test, 10, steps=8)
    assert acc3 == acc and not marker.exists()


def test_a_legacy_pickle_cache_file_is_ignored(fd_cache, tmp_path, monkeypatch):
    """The old ``<name>-<fingerprint>.pt`` pickle cache is never opened."""
    from vision import frechet

    train, test = _digits()
    marker = tmp_path / "pwned"
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    legacy = fd_cache / "fd_classifiers" / f"digits-{frechet._fingerprint(train[0], train[1], 8)}.pt"
    legacy.parent.mkdir(parents=True)
    torch.save({"state_dict": _Payload(marker), "test_accuracy": 1.0}, legacy)
    _, acc = frechet.trained_classifier("digits", train, test, 10, steps=8)
    assert not marker.exists() and acc < 1.0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A digits run of a few steps whose FD classifier trains for only 10 steps (so it is weak)."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", CONFIG, f"runs_dir={root}", "train.max_steps=4", "train.validate_every=0",
                 "eval.fd_classifier_steps=10", "--quiet"]) == 0
    return root / "digits_tiny"


def test_eval_warns_that_fd_on_a_weak_classifier_is_unreliable(tiny_run, fd_cache, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", str(tiny_run), "--quiet", "--skip-probe", "--fd-samples", "16", "--out", str(out)]) == 0
    fd = json.loads(out.read_text())["frechet"]
    acc = fd["feature_classifier_test_accuracy"]
    assert acc < 0.9 and fd["reliable"] is False
    assert "weak" in fd["warning"] and f"{acc:.2f}" in fd["warning"]
    printed = capsys.readouterr()
    assert "warning" in printed.err and "not a reliable" in printed.err and f"{acc:.2f}" in printed.err


def test_eval_has_no_warning_with_an_accurate_classifier(tiny_run, fd_cache, tmp_path, capsys, monkeypatch):
    from vision import frechet

    monkeypatch.setattr(frechet, "trained_classifier",
                        lambda *a, **k: (frechet.FeatureClassifier(1, 10).eval(), 0.97))
    out = tmp_path / "eval.json"
    assert main(["eval", str(tiny_run), "--quiet", "--skip-probe", "--fd-samples", "16", "--out", str(out)]) == 0
    fd = json.loads(out.read_text())["frechet"]
    assert fd["feature_classifier_test_accuracy"] == 0.97 and fd["reliable"] is True and "warning" not in fd
    assert "warning" not in capsys.readouterr().err


def test_sample_grid_png_is_upscaled_nearest_neighbour(tiny_run, tmp_path):
    from torchvision.utils import make_grid

    from gencond.pipeline import Pipeline
    from vision.generate import generate_images

    png = tmp_path / "grid.png"
    assert main(["sample", str(tiny_run), "--num", "9", "--quiet", "--out", str(png)]) == 0
    with Image.open(png) as im:
        grid = np.asarray(im.convert("RGB"))
    native = 3 * 9 + 1  # 3 x 3 tiles of 8 px with 1 px padding
    scale = 8  # digits are 8 px: each tile is shown at 64 px
    assert grid.shape[:2] == (native * scale, native * scale)
    # nearest neighbour: every scale x scale block is one colour, and they are the raw samples' pixels
    blocks = grid.reshape(native, scale, native, scale, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()
    pipeline = Pipeline.from_run(tiny_run, task="ddae")
    images, _ = generate_images(pipeline, 9, batch_size=pipeline.cfg.eval.sample_batch_size, seed=0)
    expected = make_grid((images + 1) / 2, nrow=3, padding=1).mul(255).add(0.5).clamp(0, 255).byte()
    assert np.array_equal(blocks[:, 0, :, 0], expected.permute(1, 2, 0).numpy())


def test_sample_scale_option(tiny_run, tmp_path):
    png = tmp_path / "grid.png"
    assert main(["sample", str(tiny_run), "--num", "4", "--scale", "2", "--quiet", "--out", str(png)]) == 0
    with Image.open(png) as im:
        assert im.size == ((2 * 9 + 1) * 2, (2 * 9 + 1) * 2)  # 2 x 2 tiles, padding scaled too
