"""EpisodeReplay: episode-local windows, uniform starts (also for the short head of a long
multi-scale window), task balance, FIFO eviction, builder, snapshots."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ldmpc import replay_snapshot
from ldmpc.errors import UserError
from ldmpc.replay import EpisodeReplay

A = 2


def make_episode(ep: int, length: int, terminal: bool = False, task: int | None = None) -> dict:
    """obs row t = (ep, t, ep*1000+t); action t = (ep, t); reward t = ep*1000+t; task = ep % 3
    unless given."""
    T = length
    t = np.arange(T + 1, dtype=np.float32)
    obs = np.stack([np.full(T + 1, ep, np.float32), t, ep * 1000 + t], axis=1)
    term = np.zeros(T, bool)
    term[-1] = terminal
    return {
        "obs": obs,
        "action": obs[:T, :2].copy(),
        "reward": ep * 1000 + t[:T],
        "terminated": term,
        "task": ep % 3 if task is None else task,
    }


def filled(
    capacity: int,
    lengths: list[int],
    horizon: int = 3,
    seed: int = 0,
    task: int | None = None,
    min_horizon: int | None = None,
) -> EpisodeReplay:
    rb = EpisodeReplay(capacity, horizon, (3,), A, seed=seed, min_horizon=min_horizon)
    for i, T in enumerate(lengths):
        assert rb.add_episode(make_episode(i, T, terminal=i % 2 == 0, task=task)) == i
    return rb


def assert_same_episodes(a: EpisodeReplay, b: EpisodeReplay) -> None:
    assert (a.num_episodes, a.num_transitions) == (b.num_episodes, b.num_transitions)
    for ea, eb in zip(a.episodes(), b.episodes(), strict=True):
        assert ea.keys() == eb.keys()
        for key in ea:
            va, vb = np.asarray(ea[key]), np.asarray(eb[key])
            assert va.dtype == vb.dtype and va.shape == vb.shape, key
            assert va.tobytes() == vb.tobytes(), key  # bit-exact (NaN payloads, -0.0)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_windows_stay_inside_one_episode(stride: int) -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, size=300).tolist()
    rb = filled(2000, lengths)
    live = dict(zip(rb.episode_ids.tolist(), [e["action"].shape[0] for e in rb.episodes()]))
    H = 3
    for _ in range(20):
        b = rb.sample(64, stride=stride)
        assert b["obs"].shape == (H + 1, 64, 3) and b["action"].shape == (H, 64, A)
        assert b["reward"].shape == b["terminated"].shape == (H, 64, 1)
        ep = b["obs"][0, :, 0].astype(int)
        t0 = b["obs"][0, :, 1].astype(int)
        k = np.arange(H + 1)[:, None]
        assert (b["obs"][:, :, 0] == ep).all(), "window crossed an episode boundary"
        assert (b["obs"][:, :, 1] == t0 + k * stride).all()
        T = np.array([live[e] for e in ep])
        assert (t0 + H * stride <= T).all() and all(e in live for e in ep)
        assert (b["action"][:, :, 1] == t0 + k[:-1] * stride).all()  # first action of a segment
        seg_t = t0[None, :, None] + k[:-1, :, None] * stride + np.arange(stride)  # [H, B, s]
        assert np.array_equal(b["reward"][..., 0], (ep[None, :, None] * 1000 + seg_t).sum(-1))
        ends = (seg_t == (T - 1)[None, :, None]).any(-1) & (ep % 2 == 0)
        assert np.array_equal(b["terminated"][..., 0], ends.astype(np.float32))
        assert np.array_equal(b["task"], ep % 3)


def test_start_positions_are_uniform_and_short_episodes_skipped() -> None:
    rb = filled(1000, [3, 5, 2, 10], horizon=3, task=0)  # valid starts 1 + 3 + 0 + 8 = 12
    n = 60_000
    b = rb.sample(n)
    ep, t0 = b["obs"][0, :, 0].astype(int), b["obs"][0, :, 1].astype(int)
    assert 2 not in set(ep.tolist())
    _, counts = np.unique(ep * 100 + t0, return_counts=True)
    assert len(counts) == 12
    assert np.abs(counts / n - 1 / 12).max() < 0.01  # ~5 sigma at p = 1/12
    assert rb.window_counts() == {0: 12}


def test_single_task_draws_are_the_plain_uniform_draw() -> None:
    """One task: the same RNG calls as before tasks were balanced (bit-identical batches)."""
    rb = filled(1000, [7, 12, 30, 4], task=5, seed=3)
    rng = np.random.default_rng(3)
    u = rng.integers(0, 5 + 10 + 28 + 2, size=64)
    cum = np.array([0, 5, 15, 43, 45])
    k = np.searchsorted(cum, u, side="right") - 1
    b = rb.sample(64)
    assert np.array_equal(b["obs"][0, :, 0], k) and np.array_equal(b["obs"][0, :, 1], u - cum[k])


def test_multiscale_window_starts_cover_the_whole_episode() -> None:
    """Issue #7: a W = 12-step window whose head H = 3 feeds the TD-MPC2 losses draws every start
    with >= 3 steps left (not only those with 12), pads the tail, and `span` counts real steps."""
    H, W, T = 3, 12, 20
    rb = filled(1000, [T, 5, 2], horizon=W, min_horizon=H, task=0)
    n = 40_000
    b = rb.sample(n)
    ep, t0 = b["obs"][0, :, 0].astype(int), b["obs"][0, :, 1].astype(int)
    starts = {(0, t) for t in range(T - H + 1)} | {(1, t) for t in range(5 - H + 1)}
    keys, counts = np.unique(ep * 100 + t0, return_counts=True)
    assert set(keys.tolist()) == {e * 100 + t for e, t in starts}  # episode 2 (2 steps) skipped
    assert np.abs(counts / n - 1 / len(starts)).max() < 0.008  # ~5 sigma at p = 1/21
    late = (ep == 0) & (t0 > T - W)
    print(f"starts in the last W-H steps of episode 0: {late.mean():.3f} of the batch")
    assert late.mean() == pytest.approx(9 / 21, abs=0.01)  # never drawn before the fix
    length = np.where(ep == 0, T, 5)
    assert np.array_equal(b["span"], np.minimum(length - t0, W))
    k = np.arange(W + 1)[:, None]
    real = k <= b["span"]  # [W+1, B]: obs o_t .. o_{t+span} are real, then the last repeats
    assert (b["obs"][:, :, 0] == ep).all(), "window crossed an episode boundary"
    assert np.array_equal(b["obs"][:, :, 1], np.where(real, t0 + k, length))
    act_real = real[1:]  # action k is real for k < span
    assert np.array_equal(b["action"][:, :, 1], np.where(act_real, t0 + k[:-1], 0))
    assert np.array_equal(b["reward"][..., 0], np.where(act_real, ep * 1000 + t0 + k[:-1], 0))
    terminal = (t0 + k[:-1] == length - 1) & (ep % 2 == 0)
    assert np.array_equal(b["terminated"][..., 0], terminal.astype(np.float32))
    full = rb.sample(1000, horizon=W)  # an explicit horizon: whole windows only, as before
    assert (full["obs"][0, :, 0] == 0).all() and (full["span"] == W).all()
    assert set(full["obs"][0, :, 1].astype(int).tolist()) == set(range(T - W + 1))


def test_padded_windows_with_stride_sum_only_real_rewards() -> None:
    rb = EpisodeReplay(1000, 4, (3,), A, seed=0, min_horizon=2)
    rb.add_episode(make_episode(1, 9, task=0))
    b = rb.sample(2000, stride=2)
    t0, span = b["obs"][0, :, 1].astype(int), b["span"]
    assert set(t0.tolist()) == set(range(9 - 4 + 1)) and np.array_equal(span, np.minimum(9 - t0, 8))
    steps = t0[None, :, None] + 2 * np.arange(4)[:, None, None] + np.arange(2)  # [H, B, s]
    want = np.where(steps < 9, 1000 + steps, 0).sum(-1)
    assert np.array_equal(b["reward"][..., 0], want)
    assert (b["obs"][:, :, 1] <= 9).all()


def test_tasks_are_balanced_whatever_their_episode_counts_and_lengths() -> None:
    """Issue #9: task 0 holds 40 long episodes, task 1 three short ones, task 2 one that just
    fits, task 3 only episodes too short for a window: each valid task gets a third of the
    batch, and windows stay uniform within a task."""
    rb = EpisodeReplay(100_000, 3, (3,), A, seed=1)
    i = 0
    for task, lengths in [(0, [200] * 40), (1, [5, 6, 7]), (2, [3]), (3, [2, 1])]:
        for T in lengths:
            rb.add_episode(make_episode(i, T, task=task))
            i += 1
    assert rb.window_counts() == {0: 40 * 198, 1: 3 + 4 + 5, 2: 1}
    n = 30_000
    b = rb.sample(n)
    share = np.bincount(b["task"], minlength=4) / n
    print(f"task shares: {np.round(share, 4).tolist()}")
    assert share[3] == 0 and np.abs(share[:3] - 1 / 3).max() < 0.015  # ~5.5 sigma
    ep, t0 = b["obs"][0, :, 0].astype(int), b["obs"][0, :, 1].astype(int)
    one = b["task"] == 1
    _, counts = np.unique(ep[one] * 100 + t0[one], return_counts=True)
    assert len(counts) == 12 and np.abs(counts / one.sum() - 1 / 12).max() < 0.02
    assert np.array_equal(b["task"], np.select([ep < 40, ep < 43], [0, 1], 2))
    picked = rb.sample(6, tasks=[2, 1, 1, 0, 2, 2])  # the sharded client's per-item tasks
    assert picked["task"].tolist() == [2, 1, 1, 0, 2, 2]
    with pytest.raises(ValueError, match=r"no stored window of task\(s\) \[3, 9\]"):
        rb.sample(3, tasks=[3, 0, 9])


def test_longer_horizon_than_any_episode_raises() -> None:
    rb = filled(100, [2, 3])
    with pytest.raises(ValueError, match="no stored episode"):
        rb.sample(4, horizon=5)


def test_torch_output_and_rng_state() -> None:
    rb = filled(500, [20] * 10)
    state = rb.get_state()
    a = rb.sample(8, device="cpu")
    assert isinstance(a["obs"], torch.Tensor) and a["task"].dtype == torch.int64
    rb.set_state(state)
    b = rb.sample(8, device="cpu")
    assert all(torch.equal(a[k], b[k]) for k in a)
    json.dumps(state)  # plain python: checkpointable


def test_fifo_eviction_keeps_capacity_and_drops_oldest() -> None:
    rb = filled(100, [30, 30, 30])
    rb.add_episode(make_episode(3, 30))
    assert rb.episode_ids.tolist() == [1, 2, 3] and rb.num_transitions == 90
    with pytest.raises(UserError, match="smaller than one episode"):
        rb.add_episode(make_episode(9, 101))


def test_ring_wraps_and_grows_without_corrupting_episodes() -> None:
    """Random lengths force wraps, gaps and reallocations; every live episode must stay intact."""
    rng = np.random.default_rng(1)
    cap = 500
    rb = EpisodeReplay(cap, 3, (3,), A, seed=0)
    lengths: dict[int, int] = {}
    for i in range(400):
        T = int(rng.integers(1, 120)) if i % 50 else 1
        lengths[rb.add_episode(make_episode(i, T))] = T
        ids = rb.episode_ids.tolist()
        assert ids == list(range(ids[0], i + 1)), "not FIFO"
        assert rb.num_transitions == sum(lengths[j] for j in ids) <= cap
        if ids[0] > 0:  # maximal: the last evicted episode would not have fitted
            assert rb.num_transitions + lengths[ids[0] - 1] > cap
        if i % 20 == 0:
            for e in rb.episodes():
                ref = make_episode(e["id"], lengths[e["id"]])
                assert np.array_equal(e["obs"], ref["obs"])
                assert np.array_equal(e["reward"], ref["reward"])
    assert rb._rows < 4 * cap  # the ring does not grow without bound


# --------------------------------------------------------------------------- persistence
def chunk_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.glob("episodes_*.arrow"))


def test_save_load_round_trip_bit_exact_with_incremental_saves(tmp_path: Path) -> None:
    rb = filled(300, [40] * 5)
    weird = make_episode(5, 40)
    weird["obs"][3] = [np.nan, -0.0, np.inf]
    weird["obs"][4, 0] = np.frombuffer(np.uint32(0x7FC00123).tobytes(), np.float32)[0]
    rb.add_episode(weird)
    rb.save(tmp_path)
    first = chunk_files(tmp_path)
    mtimes = {n: (tmp_path / n).stat().st_mtime_ns for n in first}
    for i in range(6, 9):  # evicts episodes 0..2 but the first chunk still holds 3..5
        rb.add_episode(make_episode(i, 40))
    rb.save(tmp_path)
    second = chunk_files(tmp_path)
    assert set(first) < set(second) and len(second) == len(first) + 1
    assert all((tmp_path / n).stat().st_mtime_ns == mtimes[n] for n in first)  # not rewritten
    for i in range(9, 16):  # evicts everything of the first chunk
        rb.add_episode(make_episode(i, 40))
    rb.save(tmp_path)
    assert not set(first) & set(chunk_files(tmp_path)), "dead chunk kept after new manifest"

    back = EpisodeReplay(300, 3, (3,), A, seed=7)
    back.load(tmp_path)
    assert_same_episodes(rb, back)
    assert back.episode_ids.tolist() == rb.episode_ids.tolist()
    assert back.add_episode(make_episode(16, 40)) == rb.add_episode(make_episode(16, 40))
    back.set_state(rb.get_state())
    a, b = rb.sample(32), back.sample(32)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_incremental_save_after_load_and_smaller_capacity(tmp_path: Path) -> None:
    rb = filled(1000, [50] * 10)
    rb.save(tmp_path)
    back = EpisodeReplay(1000, 3, (3,), A)
    back.load(tmp_path)
    back.add_episode(make_episode(10, 50))
    back.save(tmp_path)  # incremental on top of the loaded snapshot
    assert len(chunk_files(tmp_path)) == 2
    small = EpisodeReplay(120, 3, (3,), A)
    small.load(tmp_path)
    assert small.episode_ids.tolist() == [9, 10] and small.num_transitions == 100


def test_load_before_id_drops_episodes_newer_than_the_checkpoint(tmp_path: Path) -> None:
    """A run snapshots replay, then checkpoints: a kill in between leaves the snapshot ahead."""
    rb = filled(1000, [30] * 4)
    at_checkpoint = rb.get_state()
    rb.add_episode(make_episode(4, 30))  # saved, but the checkpoint was never written
    rb.save(tmp_path)
    back = EpisodeReplay(1000, 3, (3,), A)
    back.load(tmp_path, before_id=at_checkpoint["next_episode_id"])
    assert back.episode_ids.tolist() == [0, 1, 2, 3] and back.num_transitions == 120
    assert back.add_episode(make_episode(9, 30)) == 4  # the dropped id is reused ...
    back.save(tmp_path)  # ... so this save rewrites the snapshot rather than adding a chunk
    again = EpisodeReplay(1000, 3, (3,), A)
    again.load(tmp_path)
    assert_same_episodes(back, again)
    assert np.array_equal(again.episode(4)["obs"], make_episode(9, 30)["obs"])


def test_save_into_foreign_snapshot_dir_rewrites_everything(tmp_path: Path) -> None:
    filled(1000, [10] * 3).save(tmp_path)
    other = filled(1000, [20] * 2)
    other.save(tmp_path)
    back = EpisodeReplay(1000, 3, (3,), A)
    back.load(tmp_path)
    assert_same_episodes(other, back)


def test_crash_before_manifest_keeps_previous_snapshot(tmp_path, monkeypatch) -> None:
    rb = filled(1000, [30] * 4)
    rb.save(tmp_path)
    snapshot = EpisodeReplay(1000, 3, (3,), A)
    snapshot.load(tmp_path)
    rb.add_episode(make_episode(4, 30))
    real = replay_snapshot.atomic_write_bytes

    def crash_on_manifest(path, data):
        if Path(path).name == "manifest.json":
            raise KeyboardInterrupt("killed")
        real(path, data)

    monkeypatch.setattr(replay_snapshot, "atomic_write_bytes", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        rb.save(tmp_path)
    monkeypatch.undo()
    (tmp_path / ".manifest.json.tmp-abc").write_bytes(b"half a manif")  # leftover temp file
    back = EpisodeReplay(1000, 3, (3,), A)
    back.load(tmp_path)
    assert_same_episodes(snapshot, back)
    rb.save(tmp_path)  # the next save succeeds and sweeps the leftovers
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    back.load(tmp_path)
    assert_same_episodes(rb, back)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from ldmpc.replay import EpisodeReplay
    from tests.test_replay import make_episode
    d = Path(sys.argv[1])
    rb = EpisodeReplay(20_000, 3, (3,), 2)
    if (d / "manifest.json").exists():
        rb.load(d)
    i = rb._next_id
    while True:
        for _ in range(20):
            rb.add_episode(make_episode(i, 200))
            i += 1
        rb.save(d)
        print("saved", flush=True)
    """
)


def test_sigkill_during_saves_leaves_a_loadable_snapshot(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    for delay in (0.05, 0.13, 0.29):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, str(tmp_path)],
            cwd=root,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline() == "saved\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        back = EpisodeReplay(20_000, 3, (3,), A)
        back.load(tmp_path)
        ids = back.episode_ids
        assert back.num_transitions % 4000 == 0 and back.num_transitions >= 4000
        assert np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids)))
        for e in back.episodes():
            assert np.array_equal(e["obs"], make_episode(e["id"], 200)["obs"])


def test_missing_or_corrupt_files_raise_one_line_user_errors(tmp_path: Path) -> None:
    rb = EpisodeReplay(100, 3, (3,), A)
    with pytest.raises(UserError, match=f"replay snapshot not found: {tmp_path}/manifest.json"):
        rb.load(tmp_path)
    filled(1000, [10] * 3).save(tmp_path)
    manifest = tmp_path / "manifest.json"
    good = manifest.read_bytes()
    for bad in (good[: len(good) // 2], b"{}", b"\xff\xfe", b'{"format_version": 1}'):
        manifest.write_bytes(bad)
        with pytest.raises(UserError, match=f"replay manifest {manifest} is corrupt") as err:
            rb.load(tmp_path)
        assert "\n" not in str(err.value)
    manifest.write_bytes(good)
    chunk = tmp_path / chunk_files(tmp_path)[0]
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-100])
    with pytest.raises(UserError, match=f"replay chunk {chunk} is corrupt or truncated"):
        rb.load(tmp_path)
    chunk.unlink()
    with pytest.raises(UserError, match=f"replay chunk missing: {chunk}"):
        rb.load(tmp_path)
    chunk.write_bytes(data)
    with pytest.raises(UserError, match=r"holds obs_shape=\[3\].*this run has obs_shape=\[4\]"):
        EpisodeReplay(100, 3, (4,), A).load(tmp_path)
    assert rb.num_episodes == 0  # failed loads changed nothing


def test_uint8_image_obs_and_empty_snapshots_round_trip(tmp_path: Path) -> None:
    rb = EpisodeReplay(100, 2, (3, 8, 8), A, obs_dtype=np.uint8)
    rb.save(tmp_path / "empty")
    rb.load(tmp_path / "empty")
    assert rb.num_episodes == 0
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (11, 3, 8, 8), dtype=np.uint8)
    rb.add_episode({"obs": obs, "action": np.zeros((10, A)), "reward": np.ones(10)})
    rb.save(tmp_path / "img")
    back = EpisodeReplay(100, 2, (3, 8, 8), A, obs_dtype=np.uint8)
    back.load(tmp_path / "img")
    assert_same_episodes(rb, back)
    assert back.sample(4)["obs"].dtype == np.uint8
    with pytest.raises(UserError, match=re.escape("obs_dtype=|u1 action_dim=2; this run has")):
        EpisodeReplay(100, 2, (3, 8, 8), A).load(tmp_path / "img")
