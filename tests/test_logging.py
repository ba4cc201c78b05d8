"""Run logging: CSV rows, curve PNG, and the resume cut that keeps the curve continuous."""

from __future__ import annotations

import dataclasses
import os

from ldmpc import config
from ldmpc.logging import RunLogger


def _cfg(tmp_path) -> config.Config:
    """A real run config (cartpole-swingup shapes) whose run directory is under tmp_path."""
    overrides = [f"work_dir={tmp_path}", "steps=100", "progress=false"]
    return config.derive(config.parse(overrides), (5,), 1)


def test_eval_rows_and_curve_png(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    log = RunLogger(cfg)
    for step in (10, 20, 30):
        log.log_train(step, {"episode": step // 10, "episode_reward": float(step)})
        log.log_eval(step, {"episode_reward": step * 2.0, "episode_reward_std": 1.0})
    log.close()
    rows = log.eval_csv.rows()
    assert [int(r["step"]) for r in rows] == [10, 20, 30]
    png = os.path.join(cfg.run_dir, "curve.png")
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_resume_cuts_rows_after_checkpoint_step(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    log = RunLogger(cfg)
    for step in (10, 20, 30):
        log.log_eval(step, {"episode_reward": 1.0})
        log.log_train(step, {"episode_reward": 1.0})
    log.close()
    resumed = RunLogger(cfg, start_step=20, resumed=True)
    assert [int(r["step"]) for r in resumed.eval_csv.rows()] == [10, 20]
    resumed.log_eval(30, {"episode_reward": 5.0})
    assert [int(r["step"]) for r in resumed.eval_csv.rows()] == [10, 20, 30]
    assert [int(r["step"]) for r in resumed.train_csv.rows()] == [10, 20]


def test_elapsed_time_continues_after_resume(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    log = RunLogger(cfg)
    log.start_time -= 100.0  # as if the first process ran for 100 s
    log.log_eval(10, {"episode_reward": 1.0})
    log.close()
    resumed = RunLogger(cfg, start_step=10, resumed=True)
    assert resumed.elapsed >= 100.0
    resumed.log_eval(20, {"episode_reward": 1.0})
    assert float(resumed.eval_csv.rows()[-1]["elapsed_s"]) >= 100.0


def test_multitask_columns_and_curve(tmp_path) -> None:
    cfg = dataclasses.replace(_cfg(tmp_path), multitask=True, metric="score", tasks=["a-b", "c-d"])
    log = RunLogger(cfg)
    for step in (10, 20):
        log.log_eval(step, {"episode_reward": 1.0, "episode_score": 3.0, "score/a-b": 2.0,
                            "score/c-d": 4.0})  # fmt: skip
    log.log_train(10, {"episode_reward": 1.0, "task": "c-d"})
    assert log.last_eval == 3.0
    assert float(log.eval_csv.rows()[-1]["score/c-d"]) == 4.0
    assert log.train_csv.rows()[-1]["task"] == "c-d"
    assert os.path.getsize(os.path.join(cfg.run_dir, "curve.png")) > 0


def test_a_resume_owes_only_the_eval_missing_at_its_step(tmp_path) -> None:
    from ldmpc.cadence import eval_cadence

    cfg = _cfg(tmp_path)
    log = RunLogger(cfg)
    log.log_eval(0, {"episode_reward": 1.0})
    log.close()
    resumed = RunLogger(cfg, start_step=50, resumed=True)  # stopped before its eval at 50
    assert resumed.missing_eval_at(50) and not resumed.missing_eval_at(0)
    since = resumed.missing_eval_since
    assert eval_cadence(50, 50, since).due(50)  # the owed eval runs first
    fresh = eval_cadence(50, 0, since)
    assert fresh.due(0) and not fresh.due(49) and fresh.due(50)  # step 0 first, as TD-MPC2
    # a stop at 52 (a vector step past 50) before or during the eval of 50: owed at 52
    assert eval_cadence(50, 52, since).due(52)
    resumed.log_eval(52, {"episode_reward": 2.0})  # that eval, logged at the step it ran
    off_grid = eval_cadence(50, 75, since)  # a SIGTERM checkpoint at 75, after it
    assert not off_grid.due(75) and off_grid.due(100)
    assert not eval_cadence(50, 52, since).due(52)  # logged: not owed again
    assert not eval_cadence(0, 50, since).due(50)  # eval_freq=0: never
    resumed.close()
