"""The shipped models in pretrained/: within the size budget, files as their manifest says, loadable through
the public verbs, and reproducing their golden outputs (tests/golden/)."""
from pathlib import Path

import numpy as np
import pytest

from gencond.export import check_export

from .pretrained_golden import GOLDEN_OF, ROOT, TOLERANCE, golden_output, golden_path

MODELS = sorted(p.parent for p in (ROOT / "pretrained").glob("*/export.json"))
MB = 1e6


def _size(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / MB


def test_the_zoo_fits_its_budget():
    assert all(_size(m) <= 20 for m in MODELS), {m.name: round(_size(m), 1) for m in MODELS}
    assert sum(_size(m) for m in MODELS) <= 100


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_a_shipped_model_reproduces_its_golden_output(model, request):
    manifest = check_export(model)  # every file's sha256 as listed
    assert manifest["task"] in GOLDEN_OF and golden_path(model).is_file(), \
        f"{model.name} has no golden output: run `python -m tests.pretrained_golden {model.relative_to(ROOT)}`"
    if manifest["task"] == "tsdiff" and "exchange" in (model / "config.yaml").read_text():
        request.getfixturevalue("data_dir")  # skips where the dataset is not at hand
    expected = dict(np.load(golden_path(model)))
    got = golden_output(model)
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=TOLERANCE[manifest["task"]], err_msg=key)
