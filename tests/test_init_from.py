"""`init_from=`: a run starts its world model from an ldmpc checkpoint or a TD-MPC2 model file
(what fits by name and shape is copied, the rest starts fresh, said in one line)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ray_temp import ray_temp_env

from ldmpc.checkpoint import load_checkpoint
from ldmpc.config import load
from ldmpc.errors import UserError
from ldmpc.init_from import load_init_weights
from ldmpc.tdmpc2_models import model_state, to_ldmpc_state
from ldmpc.world_model import WorldModel

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "tdmpc2_fixtures"
CARTPOLE = FIXTURES / "tdmpc2_cartpole-swingup_size1_oldformat.pt"
pytestmark = pytest.mark.skipif(not CARTPOLE.exists(), reason=f"no TD-MPC2 fixtures at {FIXTURES}")


def _fixture_weights() -> dict[str, torch.Tensor]:
    return to_ldmpc_state(model_state(torch.load(CARTPOLE, weights_only=True)))


def test_same_task_loads_every_tensor() -> None:
    cfg = load(["task=cartpole-swingup", "model_size=1", f"init_from={CARTPOLE}"])
    model = WorldModel(cfg)
    line = load_init_weights(model, cfg)
    assert "2023 layout" in line and "fresh" not in line
    for key, value in _fixture_weights().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_related_task_keeps_what_fits_and_says_what_is_fresh() -> None:
    """pendulum-swingup: 3 observations instead of cartpole's 5, the same single action."""
    cfg = load(["task=pendulum-swingup", "model_size=1", f"init_from={CARTPOLE}"])
    model = WorldModel(cfg)
    fresh_first = model.state_dict()["_encoder.0.weight"].clone()
    line = load_init_weights(model, cfg)
    assert line.endswith("fresh: _encoder.0"), line
    state, source = model.state_dict(), _fixture_weights()
    assert torch.equal(state["_encoder.0.weight"], fresh_first)
    for key in ("_encoder.1.weight", "_dynamics.0.weight", "_Qs.w0", "_target_Qs_w2", "_pi.2.bias"):
        assert torch.equal(state[key], source[key]), key


def test_a_multitask_run_refuses_a_single_task_source() -> None:
    cfg = load(["task=mt30", "model_size=1", f"init_from={CARTPOLE}"])
    with pytest.raises(UserError, match="single-task TD-MPC2 model cannot start a task=mt30"):
        load_init_weights(WorldModel(cfg), cfg)


@pytest.mark.heavy
def test_train_starts_from_a_tdmpc2_model(tmp_path: Path) -> None:
    """A real `ldmpc train` (local Ray): no update happens before seed_steps, so the final
    checkpoint holds exactly the TD-MPC2 model's weights; the start line says what loaded."""
    args = [
        "task=cartpole-swingup", "model_size=1", "iterations=1", "num_samples=16",
        "num_elites=4", "num_pi_trajs=2", "steps=20", "seed_steps=1000", "eval_freq=100000",
        "eval_episodes=1", "progress=false", "torch_threads=1", f"work_dir={tmp_path}",
        f"init_from={CARTPOLE}",
    ]  # fmt: skip
    with ray_temp_env() as env:
        proc = subprocess.run(
            [sys.executable, "-m", "ldmpc.cli", "train", *args],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "init_from: TD-MPC2 model (2023 layout)" in proc.stdout
    ckpt = sorted((tmp_path / "cartpole-swingup" / "1" / "default" / "checkpoints").glob("*.pt"))
    model = load_checkpoint(ckpt[-1])["payload"]["agent"]["model"]
    for key, value in _fixture_weights().items():
        assert torch.equal(model[key], value), key


def test_an_ldmpc_checkpoint_starts_a_related_task(tmp_path: Path) -> None:
    from ldmpc.tdmpc2_models import import_tdmpc2

    ckpt = tmp_path / "cartpole.pt"
    import_tdmpc2(str(CARTPOLE), str(ckpt), load(["task=cartpole-swingup", "model_size=1"]))
    cfg = load(["task=pendulum-swingup", "model_size=1", f"init_from={ckpt}"])
    model = WorldModel(cfg)
    line = load_init_weights(model, cfg)
    assert "ldmpc checkpoint of task=cartpole-swingup" in line and line.endswith("_encoder.0")
    assert torch.equal(
        model.state_dict()["_reward.2.weight"], _fixture_weights()["_reward.2.weight"]
    )
