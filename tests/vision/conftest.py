import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
os.environ.setdefault("GENCOND_DATA_DIR", str(SHARED_DATA))


@pytest.fixture(autouse=True)
def one_thread():
    """Vision tests run on one thread (the CI machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fd_cache(tmp_path, monkeypatch):
    """A fresh cache for the Fréchet-distance classifier."""
    monkeypatch.setenv("GENCOND_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
