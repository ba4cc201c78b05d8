"""Benchmark harness pieces that can be checked cheaply."""

from __future__ import annotations

import pytest

from benchmarks.common import KNOWN_SHAPES
from ldmpc.config import load


@pytest.mark.parametrize("task", sorted(KNOWN_SHAPES))
def test_known_shapes_match_the_real_env(task: str, tmp_path) -> None:
    cfg = load([f"task={task}", f"work_dir={tmp_path}"])
    assert (tuple(cfg.obs_shape), cfg.action_dim) == KNOWN_SHAPES[task]
