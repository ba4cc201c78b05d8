"""Benchmark harness pieces that can be checked cheaply."""

from __future__ import annotations

import pytest

from benchmarks.common import KNOWN_SHAPES
from ldmpc.config import load


@pytest.mark.parametrize("task", sorted(KNOWN_SHAPES))
def test_known_shapes_match_the_real_env(task: str, tmp_path) -> None:
    cfg = load([f"task={task}", f"work_dir={tmp_path}"])
    assert (tuple(cfg.obs_shape), cfg.action_dim) == KNOWN_SHAPES[task]


def test_plan_budget_pairs_the_baseline_checkpoint_of_the_same_step(tmp_path, monkeypatch) -> None:
    """`baseline-full` must play the baseline agent trained exactly as long as the proposals one:
    the newest step both runs checkpointed, and no baseline row when they share none."""
    from benchmarks import plan_budget

    runs = {"proposals": tmp_path / "p", "baseline": tmp_path / "b"}
    for name, steps in (("proposals", (25_000, 27_500, 30_000)), ("baseline", (20_000, 27_500))):
        (runs[name] / "checkpoints").mkdir(parents=True)
        for step in steps:
            (runs[name] / "checkpoints" / f"step_{step}.pt").touch()

    def run_dir(args: list[str]):
        exp = next(a.split("=", 1)[1] for a in args if a.startswith("exp_name="))
        return runs[exp.rstrip("0123456789")]

    monkeypatch.setattr(plan_budget, "run_dir", run_dir)
    monkeypatch.delenv("PB_CHECKPOINT", raising=False)
    monkeypatch.delenv("PB_STEP", raising=False)
    ckpt, args, base_ckpt, base_args = plan_budget.checkpoint_and_args()
    assert ckpt == runs["proposals"] / "checkpoints" / "step_27500.pt"
    assert base_ckpt == runs["baseline"] / "checkpoints" / "step_27500.pt"
    assert "proposal=both" in args and "proposal=both" not in base_args
    monkeypatch.setenv("PB_STEP", "30000")
    ckpt, _, base_ckpt, _ = plan_budget.checkpoint_and_args()
    assert ckpt == runs["proposals"] / "checkpoints" / "latest.pt" and base_ckpt is None
