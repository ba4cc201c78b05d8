"""The distributed topology of issue 6 on a real local Ray: 2 env runners x 2 envs, 2 replay
shards, 2 DDP learners (gloo). Fault drills: a killed runner is replaced, a killed shard comes
back from its Arrow files without losing an episode, and a checkpoint restores identical
weights and replay in a new process.

mw-reach: 100-step episodes, so four envs finish episodes within a few hundred steps.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ray_temp import ray_temp_env

from ldmpc.config import load

DISTRIBUTED = [
    "task=mw-reach", "model_size=1", "batch_size=16", "num_samples=32", "iterations=1",
    "num_elites=4", "num_pi_trajs=4", "progress=false", "torch_threads=1", "checkpoint_freq=0",
    "seed_steps=200", "eval_episodes=1", "eval_freq=100000",
    "num_env_runners=2", "num_envs=2", "num_cpus_per_env_runner=0.5",
    "num_learners=2", "num_cpus_per_learner=0.5",
    "replay_shards=2", "replay_snapshot_every=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def ray_env() -> Iterator[dict[str, str]]:
    """A local Ray for this module; its temp dir is short (unix socket paths are limited)."""
    import ray

    from actors.ray_init import init_ray

    with ray_temp_env() as env, pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        assert init_ray(load([*DISTRIBUTED, f"work_dir={env['RAY_TMPDIR']}"]))
        try:
            yield env
        finally:
            ray.shutdown()


def weights_digest(agent_state: dict[str, Any]) -> str:
    """SHA-256 over the world model's tensors: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(agent_state["model"].items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _learner_digests(algo: Any) -> list[str]:
    from ray.rllib.core import DEFAULT_MODULE_ID

    states = algo.learner_group.foreach_learner(lambda lrn: lrn.agent_state(DEFAULT_MODULE_ID))
    return [weights_digest(r.get()) for r in states]


def _train_until(algo: Any, sizes: list[int], done: Any, limit_s: float = 300) -> None:
    """algo.train() until done(algo); records the replay size (asked from the shards)."""
    deadline = time.monotonic() + limit_s
    while not done(algo):
        assert time.monotonic() < deadline, f"no progress: {algo.counters}"
        algo.train()
        sizes.append(int(algo.replay.refresh()[:, 0].sum()))


@pytest.mark.heavy
def test_distributed_run_survives_runner_and_shard_kills(
    ray_env: dict[str, str], tmp_path: Path
) -> None:
    import ray

    from actors.algorithm import build_algorithm
    from actors.online import save

    # a quarter update per env step: the faults are in sampling and replay, and DDP's check
    # needs updates, not many of them (200 pretraining updates come first)
    run = [*DISTRIBUTED, f"work_dir={tmp_path}", "steps=100000", "utd_ratio=0.25"]
    cfg = load(run)
    algo = build_algorithm(cfg)
    sizes: list[int] = []
    try:
        _train_until(algo, sizes, lambda a: a.counters.updates >= 220)
        assert algo.counters.env_steps % 4 == 0  # one vector step = 2 runners x 2 envs
        # DDP: both learners hold bit-identical weights after every update.
        first, second = _learner_digests(algo)
        assert first == second

        # Runner kill: RLlib replaces it and sampling continues on both.
        group = algo.env_runner_group
        victim = group._worker_manager._actors[group.healthy_worker_ids()[0]]
        ray.kill(victim, no_restart=False)  # a crash: Ray restarts the actor, RLlib re-syncs it
        steps = algo.counters.env_steps
        _train_until(algo, sizes, lambda a: a.counters.env_steps >= steps + 200)
        assert group.num_healthy_remote_workers() == 2
        assert group.num_remote_worker_restarts() >= 1

        # Shard kill: Ray restarts it and it reloads its snapshot (one per added batch here).
        held = sizes[-1]
        ray.kill(algo.replay.shards[0], no_restart=False)
        steps = algo.counters.env_steps
        _train_until(algo, sizes, lambda a: a.counters.env_steps >= steps + 200)
        info = ray.get(algo.replay.shards[0].info.remote())
        assert info["reconstructed"] and info["restored_episodes"] > 0
        assert sizes[-1] > held
        assert sizes == sorted(sizes), sizes  # the replay never shrank
        assert _learner_digests(algo)[0] == _learner_digests(algo)[1]

        algo.store_open_episodes()
        save(algo, cfg)
        expected = {
            "weights": weights_digest(algo.agent_weights()),
            "replay_transitions": algo.replay.num_transitions,
            "env_steps": algo.counters.env_steps,
        }
    finally:
        algo.stop()
    assert expected["replay_transitions"] == expected["env_steps"]  # nothing lost, nothing twice

    # A new process resumes the checkpoint: identical weights on both learners, same replay.
    script = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from ldmpc.mujoco_gl import configure_mujoco_gl; configure_mujoco_gl(); "
        "from ldmpc.config import load; from actors.ray_init import init_ray; "
        "from actors.algorithm import build_algorithm; from actors.online import resume; "
        "from test_distributed import _learner_digests; "
        "cfg = load(json.loads(sys.argv[1])); init_ray(cfg); algo = build_algorithm(cfg); "
        "resume(algo, cfg); "
        "print(json.dumps({'weights': _learner_digests(algo), "
        "'replay_transitions': algo.replay.num_transitions, "
        "'env_steps': algo.counters.env_steps})); algo.stop()"
    )
    args = [*run, "resume=true"]
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(args)],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, **ray_env},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    restored = json.loads(proc.stdout.strip().splitlines()[-1])
    assert restored["weights"] == [expected["weights"]] * 2
    assert restored["replay_transitions"] == expected["replay_transitions"]
    assert restored["env_steps"] == expected["env_steps"]


def test_weights_digest_sees_one_changed_value() -> None:
    state = {"model": {"a": torch.zeros(3), "b": torch.ones(2)}}
    changed = {"model": {"a": torch.tensor([0.0, 0.0, 1e-7]), "b": torch.ones(2)}}
    assert weights_digest(state) != weights_digest(changed)


def _cli(tmp_path: Path, ray_env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ldmpc.cli", "train", *DISTRIBUTED, f"work_dir={tmp_path}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **ray_env},
    )  # fmt: skip


def _train_rows(tmp_path: Path) -> list[dict[str, str]]:
    path = next(tmp_path.rglob("train.csv"), None)
    return list(csv.DictReader(path.open())) if path else []


@pytest.mark.heavy
def test_async_run_survives_sigterm_and_resumes(ray_env: dict[str, str], tmp_path: Path) -> None:
    """Driver SIGTERM mid-run writes a checkpoint; resume=true continues the curve. In async
    mode the updates keep pace with the env steps (utd_ratio=1, backlog <= max_update_lag)."""
    import signal

    from ldmpc.checkpoint import latest_checkpoint, load_checkpoint

    proc = _cli(tmp_path, ray_env, "steps=100000", "async=true", "max_update_lag=32")
    try:
        deadline = time.monotonic() + 400
        # 8 rows: each of the 4 envs ended two 100-step episodes. Nothing is learned before
        # the first 4 end (step 400: no whole episode in replay); the catch-up of the owed
        # updates then runs before the runners may sample again.
        while len(_train_rows(tmp_path)) < 8:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no episodes logged"
            time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # a failed wait must not leave the run (and its Ray) behind
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM: checkpoint" in out + err
    caught_up = [r for r in _train_rows(tmp_path) if int(r["step"]) > 600]  # second episodes
    assert caught_up, "no episode ended after the catch-up"
    for row in caught_up:  # while running, the backlog stayed within max_update_lag
        assert int(row["updates"]) >= int(row["step"]) - 32 - 4, row
    run_dir = next(tmp_path.rglob("train.csv")).parent
    counters = load_checkpoint(latest_checkpoint(str(run_dir)))["counters"]
    stopped = int(counters["env_steps"])
    due = 200 + (stopped - 200)  # seed_steps pretraining + utd_ratio=1 per step since
    assert due - 32 - 4 <= counters["updates"] + counters["owed_updates"] <= due + 4
    assert counters["updates"] >= due - 32 - 4  # the stop came after the catch-up

    # 400 more steps: each of the 4 envs finishes one fresh 100-step episode
    resumed = _cli(tmp_path, ray_env, f"steps={stopped + 400}", "async=true", "resume=true")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "DeprecationWarning" not in err, err[-3000:]
    evals = list(csv.DictReader(next(tmp_path.rglob("eval.csv")).open()))
    assert [r["step"] for r in evals] == ["0"]  # evaluated on the remote runners at the start
    steps = [int(r["step"]) for r in _train_rows(tmp_path)]
    assert steps == sorted(steps) and steps[-1] > stopped  # the curve continues, no restart
    final = load_checkpoint(latest_checkpoint(str(run_dir)))["counters"]
    assert final["env_steps"] >= stopped + 400 and final["updates"] > counters["updates"]


@pytest.mark.heavy
def test_async_weights_reach_the_runner_without_a_copy_per_update(
    ray_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Async hand-over: nothing is copied into the object store while the runner still loads
    the last weights (the next round retries), `force` sends anyway, and the runner does act
    with learned weights."""
    from actors.algorithm import build_algorithm

    run = [*DISTRIBUTED, f"work_dir={tmp_path}", "steps=100000", "async=true"]
    run += ["num_env_runners=1", "num_learners=0", "replay_shards=0"]
    algo = build_algorithm(load(run))
    copies = []
    real_weights = algo._module_weights
    monkeypatch.setattr(algo, "_module_weights", lambda: copies.append(1) or real_weights())
    try:
        deadline = time.monotonic() + 300
        while algo.counters.updates < 300 or algo._acted_version == 0:
            assert time.monotonic() < deadline, f"no progress: {algo.counters}"
            algo.train()
        assert 0 < len(copies) <= algo.counters.updates
        monkeypatch.setattr(algo, "_runners_busy_loading", lambda: True)
        copies.clear()
        synced = algo._synced_version
        algo._weights_version += 1
        algo._sync_weights()
        assert not copies and algo._synced_version == synced  # owed, retried next round
        algo._sync_weights(force=True)
        assert copies and algo._synced_version == algo._weights_version
    finally:
        algo.stop()
