"""robotics: MetaWorld simulation, expert data, video plan -> actions, and success evaluation.

Offscreen rendering defaults to software EGL when no display is set; this must happen before
``mujoco`` is imported anywhere, which is why it lives in the package's ``__init__``.
"""
import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
