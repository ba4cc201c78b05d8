"""Sharded replay actors on a real local Ray: stable routing, one batch in EpisodeReplay's
format drawn in proportion to shard sizes (task-balanced across shards when several tasks are
stored), snapshots, a killed shard, checkpoint round trip."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from actors.replay_shard import ReplayShard, ShardedReplay, shard_of
from ldmpc.errors import UserError
from ldmpc.replay import EpisodeReplay

A = 2
OBS = (3,)
H = 3
K = 2


def make_episode(n: int, length: int, task: int | None = None) -> dict:
    """obs row t = (n, t, n*1000+t): a window names its episode and start; task = n % 3 unless
    given."""
    t = np.arange(length + 1, dtype=np.float32)
    obs = np.stack([np.full(length + 1, n, np.float32), t, n * 1000 + t], axis=1)
    term = np.zeros(length, bool)
    term[-1] = n % 2 == 0
    return {
        "obs": obs,
        "action": obs[:length, :2].copy(),
        "reward": n * 1000 + t[:length],
        "terminated": term,
        "task": n % 3 if task is None else task,
    }


def keys_for(shard: int, count: int, start: int = 0, num_shards: int = K) -> list[str]:
    """`count` run-unique keys that route to `shard`."""
    keys, i = [], start
    while len(keys) < count:
        if shard_of(f"k{i}", num_shards) == shard:
            keys.append(f"k{i}")
        i += 1
    return keys


def new_replay(path: Path, **kwargs: object) -> ShardedReplay:
    args = {"capacity": 20_000, "snapshot_every": 0, "seed": 0, **kwargs}
    return ShardedReplay(K, path, horizon=H, obs_shape=OBS, action_dim=A, **args)


def shard_ids(replay: ShardedReplay) -> list[list[int]]:
    import ray

    return ray.get([s.episode_ids.remote() for s in replay.shards])


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray whose files stay in a short temp dir (unix socket paths are limited)."""
    import ray

    temp = tempfile.mkdtemp(prefix="ldr")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", temp)
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
        try:
            yield
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


# ---------------------------------------------------------------------------------- no Ray
def test_routing_is_stable_across_processes_and_even() -> None:
    keys = [*range(3000), *(f"runner-{i}" for i in range(1000))]
    here = [shard_of(k, 4) for k in keys]
    code = (
        "import json, sys; from actors.replay_shard import shard_of; "
        "keys = json.load(sys.stdin); print(json.dumps([shard_of(k, 4) for k in keys]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # another str-hash salt: routing ignores it
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(keys), env=env, capture_output=True,
        text=True, check=True, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert json.loads(out.stdout) == here
    for num in (2, 3, 4):
        counts = np.bincount([shard_of(k, num) for k in keys], minlength=num)
        assert np.abs(counts / len(keys) - 1 / num).max() < 0.03, counts


def plain_shard(path: Path, **kwargs: object) -> ReplayShard:
    return ReplayShard(0, path, 1000, H, OBS, A, **kwargs)


def test_fresh_shard_wipes_a_previous_runs_files(tmp_path: Path) -> None:
    old = plain_shard(tmp_path, snapshot_every=2)
    assert old.add_episodes([make_episode(n, 10) for n in range(3)]) == (30, 3)  # snapshotted
    plain_shard(tmp_path, resume=True)  # a resumed run leaves them for restore()
    assert (tmp_path / "manifest.json").is_file() and list(tmp_path.glob("episodes_*"))
    plain_shard(tmp_path)  # a new run: a later reconstruction must not find them
    on_disk = EpisodeReplay(1000, H, OBS, A)
    on_disk.load(tmp_path)
    assert on_disk.num_episodes == 0 and not list(tmp_path.glob("episodes_*"))


def test_restore_drops_episodes_newer_than_the_checkpoint_on_disk_too(tmp_path: Path) -> None:
    shard = plain_shard(tmp_path)
    shard.add_episodes([make_episode(n, 10) for n in range(3)])
    state = shard.snapshot()
    shard.add_episodes([make_episode(n, 30) for n in range(3, 6)])
    shard.snapshot()  # the snapshot is ahead of the checkpoint (killed in between)
    back = plain_shard(tmp_path, resume=True)
    assert back.restore(state) == (30, 3)
    assert back.episode_ids() == [0, 1, 2] and back.get_state() == shard.get_state() | {
        "next_episode_id": 3
    }
    again = plain_shard(tmp_path, resume=True)
    assert again.load() == (30, 3)  # what a reconstruction would read
    with pytest.raises(UserError, match="missing"):
        plain_shard(tmp_path / "none", resume=True).restore(state)
    assert again.clear() == (0, 0) and plain_shard(tmp_path, resume=True).load() == (0, 0)


# ---------------------------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def uneven(local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """Shard 0 holds 3x the episodes of shard 1, all of one task (the split by shard sizes);
    returns (replay, episode -> (shard, length))."""
    replay = new_replay(tmp_path_factory.mktemp("uneven"))
    rng = np.random.default_rng(0)
    n0, n1 = 30, 10
    keys = keys_for(0, n0) + keys_for(1, n1, start=10_000)
    lengths = [*rng.integers(1, 30, size=n0).tolist(), *rng.integers(1, 12, size=n1).tolist()]
    lengths[0] = 29  # shard 0 serves windows up to 29 steps, shard 1 only up to 11
    replay.add([make_episode(n, T, task=4) for n, T in enumerate(lengths)], keys=keys)
    where = {n: (shard_of(k, K), T) for n, (k, T) in enumerate(zip(keys, lengths))}
    return replay, where


def test_sizes_follow_routing(uneven: tuple) -> None:
    replay, where = uneven
    want = np.zeros((K, 2), np.int64)
    for shard, T in where.values():
        want[shard] += (T, 1)
    assert np.array_equal(replay.shard_sizes, want)
    assert np.array_equal(replay.refresh(), want)  # the cache agrees with the shards
    assert replay.num_transitions == want[:, 0].sum() and replay.num_episodes == len(where)


def test_batch_has_episode_replays_format(uneven: tuple) -> None:
    replay, _ = uneven
    single = EpisodeReplay(1000, H, OBS, A)
    for n in range(5):
        single.add_episode(make_episode(n, 10))
    for device in (None, "cpu"):
        got, want = replay.sample(16, device=device), single.sample(16, device=device)
        assert got.keys() == want.keys()
        for key in want:
            assert type(got[key]) is type(want[key]), key
            assert got[key].shape == want[key].shape and got[key].dtype == want[key].dtype, key
    strided = replay.sample(8, horizon=2, stride=2)
    assert strided["obs"].shape == (3, 8, *OBS)


def test_windows_stay_inside_one_episode(uneven: tuple) -> None:
    replay, where = uneven
    b = replay.sample(512)
    ep, t0 = b["obs"][0, :, 0].astype(int), b["obs"][0, :, 1].astype(int)
    k = np.arange(H + 1)[:, None]
    assert (b["obs"][:, :, 0] == ep).all(), "window crossed an episode boundary"
    assert (b["obs"][:, :, 1] == t0 + k).all()
    assert (t0 + H <= np.array([where[e][1] for e in ep])).all()
    assert (b["action"][:, :, 1] == t0 + k[:-1]).all()
    assert np.array_equal(b["reward"][..., 0], ep * 1000 + t0 + k[:-1])
    assert (b["task"] == 4).all() and (b["span"] == H).all()


def test_sampling_is_proportional_to_shard_sizes(uneven: tuple) -> None:
    replay, where = uneven
    n = 20_000
    ep = replay.sample(n)["obs"][0, :, 0].astype(int)
    from_shard = np.array([where[e][0] for e in ep])
    sizes = replay.shard_sizes[:, 0]
    share = np.bincount(from_shard, minlength=K) / n
    assert np.abs(share - sizes / sizes.sum()).max() < 0.02  # ~6 sigma at n = 20k
    assert (from_shard[: n // 2] == 0).mean() == pytest.approx(share[0], abs=0.03)  # shuffled


# ---------------------------------------------------------------------------------- faults
def test_killed_shard_restarts_from_its_snapshot(local_ray: None, tmp_path: Path) -> None:
    import ray

    replay = new_replay(tmp_path, snapshot_every=4)
    with pytest.raises(ValueError, match="replay is empty"):
        replay.sample(4)
    replay.add([make_episode(n, 12) for n in range(10)], keys=keys_for(0, 5) + keys_for(1, 5))
    saved = replay.snapshot()
    assert [s["next_episode_id"] for s in saved["shards"]] == [5, 5]
    late = keys_for(0, 3, start=10_000)
    for i, key in enumerate(late):  # 3 < snapshot_every: not yet in shard 0's files
        replay.add([make_episode(100 + i, 12)], keys=[key])
    assert replay.shard_sizes[0, 1] == 8

    shard = replay.shards[0]
    before = ray.get(shard.info.remote())
    pending = [shard.sample.remote(64) for _ in range(20)]  # in flight when the process dies
    ray.kill(shard, no_restart=False)
    assert all(b["obs"].shape == (H + 1, 64, *OBS) for b in ray.get(pending))  # retried
    after = ray.get(shard.info.remote())
    assert after["reconstructed"] and after["pid"] != before["pid"]
    assert after["restored_episodes"] == 5
    sizes = replay.refresh()
    assert sizes.tolist() == [[60, 5], [60, 5]]  # nothing below the snapshot; the late 3 lost
    assert replay.sample(32)["obs"].shape == (H + 1, 32, *OBS)

    for i, key in enumerate(keys_for(0, 4, start=20_000)):  # the 4th triggers a snapshot
        replay.add([make_episode(200 + i, 12)], keys=[key])
    ray.kill(shard, no_restart=False)
    assert replay.refresh()[0].tolist() == [9 * 12, 9]


def test_state_round_trip_into_a_new_client(local_ray: None, tmp_path: Path) -> None:
    import ray

    first = new_replay(tmp_path)
    first.add([make_episode(n, 8 + n % 5) for n in range(14)])
    state = first.snapshot()
    json.dumps(state)  # plain python: fits any checkpoint
    ids, sizes = shard_ids(first), first.shard_sizes
    batch = first.sample(32)
    first.add([make_episode(100 + n, 9) for n in range(4)])  # after the checkpoint: dropped
    first.snapshot()
    first.close()

    second = new_replay(tmp_path, resume=True)
    second.restore(state)
    assert shard_ids(second) == ids and np.array_equal(second.shard_sizes, sizes)
    again = second.sample(32)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)  # same contents and RNGs
    second.add([make_episode(200, 9)])
    assert second.state()["episodes_added"] == 15  # routing keys continue, not restart
    ray.kill(second.shards[0], no_restart=False)  # restore rewrote the files: no late episodes
    assert second.refresh()[:, 1].sum() == 15

    with pytest.raises(UserError, match="replay_shards=3"):
        second.restore({**state, "num_shards": 3})
    shutil.rmtree(tmp_path / "shard_1")
    with pytest.raises(UserError, match=r"shard 1: snapshot .* is missing") as err:
        second.restore(state)
    assert "\n" not in str(err.value)  # the shard's own one-line error, not Ray's wrapper
    second.close()


def test_a_shard_without_long_enough_episodes_is_skipped(uneven: tuple) -> None:
    replay, where = uneven
    b = replay.sample(64, horizon=20)  # shard 1 fails its part: the batch is redrawn from 0
    assert {where[e][0] for e in b["obs"][0, :, 0].astype(int)} == {0}
    assert b["obs"].shape == (21, 64, *OBS)
    with pytest.raises(ValueError, match="no stored episode"):
        replay.sample(4, horizon=40)
    with pytest.raises(UserError, match="does not fit in a replay shard of 10000"):
        replay.add([make_episode(99, 10_001)])


def test_tasks_are_balanced_across_shards(local_ray: None, tmp_path: Path) -> None:
    """Issue #9, sharded: task 0 has 30 long episodes all in shard 0, task 1 six short ones in
    both shards, task 2 one 5-step episode in shard 1: each task gets a third of the batch, and
    within a task the shards split in proportion to their windows of it."""
    replay = new_replay(tmp_path)
    eps = [make_episode(n, 100, task=0) for n in range(30)]
    keys = keys_for(0, 30)
    eps += [make_episode(30 + n, 6 + n, task=1) for n in range(6)]  # windows 4..9 -> 39
    keys += keys_for(0, 2, start=1000) + keys_for(1, 4, start=2000)  # shard 0: 4 + 5 = 9 of 39
    eps.append(make_episode(36, 5, task=2))
    keys += keys_for(1, 1, start=3000)
    replay.add(eps, keys=keys)
    n = 12_000
    b = replay.sample(n)
    share = np.bincount(b["task"], minlength=3) / n
    print(f"task shares across 2 shards: {np.round(share, 4).tolist()}")
    assert np.abs(share - 1 / 3).max() < 0.02  # ~5 sigma
    ep = b["obs"][0, :, 0].astype(int)
    assert np.array_equal(b["task"], np.select([ep < 30, ep < 36], [0, 1], 2))
    one = ep[b["task"] == 1]
    assert np.mean(one < 32) == pytest.approx(9 / 39, abs=0.03)  # shard 0's share of task 1
    assert (b["obs"][0, :, 0] == b["obs"][-1, :, 0]).all()
    longer = replay.sample(3000, horizon=6)  # task 2 has no 6-step window: two tasks remain
    share = np.bincount(longer["task"], minlength=3) / 3000
    assert share[2] == 0 and np.abs(share[:2] - 1 / 2).max() < 0.05
    replay.close()
