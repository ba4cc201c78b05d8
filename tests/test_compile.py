"""compile=true traces the update's loss and the plan as single graphs: a graph break would
split them into many small compiled pieces with eager glue between (docs/design.md §3.4)."""

from __future__ import annotations

import warnings

import pytest
import torch

from ldmpc import config
from ldmpc.agent import Agent
from ldmpc.planner import plan, sample_noise

BUDGET = ["model_size=1", "batch_size=8", "iterations=2", "num_samples=32", "num_elites=4",
          "num_pi_trajs=4"]  # fmt: skip


def _agent(*overrides: str) -> tuple[config.Config, Agent]:
    cfg = config.derive(config.parse([*BUDGET, *overrides]), (5,), 2)
    return cfg, Agent(cfg)


def _batch(cfg: config.Config) -> dict[str, torch.Tensor]:
    H, B = cfg.horizon, cfg.batch_size
    return {
        "obs": torch.randn(H + 1, B, 5),
        "action": torch.rand(H, B, 2) * 2 - 1,
        "reward": torch.randn(H, B, 1),
        "terminated": torch.zeros(H, B, 1),
    }


def _breaks(fn, *args) -> list[str]:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*args)
    return [str(b.reason).splitlines()[0] for b in explained.break_reasons]


@pytest.mark.parametrize(
    "switches", [[], ["dynamics=diffusion", "proposal=both", "num_diffusion_proposals=8"]]
)
def test_the_update_loss_is_one_graph(switches: list[str]) -> None:
    cfg, agent = _agent(*switches)
    agent.model.train()  # dropout on, as in an update
    assert _breaks(agent.learn._model_loss, _batch(cfg)) == []


@pytest.mark.parametrize(
    "switches", [[], ["dynamics=diffusion", "proposal=both", "num_diffusion_proposals=8"]]
)
def test_the_plan_is_one_graph(switches: list[str]) -> None:
    cfg, agent = _agent(*switches)
    z = agent.model.encode(torch.randn(3, 5))
    noise = sample_noise(cfg, 3, "cpu", agent.generator)
    first = torch.ones(3, dtype=torch.bool)
    args = (agent.model, z, None, first, cfg, False, noise, None, None, None)
    assert _breaks(plan, *args) == []


def test_a_backward_that_fails_to_compile_falls_back_to_eager(monkeypatch) -> None:
    """AOTAutograd compiles the backward lazily, at the first loss.backward(): a compiler
    failure there must end in one warning and eager updates, as a forward failure does."""
    from torch._dynamo.backends.common import aot_autograd

    def failing_backward(gm, example_inputs):
        raise RuntimeError("backward compiler exploded")

    backend = aot_autograd(fw_compiler=lambda gm, example_inputs: gm, bw_compiler=failing_backward)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend=backend))
    torch._dynamo.reset()
    cfg, agent = _agent("compile=true")
    with pytest.warns(RuntimeWarning, match="backward compiler exploded"):
        info = agent.update(_batch(cfg))
    assert info["skipped"] == 0.0 and not agent.learn._loss_fn.active
    assert agent.update(_batch(cfg))["skipped"] == 0.0


def test_overlap_compiles_update_and_plan_with_the_cpp_wrapper(monkeypatch) -> None:
    """overlap=true runs the update and the plan on two threads: both compile under inductor's
    C++ wrapper, which releases the GIL around the graph. A random op the wrapper cannot call
    (randint or randperm with a dtype or generator argument) would fall back to eager."""
    options = []
    real_compile = torch.compile
    monkeypatch.setattr(
        torch,
        "compile",
        lambda fn, **kw: options.append(kw.get("options")) or real_compile(fn, **kw),
    )
    torch._dynamo.reset()
    cfg, agent = _agent("compile=true", "overlap=true", "torch_threads=1")
    assert [o.get("cpp_wrapper") for o in options] == [True, True]  # plan, update
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback warns
        assert agent.update(_batch(cfg))["skipped"] == 0.0
        agent.act(torch.randn(2, 5), agent.initial_state(2), torch.ones(2, dtype=torch.bool))
    assert agent.learn._loss_fn.active and agent._plan.active


def test_compiled_update_and_plan_compute_what_eager_code_computes() -> None:
    """compile=true (fp32) is a faster route to the same numbers: from the same weights and
    generator state, updates with dropout on and training-mode plans match eager code to float
    rounding (the random ops run as ATen calls in both, LOSS_OPTIONS). A compiled path that
    drew its own masks learned less on cartpole-swingup (docs/results.md)."""
    torch.manual_seed(0)
    cfg, eager = _agent("precision=fp32")
    torch.manual_seed(0)
    _, compiled = _agent("precision=fp32", "compile=true")
    obs = torch.randn(3, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(3):
            batch = _batch(cfg)
            torch.manual_seed(100 + i)
            info_e = eager.update(batch)
            torch.manual_seed(100 + i)
            info_c = compiled.update({k: v.clone() for k, v in batch.items()})
            assert compiled.learn._loss_fn.active and compiled._plan.active
            for key in ("consistency_loss", "reward_loss", "value_loss", "pi_loss"):
                assert info_c[key] == pytest.approx(info_e[key], rel=1e-5, abs=1e-7), key
            torch.manual_seed(200 + i)
            action_e, _ = eager.act(obs)
            torch.manual_seed(200 + i)
            action_c, _ = compiled.act(obs)
            torch.testing.assert_close(action_c, action_e, atol=1e-5, rtol=1e-5)
    for (name, p_e), p_c in zip(eager.model.named_parameters(), compiled.model.parameters()):
        # Adam divides by the gradient's root mean square: float-rounding differences in a
        # near-zero gradient move a weight by up to a few 1e-6; one step moves it by lr=3e-4
        torch.testing.assert_close(p_c, p_e, atol=3e-5, rtol=1e-5, msg=name)


def test_the_plan_compiles_with_cuda_graphs_on_cuda_only() -> None:
    """On CUDA the plan is compiled with mode="reduce-overhead" (CUDA graphs; the agent copies
    a decision's outputs before the next replay overwrites them); on a CPU with inductor
    options (the C++ wrapper when it shares the process with an update thread)."""
    from ldmpc.compile import plan_compile_kwargs

    assert plan_compile_kwargs(False, torch.device("cuda")) == {"mode": "reduce-overhead"}
    assert plan_compile_kwargs(True, torch.device("cpu")) == {"options": {"cpp_wrapper": True}}
    assert plan_compile_kwargs(False, torch.device("cpu")) == {"options": {}}
    _, agent = _agent("compile=true")
    assert agent._plan.active and not agent._cuda_graphs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_plans_equal_eager_plans_and_outlive_the_next_replay() -> None:
    """The CUDA-graph plan gives eager's actions from the same generator state, and an earlier
    decision's outputs are not overwritten by later replays (the agent copies them)."""
    cfg = config.derive(config.parse([*BUDGET, "precision=fp32"]), (5,), 2)
    cfg_compiled = config.derive(config.parse([*BUDGET, "precision=fp32", "compile=true"]), (5,), 2)
    eager, graphed = Agent(cfg, "cuda"), Agent(cfg_compiled, "cuda")
    obs = torch.randn(3, 5, device="cuda")
    kept = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(4):
            eager.generator.manual_seed(i)
            graphed.generator.manual_seed(i)
            action_e, state_e = eager.act(obs)
            action_g, state_g = graphed.act(obs)
            kept.append((action_g, state_g["mean"], action_e, state_e["mean"]))
    assert graphed._cuda_graphs and graphed._plan.active
    for action_g, mean_g, action_e, mean_e in kept:  # still what each call returned
        torch.testing.assert_close(action_g, action_e, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(mean_g, mean_e, atol=1e-4, rtol=1e-4)
