"""Choosing and probing MuJoCo's headless OpenGL backend (EGL, else OSMesa).

The backend is chosen by `ldmpc.mujoco_gl.configure_mujoco_gl()` before dm_control is imported.
Whether rendering really works is only known by trying, and a
broken GL driver can segfault, so `rendering_problem()` tries in a child process with a timeout.
`FrameRenderer` keeps the offscreen renderers of the MuJoCo-based suite adapters.
"""

from __future__ import annotations

import atexit
import ctypes.util
import functools
import os
import subprocess
import sys
from typing import Any

import numpy as np

from ldmpc.mujoco_gl import AUTO_CHOSEN, BACKENDS, configure_mujoco_gl

# Debian package providing each library that headless rendering loads.
_PACKAGES = {"EGL": "libegl1", "GL": "libgl1", "OSMesa": "libosmesa6"}
_PROBE = """
from dm_control import mujoco
xml = "<mujoco><worldbody><light pos='0 0 1'/><geom type='sphere' size='.1'/></worldbody></mujoco>"
image = mujoco.Physics.from_xml_string(xml).render(16, 16)
assert image.shape == (16, 16, 3), image.shape
print("render-ok")
"""
_PROBE_TIMEOUT_S = 60.0


def _probe(backend: str) -> str | None:
    """Render one tiny frame with `backend` in a child process; None on success, else why not."""
    env = dict(os.environ, MUJOCO_GL=backend)
    if backend in BACKENDS:
        env["PYOPENGL_PLATFORM"] = backend
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE],
            env=env,
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {_PROBE_TIMEOUT_S:.0f} s"
    if proc.returncode == 0 and "render-ok" in proc.stdout:
        return None
    if proc.returncode < 0:
        return f"crashed with signal {-proc.returncode}"
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit code {proc.returncode}"


def _missing_packages() -> list[str]:
    return [pkg for lib, pkg in _PACKAGES.items() if not ctypes.util.find_library(lib)]


@functools.cache
def rendering_problem() -> str | None:
    """None if MuJoCo offscreen rendering works here, else one line saying why and what to install.

    A MUJOCO_GL set by the user is the only backend tried. Otherwise EGL then OSMesa are tried;
    if only OSMesa works and dm_control is not imported yet, this process is switched to it.
    Cached: the probe costs a second or two (a child process imports dm_control).
    """
    current = os.environ.get("MUJOCO_GL")
    user_choice = current if current and current not in AUTO_CHOSEN else None
    candidates = (user_choice,) if user_choice else BACKENDS
    reasons = []
    for backend in candidates:
        reason = _probe(backend)
        if reason is None:
            if not user_choice and "dm_control" not in sys.modules:
                os.environ["MUJOCO_GL"] = backend
                AUTO_CHOSEN.add(backend)
            return None
        reasons.append(f"MUJOCO_GL={backend}: {reason}")
    missing = _missing_packages()
    hint = (
        f"install the Debian package(s) {', '.join(missing)}"
        if missing
        else "check the GL driver (libegl1/libosmesa6 are installed)"
    )
    return f"MuJoCo offscreen rendering failed ({'; '.join(reasons)}); {hint}"


class FrameRenderer:
    """Offscreen `mujoco.Renderer`s of one MuJoCo model, one per frame size, made on first use.

    Why cached: a renderer owns a GL context and a copy of the model's meshes and textures, far
    too costly to build per frame when pixel observations need a frame at every step. Shared by
    the MuJoCo suite adapters (Meta-World, MyoSuite); `close()` frees them with the env, and at
    exit before EGL itself is torn down.
    """

    def __init__(self) -> None:
        self._renderers: dict[int, Any] = {}
        self._exit_hook = False

    def render(
        self, model: Any, data: Any, size: int, camera: int | str, shadows: bool = True
    ) -> np.ndarray:
        """An RGB frame (uint8 [size, size, 3]) of `data` seen from `camera`.

        shadows=False skips MuJoCo's shadow-map pass, the bulk of a small frame's cost on a
        software GL driver (see `ldmpc.envs.pixels`).
        """
        configure_mujoco_gl()  # a no-op once the process has chosen its backend
        import mujoco

        renderer = self._renderers.get(size)
        if renderer is None:  # the offscreen buffer is sized by the model: grow it if needed
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
            model.vis.global_.offheight = max(model.vis.global_.offheight, size)
            renderer = self._renderers[size] = mujoco.Renderer(model, size, size)
            if not self._exit_hook:  # registered after the GL display's own exit hook,
                atexit.register(self.close)  # so it runs before that one
                self._exit_hook = True
        renderer.update_scene(data, camera=camera)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = shadows
        return renderer.render()

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
