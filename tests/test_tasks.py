"""Task registry: TD-MPC2 names and sets, lookups, one-line errors, `ldmpc tasks` text."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

import ldmpc.tasks as tasks_module
from ldmpc.errors import UserError
from ldmpc.tasks import (
    SUPPORTED_SUITES,
    TASK_SETS,
    TASKS,
    TaskSpec,
    format_registry,
    get_task,
    resolve_tasks,
    suite_status,
)

MT30_DMC_STANDARD = [
    "walker-stand", "walker-walk", "walker-run", "cheetah-run", "reacher-easy", "reacher-hard",
    "acrobot-swingup", "pendulum-swingup", "cartpole-balance", "cartpole-balance-sparse",
    "cartpole-swingup", "cartpole-swingup-sparse", "cup-catch", "finger-spin", "finger-turn-easy",
    "finger-turn-hard", "fish-swim", "hopper-stand", "hopper-hop",
]  # fmt: skip
MT30_DMC_CUSTOM = [
    "walker-walk-backwards", "walker-run-backwards", "cheetah-run-backwards", "cheetah-run-front",
    "cheetah-run-back", "cheetah-jump", "hopper-hop-backwards", "reacher-three-easy",
    "reacher-three-hard", "cup-spin", "pendulum-spin",
]  # fmt: skip
HARD_DMC = [
    "dog-stand", "dog-walk", "dog-trot", "dog-run", "humanoid-stand", "humanoid-walk",
    "humanoid-run", "quadruped-walk", "quadruped-run",
]  # fmt: skip


def _by_suite(suite: str) -> list[TaskSpec]:
    return [spec for spec in TASKS.values() if spec.suite == suite]


def test_suite_counts_and_required_names() -> None:
    counts = {s: len(_by_suite(s)) for s in ("dmcontrol", "metaworld", "maniskill2", "myosuite")}
    assert counts == {"dmcontrol": 76, "metaworld": 50, "maniskill2": 5, "myosuite": 10}
    for name in MT30_DMC_STANDARD + MT30_DMC_CUSTOM + HARD_DMC:
        assert TASKS[name].suite == "dmcontrol"
    assert {"dmcontrol", "metaworld", "myosuite"} <= SUPPORTED_SUITES


def test_task_sets_match_tdmpc2() -> None:
    assert TASK_SETS["mt30"] == MT30_DMC_STANDARD + MT30_DMC_CUSTOM
    assert len(TASK_SETS["mt80"]) == 80 and TASK_SETS["mt80"][:30] == TASK_SETS["mt30"]
    assert {TASKS[n].suite for n in TASK_SETS["mt80"][30:]} == {"metaworld"}
    assert TASK_SETS["mt80"][30] == "mw-assembly" and TASK_SETS["mt80"][-1] == "mw-hand-insert"
    assert TASK_SETS["mw10"] == [
        "mw-reach", "mw-push", "mw-pick-place", "mw-door-open", "mw-drawer-open",
        "mw-drawer-close", "mw-button-press-topdown", "mw-peg-insert-side", "mw-window-open",
        "mw-window-close",
    ]  # fmt: skip
    for names in TASK_SETS.values():
        assert len(set(names)) == len(names) and all(n in TASKS for n in names)


def test_specs_per_suite() -> None:
    dmc = get_task("cup-catch")
    assert (dmc.episode_length, dmc.action_repeat, dmc.metric) == (500, 2, "return")
    assert dmc.env_kwargs["domain"] == "ball_in_cup" and dmc.env_kwargs["task"] == "catch"
    assert get_task("pointmass-easy").env_kwargs["domain"] == "point_mass"
    mw = get_task("mw-door-open")
    assert (mw.episode_length, mw.action_repeat, mw.metric) == (100, 2, "success")
    assert mw.env_kwargs["env_name"] == "door-open-v3"
    ms = get_task("pick-ycb")
    assert (ms.episode_length, ms.action_repeat, ms.metric) == (100, 2, "success")
    assert dict(ms.env_kwargs) == {"env_id": "PickSingleYCB-v0", "control_mode": "pd_ee_delta_pose"}
    myo = get_task("myo-reach")
    assert (myo.episode_length, myo.action_repeat, myo.metric) == (100, 1, "success")
    assert myo.env_kwargs["env_id"] == "myoHandReachFixed-v0"


def test_spec_is_frozen_and_hashable() -> None:
    spec = get_task("walker-walk")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.env_kwargs["task"] = "run"  # type: ignore[index]
    assert len({spec, get_task("walker-walk"), get_task("walker-run")}) == 2


def test_metaworld_env_names_exist() -> None:
    metaworld = pytest.importorskip("metaworld")
    for spec in _by_suite("metaworld"):
        assert spec.env_kwargs["env_name"] in metaworld.ALL_V3_ENVIRONMENTS


def test_myosuite_env_ids_exist() -> None:
    pytest.importorskip("myosuite")
    from myosuite.utils import gym as myo_gym

    for spec in _by_suite("myosuite"):
        assert spec.env_kwargs["env_id"] in myo_gym.registry


def test_unknown_task_suggests_close_names() -> None:
    with pytest.raises(UserError) as err:
        get_task("walker-wlak")
    assert str(err.value).startswith("unknown task 'walker-wlak' (did you mean: walker-walk")
    with pytest.raises(UserError, match=r"^unknown task 'zzzz'$"):
        get_task("zzzz")
    with pytest.raises(UserError, match="did you mean: mt30"):
        resolve_tasks("mt3")


def test_resolve_single_sets_and_lists() -> None:
    assert [s.name for s in resolve_tasks("dog-run")] == ["dog-run"]
    mt30 = resolve_tasks("mt30")
    assert len(mt30) == 30 and {s.suite for s in mt30} == {"dmcontrol"}
    assert len(resolve_tasks("mt80", allow_unsupported=True)) == 80
    assert len(resolve_tasks("mw10", allow_unsupported=True)) == 10
    names = [s.name for s in resolve_tasks(" walker-walk, cheetah-run ,cup-spin")]
    assert names == ["walker-walk", "cheetah-run", "cup-spin"]


def test_myosuite_results_names_are_aliases() -> None:
    from ldmpc.tasks import get_task

    assert [s.name for s in resolve_tasks("myo-hand-reach,myo-pose")] == ["myo-reach", "myo-pose"]
    assert get_task("myo-hand-key-turn-hard") is get_task("myo-key-turn-hard")
    with pytest.raises(UserError, match="appears twice"):
        resolve_tasks("myo-reach,myo-hand-reach")


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("walker-walk,,cheetah-run", "empty name"),
        ("walker-walk,walker-walk", "appears twice"),
        ("mt30,walker-walk", "appears twice"),
        ("walker-walk,cheetah-rn", r"unknown task 'cheetah-rn' \(did you mean: cheetah-run"),
    ],
)
def test_resolve_errors(task: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve_tasks(task)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            "mw-door-open",
            r"^task 'mw-door-open' \(metaworld\) is not yet supported in this version$",
        ),
        ("mt80", r"^task 'mw-assembly' \(metaworld\) is not yet supported in this version$"),
        ("mw10", r"\(metaworld\) is not yet supported"),
        ("walker-walk,lift-cube", r"^task 'lift-cube' \(maniskill2\) is not yet supported"),
        ("myo-reach", r"^task 'myo-reach' \(myosuite\) is not yet supported"),
    ],
)
def test_unsupported_suite_is_one_line(
    monkeypatch: pytest.MonkeyPatch, task: str, message: str
) -> None:
    """A suite this version cannot build fails at task resolution, also inside make_env."""
    from ldmpc.envs import make_env

    monkeypatch.setattr(tasks_module, "SUPPORTED_SUITES", {"dmcontrol"})
    with pytest.raises(UserError, match=message):
        resolve_tasks(task)
    with pytest.raises(UserError, match=message):
        make_env(task, seed=0)


def test_mixed_action_repeat_is_rejected() -> None:
    with pytest.raises(UserError, match="share the action repeat"):
        resolve_tasks("walker-walk,myo-reach", allow_unsupported=True)
    with pytest.raises(UserError, match="share the action repeat"):
        resolve_tasks("mw-reach,myo-reach")


def test_suite_status() -> None:
    status = suite_status()
    for suite in ("dmcontrol", "metaworld", "myosuite"):
        assert status[suite] == (True, "ok")


def test_suite_status_of_an_unsupported_suite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks_module, "SUPPORTED_SUITES", {"dmcontrol"})
    usable, reason = suite_status()["metaworld"]
    assert not usable and reason.startswith("not yet supported in this version")


def test_format_registry() -> None:
    status = {s: (s == "dmcontrol", "ok" if s == "dmcontrol" else "not yet supported") for s in
              ("dmcontrol", "metaworld", "maniskill2", "myosuite")}  # fmt: skip
    text = format_registry(status)
    assert "dmcontrol (76 tasks) - usable here" in text
    assert "metaworld (50 tasks) - not usable here: not yet supported" in text
    assert "mt80: 80 tasks (dmcontrol 30, metaworld 50)" in text
    assert "mw10: 10 tasks (metaworld 10)" in text
    listed = text.split()
    assert all(name in listed for name in TASKS)


def test_importing_tasks_is_light() -> None:
    code = (
        "import sys, ldmpc.tasks, ldmpc.envs; "
        "heavy = {'dm_control', 'mujoco', 'gymnasium', 'torch'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
