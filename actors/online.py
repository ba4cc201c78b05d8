"""`ldmpc train` online: the RLlib Algorithm driven by the one training loop (`ldmpc.trainer`).

`run_training(cfg)` starts (or joins) Ray, builds `LdmpcAlgorithm`, and runs `OnlineTrainer`:
a step is an env step; each `advance` is one `Algorithm.train()` call (sample, learn, sync for
about half a second), and the updates owed for the steps taken are paid before an evaluation,
a checkpoint or the end, as TD-MPC2 does. Evaluation takes a snapshot of the learner's acting
weights and runs beside training (`actors.evaluator`, eval_parallel=true) or in the driver.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection
from dataclasses import asdict
from typing import Any

from actors.algorithm import Counters, LdmpcAlgorithm, build_algorithm
from actors.evaluator import EvalResult, acting_state, make_evaluator
from actors.ray_init import init_ray, shutdown_ray
from ldmpc.checkpoint import StopRequestedError, graceful_exit
from ldmpc.config import Config
from ldmpc.errors import UserError
from ldmpc.trainer import Trainer

EvalHook = Callable[[int, dict[str, float], LdmpcAlgorithm], None]


def run_training(cfg: Config, on_eval: EvalHook | None = None) -> dict[str, Any]:
    """`ldmpc train`: train until cfg.steps with periodic eval and checkpoints; resumable.

    SIGINT/SIGTERM finish the current iteration, write a checkpoint and return. Returns the
    final counters, the last eval result and whether the run was interrupted. `on_eval(step,
    result, algo)` runs after each evaluation is logged (Ray Tune reports from there).
    """
    from ldmpc.runtime import set_threads

    if cfg.data_dir is not None:
        raise UserError("data_dir= is offline training: run it with ldmpc.offline.run_offline")
    set_threads(1 if cfg.overlap else cfg.torch_threads)  # overlap: a core per thread
    # A stop from here on is a flag (Ray's start-up, ~3-7 s here, cannot be cut short): a
    # stop before the loop ends the run once Ray is up, with nothing to save
    with graceful_exit() as stop:
        started_ray = init_ray(cfg)
        if stop.requested:
            if started_ray:
                shutdown_ray()
            print(f"ldmpc: {stop.signal_name} during start-up: stopped, nothing was trained",
                  flush=True)  # fmt: skip
            return {"interrupted": True, "eval": None, "checkpoint": None}
        algo = build_algorithm(cfg)
        trainer = OnlineTrainer(algo, cfg, on_eval)
        try:
            out = trainer.run()
        finally:
            trainer.close()
            algo.stop()
            if started_ray:
                shutdown_ray()
    return {
        **asdict(algo.counters),
        "eval": out.last_eval,
        "interrupted": out.interrupted,
        "checkpoint": str(out.checkpoint) if out.checkpoint else None,
    }


class OnlineTrainer(Trainer):
    """Online progress: env steps on the runners, updates on the learner."""

    def __init__(self, algo: LdmpcAlgorithm, cfg: Config, on_eval: EvalHook | None) -> None:
        super().__init__(cfg)
        self.algo = algo
        self.on_eval = on_eval
        self.owed_evals: dict[int, Any] = {}  # step -> acting weights a stop left unevaluated

    def resume(self) -> int:
        step, self.owed_evals = resume(self.algo, self.cfg)
        return step

    def initialize(self) -> str:
        return self.algo.initialize_weights()

    def started(self, start: int) -> None:
        self.evaluator = make_evaluator(self.cfg)
        self.rate = Rate(start, self.algo.counters.updates)
        for step, state in sorted(self.owed_evals.items()):
            if self.log.missing_eval_at(step):  # stopped while it ran beside training
                result = self.evaluator.submit(step, state)
                if result is not None:
                    self._record([(step, result)])

    def owes_work(self) -> bool:
        algo = self.algo
        return algo.can_learn and algo.counters.env_steps >= algo.sample_until

    def do_owed_work(self) -> int:
        _train(self.algo)  # no new sample request past sample_until; it pays updates
        return self.algo.counters.env_steps  # async: requests in flight may still land

    def evaluate(self, step: int) -> EvalResult | None:
        return self.evaluator.submit(step, acting_state(self.algo.agent_weights()))

    def landed_evals(self, timeout_s: float) -> list[tuple[int, EvalResult]]:
        return self.evaluator.landed(timeout_s)

    def evals_in_flight(self) -> Collection[int]:
        return self.evaluator.unfinished().keys()

    def evaluated(self, step: int, result: dict[str, float]) -> None:
        if self.on_eval is not None:
            self.on_eval(step, result, self.algo)

    def advance(self, until: int) -> int:
        algo = self.algo
        algo.sample_until = until
        _train(algo)
        step = algo.counters.env_steps
        _log_episodes(algo, self.log, self.rate)
        self.log.progress(step, sps=self.rate.steps_per_s(step), upd=algo.counters.updates)
        return step

    def finish(self, step: int) -> None:
        self.algo.store_open_episodes()

    def close(self) -> None:
        """Stop the evaluation actor (a joined cluster would keep it)."""
        if hasattr(self, "evaluator"):
            self.evaluator.close()

    def save(self, step: int) -> Any:
        return save(self.algo, self.cfg, owed_evals=self.evaluator.unfinished())


def _train(algo: LdmpcAlgorithm) -> None:
    """One RLlib training step. A stop may abandon a compilation inside it (the first update,
    the first plan; `ldmpc.compile`): what it counted so far stands, the cut call counted
    nothing (counters move only after an update or an env step has completed)."""
    with contextlib.suppress(StopRequestedError):
        algo.train()


class Rate:
    """Env steps/s and updates/s since this process started (resume-aware)."""

    def __init__(self, steps: int, updates: int) -> None:
        self.t0, self.steps0, self.updates0 = time.perf_counter(), steps, updates

    def steps_per_s(self, steps: int) -> float:
        return (steps - self.steps0) / max(time.perf_counter() - self.t0, 1e-9)

    def updates_per_s(self, updates: int) -> float:
        return (updates - self.updates0) / max(time.perf_counter() - self.t0, 1e-9)


def _log_episodes(algo: LdmpcAlgorithm, log: Any, rate: Rate) -> None:
    """One train.csv row per finished episode (at the step it ended), as TD-MPC2 logs."""
    c = algo.counters
    for ep in algo.pop_finished():
        log.log_train(
            ep.step,
            {
                "episode": ep.episode,
                "episode_reward": ep.ret,
                "episode_success": ep.success,
                "steps_per_s": rate.steps_per_s(c.env_steps),
                "updates": c.updates,
                "updates_per_s": rate.updates_per_s(c.updates),
                **({"task": algo.cfg.tasks[ep.task]} if algo.cfg.multitask else {}),
            },
        )


def save(algo: LdmpcAlgorithm, cfg: Config, owed_evals: dict[int, Any] | None = None) -> Any:
    """Replay snapshot first, then the checkpoint: a kill in between loses no episode that the
    checkpoint's counters claim. `owed_evals` (step -> acting weights) are evaluations that were
    still running beside training; a resumed run evaluates them. Returns the checkpoint path
    (None when save_agent=false)."""
    from ldmpc.checkpoint import save_run_checkpoint
    from ldmpc.config import fingerprint

    if not cfg.save_agent:
        return None
    replay_state = algo.replay.snapshot()
    state = {**algo.ldmpc_state(), "replay": replay_state, "owed_evals": owed_evals or {}}
    counters = state.pop("counters")
    return save_run_checkpoint(
        cfg.run_dir, algo.counters.env_steps, state, fingerprint=fingerprint(cfg), counters=counters
    )


def resume(algo: LdmpcAlgorithm, cfg: Config) -> tuple[int, dict[int, Any]]:
    """Restore weights, optimizers, counters and replay from the run's newest checkpoint.

    Returns the step to continue from (0 when the run has no checkpoint yet) and the
    evaluations it owes (step -> acting weights of a snapshot that was still being evaluated).
    """
    from ldmpc.checkpoint import latest_checkpoint, load_checkpoint
    from ldmpc.config import fingerprint

    path = latest_checkpoint(cfg.run_dir)
    if path is None:
        print(f"resume=true: no checkpoint in {cfg.run_dir} yet, starting from step 0")
        algo.replay.restore(None, cfg.run_dir)
        return 0, {}
    ckpt = load_checkpoint(path, expected_fingerprint=fingerprint(cfg))
    if ckpt["payload"].get("offline"):
        raise UserError(
            f"{path} is an offline run's checkpoint (data_dir=): online resume=true would "
            "restart at env step 0; start the online run under another exp_name"
        )
    algo.replay.restore(ckpt["payload"]["replay"], str(path))
    fields = Counters.__dataclass_fields__
    counters = {k: v for k, v in ckpt["counters"].items() if k in fields}
    payload = ckpt["payload"]
    algo.set_ldmpc_state({"agent": payload["agent"], "counters": counters})
    return algo.counters.env_steps, dict(payload.get("owed_evals", {}))
