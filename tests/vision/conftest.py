import os
from pathlib import Path

import pytest


@pytest.fixture
def fd_cache(tmp_path, monkeypatch):
    """A fresh cache for the Fréchet-distance classifier."""
    monkeypatch.setenv("GENCOND_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def mnist_dir() -> Path:
    path = Path(os.environ["GENCOND_DATA_DIR"]) / "mnist"
    if not path.is_dir():
        pytest.skip(f"the MNIST test set is not under GENCOND_DATA_DIR ({path})")
    return path
