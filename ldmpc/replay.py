"""Episode replay: whole episodes in one flat ring, windows that never cross an episode boundary.

Why not RLlib's EpisodeReplayBuffer: it samples Dreamer-style windows that run across episode ends
(DESIGN.md §3.3); TD-MPC2 needs `horizon+1` consecutive observations of ONE episode.

Layout: an episode of T transitions occupies T+1 consecutive *rows* of flat arrays
(obs row t = o_t; action/reward/terminated row t = a_t, r_t, d_t; the last row's action/reward are
padding). Episodes are placed in a ring and never wrap inside themselves, so a window is plain
index arithmetic `row0 + k*stride`, vectorised over the batch. A small episode table (id, first
row, length, task) drives uniform sampling over all valid start positions and FIFO eviction by
whole episodes. Arrow IPC snapshots (save/load) are at the bottom of this file; `EpisodeBuilder`
turns vector-env steps into whole episodes.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ldmpc.atomic import atomic_write_bytes, fsync_dir, is_temp_file
from ldmpc.errors import UserError

Episode = dict[str, Any]
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNK_PREFIX = "episodes_"
CHUNK_BYTES = 64 << 20  # target size of one snapshot chunk file: bounds memory and dead disk space


class _EpisodeTable:
    """FIFO table of live episodes as numpy columns (O(1) append/popleft, zero-copy views)."""

    COLS = ("id", "start", "length", "task")

    def __init__(self) -> None:
        self.cols = {c: np.zeros(64, np.int64) for c in self.COLS}
        self.head = 0
        self.tail = 0

    def __len__(self) -> int:
        return self.tail - self.head

    def append(self, **values: int) -> None:
        if self.tail == len(self.cols["id"]):
            n = len(self)
            size = max(64, 2 * n)
            for c in self.COLS:
                new = np.zeros(size, np.int64)
                new[:n] = self.cols[c][self.head : self.tail]
                self.cols[c] = new
            self.head, self.tail = 0, n
        for c in self.COLS:
            self.cols[c][self.tail] = values[c]
        self.tail += 1

    def popleft(self) -> None:
        self.head += 1

    def col(self, name: str) -> np.ndarray:
        return self.cols[name][self.head : self.tail]

    @classmethod
    def from_columns(cls, **cols: np.ndarray) -> _EpisodeTable:
        table = cls()
        n = len(cols["id"])
        table.cols = {c: np.concatenate([cols[c], np.zeros(64, np.int64)]) for c in cls.COLS}
        table.tail = n
        return table

    def row(self, i: int) -> dict[str, int]:
        return {c: int(self.cols[c][self.head + i]) for c in self.COLS}


class EpisodeReplay:
    """Capacity-bounded store of whole episodes with fast, episode-local window sampling.

    `capacity` counts transitions; once exceeded, whole oldest episodes are evicted (FIFO).
    Sampling draws each valid (episode, start) pair with equal probability, so long episodes are
    sampled in proportion to their length and episodes shorter than the window are skipped.
    """

    def __init__(
        self,
        capacity: int,
        horizon: int,
        obs_shape: tuple[int, ...] | list[int],
        action_dim: int,
        seed: int = 0,
        obs_dtype: Any = np.float32,
    ) -> None:
        if capacity < 1 or horizon < 1 or action_dim < 1:
            raise ValueError(
                f"need capacity, horizon, action_dim >= 1, got {capacity}, {horizon}, {action_dim}"
            )
        self.capacity = int(capacity)
        self.horizon = int(horizon)
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.action_dim = int(action_dim)
        self.obs_dtype = np.dtype(obs_dtype)
        self._rng = np.random.default_rng(seed)
        self._alloc(0)
        self._table = _EpisodeTable()
        self._write = 0  # first row after the newest episode
        self._num_transitions = 0
        self._next_id = 0
        self._index_cache: dict[int, tuple[np.ndarray, ...]] = {}
        self._saved: _SaveState | None = None

    # ----------------------------------------------------------------------------- storage
    def _alloc(self, rows: int) -> None:
        self._obs = np.zeros((rows, *self.obs_shape), self.obs_dtype)
        self._action = np.zeros((rows, self.action_dim), np.float32)
        self._reward = np.zeros(rows, np.float32)
        self._terminated = np.zeros(rows, bool)

    @property
    def _rows(self) -> int:
        return len(self._reward)

    @property
    def num_transitions(self) -> int:
        return self._num_transitions

    @property
    def num_episodes(self) -> int:
        return len(self._table)

    @property
    def episode_ids(self) -> np.ndarray:
        """Stable ids of the live episodes, oldest first."""
        return self._table.col("id").copy()

    def add_episode(self, ep: Episode) -> int:
        """Store one finished episode; returns its stable id.

        `ep`: obs [T+1, *obs_shape], action [T, A], reward [T], optional terminated [T] (bool)
        and task (int). Arrays are copied (cast to the storage dtypes).
        """
        obs, action, reward, terminated = self._check_episode(ep)
        T = len(action)
        if self.capacity < T:
            raise UserError(
                f"replay capacity ({self.capacity} transitions) is smaller than one "
                f"episode ({T} transitions): raise buffer_size"
            )
        while self._num_transitions + T > self.capacity:
            self._evict_oldest()
        start = self._place(T + 1)
        rows = slice(start, start + T + 1)
        self._obs[rows] = obs
        self._action[start : start + T] = action
        self._action[start + T] = 0
        self._reward[start : start + T] = reward
        self._reward[start + T] = 0
        self._terminated[start : start + T] = terminated
        self._terminated[start + T] = False
        ep_id = self._next_id
        self._table.append(id=ep_id, start=start, length=T, task=int(ep.get("task", 0)))
        self._next_id += 1
        self._num_transitions += T
        self._index_cache.clear()
        return ep_id

    def _check_episode(self, ep: Episode) -> tuple[np.ndarray, ...]:
        action = np.asarray(ep["action"], np.float32)
        T = len(action)
        obs = np.asarray(ep["obs"])
        reward = np.asarray(ep["reward"], np.float32).reshape(-1)
        term = np.asarray(ep.get("terminated", np.zeros(T, bool)), bool).reshape(-1)
        if T < 1:
            raise ValueError("episode has no transitions")
        if obs.shape != (T + 1, *self.obs_shape) or action.shape != (T, self.action_dim):
            raise ValueError(
                f"episode shapes obs {obs.shape}, action {action.shape}; expected "
                f"obs {(T + 1, *self.obs_shape)}, action {(T, self.action_dim)}"
            )
        if reward.shape != (T,) or term.shape != (T,):
            raise ValueError(f"episode reward {reward.shape}, terminated {term.shape}: need {(T,)}")
        return obs, action, reward, term

    def _evict_oldest(self) -> None:
        self._num_transitions -= int(self._table.col("length")[0])
        self._table.popleft()
        self._index_cache.clear()
        if not len(self._table):
            self._write = 0

    def _place(self, n_rows: int) -> int:
        """First row of a free run of `n_rows` rows; grows (compacting) the ring when none is free.

        Invariant: live episodes in FIFO order have increasing first rows except at most one wrap,
        so the free space is [write, R) + [0, oldest) without a wrap, or [write, oldest) with one.
        """
        if len(self._table):
            oldest = int(self._table.col("start")[0])
            newest = int(self._table.col("start")[-1])
            wrapped = newest < oldest
            end = oldest if wrapped else self._rows
            if self._write + n_rows <= end:
                start = self._write
            elif not wrapped and n_rows <= oldest:
                start = 0
            else:
                start = self._grow(n_rows)
        elif n_rows <= self._rows:
            start = 0
        else:
            start = self._grow(n_rows)
        self._write = start + n_rows
        return start

    def _grow(self, n_rows: int) -> int:
        """Reallocate (amortised O(1)), packing live episodes at the front; returns a free row."""
        live_rows = self._num_transitions + len(self._table)
        need = live_rows + n_rows
        target = max(need + need // 4, min(2 * self._rows, self.capacity + self.capacity // 4))
        old = (self._obs, self._action, self._reward, self._terminated)
        starts = self._table.col("start")
        lengths = self._table.col("length")
        self._alloc(target)
        new_starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
        src = _ranges(starts, lengths + 1)
        for dst_arr, src_arr in zip((self._obs, self._action, self._reward, self._terminated), old):
            dst_arr[:live_rows] = src_arr[src]
        starts[:] = new_starts
        self._index_cache.clear()
        return live_rows

    # ----------------------------------------------------------------------------- sampling
    def _index(self, span: int) -> tuple[np.ndarray, ...]:
        """([0, cumulative valid starts...], first rows, tasks) of episodes with >= span steps."""
        if span not in self._index_cache:
            lengths = self._table.col("length")
            valid = np.maximum(lengths - span + 1, 0)
            keep = valid > 0
            self._index_cache[span] = (
                np.concatenate([[0], np.cumsum(valid[keep])]),
                self._table.col("start")[keep].copy(),
                self._table.col("task")[keep].copy(),
            )
        return self._index_cache[span]

    def sample(
        self,
        batch_size: int,
        horizon: int | None = None,
        stride: int = 1,
        device: str | torch.device | None = None,
    ) -> dict[str, Any]:
        """Sample `batch_size` windows, time-major: obs [H+1,B,*obs], action [H,B,A],
        reward [H,B,1], terminated [H,B,1] (float32 0/1), task [B] (int64).

        With stride s the observations are o_t, o_{t+s}, ..., o_{t+H*s} (one episode); action k is
        the FIRST action of segment k, a_{t+k*s} (the rest of the segment's actions are dropped),
        reward k is the undiscounted sum r_{t+k*s} + ... + r_{t+(k+1)*s-1}, and terminated k is
        true when any step of segment k terminated. `device` given: torch tensors on it.
        """
        H = self.horizon if horizon is None else int(horizon)
        if batch_size < 1 or H < 1 or stride < 1:
            raise ValueError(
                f"need batch_size, horizon, stride >= 1, got {batch_size}, {H}, {stride}"
            )
        cum, starts, tasks = self._index(H * stride)
        if cum[-1] == 0:
            raise ValueError(
                f"no stored episode has >= {H * stride} transitions to sample "
                f"({self.num_episodes} episodes, {self.num_transitions} transitions)"
            )
        u = self._rng.integers(0, cum[-1], size=batch_size)
        k = np.searchsorted(cum, u, side="right") - 1  # episode of each draw
        row0 = starts[k] + (u - cum[k])
        obs_rows = row0[None, :] + (np.arange(H + 1) * stride)[:, None]  # [H+1, B]
        act_rows = obs_rows[:-1]
        if stride == 1:
            reward = self._reward[act_rows]
            terminated = self._terminated[act_rows]
        else:
            seg = act_rows[..., None] + np.arange(stride)  # [H, B, s]
            reward = self._reward[seg].sum(-1, dtype=np.float32)
            terminated = self._terminated[seg].any(-1)
        out = {
            "obs": self._obs.take(obs_rows, axis=0),  # take: ~2x faster than fancy indexing
            "action": self._action.take(act_rows, axis=0),
            "reward": reward[..., None],
            "terminated": terminated[..., None].astype(np.float32),
            "task": tasks[k],
        }
        if device is not None:
            return {key: torch.from_numpy(v).to(device) for key, v in out.items()}
        return out

    def episode(self, index: int) -> Episode:
        """A copy of live episode `index` (0 = oldest), in the `add_episode` format plus `id`."""
        row = self._table.row(index if index >= 0 else len(self._table) + index)
        s, T = row["start"], row["length"]
        return {
            "id": row["id"],
            "task": row["task"],
            "obs": self._obs[s : s + T + 1].copy(),
            "action": self._action[s : s + T].copy(),
            "reward": self._reward[s : s + T].copy(),
            "terminated": self._terminated[s : s + T].copy(),
        }

    def episodes(self) -> Iterator[Episode]:
        """Live episodes, oldest first (copies)."""
        for i in range(len(self._table)):
            yield self.episode(i)

    # ----------------------------------------------------------------------------- small state
    def get_state(self) -> dict[str, Any]:
        """Sampler RNG state (small, for checkpoints); bulk data goes through save()/load()."""
        return {"rng": _copy_state(self._rng.bit_generator.state)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = _copy_state(state["rng"])

    # ----------------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an incremental, crash-safe Arrow snapshot to directory `path`."""
        save_snapshot(self, Path(path))

    def load(self, path: str | os.PathLike[str]) -> None:
        """Replace the contents with the snapshot in `path` (UserError naming a bad file)."""
        load_snapshot(self, Path(path))


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s+n) for each (s, n), vectorised."""
    total = int(lengths.sum())
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total) - offsets)


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(state))  # deep copy of plain ints/strings/dicts


# =================================================================================== snapshots
# A snapshot directory holds immutable chunk files `episodes_<first id>_<generation>.arrow` and a
# `manifest.json` naming the live ones. save() writes only episodes that no earlier snapshot holds,
# then the manifest (atomically, last), then deletes chunks that no longer hold live episodes.
# A kill at any point leaves the previous manifest and every file it names intact. One writer per
# directory is assumed (a replay shard owns its directory).


@dataclass
class _SaveState:
    """What the snapshot in `path` holds, so the next save there can be incremental."""

    path: Path
    generation: int
    chunks: list[dict[str, Any]] = field(default_factory=list)
    saved_upto: int = -1  # highest episode id in the snapshot


def _read_generation(path: Path) -> int:
    try:
        return int(json.loads((path / MANIFEST).read_text())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def _chunk_table(replay: EpisodeReplay, idx: np.ndarray) -> pa.Table:
    """Arrow table of the live episodes at table positions `idx` (T+1 rows per episode)."""
    t = replay._table
    starts, lengths = t.col("start")[idx], t.col("length")[idx]
    rows = _ranges(starts, lengths + 1)
    obs = replay._obs[rows].reshape(len(rows), -1)
    meta = {
        "format_version": FORMAT_VERSION,
        "ids": t.col("id")[idx].tolist(),
        "lengths": lengths.tolist(),
        "tasks": t.col("task")[idx].tolist(),
        "obs_shape": list(replay.obs_shape),
        "obs_dtype": replay.obs_dtype.str,
        "action_dim": replay.action_dim,
    }
    columns = {
        "obs": pa.FixedSizeListArray.from_arrays(pa.array(obs.reshape(-1)), obs.shape[1]),
        "action": pa.FixedSizeListArray.from_arrays(
            pa.array(replay._action[rows].reshape(-1)), replay.action_dim
        ),
        "reward": pa.array(replay._reward[rows]),
        "terminated": pa.array(replay._terminated[rows]),
    }
    return pa.table(columns, metadata={"ldmpc_replay": json.dumps(meta)})


def _write_chunk(path: Path, table: pa.Table) -> dict[str, int]:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    data = memoryview(sink.getvalue())  # no copy into a Python bytes object
    atomic_write_bytes(path, data)
    return {"bytes": data.nbytes, "crc32": zlib.crc32(data)}


def save_snapshot(replay: EpisodeReplay, path: Path) -> None:
    """Incremental, crash-safe snapshot of `replay` into directory `path`."""
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    on_disk = _read_generation(path)
    prev = replay._saved
    if prev is None or prev.path != path or prev.generation != on_disk:
        prev = _SaveState(path, max(on_disk, -1))  # someone else's (or no) snapshot: write all
    gen = prev.generation + 1
    ids = replay._table.col("id")
    oldest = int(ids[0]) if len(ids) else replay._next_id
    chunks = [c for c in prev.chunks if c["last_id"] >= oldest]
    new = np.flatnonzero(ids > prev.saved_upto)
    row_bytes = replay._obs[:1].nbytes + replay.action_dim * 4 + 5
    per_chunk = max(1, CHUNK_BYTES // row_bytes)
    lengths = replay._table.col("length")[new] + 1
    group = (np.cumsum(lengths) - lengths) // per_chunk  # start a new chunk every ~CHUNK_BYTES
    for g in np.unique(group):
        idx = new[group == g]
        name = f"{CHUNK_PREFIX}{int(ids[idx[0]]):09d}_{gen:06d}.arrow"
        info = _write_chunk(path / name, _chunk_table(replay, idx))
        chunks.append(
            {"file": name, "first_id": int(ids[idx[0]]), "last_id": int(ids[idx[-1]]), **info}
        )
    manifest = {
        "format_version": FORMAT_VERSION,
        "generation": gen,
        "capacity": replay.capacity,
        "obs_shape": list(replay.obs_shape),
        "obs_dtype": replay.obs_dtype.str,
        "action_dim": replay.action_dim,
        "next_episode_id": replay._next_id,
        "oldest_live_id": oldest,
        "num_episodes": replay.num_episodes,
        "num_transitions": replay.num_transitions,
        "chunks": chunks,
    }
    atomic_write_bytes(path / MANIFEST, json.dumps(manifest, indent=1).encode())
    live = {c["file"] for c in chunks}
    for entry in os.scandir(path):  # only now may the previous snapshot's files go
        dead_chunk = entry.name.startswith(CHUNK_PREFIX) and entry.name not in live
        if dead_chunk or is_temp_file(entry.name):
            os.unlink(entry.path)
    fsync_dir(path)
    saved_upto = int(ids[-1]) if len(ids) else prev.saved_upto
    replay._saved = _SaveState(path, gen, chunks, max(saved_upto, prev.saved_upto))


INT_KEYS = (
    "generation",
    "next_episode_id",
    "oldest_live_id",
    "num_episodes",
    "num_transitions",
    "action_dim",
)


def _read_manifest(path: Path, replay: EpisodeReplay) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise UserError(f"replay snapshot not found: {file}")
    try:
        m = json.loads(file.read_text())
        version = m["format_version"]
        for key in INT_KEYS:
            m[key] = int(m[key])
        for c in m["chunks"]:
            for key in ("first_id", "last_id", "bytes", "crc32"):
                c[key] = int(c[key])
            if not str(c["file"]).startswith(CHUNK_PREFIX) or "/" in c["file"]:
                raise ValueError(f"bad chunk file name {c['file']!r}")
        got = {
            "obs_shape": list(m["obs_shape"]),
            "obs_dtype": m["obs_dtype"],
            "action_dim": m["action_dim"],
        }
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"replay manifest {file} is corrupt: {type(e).__name__}: {e}") from None
    if version != FORMAT_VERSION:
        raise UserError(
            f"replay manifest {file} has format version {version}; "
            f"this ldmpc reads version {FORMAT_VERSION}"
        )
    have = {
        "obs_shape": list(replay.obs_shape),
        "obs_dtype": replay.obs_dtype.str,
        "action_dim": replay.action_dim,
    }
    if got != have:
        raise UserError(f"replay snapshot {path} holds {_kv(got)}; this run has {_kv(have)}")
    return m


def _kv(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in d.items())


def _read_chunk(
    file: Path, info: dict[str, Any], replay: EpisodeReplay
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Verify size + CRC, decode one chunk: (episode columns id/length/task, row arrays)."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise UserError(f"replay chunk missing: {file}") from None
    if len(data) != info["bytes"] or zlib.crc32(data) != info["crc32"]:
        raise UserError(
            f"replay chunk {file} is corrupt or truncated: size/checksum mismatch "
            f"({len(data)} bytes, manifest says {info['bytes']})"
        )
    try:
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
        meta = json.loads(table.schema.metadata[b"ldmpc_replay"])
        eps = {k: np.asarray(meta[k + "s"], np.int64) for k in ("id", "length", "task")}
        rows = int((eps["length"] + 1).sum())
        arrays = {
            "obs": _flat(table, "obs").reshape(rows, *replay.obs_shape),
            "action": _flat(table, "action").reshape(rows, replay.action_dim),
            "reward": table.column("reward").to_numpy().reshape(rows),
            "terminated": table.column("terminated").to_numpy().reshape(rows),
        }
    except (pa.ArrowException, KeyError, ValueError, TypeError) as e:
        raise UserError(f"replay chunk {file} is corrupt: {type(e).__name__}: {e}") from None
    return eps, arrays


def _flat(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).combine_chunks().flatten().to_numpy()


def load_snapshot(replay: EpisodeReplay, path: Path) -> None:
    """Restore `replay`'s episodes, ids and order from `path`; its RNG is left alone.

    The replay's own capacity applies: a larger snapshot loses its oldest episodes. Nothing is
    changed when any file is missing or corrupt (everything is read and checked first).
    """
    path = path.resolve()
    m = _read_manifest(path, replay)
    oldest = m["oldest_live_id"]
    eps: list[dict[str, np.ndarray]] = []
    arrays: list[dict[str, np.ndarray]] = []
    for c in m["chunks"]:
        ep, arr = _read_chunk(path / c["file"], c, replay)
        keep = ep["id"] >= oldest
        skip = int((ep["length"][~keep] + 1).sum())  # FIFO: evicted episodes are a prefix
        eps.append({k: v[keep] for k, v in ep.items()})
        arrays.append({k: v[skip:] for k, v in arr.items()})
    cols = (
        {k: np.concatenate([e[k] for e in eps] + [np.zeros(0, np.int64)]) for k in eps[0]}
        if eps
        else {k: np.zeros(0, np.int64) for k in ("id", "length", "task")}
    )
    lengths = cols["length"]
    rows = int((lengths + 1).sum())
    if len(lengths) != m["num_episodes"] or int(lengths.sum()) != m["num_transitions"]:
        raise UserError(
            f"replay snapshot {path} is inconsistent with its manifest: "
            f"{len(lengths)} episodes / {int(lengths.sum())} transitions found, "
            f"manifest says {m['num_episodes']} / {m['num_transitions']}"
        )
    replay._alloc(max(rows + rows // 4, 1))
    offset = 0
    for arr in arrays:
        n = len(arr["reward"])
        replay._obs[offset : offset + n] = arr["obs"]
        replay._action[offset : offset + n] = arr["action"]
        replay._reward[offset : offset + n] = arr["reward"]
        replay._terminated[offset : offset + n] = arr["terminated"]
        offset += n
    starts = np.cumsum(lengths + 1) - (lengths + 1)
    replay._table = _EpisodeTable.from_columns(start=starts, **cols)
    replay._write = rows
    replay._num_transitions = int(lengths.sum())
    replay._next_id = m["next_episode_id"]
    replay._index_cache.clear()
    saved_upto = int(cols["id"][-1]) if len(lengths) else -1
    replay._saved = _SaveState(path, m["generation"], list(m["chunks"]), saved_upto)
    while replay.num_transitions > replay.capacity:
        replay._evict_oldest()


# =================================================================================== builder
@dataclass
class _Partial:
    task: int
    obs: list[np.ndarray] = field(default_factory=list)
    action: list[np.ndarray] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)


class EpisodeBuilder:
    """Assembles whole episodes from the steps of N parallel envs; each is emitted when it ends.

    Per step and env pass the observation the action was taken in (o_t), the action, the reward
    and the end flags; when the episode ends (terminated or truncated) also pass `final_obs`
    (o_T: gymnasium's final observation, not the auto-reset one). Finished episodes go to `sink`
    (e.g. `EpisodeReplay.add_episode`) and are returned. Partial episodes are not checkpointed.
    """

    def __init__(self, num_envs: int, sink: Callable[[Episode], Any] | None = None) -> None:
        self.num_envs = int(num_envs)
        self.sink = sink
        self._parts: list[_Partial | None] = [None] * self.num_envs

    def add_step(
        self,
        env_index: int,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float,
        terminated: bool,
        truncated: bool,
        final_obs: np.ndarray | None = None,
        task: int = 0,
    ) -> Episode | None:
        part = self._parts[env_index]
        if part is None:
            part = self._parts[env_index] = _Partial(task=int(task))
        part.obs.append(np.array(obs, copy=True))
        part.action.append(np.asarray(action, np.float32).copy())
        part.reward.append(float(reward))
        part.terminated.append(bool(terminated))
        if not (terminated or truncated):
            return None
        if final_obs is None:
            raise ValueError(f"env {env_index}: final_obs is required when an episode ends")
        self._parts[env_index] = None
        ep = {
            "obs": np.stack([*part.obs, np.asarray(final_obs)]),
            "action": np.stack(part.action),
            "reward": np.asarray(part.reward, np.float32),
            "terminated": np.asarray(part.terminated, bool),
            "task": part.task,
        }
        if self.sink is not None:
            self.sink(ep)
        return ep

    def add_batch(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        final_obs: np.ndarray | None = None,
        task: np.ndarray | None = None,
    ) -> list[Episode]:
        """One vector-env step for all envs (leading axis = env); `final_obs` rows are read only
        for envs whose episode ended."""
        done = []
        for i in range(self.num_envs):
            ended = bool(terminated[i] or truncated[i])
            ep = self.add_step(
                i,
                obs[i],
                action[i],
                reward[i],
                terminated[i],
                truncated[i],
                final_obs[i] if ended and final_obs is not None else None,
                0 if task is None else int(task[i]),
            )
            if ep is not None:
                done.append(ep)
        return done

    def discard(self, env_index: int | None = None) -> None:
        """Drop partial episode(s), e.g. after an env was reset without ending."""
        for i in range(self.num_envs) if env_index is None else [env_index]:
            self._parts[i] = None

    @property
    def pending_steps(self) -> int:
        return sum(len(p.action) for p in self._parts if p is not None)
