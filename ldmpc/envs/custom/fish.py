"""TD-MPC2's Fish Obstacles: fish-swim in a tank with four pillars to keep away from.

The pillars are added to dm_control's fish.xml at load time. Fish has no contacts (constraints
are disabled), so they are obstacles through the reward only: near a pillar, reward is 0.
Unlike TD-MPC2 (which compares x and y separately), "near" here is a true box distance.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
from dm_control.suite import fish

from ldmpc.envs.custom.common import between, environment

_PILLARS = [(-0.15, -0.15), (0.15, -0.15), (0.15, 0.15), (-0.15, 0.15)]
_HALF_WIDTH = 0.05  # pillars are 0.1 x 0.1 x 0.2 boxes
_TARGET_CLEARANCE = 0.08  # targets are sampled at least this far from every pillar
_TORSO_CLEARANCE = 0.06  # the fish earns nothing closer than this to a pillar


def _model_xml() -> str:
    xml, _ = fish.get_model_and_assets()
    root = ET.fromstring(xml)
    worldbody = root.find("worldbody")
    assert worldbody is not None
    for i, (x, y) in enumerate(_PILLARS):
        size = f"{_HALF_WIDTH} {_HALF_WIDTH} .1"
        attrs = {"name": f"pillar{i}", "type": "box", "pos": f"{x} {y} .1", "size": size}
        visual_only = {"contype": "0", "conaffinity": "0", "material": "decoration"}
        ET.SubElement(worldbody, "geom", {**attrs, **visual_only})
    return ET.tostring(root, encoding="unicode")


def _near_pillar(xy: np.ndarray, clearance: float) -> bool:
    """True when `xy` is within `clearance` of a pillar's square footprint."""
    gaps = np.abs(np.asarray(_PILLARS) - xy) - _HALF_WIDTH  # per-axis gap to each pillar
    distance = np.linalg.norm(np.maximum(gaps, 0.0), axis=1)
    return bool((distance < clearance).any())


class _Obstacles(fish.Swim):
    def initialize_episode(self, physics: fish.Physics) -> None:
        while True:  # Swim's reset, redrawn until the target is clear of the pillars
            super().initialize_episode(physics)
            physics.after_reset()
            if not _near_pillar(physics.named.data.geom_xpos["target", :2], _TARGET_CLEARANCE):
                break

    def get_reward(self, physics: fish.Physics) -> float:
        if _near_pillar(physics.named.data.geom_xpos["torso", :2], _TORSO_CLEARANCE):
            return 0.0
        radii = float(physics.named.model.geom_size[["mouth", "target"], 0].sum())
        in_target = between(float(np.linalg.norm(physics.mouth_to_target())), 0.0, radii, 2 * radii)
        upright = 0.5 * (physics.upright() + 1.0)
        return (7.0 * in_target + upright) / 8.0


def make(task: str, random: np.random.RandomState, time_limit: float):
    assert task == "obstacles", task
    physics = fish.Physics.from_xml_string(_model_xml(), fish.get_model_and_assets()[1])
    return environment(physics, _Obstacles(random=random), time_limit, fish._CONTROL_TIMESTEP)


TASKS = ("obstacles",)
