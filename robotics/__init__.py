"""robotics: MetaWorld simulation, expert data, video plan -> actions, and success evaluation.

Offscreen rendering defaults to software EGL when no display is set; this must happen before
``mujoco`` is imported anywhere, which is why it lives in the package's ``__init__``.
"""
import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def load_triton_before_gl() -> None:
    """Loads triton's native library now, if it is installed. Mesa's software renderer (llvmpipe, behind
    EGL) and libtriton each carry LLVM; importing triton after a GL context exists kills the process
    with a segmentation fault (torch._dynamo imports it, and diffusers imports torch._dynamo), while
    the other order works. Called before the first offscreen context is made."""
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        try:
            import triton  # noqa: F401
        except Exception:  # noqa: BLE001 - a triton that cannot load is no danger to the renderer
            pass
