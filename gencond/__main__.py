"""``python -m gencond`` (and ``accelerate launch -m gencond train CONFIG`` for several GPUs)."""
import sys

from .cli import main

sys.exit(main())
