"""TD-MPC2's own model files: every layout converts to ldmpc weights whose outputs equal
TD-MPC2's reference outputs (../shared/tdmpc2_fixtures, written by TD-MPC2's code) to 1e-5."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ldmpc.errors import UserError
from ldmpc.math_utils import two_hot_inv
from ldmpc.tdmpc2_models import (
    detect_layout,
    infer_shapes,
    is_tdmpc2_state,
    model_state,
    to_ldmpc_state,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "tdmpc2_fixtures"
pytestmark = pytest.mark.skipif(
    not (FIXTURES / "reference_outputs.pt").exists(),
    reason=f"TD-MPC2 fixtures not found at {FIXTURES}",
)
# file -> (reference key prefix, ldmpc task, layout)
CHECKPOINTS = {
    "tdmpc2_cartpole-swingup_size1.pt": ("cartpole-swingup_size1", "cartpole-swingup", "current"),
    "tdmpc2_cartpole-swingup_size1_td083.pt": (
        "cartpole-swingup_size1", "cartpole-swingup", "current",
    ),
    "tdmpc2_cartpole-swingup_size1_oldformat.pt": (
        "cartpole-swingup_size1_oldformat", "cartpole-swingup", "2023",
    ),
    "tdmpc2_mt30_size1.pt": ("mt30_size1", "mt30", "current"),
    "tdmpc2_mt30_size1_oldformat.pt": ("mt30_size1_oldformat", "mt30", "2023"),
}  # fmt: skip


def _world_model(task: str, model: dict[str, torch.Tensor]) -> Any:
    from ldmpc.config import load
    from ldmpc.world_model import WorldModel

    cfg = load([f"task={task}", "model_size=1"])
    world = WorldModel(cfg).eval()
    world.load_state_dict(to_ldmpc_state(model, list(cfg.action_dims)), strict=True)
    return cfg, world


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_outputs_match_tdmpc2_reference(name: str) -> None:
    prefix, task, layout = CHECKPOINTS[name]
    payload = torch.load(FIXTURES / name, weights_only=True)
    assert is_tdmpc2_state(payload)
    model = model_state(payload)
    assert detect_layout(model) == layout
    shapes = infer_shapes(model)
    assert shapes.model_size == 1 and shapes.num_tasks == (30 if task == "mt30" else 0)
    ref = {
        k.split("/", 1)[1]: v
        for k, v in torch.load(FIXTURES / "reference_outputs.pt", weights_only=True).items()
        if k.startswith(prefix + "/")
    }
    cfg, world = _world_model(task, model)
    task_ids = ref.get("task")
    obs, action = ref["obs"], ref["action"]
    bins = (cfg.num_bins, cfg.vmin, cfg.vmax)
    with torch.no_grad():
        z = world.encode(obs, task_ids)
        q_logits = world.Q(z, action, task_ids, return_type="all")
        q = two_hot_inv(q_logits, *bins)
        target_logits = world.Q(z, action, task_ids, return_type="all", target=True)
        _, info = world.pi(z, task_ids, eps=torch.zeros_like(action))
        rollout = z
        for _ in range(3):
            rollout = world.next(rollout, action, task_ids)
        ours = {
            "z": z,
            "next_z": world.next(z, action, task_ids),
            "reward_logits": world.reward(z, action, task_ids),
            "reward": two_hot_inv(world.reward(z, action, task_ids), *bins),
            "q_logits": q_logits,
            "q": q,
            "q_avg": q.mean(0),
            "q_min": q.min(0).values,
            "target_q_logits": target_logits,
            "target_q": two_hot_inv(target_logits, *bins),
            "pi_mean": info["mean"],
            "pi_log_std": info["log_std"],
            "rollout3_z": rollout,
        }
    if task_ids is not None:
        torch.testing.assert_close(world._action_masks, ref["action_masks"], atol=0, rtol=0)
    for key, value in ours.items():
        err = (value - ref[key]).abs().max().item()
        assert err <= 1e-5, f"{key}: max abs error {err:.3g}"


def test_the_older_single_task_layout_is_refused_by_name() -> None:
    model = {"_encoder.state.1.weight": torch.zeros(2, 2), "_dynamics.0.0.weight": torch.zeros(2)}
    with pytest.raises(UserError, match=r"older single-task layout.*supported"):
        detect_layout(model)


def test_a_file_of_another_kind_is_not_taken_for_tdmpc2() -> None:
    assert not is_tdmpc2_state({"agent": {"model": {}}})
    with pytest.raises(UserError, match="not a TD-MPC2 model"):
        detect_layout({"_encoder.state.0.weight": torch.zeros(1)})


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from ldmpc.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "name", ["tdmpc2_cartpole-swingup_size1_td083.pt", "tdmpc2_mt30_size1_oldformat.pt"]
)
def test_import_writes_an_ldmpc_checkpoint_with_the_same_weights(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ldmpc.config import load
    from ldmpc.evaluate import load_agent

    task = CHECKPOINTS[name][1]
    dst = tmp_path / "imported.pt"
    code, out, err = _cli(
        capsys, "import", "tdmpc2", f"src={FIXTURES / name}", f"dst={dst}", f"task={task}",
        "model_size=1",
    )  # fmt: skip
    assert code == 0, err
    assert "model_size=1" in out and ("30 tasks" in out) == (task == "mt30")
    cfg = load([f"task={task}", "model_size=1", f"checkpoint={dst}"])
    imported, _ = load_agent(cfg)  # an ldmpc checkpoint now, checked against cfg's fingerprint
    _, direct = _world_model(task, model_state(torch.load(FIXTURES / name, weights_only=True)))
    for key, value in direct.state_dict().items():
        assert torch.equal(imported.model.state_dict()[key], value), key


def test_eval_reads_a_tdmpc2_file_directly(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    code, out, err = _cli(
        capsys, "eval", "task=cartpole-swingup", "model_size=1", "eval_episodes=1",
        "iterations=1", "num_samples=16", "num_elites=4", "num_pi_trajs=2", "torch_threads=1",
        f"checkpoint={FIXTURES / 'tdmpc2_cartpole-swingup_size1_oldformat.pt'}",
        f"work_dir={tmp_path}",
    )  # fmt: skip
    assert code == 0, err
    assert "TD-MPC2 model (2023 layout)" in out and "return=" in out


@pytest.mark.parametrize(
    ("src", "extra", "message"),
    [
        ("tdmpc2_mt30_size1.pt", ["task=cartpole-swingup"], "tasks 30 vs 0, obs 24 vs 5"),
        ("tdmpc2_cartpole-swingup_size1.pt", ["task=cartpole-swingup", "model_size=5"],
         "latent_dim 128 vs 512"),
        ("truncated", ["task=cartpole-swingup"], "corrupt or truncated"),
        ("ldmpc", ["task=cartpole-swingup"], "not a TD-MPC2 model file"),
    ],
)  # fmt: skip
def test_import_refuses_bad_input_in_one_line_and_writes_nothing(
    src: str, extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = FIXTURES / src
    if src == "truncated":
        path = tmp_path / "truncated.pt"
        path.write_bytes((FIXTURES / "tdmpc2_cartpole-swingup_size1.pt").read_bytes()[:5000])
    elif src == "ldmpc":
        path = tmp_path / "ldmpc.pt"
        torch.save({"format_version": 1, "payload": {"agent": {}}}, path)
    dst = tmp_path / "out" / "new.pt"
    code, _, err = _cli(capsys, "import", "tdmpc2", f"src={path}", f"dst={dst}", *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not dst.exists() and not dst.parent.exists()


def test_import_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "kept.pt"
    dst.write_bytes(b"mine")
    src = FIXTURES / "tdmpc2_cartpole-swingup_size1.pt"
    code, _, err = _cli(
        capsys, "import", "tdmpc2", f"src={src}", f"dst={dst}", "task=cartpole-swingup"
    )
    assert code == 2 and "exists" in err and dst.read_bytes() == b"mine"


@pytest.mark.parametrize(
    ("name", "task"),
    [("tdmpc2_cartpole-swingup_size1_oldformat.pt", "cartpole-swingup"),
     ("tdmpc2_mt30_size1.pt", "mt30")],
)  # fmt: skip
def test_import_then_export_gives_tdmpc2_current_layout_bit_exact(
    name: str, task: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """import -> export -> import: the exported file has the current fixture's keys, shapes,
    dtypes and values (the 2023 file holds the same weights), and imports to the same model."""
    current = FIXTURES / name.replace("_oldformat", "")
    imported, exported = tmp_path / "ldmpc.pt", tmp_path / "tdmpc2.pt"
    common = [f"task={task}", "model_size=1"]
    assert (
        _cli(capsys, "import", "tdmpc2", f"src={FIXTURES / name}", f"dst={imported}", *common)[0]
        == 0
    )
    code, out, err = _cli(capsys, "export", "tdmpc2", f"src={imported}", f"dst={exported}", *common)
    assert code == 0 and "wrote" in out and "model_size=1" in out, err
    ours = torch.load(exported, weights_only=True)["model"]
    theirs = model_state(torch.load(current, weights_only=True))
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert value.dtype == ours[key].dtype and torch.equal(value, ours[key]), key
    again = tmp_path / "again.pt"
    assert _cli(capsys, "import", "tdmpc2", f"src={exported}", f"dst={again}", *common)[0] == 0
    first = torch.load(imported, weights_only=True)["payload"]["agent"]["model"]
    second = torch.load(again, weights_only=True)["payload"]["agent"]["model"]
    assert all(torch.equal(v, second[k]) for k, v in first.items())


def test_export_refuses_a_diffusion_model(tmp_path: Path) -> None:
    from ldmpc.config import load
    from ldmpc.tdmpc2_models import from_ldmpc_state

    cfg = load(["task=cartpole-swingup", "model_size=1", "proposal=both"])
    with pytest.raises(UserError, match="only a TD-MPC2 model"):
        from_ldmpc_state({}, cfg)


def test_a_diffusion_config_or_an_incomplete_file_is_one_line(tmp_path: Path, capsys) -> None:
    src = FIXTURES / "tdmpc2_cartpole-swingup_size1.pt"
    dst = tmp_path / "x.pt"
    args = ["import", "tdmpc2", f"src={src}", f"dst={dst}", "task=cartpole-swingup"]
    code, _, err = _cli(capsys, *args, "dynamics=diffusion")
    assert code == 2 and "dynamics=mlp proposal=policy obs=state" in err and not dst.exists()
    model = model_state(torch.load(src, weights_only=True))
    del model["_pi.2.weight"]
    with pytest.raises(UserError, match="incomplete"):
        infer_shapes(model)
