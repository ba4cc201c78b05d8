"""Agent: acting shapes and state, update info, NaN skip, bit-exact state round trip, compile."""

from __future__ import annotations

import functools
import io
import warnings

import pytest
import torch

from ldmpc import config
from ldmpc.agent import Agent
from ldmpc.compile import CompiledFn, maybe_compile

TINY = [
    "model_size=1", "mlp_dim=64", "latent_dim=32", "enc_dim=64", "num_samples=64",
    "num_elites=8", "num_pi_trajs=4", "iterations=2", "batch_size=16",
]  # fmt: skip


def make_agent(*overrides: str, action_dim: int = 2) -> Agent:
    cfg = config.derive(config.parse([*TINY, *overrides]), (5,), action_dim)
    return Agent(cfg, "cpu")


def make_batch(agent: Agent, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    H, B, A = agent.cfg.horizon, agent.cfg.batch_size, agent.cfg.action_dim
    return {
        "obs": torch.randn(H + 1, B, 5, generator=g),
        "action": torch.rand(H, B, A, generator=g) * 2 - 1,
        "reward": torch.rand(H, B, 1, generator=g),
    }


def test_act_shapes_state_and_bounds() -> None:
    agent = make_agent()
    obs = torch.randn(3, 5)
    action, state = agent.act(obs)
    assert action.shape == (3, 2) and action.abs().max() <= 1
    assert state["mean"].shape == (3, agent.cfg.horizon, 2)
    action2, state2 = agent.act(obs, state, torch.tensor([False, True, False]), eval_mode=True)
    assert action2.shape == (3, 2) and state2["mean"].shape == state["mean"].shape
    assert agent.initial_state(4)["mean"].shape == (4, agent.cfg.horizon, 2)


def test_policy_prior_acting_when_mpc_false() -> None:
    agent = make_agent("mpc=false")
    obs = torch.randn(4, 5)
    a1, state = agent.act(obs, eval_mode=True)
    a2, _ = agent.act(obs, state, eval_mode=True)
    assert a1.shape == (4, 2) and torch.equal(a1, a2)  # eval: the squashed mean
    a3, _ = agent.act(obs, state)
    assert not torch.equal(a1, a3)


def test_update_returns_finite_info_and_moves_weights() -> None:
    agent = make_agent()
    before = [p.detach().clone() for p in agent.model.parameters()]
    target_before = {k: v.clone() for k, v in agent.model.q_params(target=True).items()}
    info = agent.update(make_batch(agent))
    for key in ("total_loss", "consistency_loss", "reward_loss", "value_loss", "pi_loss",
                "grad_norm", "pi_grad_norm", "pi_scale"):  # fmt: skip
        assert isinstance(info[key], float) and torch.isfinite(torch.tensor(info[key])), key
    assert info["skipped"] == 0.0 and info["updates"] == 1.0
    assert any(not torch.equal(a, p) for a, p in zip(before, agent.model.parameters()))
    target_after = agent.model.q_params(target=True)
    assert any(not torch.equal(target_before[k], target_after[k]) for k in target_before)
    assert not agent.model.training  # back in eval mode for acting


def test_nan_batch_is_skipped_and_counted() -> None:
    agent = make_agent()
    agent.update(make_batch(agent))
    snapshot = {k: v.clone() for k, v in agent.state_dict()["model"].items()}
    optim_state = agent.learn.optim.state_dict()["state"]
    steps = {k: s["step"].clone() for k, s in optim_state.items()}
    scale = agent.scale.value.clone()
    bad = make_batch(agent, seed=1)
    bad["reward"][0, 0, 0] = float("nan")
    info = agent.update(bad)
    assert info["skipped"] == 1.0 and info["skipped_updates"] == 1.0
    assert info["consecutive_skips"] == 1.0 and info["updates"] == 1.0
    for k, v in agent.state_dict()["model"].items():
        assert torch.equal(v, snapshot[k]), k
    for k, s in agent.learn.optim.state_dict()["state"].items():
        assert torch.equal(s["step"], steps[k])
    assert torch.equal(agent.scale.value, scale)
    agent.update(make_batch(agent, seed=2))
    assert agent.counters == {"updates": 2, "skipped_updates": 1, "consecutive_skips": 0}


def test_state_dict_round_trip_is_bit_exact() -> None:
    a = make_agent()
    for seed in range(2):
        a.update(make_batch(a, seed))
    a.act(torch.randn(2, 5))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make_agent("seed=7")
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.counters == a.counters
    obs, first = torch.randn(2, 5), torch.zeros(2, dtype=torch.bool)
    state = a.initial_state(2)
    act_a, mean_a = a.act(obs, state, first)
    act_b, mean_b = b.act(obs, state, first)
    assert torch.equal(act_a, act_b) and torch.equal(mean_a["mean"], mean_b["mean"])
    torch.manual_seed(3)
    a.update(make_batch(a, 5))
    torch.manual_seed(3)
    b.update(make_batch(b, 5))
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)


def _failing_backend(gm, example_inputs):  # torch.compile backend signature
    raise RuntimeError("simulated inductor failure")


def test_maybe_compile_falls_back_once_and_keeps_errors() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1

    assert maybe_compile(f, False, "f") is f
    wrapped = maybe_compile(f, True, "f", backend=_failing_backend)
    assert isinstance(wrapped, CompiledFn)
    x = torch.randn(4)
    with pytest.warns(RuntimeWarning, match="torch.compile of 'f' failed"):
        torch.testing.assert_close(wrapped(x), f(x))
    assert not wrapped.active
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the decision is cached: no second warning
        torch.testing.assert_close(wrapped(x), f(x))

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise ValueError("bug in user code")

    with pytest.raises(ValueError, match="bug in user code"), pytest.warns(RuntimeWarning):
        maybe_compile(broken, True, "broken", backend="eager")(x)


def test_compiled_fns_recompile_with_static_shapes() -> None:
    """A new input shape compiles a new static graph, never a dynamic-shape one (dynamic
    shapes crashed inductor's guard creation on CUDA, see ldmpc/compile.py)."""
    graphs: list[list[object]] = []

    def recording_backend(gm, example_inputs):  # torch.compile backend signature
        graphs.append([d for t in example_inputs if isinstance(t, torch.Tensor) for d in t.shape])
        return gm.forward

    torch._dynamo.reset()  # a fresh cache: this function's code may have been compiled before
    wrapped = maybe_compile(lambda x: x * 2 + 1, True, "f", backend=recording_backend)
    for n in (4, 6, 8):
        torch.testing.assert_close(wrapped(torch.ones(n)), torch.full((n,), 3.0))
    assert graphs == [[4], [6], [8]]  # one graph per shape, all sizes plain ints


def test_compile_true_falls_back_cleanly_when_the_backend_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        torch, "compile", functools.partial(torch.compile, backend=_failing_backend)
    )
    agent = make_agent("compile=true")
    with pytest.warns(RuntimeWarning, match="failed"):
        action, state = agent.act(torch.randn(2, 5))
        info = agent.update(make_batch(agent))
    assert action.shape == (2, 2) and info["skipped"] == 0.0
    assert not agent._plan.active and not agent.learn._loss_fn.active
    agent.act(torch.randn(2, 5), state)


def test_loaded_state_keeps_the_configs_learning_rates() -> None:
    """Adam's load_state_dict restores the saved lr; `resume=true lr=...` and PBT mutations
    must win (lr is not part of the checkpoint fingerprint)."""
    from ldmpc.config import fingerprint, load

    old = load(["task=mw-reach", "model_size=1", "lr=3e-4"])
    new = load(["task=mw-reach", "model_size=1", "lr=1e-3", "enc_lr_scale=0.5"])
    assert fingerprint(old) == fingerprint(new)
    agent = Agent(new)
    agent.load_state_dict(Agent(old).state_dict())
    assert [g["lr"] for g in agent.learn.optim.param_groups] == pytest.approx([5e-4, 1e-3])
    assert agent.learn.pi_optim.param_groups[0]["lr"] == pytest.approx(1e-3)
