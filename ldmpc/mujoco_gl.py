"""Choosing MuJoCo's headless OpenGL backend (EGL, else OSMesa) by an explicit call.

dm_control picks its GL backend once, when it is first imported, from MUJOCO_GL; left unset it
tries GLFW first, which warns (or fails) on machines without a display. Importing ray.rllib
imports dm_control, so every process calls `configure_mujoco_gl()` at its start, before any such
import: the CLI's `main`, the Ray worker setup hook (`actors.worker_setup`), the test and
benchmark entry points; `ldmpc.envs.make_env` calls it too before it imports a suite. No module
changes the backend as a side effect of being imported. This module imports only the standard
library, so the worker setup hook stays light.
"""

from __future__ import annotations

import ctypes.util
import os

BACKENDS = ("egl", "osmesa")
AUTO_CHOSEN: set[str] = set()  # MUJOCO_GL values ldmpc set (not the user's own choice)


def configure_mujoco_gl() -> str:
    """Set MUJOCO_GL (if the user has not) to a headless backend whose library is installed.

    Returns the backend in use. "disable" means no GL library was found: state-based envs still
    work, and rendering raises a clear RuntimeError from dm_control.
    """
    if "MUJOCO_GL" not in os.environ:
        platform = os.environ.get("PYOPENGL_PLATFORM", "")
        if platform in BACKENDS:
            backend = platform  # must agree with PyOpenGL's platform or dm_control's import fails
        elif ctypes.util.find_library("EGL"):
            backend = "egl"
        elif ctypes.util.find_library("OSMesa"):
            backend = "osmesa"
        else:
            backend = "disable"
        os.environ["MUJOCO_GL"] = backend
        AUTO_CHOSEN.add(backend)
    return os.environ["MUJOCO_GL"]
