"""gencond: self-conditioned diffusion models, one backbone for time series, vision, video and robotics."""
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("gencond")  # the one place it is set: pyproject.toml's [project] version
except PackageNotFoundError:  # a checkout on sys.path without `pip install -e .`
    __version__ = "0+unknown"

# On a machine shared with other jobs, OpenMP threads that spin while waiting for a busy core make
# torch up to 20x slower with 2 threads than with 1 (benchmarks/timeseries/threads_busy.py); passive waiting
# costs little when the machine is idle. Takes effect only if torch is imported after gencond;
# set OMP_WAIT_POLICY yourself to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cache_dir() -> Path:
    """The root of gencond's caches (text embeddings, FD classifiers): $GENCOND_CACHE_DIR, read at each
    call, default ~/.cache/gencond."""
    return Path(os.environ.get("GENCOND_CACHE_DIR", Path.home() / ".cache" / "gencond"))
