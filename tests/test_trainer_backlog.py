"""The training loop holds at most MAX_EVALS_IN_FLIGHT evaluations beside training."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from ldmpc.config import derive, parse
from ldmpc.trainer import MAX_EVALS_IN_FLIGHT, Trainer


class StarvedEvaluations(Trainer):
    """Instant training steps; evaluations beside them finish only while the loop waits for
    them (as an evaluation actor at nice 19 does when training holds the only core)."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.pending: list[int] = []
        self.most_pending = 0

    def resume(self) -> int:
        return 0

    def evaluate(self, step: int) -> None:
        self.pending.append(step)
        self.most_pending = max(self.most_pending, len(self.pending))

    def landed_evals(self, timeout_s: float) -> list[tuple[int, dict[str, float]]]:
        if timeout_s == 0.0 or not self.pending:
            return []  # starved while training runs
        return [(self.pending.pop(0), {"episode_reward": 1.0})]

    def evals_in_flight(self) -> Collection[int]:
        return self.pending

    def advance(self, until: int) -> int:
        return until

    def save(self, step: int) -> None:
        return None


def test_a_starved_evaluation_backlog_stays_bounded(tmp_path: Path) -> None:
    args = ["task=mw-reach", "steps=2000", "eval_freq=100", f"work_dir={tmp_path}"]
    trainer = StarvedEvaluations(derive(parse(args), (39,), 4))
    result = trainer.run()
    assert trainer.most_pending == MAX_EVALS_IN_FLIGHT
    rows = (Path(trainer.cfg.run_dir) / "eval.csv").read_text().splitlines()[1:]
    assert [int(float(r.split(",")[0])) for r in rows] == list(range(0, 2001, 100))
    assert result.step == 2000 and not trainer.pending
