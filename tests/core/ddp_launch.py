"""`torchrun ... tests/core/ddp_launch.py train CONFIG ...`: gencond's CLI with the test tasks registered."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gencond.cli import main  # noqa: E402
from tests.core.toys import register_ddp_toy_task  # noqa: E402

register_ddp_toy_task()
sys.exit(main())
