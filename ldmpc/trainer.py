"""The one training loop: evaluation cadence, checkpoints, resume and SIGINT/SIGTERM.

`ldmpc train` has two ways to make progress: online (`actors.online.OnlineTrainer`: env steps
on RLlib env runners, updates on the learner) and offline (`ldmpc.offline.OfflineTrainer`:
updates on a dataset). Both are a `Trainer`: they say how to resume, advance, evaluate and save,
and this loop says when. So evaluations land at exact multiples of `eval_freq` (TD-MPC2's grid,
one owed by an earlier stop first), checkpoints at multiples of `checkpoint_freq` and at the end,
and a stop writes the last checkpoint and says how to continue, the same way in both modes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldmpc.cadence import Every, eval_cadence
from ldmpc.checkpoint import StopRequestedError, graceful_exit, latest_checkpoint
from ldmpc.errors import RunInterrupted, UserError
from ldmpc.logging import RunLogger

EVAL_POLL_S = 0.5  # how long one wait for a landing evaluation lasts (a signal is seen between)
MAX_EVALS_IN_FLIGHT = 2  # evaluations beside training that may be pending before training waits

if TYPE_CHECKING:
    from ldmpc.config import Config


@dataclass
class LoopResult:
    """Where a run ended: its step, the last evaluation, whether a signal stopped it and the
    last checkpoint written (None with save_agent=false)."""

    step: int
    last_eval: dict[str, float] | None
    interrupted: bool
    checkpoint: Path | None


class Trainer(ABC):
    """A run's progress: `run()` is the loop; subclasses say how each part is done."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.log: RunLogger | None = None

    # ------------------------------------------------------------------ what a mode provides
    @abstractmethod
    def resume(self) -> int:
        """Restore the run's newest checkpoint; the step to continue from (0 without one)."""

    def initialize(self) -> str:
        """`init_from=`: load the start weights into every copy of the model (learners, acting
        runners); returns the line saying what was loaded (`ldmpc.init_from`)."""
        raise UserError(f"init_from= is not supported by {type(self).__name__}")

    @abstractmethod
    def evaluate(self, step: int) -> dict[str, float] | None:
        """Evaluate the current agent (TD-MPC2's protocol) at `step`: the result, or None when
        the evaluation runs beside training and lands later (`landed_evals`)."""

    @abstractmethod
    def advance(self, until: int) -> int:
        """Make some progress without passing step `until`; return the step reached. One call
        is a short unit of work, so a signal is answered between calls; a call that raises
        StopRequestedError (a stop abandoned a compilation, `ldmpc.compile`) made no step."""

    @abstractmethod
    def save(self, step: int) -> Path | None:
        """Write a checkpoint at `step` (None when checkpoints are off)."""

    def started(self, start: int) -> None:
        """After resume, once `self.log` exists."""
        return None  # optional hook

    def owes_work(self) -> bool:
        """Work that must be done before an evaluation, a checkpoint or the end (online: the
        updates owed for the steps taken, as TD-MPC2 pays them before it evaluates)."""
        return False

    def do_owed_work(self) -> int:
        """One unit of the owed work; the step reached (samples may still arrive meanwhile)."""
        raise NotImplementedError("a Trainer that owes work says how to do it")

    def landed_evals(self, timeout_s: float) -> list[tuple[int, dict[str, float]]]:
        """Evaluations started beside training that have finished, oldest first (waiting up to
        timeout_s for one)."""
        return []  # optional hook: evaluations that return their result at once

    def evals_in_flight(self) -> Collection[int]:
        """The steps of evaluations started beside training that have not landed yet."""
        return ()

    def evaluated(self, step: int, result: dict[str, float]) -> None:
        """After each evaluation is logged (Ray Tune reports from here)."""
        return None  # optional hook

    def finish(self, step: int) -> None:
        """Before the last checkpoint (online: store the running episodes)."""
        return None  # optional hook

    # ------------------------------------------------------------------ the loop
    def run(self) -> LoopResult:
        cfg = self.cfg
        resumed = cfg.resume and latest_checkpoint(cfg.run_dir) is not None
        start = self.resume() if cfg.resume else 0
        if cfg.init_from and not resumed:  # a new run (a resumed one has its own weights)
            print(f"ldmpc: {self.initialize()}", flush=True)
        log = self.log = RunLogger(cfg, start_step=start, resumed=start > 0)
        self.last_eval: dict[str, float] | None = None
        self.started(start)  # may restart evaluations a stop left in flight
        evals = eval_cadence(
            cfg.eval_freq,
            start,
            lambda s: log.missing_eval_since(s) and all(f < s for f in self.evals_in_flight()),
        )
        checkpoints = Every(cfg.checkpoint_freq, start, fire_at_start=False)
        step, path = start, None
        saved = (start, latest_checkpoint(cfg.run_dir)) if resumed else None
        try:
            with graceful_exit() as stop:  # the set-up's, when it installed one
                while True:
                    self._record(self.landed_evals(0.0))
                    if not stop.requested and self.owes_work():
                        step = self.do_owed_work()
                        continue
                    if not stop.requested and evals.due(step):  # (due() moves the cadence on)
                        self._wait_for_eval_backlog(stop)
                        try:
                            result = self.evaluate(step)
                        except StopRequestedError:  # owed: redone on resume at this same step
                            result = None
                        if result is not None:
                            self._record([(step, result)])
                    if step >= cfg.steps or stop.requested:
                        break
                    try:
                        step = self.advance(min(cfg.steps, evals.next_at, checkpoints.next_at))
                    except StopRequestedError:  # a compilation cut short: no step made
                        continue
                    if checkpoints.due(step) and step < cfg.steps:  # the last one: below
                        written = self.save(step)
                        saved = (step, written) if written is not None else saved
                while self.evals_in_flight() and not stop.requested:  # the last ones, if any
                    self._record(self.landed_evals(EVAL_POLL_S))
            self.finish(step)
            path = self.save(step)  # evaluations still in flight are owed in it
            saved = (step, path) if path is not None else saved
            if stop.requested:
                log.write(
                    f"{stop.signal_name}: checkpoint {path} written; continue with resume=true"
                )
        except KeyboardInterrupt as err:  # a second Ctrl-C: out now, no final checkpoint
            raise RunInterrupted(_unsaved(step, saved)) from err
        finally:
            log.close()
        return LoopResult(step, self.last_eval, stop.requested, path)

    def _wait_for_eval_backlog(self, stop: Any) -> None:
        """Evaluations beside training that fall behind (their actor starved of CPU, e.g. a
        run pinned to one core) make training wait: at most MAX_EVALS_IN_FLIGHT snapshots are
        held, instead of a backlog that grows with the run (and with every checkpoint)."""
        while len(self.evals_in_flight()) >= MAX_EVALS_IN_FLIGHT and not stop.requested:
            self._record(self.landed_evals(EVAL_POLL_S))

    def _record(self, results: list[tuple[int, dict[str, float]]]) -> None:
        """Log finished evaluations (and run the `evaluated` hook), oldest first."""
        for step, result in results:
            self.log.log_eval(step, result)
            self.evaluated(step, result)
            self.last_eval = result


def _unsaved(step: int, saved: tuple[int, Any] | None) -> str:
    """What a run stopped without its final checkpoint keeps, in one line."""
    if saved is None:
        return f"at step {step} without a checkpoint: nothing of this run is saved"
    at, path = saved
    if at == step:
        return f"at step {step}; its checkpoint {path} is saved"
    return (
        f"at step {step} without a final checkpoint: steps {at}-{step} are not saved "
        f"(resume=true continues from {path}, step {at})"
    )
