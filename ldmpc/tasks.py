"""Task registry: TD-MPC2 task name -> suite, env kwargs, episode length, action repeat, metric.

TD-MPC2's task names are the public interface (users compare against its curves), so every name
its four suites accept is registered here, even where this version cannot build the env yet:
an unsupported suite then fails with one clear line instead of "unknown task".
Pure data and string handling: importing this module must not import dm_control or mujoco,
because the config validates task names before any environment is built.
"""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ldmpc.errors import UserError, close_matches

SUITES = ("dmcontrol", "metaworld", "maniskill2", "myosuite")
SUPPORTED_SUITES: set[str] = {"dmcontrol", "metaworld", "maniskill2", "myosuite"}
# Python package that provides each suite (checked without importing it: some are slow or noisy).
_SUITE_PACKAGE = {
    "dmcontrol": "dm_control",
    "metaworld": "metaworld",
    "maniskill2": "mani_skill2",
    "myosuite": "myosuite",
}


@dataclass(frozen=True)
class TaskSpec:
    """Everything the rest of the system needs to know about a task before building its env."""

    name: str
    suite: str
    env_kwargs: Mapping[str, Any] = field(hash=False)  # read-only view; not part of the hash
    episode_length: int
    action_repeat: int
    metric: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "env_kwargs", MappingProxyType(dict(self.env_kwargs)))


# --- DMControl ----------------------------------------------------------------------------------
# (domain, task) as dm_control spells them. TD-MPC2 names are "<domain>-<task>" with "_" -> "-",
# except the two domains it abbreviates (see _DMC_ALIAS). humanoid_CMU is left out: TD-MPC2's
# name parsing (split at the first "-") cannot reach it.
_DMC_STANDARD = (
    ("acrobot", "swingup"), ("acrobot", "swingup_sparse"), ("ball_in_cup", "catch"),
    ("cartpole", "balance"), ("cartpole", "balance_sparse"), ("cartpole", "swingup"),
    ("cartpole", "swingup_sparse"), ("cartpole", "two_poles"), ("cartpole", "three_poles"),
    ("cheetah", "run"), ("dog", "stand"), ("dog", "walk"), ("dog", "trot"), ("dog", "run"),
    ("dog", "fetch"), ("finger", "spin"), ("finger", "turn_easy"), ("finger", "turn_hard"),
    ("fish", "upright"), ("fish", "swim"), ("hopper", "stand"), ("hopper", "hop"),
    ("humanoid", "stand"), ("humanoid", "walk"), ("humanoid", "run"),
    ("humanoid", "run_pure_state"), ("lqr", "lqr_2_1"), ("lqr", "lqr_6_2"),
    ("manipulator", "bring_ball"), ("manipulator", "bring_peg"), ("manipulator", "insert_ball"),
    ("manipulator", "insert_peg"), ("pendulum", "swingup"), ("point_mass", "easy"),
    ("point_mass", "hard"), ("quadruped", "walk"), ("quadruped", "run"), ("quadruped", "escape"),
    ("quadruped", "fetch"), ("reacher", "easy"), ("reacher", "hard"), ("stacker", "stack_2"),
    ("stacker", "stack_4"), ("swimmer", "swimmer6"), ("swimmer", "swimmer15"),
    ("walker", "stand"), ("walker", "walk"), ("walker", "run"),
)  # fmt: skip
# TD-MPC2's own tasks (reimplemented in ldmpc/envs/custom/), same naming rule.
_DMC_CUSTOM = (
    ("walker", "walk_backwards"), ("walker", "run_backwards"), ("walker", "arabesque"),
    ("walker", "lie_down"), ("walker", "legs_up"), ("walker", "headstand"), ("walker", "flip"),
    ("walker", "backflip"),
    ("cheetah", "run_backwards"), ("cheetah", "run_front"), ("cheetah", "run_back"),
    ("cheetah", "jump"), ("cheetah", "stand_front"), ("cheetah", "stand_back"),
    ("cheetah", "lie_down"), ("cheetah", "legs_up"), ("cheetah", "flip"),
    ("cheetah", "flip_backwards"),
    ("hopper", "hop_backwards"), ("hopper", "flip"), ("hopper", "flip_backwards"),
    ("reacher", "three_easy"), ("reacher", "three_hard"), ("reacher", "four_easy"),
    ("reacher", "four_hard"),
    ("ball_in_cup", "spin"), ("pendulum", "spin"), ("fish", "obstacles"),
)  # fmt: skip
_DMC_ALIAS = {"ball_in_cup": "cup", "point_mass": "pointmass"}

# --- Meta-World (v3 env ids of metaworld 3.0) -------------------------------------------------
_MW50 = (
    "assembly", "basketball", "button-press-topdown", "button-press-topdown-wall", "button-press",
    "button-press-wall", "coffee-button", "coffee-pull", "coffee-push", "dial-turn",
    "disassemble", "door-open", "door-close", "drawer-close", "drawer-open",
    "faucet-open", "faucet-close", "hammer", "handle-press-side", "handle-press",
    "handle-pull-side", "handle-pull", "lever-pull", "peg-insert-side", "peg-unplug-side",
    "pick-out-of-hole", "pick-place", "pick-place-wall", "plate-slide", "plate-slide-side",
    "plate-slide-back", "plate-slide-back-side", "push-back", "push", "push-wall",
    "reach", "reach-wall", "shelf-place", "soccer", "stick-push",
    "stick-pull", "sweep-into", "sweep", "window-open", "window-close",
    "bin-picking", "box-close", "door-lock", "door-unlock", "hand-insert",
)  # fmt: skip
# Meta-World's MT10 benchmark, in metaworld.MT10's order.
_MW10 = (
    "reach", "push", "pick-place", "door-open", "drawer-open", "drawer-close",
    "button-press-topdown", "peg-insert-side", "window-open", "window-close",
)  # fmt: skip

# --- ManiSkill2 and MyoSuite (ids and control modes as TD-MPC2 uses them) ---------------------
_MANISKILL2 = {
    "lift-cube": ("LiftCube-v0", "pd_ee_delta_pos"),
    "pick-cube": ("PickCube-v0", "pd_ee_delta_pos"),
    "stack-cube": ("StackCube-v0", "pd_ee_delta_pos"),
    "pick-ycb": ("PickSingleYCB-v0", "pd_ee_delta_pose"),
    "turn-faucet": ("TurnFaucet-v0", "pd_ee_delta_pose"),
}
_MYOSUITE = {
    "myo-reach": "myoHandReachFixed-v0",
    "myo-reach-hard": "myoHandReachRandom-v0",
    "myo-pose": "myoHandPoseFixed-v0",
    "myo-pose-hard": "myoHandPoseRandom-v0",
    "myo-obj-hold": "myoHandObjHoldFixed-v0",
    "myo-obj-hold-hard": "myoHandObjHoldRandom-v0",
    "myo-key-turn": "myoHandKeyTurnFixed-v0",
    "myo-key-turn-hard": "myoHandKeyTurnRandom-v0",
    "myo-pen-twirl": "myoHandPenTwirlFixed-v0",
    "myo-pen-twirl-hard": "myoHandPenTwirlRandom-v0",
}


def dmc_task_name(domain: str, task: str) -> str:
    """TD-MPC2's name of a dm_control (domain, task) pair, e.g. ball_in_cup/catch -> cup-catch."""
    return f"{_DMC_ALIAS.get(domain, domain)}-{task.replace('_', '-')}"


def _build_registry() -> dict[str, TaskSpec]:
    specs: list[TaskSpec] = []
    for domain, task in _DMC_STANDARD + _DMC_CUSTOM:
        kwargs = {"domain": domain, "task": task, "custom": (domain, task) in _DMC_CUSTOM}
        specs.append(TaskSpec(dmc_task_name(domain, task), "dmcontrol", kwargs, 500, 2, "return"))
    for name in _MW50:
        specs.append(TaskSpec(f"mw-{name}", "metaworld", {"env_name": f"{name}-v3"}, 100, 2,
                              "success"))  # fmt: skip
    for name, (env_id, control_mode) in _MANISKILL2.items():
        kwargs = {"env_id": env_id, "control_mode": control_mode}
        specs.append(TaskSpec(name, "maniskill2", kwargs, 100, 2, "success"))
    for name, env_id in _MYOSUITE.items():
        specs.append(TaskSpec(name, "myosuite", {"env_id": env_id}, 100, 1, "success"))
    registry = {spec.name: spec for spec in specs}
    assert len(registry) == len(specs), "duplicate task name in the registry"
    return registry


TASKS: dict[str, TaskSpec] = _build_registry()

TASK_SETS: dict[str, list[str]] = {
    # TD-MPC2's order: 19 original DMC tasks, then its 11 custom ones.
    "mt30": [
        "walker-stand", "walker-walk", "walker-run", "cheetah-run", "reacher-easy",
        "reacher-hard", "acrobot-swingup", "pendulum-swingup", "cartpole-balance",
        "cartpole-balance-sparse", "cartpole-swingup", "cartpole-swingup-sparse", "cup-catch",
        "finger-spin", "finger-turn-easy", "finger-turn-hard", "fish-swim", "hopper-stand",
        "hopper-hop",
        "walker-walk-backwards", "walker-run-backwards", "cheetah-run-backwards",
        "cheetah-run-front", "cheetah-run-back", "cheetah-jump", "hopper-hop-backwards",
        "reacher-three-easy", "reacher-three-hard", "cup-spin", "pendulum-spin",
    ],
}  # fmt: skip
TASK_SETS["mt80"] = TASK_SETS["mt30"] + [f"mw-{name}" for name in _MW50]
TASK_SETS["mw10"] = [f"mw-{name}" for name in _MW10]

# Other spellings users meet: TD-MPC2's published results name the MyoSuite tasks
# "myo-hand-<task>" while its code says "myo-<task>". Both resolve to the same task.
TASK_ALIASES: dict[str, str] = {f"myo-hand-{name[4:]}": name for name in _MYOSUITE}


def get_task(name: str) -> TaskSpec:
    """Look up one task by its TD-MPC2 name; unknown names get the closest registered names."""
    try:
        return TASKS[TASK_ALIASES.get(name, name)]
    except KeyError:
        raise UserError(f"unknown task '{name}'{close_matches(name, TASKS)}") from None


def resolve_tasks(task: str, allow_unsupported: bool = False) -> list[TaskSpec]:
    """Turn `task=` (a name, a task set, or a comma-separated list of those) into TaskSpecs.

    Everything is validated here so a bad value fails before any env or model is built. Tasks of
    one run must share the action repeat: it is one config value (`cfg.action_repeat`).
    `allow_unsupported` is for listing and tests; a run must leave it False.
    """
    items = [item.strip() for item in str(task).split(",")]
    if not all(items):
        raise UserError(f"bad task '{task}': empty name in the comma-separated list")
    names: list[str] = []
    for item in items:
        if item in TASK_SETS:
            names.extend(TASK_SETS[item])
        elif item in TASKS or item in TASK_ALIASES:
            names.append(TASK_ALIASES.get(item, item))
        else:
            options = list(TASKS) + list(TASK_SETS)
            raise UserError(f"unknown task '{item}'{close_matches(item, options)}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UserError(f"task '{name}' appears twice in task={task}")
        seen.add(name)
    specs = [TASKS[name] for name in names]
    for spec in specs:
        if spec.suite not in SUPPORTED_SUITES and not allow_unsupported:
            raise UserError(
                f"task '{spec.name}' ({spec.suite}) is not yet supported in this version"
            )
    repeats = {spec.action_repeat for spec in specs}
    if len(repeats) > 1:
        raise UserError(
            f"tasks of one run must share the action repeat; task={task} mixes {sorted(repeats)}"
        )
    return specs


def suite_status() -> dict[str, tuple[bool, str]]:
    """suite -> (usable here?, reason). Imports each supported suite's adapter (a few seconds)."""
    status: dict[str, tuple[bool, str]] = {}
    for suite in SUITES:
        package = _SUITE_PACKAGE[suite]
        installed = importlib.util.find_spec(package) is not None
        if suite not in SUPPORTED_SUITES:
            reason = "not yet supported in this version"
            status[suite] = (False, reason if installed else f"{reason}; {package} not installed")
        elif not installed:
            status[suite] = (False, f"package {package} is not installed")
        else:
            status[suite] = _import_status(suite)
    return status


def _import_status(suite: str) -> tuple[bool, str]:
    """Import the suite's adapter, which imports the simulator, and report why that failed."""
    module = f"ldmpc.envs.{suite}"
    try:
        importlib.import_module(module)
    except Exception as err:  # any import failure means "not usable"; say why
        return False, f"importing {module} failed: {type(err).__name__}: {err}"
    return True, "ok"


def format_registry(status: dict[str, tuple[bool, str]] | None = None) -> str:
    """The text of `ldmpc tasks`: tasks per suite with counts and usability, then task sets."""
    status = suite_status() if status is None else status
    lines: list[str] = []
    for suite in SUITES:
        names = sorted(spec.name for spec in TASKS.values() if spec.suite == suite)
        usable, reason = status.get(suite, (False, "unknown"))
        state = "usable here" if usable else f"not usable here: {reason}"
        lines.append(f"{suite} ({len(names)} tasks) - {state}")
        lines.extend(textwrap.wrap("  ".join(names), 98, initial_indent="  ",
                                   subsequent_indent="  ", break_on_hyphens=False))  # fmt: skip
    lines.append(f"task sets ({len(TASK_SETS)})")
    for set_name, names in TASK_SETS.items():
        counts: dict[str, int] = {}
        for name in names:
            counts[TASKS[name].suite] = counts.get(TASKS[name].suite, 0) + 1
        parts = ", ".join(f"{suite} {n}" for suite, n in counts.items())
        lines.append(f"  {set_name}: {len(names)} tasks ({parts})")
    return "\n".join(lines)
