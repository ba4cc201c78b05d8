"""precision=fp32|bf16|auto: bf16 compute, fp32 weights, one line where bf16 cannot run."""

from __future__ import annotations

import pytest
import torch

from ldmpc import config, precision
from ldmpc.agent import Agent
from ldmpc.cli import main
from ldmpc.errors import UserError

TINY = ["model_size=1", "batch_size=16", "iterations=2", "num_samples=32", "num_elites=4",
        "num_pi_trajs=4"]  # fmt: skip
needs_bf16 = pytest.mark.skipif(not precision.cpu_has_bf16(), reason="no native bf16 on this CPU")


@pytest.fixture(autouse=True)
def _fresh_resolution():
    precision.resolve_precision.cache_clear()
    yield
    precision.resolve_precision.cache_clear()


def _agent(*overrides: str) -> Agent:
    torch.manual_seed(0)
    return Agent(config.derive(config.parse([*TINY, *overrides]), (5,), 2))


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(4, 16, 5, generator=g),
        "action": torch.rand(3, 16, 2, generator=g) * 2 - 1,
        "reward": torch.randn(3, 16, 1, generator=g),
    }


@needs_bf16
def test_bf16_updates_and_plans_with_fp32_weights() -> None:
    fp32, bf16 = _agent(), _agent("precision=bf16")
    first = [(fp32.update(_batch(i)), bf16.update(_batch(i))) for i in range(3)]
    for a, b in first:
        assert b["skipped"] == 0.0
        for key in ("consistency_loss", "reward_loss", "value_loss"):
            assert b[key] == pytest.approx(a[key], rel=0.1), key  # same math, bf16 rounding
    assert any(a["value_loss"] != b["value_loss"] for a, b in first)  # bf16 did run
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert all(v.dtype == torch.float32 for v in bf16.state_dict()["model"].values())
    assert bf16.learn.optim.state_dict()["state"][0]["exp_avg"].dtype == torch.float32
    action, state = bf16.act(torch.randn(3, 5))
    assert action.dtype == state["mean"].dtype == torch.float32
    assert action.abs().max() <= 1 and torch.isfinite(action).all()


@needs_bf16
def test_a_checkpoint_moves_between_precisions() -> None:
    fp32, bf16 = _agent(), _agent("precision=bf16", "seed=3")
    fp32.update(_batch())
    bf16.load_state_dict(fp32.state_dict())
    assert bf16.update(_batch(1))["skipped"] == 0.0
    fp32.load_state_dict(bf16.state_dict())


def test_bf16_without_hardware_support_is_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    with pytest.raises(UserError, match="precision=bf16: this CPU has no native bf16"):
        precision.resolve_precision("bf16", "cpu")
    code = main(["train", "task=cartpole-swingup", "precision=bf16", "device=cpu", "steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "precision=bf16" in err


def test_auto_takes_bf16_only_where_it_is_clearly_faster(monkeypatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(precision, "measured_bf16_speedup", lambda device_type: 1.3)
    dtype, why = precision.resolve_precision("auto", "cpu")
    assert dtype == torch.float32 and "only 1.3x faster" in why
    precision.resolve_precision.cache_clear()
    monkeypatch.setattr(precision, "measured_bf16_speedup", lambda device_type: 4.0)
    dtype, why = precision.resolve_precision("auto", "cpu")
    assert dtype == torch.bfloat16 and "4.0x faster" in why
    precision.resolve_precision.cache_clear()
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.resolve_precision("auto", "cpu")[0] == torch.float32


def test_an_unknown_precision_is_one_line() -> None:
    with pytest.raises(UserError, match="precision=fp16"):
        config.parse(["precision=fp16"])
