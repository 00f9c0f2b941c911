import os
from pathlib import Path

import pytest

import gencond  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)
import torch  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
os.environ.setdefault("GENCOND_DATA_DIR", str(SHARED_DATA))
os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(int(os.environ.get("GENCOND_TEST_THREADS", "2")))


@pytest.fixture
def data_dir() -> Path:
    path = Path(os.environ["GENCOND_DATA_DIR"])
    if not (path / "gluonts" / "exchange_rate_nips").is_dir():
        pytest.skip(f"exchange_rate_nips not under GENCOND_DATA_DIR={path}")
    return path
