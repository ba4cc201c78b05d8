"""ManiSkill2 adapter: a ManiSkill2 0.5 task as a gymnasium env with a flat float32 state.

TD-MPC2's settings (it used ManiSkill2 0.4.1): state observations, the task's control mode from
the registry, ManiSkill2's "dense" reward (0.4's default; 0.5 would default to normalized_dense),
100 agent steps with action repeat 2 (added by `ldmpc.envs.wrappers`). One `step()` here is one
ManiSkill2 control step, and `info["success"]` is a float at reset and every step.

Episode ends: ManiSkill2's TimeLimit (200 control steps) is not applied; the 100-step limit is the
wrappers' job. ManiSkill2 reports `done = success`, and TD-MPC2's loop reset on it, so its
episodes ended at the first success and its success metric (read at an episode's final step, as
ours is) means "succeeded within 100 agent steps". The base env therefore ends an episode at the
first success too, but as a truncation: TD-MPC2 (non-episodic) kept bootstrapping through that
end, and our learner stops bootstrapping at a termination (which would also make hovering just
short of success worth more than succeeding under the dense reward). `end_on_success=False`
keeps episodes running through success instead.

SAPIEN opens a Vulkan device even for state observations. Without a GPU the device is Mesa's
lavapipe plus the project's layer (scripts/vulkan_layer/, built by `make setup`), which must be
enabled through the environment before SAPIEN creates its renderer: importing this module does
that, or raises a one-line UserError naming what is missing (a missing driver would segfault).
"""

from __future__ import annotations

import copy
import ctypes.util
import glob
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from ldmpc.errors import UserError

LAYER_NAME = "VK_LAYER_LDMPC_lavapipe"
LAYER_MANIFEST = "VkLayer_ldmpc_lavapipe.json"
_SETUP_HINT = "run `make setup` (Debian, as root) or see scripts/vulkan_setup.sh"
# Where the Vulkan loader finds driver (ICD) manifests on Linux, unless VK_DRIVER_FILES /
# VK_ICD_FILENAMES name them explicitly.
_ICD_DIRS = (
    "/etc/vulkan/icd.d",
    "/usr/share/vulkan/icd.d",
    "/usr/local/share/vulkan/icd.d",
    "/etc/xdg/vulkan/icd.d",
    "~/.local/share/vulkan/icd.d",
)
_RENDER_SIZE = 384  # TD-MPC2's render camera size for ManiSkill2


def layer_dir() -> Path:
    """Where `make setup` builds the layer (LDMPC_VULKAN_LAYER_DIR overrides, as in build.sh)."""
    default = Path(__file__).resolve().parents[2] / "build" / "vulkan_layer"
    return Path(os.environ.get("LDMPC_VULKAN_LAYER_DIR") or default)


def _icd_libraries() -> list[str]:
    """Library file names of the Vulkan drivers the loader will consider."""
    explicit = os.environ.get("VK_DRIVER_FILES") or os.environ.get("VK_ICD_FILENAMES")
    if explicit:
        files = [f for f in explicit.split(os.pathsep) if f]
    else:
        files = [
            f for d in _ICD_DIRS for f in glob.glob(os.path.join(os.path.expanduser(d), "*.json"))
        ]
    libraries = []
    for file in files:
        try:
            with open(file) as fh:
                libraries.append(os.path.basename(json.load(fh)["ICD"]["library_path"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # an unreadable manifest is skipped by the loader too
    return libraries


def gpu_icd_present() -> bool:
    """A vendor GPU Vulkan driver is installed: an ICD that is not one of Mesa's libvulkan_*.so.

    The same rule as scripts/vulkan_setup.sh, so both agree on when the CPU path is used.
    """
    return any(not lib.startswith("libvulkan_") for lib in _icd_libraries())


def configure_vulkan() -> None:
    """Enable the project's layer for SAPIEN when the CPU path is needed, or say what is missing.

    Must run before SAPIEN creates its renderer. Does nothing on a machine with a GPU driver or
    when the user already enabled the layer.
    """
    # ManiSkill2 resets every renderer's log level to this; "error" hides the warning that each
    # further env shares the first renderer's context (vector envs), not real errors.
    os.environ.setdefault("MS2_RENDERER_LOG_LEVEL", "error")
    if gpu_icd_present():
        return
    if ctypes.util.find_library("vulkan") is None:
        raise UserError(
            f"ManiSkill2 needs the Vulkan loader: libvulkan1 is not installed; {_SETUP_HINT}"
        )
    if "libvulkan_lvp.so" not in _icd_libraries():
        raise UserError(
            "ManiSkill2 needs a Vulkan device: no GPU driver and no CPU driver (lavapipe, "
            f"mesa-vulkan-drivers >= 25 from bookworm-backports) is installed; {_SETUP_HINT}"
        )
    directory = layer_dir()
    if not (directory / LAYER_MANIFEST).is_file():
        raise UserError(
            f"ManiSkill2 on lavapipe needs the project's Vulkan layer, not built in {directory}; "
            f"{_SETUP_HINT} (LDMPC_VULKAN_LAYER_DIR names another build folder)"
        )
    layers = [x for x in os.environ.get("VK_INSTANCE_LAYERS", "").split(":") if x]
    if LAYER_NAME not in layers:
        paths = [p for p in os.environ.get("VK_ADD_LAYER_PATH", "").split(os.pathsep) if p]
        os.environ["VK_ADD_LAYER_PATH"] = os.pathsep.join([str(directory), *paths])
        os.environ["VK_INSTANCE_LAYERS"] = ":".join([*layers, LAYER_NAME])


configure_vulkan()

with warnings.catch_warnings():  # import-time noise of sapien (pkg_resources) and warp (imp)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    warnings.filterwarnings(
        "ignore", message="the imp module is deprecated", category=DeprecationWarning
    )
    import mani_skill2
    import mani_skill2.envs  # registers the ManiSkill2 env ids with gymnasium


def missing_assets(env_id: str) -> str | None:
    """The download_asset id of the assets `env_id` needs when they are not on disk, else None.

    Checked before building the env: ManiSkill2 would fail later with a long multi-line error.
    """
    root = Path(mani_skill2.ASSET_DIR)
    if env_id == "PickSingleYCB-v0":
        info = root / "mani_skill2_ycb" / "info_pick_v0.json"
        if not info.is_file():
            return "ycb"
        models = json.loads(info.read_text())
        ok = all(
            (root / "mani_skill2_ycb" / "models" / m / "collision.obj").is_file() for m in models
        )
        return None if ok else "ycb"
    if env_id == "TurnFaucet-v0":
        meta = Path(mani_skill2.PACKAGE_ASSET_DIR) / "partnet_mobility/meta/info_faucet_train.json"
        dataset = root / "partnet_mobility" / "dataset"
        models = json.loads(meta.read_text())
        ok = all((dataset / m / "mobility_cvx.urdf").is_file() for m in models)
        return None if ok else "partnet_mobility_faucet"
    return None


def _build(env_id: str, control_mode: str) -> gym.Env:
    """The raw ManiSkill2 env: no TimeLimit, no gymnasium checker wrappers."""
    try:
        env = gym.make(
            env_id,
            obs_mode="state",
            control_mode=control_mode,
            reward_mode="dense",
            render_mode="rgb_array",
            render_camera_cfgs={"width": _RENDER_SIZE, "height": _RENDER_SIZE},
            renderer_kwargs={"offscreen_only": True},  # never tries GLFW / a display
        )
    except RuntimeError as err:
        text = str(err)
        if "vk::" in text or "Vulkan" in text or "rendering device" in text:
            raise UserError(
                f"SAPIEN could not open a Vulkan device ({text}); without a GPU it needs lavapipe "
                f"from mesa-vulkan-drivers >= 25 and the project's layer; {_SETUP_HINT}"
            ) from None
        raise
    return env.unwrapped


class ManiSkill2Env(gym.Env):
    """Gymnasium view of one ManiSkill2 task (see the module docstring for the contract).

    Seeding: `reset(seed=s)` reseeds ManiSkill2's episode generator, so the episode depends only
    on s; `reset()` continues that generator. The constructor's seed is used by the first reset
    when it gets no seed.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(
        self, env_id: str, control_mode: str, seed: int, end_on_success: bool = True
    ) -> None:
        if not 0 <= seed < 2**32:
            raise UserError(f"seed must be in [0, 2**32) for maniskill2, got {seed}")
        uid = missing_assets(env_id)
        if uid is not None:
            raise UserError(
                f"{env_id} needs ManiSkill2 assets that are not in "
                f"{Path(mani_skill2.ASSET_DIR).resolve()}: download them with `python -m "
                f"mani_skill2.utils.download_asset {uid}` (saved under MS2_ASSET_DIR, default "
                "./data), or set MS2_ASSET_DIR to the folder that holds them"
            )
        self.env_id = env_id
        self.end_on_success = end_on_success
        self._env = _build(env_id, control_mode)
        self._next_seed: int | None = seed
        self._pixel_cameras: dict[int, Any] = {}  # size -> camera (pixel observations)
        self._pixel_scene: Any = None
        self.render_mode = "rgb_array"
        self.metadata = {**self.metadata, "render_fps": float(self._env._control_freq)}
        size = int(np.prod(self._env.observation_space.shape))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        space = self._env.action_space
        low, high = space.low.astype(np.float64), space.high.astype(np.float64)
        self._center, self._half_range = (high + low) / 2, (high - low) / 2
        self.action_space = gym.spaces.Box(-1.0, 1.0, space.shape, np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None:
            seed, self._next_seed = self._next_seed, None
        else:
            self._next_seed = None
        obs, _ = self._env.reset(seed=seed)
        return self._flat(obs), {"success": float(self._env.evaluate()["success"])}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        obs, reward, _, _, info = self._env.step(self._center + self._half_range * a)
        success = float(info["success"])
        truncated = self.end_on_success and success > 0.0
        return self._flat(obs), float(reward), False, truncated, {"success": success}

    @staticmethod
    def _flat(obs: np.ndarray) -> np.ndarray:
        return np.asarray(obs, dtype=np.float32).ravel()

    def render(self, size: int | None = None, shadows: bool = True) -> np.ndarray:
        """An RGB frame (uint8): 384 x 384 from ManiSkill2's render camera (videos), or with
        `size` a size x size view from its `base_camera`, the viewpoint of ManiSkill2's own
        image observations (pixel observations). `shadows` is moot: these envs cast none.
        """
        if size is None:
            return self._env.render()
        camera = self._pixel_camera(size)
        self._env.update_render()
        camera.take_picture()
        rgba = camera.get_images(take_picture=False)["Color"]
        return (np.clip(rgba[..., :3], 0.0, 1.0) * 255).astype(np.uint8)

    def _pixel_camera(self, size: int) -> Any:
        """A size x size copy of the base camera, made once per scene (a reconfigure builds a
        new scene, so cameras of the old one are dropped)."""
        from mani_skill2.sensors.camera import Camera

        scene = self._env._scene
        if scene is not self._pixel_scene:
            self._pixel_cameras, self._pixel_scene = {}, scene
        if size not in self._pixel_cameras:
            cfg = copy.copy(self._env._camera_cfgs["base_camera"])
            cfg.uid, cfg.width, cfg.height = f"ldmpc_pixels_{size}", size, size
            cfg.texture_names = ("Color",)
            self._pixel_cameras[size] = Camera(cfg, scene, self._env._renderer_type)
        return self._pixel_cameras[size]

    def close(self) -> None:
        self._pixel_cameras, self._pixel_scene = {}, None
        self._env.close()


def make_maniskill2_env(env_kwargs: Mapping[str, Any], seed: int) -> ManiSkill2Env:
    """Base env of a registered maniskill2 task (its TaskSpec.env_kwargs)."""
    return ManiSkill2Env(env_kwargs["env_id"], env_kwargs["control_mode"], seed)
