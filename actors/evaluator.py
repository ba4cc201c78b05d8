"""Periodic evaluation of an online run: in the driver, or beside training in a Ray actor.

TD-MPC2 stops training for every evaluation; at the `make train` budget that is ~30 s every
2,500 steps on this 2-core CPU (docs/results.md). `eval_parallel=true` hands a snapshot of the
acting weights (model, Q scale, acting RNG) to an `EvalActor` and trains on; the result is logged
at the step of the snapshot when it lands, so the curve's x-axis stays exact. Evaluation draws no
randomness from the training process (`Agent` seeds its own initial weights, the acting RNG
travels with the snapshot), so both placements give the same numbers at the same thread count.
Snapshots not yet evaluated when a run stops go into its checkpoint and are evaluated on resume.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from ldmpc.config import Config, to_dict

EvalResult = dict[str, float]
ACTING_KEYS = ("model", "scale", "generator")  # what evaluation needs of an agent's state
TEST_DELAY_ENV = "LDMPC_TEST_EVAL_DELAY_S"


def acting_state(agent_state: dict[str, Any]) -> dict[str, Any]:
    """The part of a learner's agent state that acting uses (no optimizers, no counters)."""
    return {k: agent_state[k] for k in ACTING_KEYS}


def _evaluate(agent: Any, cfg: Config, state: dict[str, Any], step: int) -> EvalResult:
    from ldmpc.evaluate import evaluate_at

    agent.load_state_dict(state)
    return evaluate_at(agent, cfg, step)


def _acting_agent(cfg: Config) -> Any:
    from ldmpc.agent import Agent
    from ldmpc.runtime import resolve_device

    return Agent(cfg, resolve_device(cfg.device), learn=False)


class InlineEvaluator:
    """Evaluates in this process: training waits (eval_parallel=false, GPU runs, Tune trials)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.agent = _acting_agent(cfg)

    def submit(self, step: int, state: dict[str, Any]) -> EvalResult | None:
        if not self.cfg.overlap:
            return _evaluate(self.agent, self.cfg, state, step)
        # overlap=true trains on two threads of one torch thread each; while training waits,
        # the evaluation may use every core of this process
        from ldmpc.runtime import set_threads

        before = torch.get_num_threads()
        set_threads(0)
        try:
            return _evaluate(self.agent, self.cfg, state, step)
        finally:
            torch.set_num_threads(before)

    def landed(self, timeout_s: float) -> list[tuple[int, EvalResult]]:
        return []

    def unfinished(self) -> dict[int, dict[str, Any]]:
        return {}

    def close(self) -> None:
        return None


class EvalActor:
    """The Ray actor behind `ParallelEvaluator`: one acting agent, one thread, on the driver's
    node (videos are written under the run directory)."""

    def __init__(self, cfg_dict: dict[str, Any]) -> None:
        from ldmpc.runtime import set_threads

        self.cfg = Config.from_dict(cfg_dict)
        set_threads(self.cfg.torch_threads or 1)  # the driver trains on the other threads
        # Lowest priority: it runs on the cycles training leaves idle and yields the moment
        # training wants them (with overlap=true the planning thread idles ~40 % of a round,
        # waiting for the update thread). At equal priority it took turns with training.
        os.nice(19)
        self.agent = _acting_agent(self.cfg)

    def evaluate(self, state: dict[str, Any], step: int) -> EvalResult:
        # Test-only: hold the evaluation back, so a test can stop a run while it is in flight.
        time.sleep(float(os.environ.get(TEST_DELAY_ENV, "0")))
        return _evaluate(self.agent, self.cfg, state, step)


class ParallelEvaluator:
    """Evaluates snapshots in an `EvalActor` while training goes on; results land in order."""

    def __init__(self, cfg: Config) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        actor_class = ray.remote(EvalActor).options(
            num_cpus=0,  # it uses the core the driver's torch leaves idle between ops
            max_restarts=3,
            max_task_retries=3,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
        )
        self.actor = actor_class.remote(to_dict(cfg))
        self._pending: dict[int, tuple[Any, dict[str, Any]]] = {}  # step -> (ref, snapshot)

    def submit(self, step: int, state: dict[str, Any]) -> EvalResult | None:
        # A copy: a local learner's state holds its live tensors, which later updates change;
        # a checkpoint must keep the weights of this step for an evaluation still owed.
        state = _snapshot(state)
        self._pending[step] = (self.actor.evaluate.remote(state, step), state)
        return None  # lands later through `landed`

    def landed(self, timeout_s: float) -> list[tuple[int, EvalResult]]:
        """Finished evaluations, oldest first, waiting up to timeout_s for the oldest."""
        import ray

        out = []
        for step in sorted(self._pending):
            ref, _ = self._pending[step]
            ready, _ = ray.wait([ref], timeout=timeout_s if not out else 0.0)
            if not ready:
                break  # later ones wait for this one: results land in step order
            out.append((step, ray.get(ref)))
            del self._pending[step]
        return out

    def unfinished(self) -> dict[int, dict[str, Any]]:
        """The snapshots still being evaluated (a checkpoint keeps them)."""
        return {step: state for step, (_, state) in self._pending.items()}

    def close(self) -> None:
        import ray

        ray.kill(self.actor)


def _snapshot(state: Any) -> Any:
    """A deep copy of the tensors of a (nested) state dict."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _snapshot(v) for k, v in state.items()}
    return state


def make_evaluator(cfg: Config) -> InlineEvaluator | ParallelEvaluator:
    """Beside training when asked for and the agent acts on the CPU; on a GPU an evaluation is
    a small share of the device and runs in the driver."""
    from ldmpc.runtime import resolve_device

    if cfg.eval_parallel and resolve_device(cfg.device).type == "cpu":
        return ParallelEvaluator(cfg)
    return InlineEvaluator(cfg)
