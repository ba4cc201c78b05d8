"""Episode replay: whole episodes in one flat ring, windows that never cross an episode boundary.

Why not RLlib's EpisodeReplayBuffer: it samples Dreamer-style windows that run across episode ends
(docs/design.md §3.3); TD-MPC2 needs `horizon+1` consecutive observations of ONE episode.

Layout: an episode of T transitions occupies T+1 consecutive *rows* of flat arrays
(obs row t = o_t; action/reward/terminated row t = a_t, r_t, d_t; the last row's action/reward are
padding). Episodes are placed in a ring and never wrap inside themselves, so a window is plain
index arithmetic `row0 + k*stride`, vectorised over the batch. A small episode table (id, first
row, length, task) drives sampling over valid start positions and FIFO eviction by whole episodes.
This file is storage + sampling only: Arrow IPC snapshots (save/load) live in
`ldmpc.replay_snapshot`.

Sampling rules (issues #7, #9):
- *Uniform starts for the short window.* Multi-scale diffusion dynamics need windows of
  W = horizon * max(scales) steps, but the TD-MPC2 losses read only the first horizon + 1 steps.
  Starts are drawn among all positions with at least `min_horizon` steps left (not W), and the
  part of a window past its episode's end is padding (the final observation repeated, zero
  action/reward/terminated). `span` [B] says how many steps of each window are real; the
  diffusion loss trains an item only at scales whose window fits in it.
- *Task balance.* With more than one task stored, each item first picks a task uniformly among
  the tasks that have a valid window, then a window uniformly within that task, so a task with
  few or short episodes is not starved. With one task this is exactly the plain uniform draw.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from ldmpc.errors import UserError

if TYPE_CHECKING:
    import torch  # imported on use: replay shard actors never need it (~2 s per start)

    from ldmpc.config import Config
    from ldmpc.replay_snapshot import _SaveState

__all__ = ["Episode", "EpisodeReplay", "RunReplay"]

Episode = dict[str, Any]


class RunReplay(Protocol):
    """What a training run needs of its replay, whether it lives in the driver (`EpisodeReplay`
    with a `directory`) or in shard actors (`actors.replay_shard.ShardedReplay`)."""

    @property
    def num_transitions(self) -> int: ...

    @property
    def num_episodes(self) -> int: ...

    def add(self, episodes: Sequence[Episode]) -> None: ...

    def sample(self, batch_size: int) -> dict[str, Any]: ...

    def snapshot(self) -> dict[str, Any]:
        """Write the contents to disk (incrementally) and return the small state a checkpoint
        carries to match them."""
        ...

    def restore(self, state: dict[str, Any] | None, source: str) -> None:
        """Return to a checkpoint's `snapshot()` state (None: the run has no checkpoint, start
        empty); episodes written after it are dropped. `source` names the checkpoint."""
        ...

    def close(self) -> None: ...


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


def replay_args(cfg: Config) -> dict[str, Any]:
    """A run's replay, sized and typed by its config: the arguments of `EpisodeReplay` (and of
    the sharded replay, which splits the capacity)."""
    return {
        "capacity": cfg.buffer_size,
        "horizon": cfg.window,  # horizon, or longer for multi-scale diffusion dynamics
        "min_horizon": cfg.horizon,  # every start with an H-step window left is drawn
        "obs_shape": tuple(cfg.obs_shape),
        "action_dim": cfg.action_dim,
        "seed": cfg.seed,
        "obs_dtype": np.uint8 if cfg.obs == "rgb" else np.float32,  # pixels stay uint8
    }


def replay_dir(cfg: Config) -> str:
    """Where a run's replay snapshots live: `<run_dir>/replay` (one folder per shard inside)."""
    return os.path.join(cfg.run_dir, "replay")


class _Index(NamedTuple):
    """Sampling index of the episodes with >= `span` transitions, grouped by task (FIFO order
    within a task): window w of the group lies in episode k with cum[k] <= w < cum[k+1]."""

    cum: np.ndarray  # [E+1] cumulative valid starts
    starts: np.ndarray  # [E] first rows
    lengths: np.ndarray  # [E] transitions
    tasks: np.ndarray  # [E]
    task_ids: np.ndarray  # [T] sorted tasks with >= 1 valid window
    task_lo: np.ndarray  # [T] first window of each task
    task_n: np.ndarray  # [T] valid windows of each task (> 0)


class EpisodeReplay:
    """Capacity-bounded store of whole episodes with fast, episode-local window sampling.

    `capacity` counts transitions; once exceeded, whole oldest episodes are evicted (FIFO).
    Windows are `horizon` steps long; their starts are every position with at least
    `min_horizon` (default: `horizon`) steps left in its episode, drawn with equal probability
    within a task (tasks are balanced, see the module doc), so long episodes are sampled in
    proportion to their length and episodes shorter than `min_horizon` are skipped.
    """

    def __init__(
        self,
        capacity: int,
        horizon: int,
        obs_shape: tuple[int, ...] | list[int],
        action_dim: int,
        seed: int = 0,
        obs_dtype: Any = np.float32,
        min_horizon: int | None = None,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        """`directory`: where a run's snapshots go (`snapshot`/`restore`); None for a replay
        that is never persisted that way (datasets, shards: they call save/load themselves)."""
        min_horizon = horizon if min_horizon is None else min_horizon
        if capacity < 1 or action_dim < 1 or not 1 <= min_horizon <= horizon:
            raise ValueError(
                f"need capacity, action_dim >= 1 and 1 <= min_horizon <= horizon, got "
                f"{capacity}, {action_dim}, {min_horizon}, {horizon}"
            )
        self.capacity = int(capacity)
        self.horizon = int(horizon)
        self.min_horizon = int(min_horizon)
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.action_dim = int(action_dim)
        self.obs_dtype = np.dtype(obs_dtype)
        self._rng = np.random.default_rng(seed)
        self._alloc(0)
        self._table = _EpisodeTable()
        self._write = 0  # first row after the newest episode
        self._num_transitions = 0
        self._next_id = 0
        self._index_cache: dict[int, _Index] = {}
        self._saved: _SaveState | None = None
        self.directory = Path(directory) if directory is not None else None

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

    def add(self, episodes: Sequence[Episode]) -> None:
        """Store several finished episodes (the interface `ShardedReplay.add` shares)."""
        for ep in episodes:
            self.add_episode(ep)

    def reserve(self, transitions: int, episodes: int) -> None:
        """Allocate the rows for `episodes` episodes of `transitions` transitions in all (T+1
        rows each, at most `capacity` transitions) in one go, before the first add: filling a
        replay of known size then never regrows it (a regrowth holds the old and the new arrays
        at once). A replay that already holds episodes is left as it is."""
        rows = min(int(transitions), self.capacity) + int(episodes)
        if not len(self._table) and rows > self._rows:
            self._alloc(rows)
            self._write = 0

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
    def _index(self, span: int) -> _Index:
        """The sampling index of windows that need `span` transitions (cached until a change)."""
        if span not in self._index_cache:
            lengths = self._table.col("length")
            valid = np.maximum(lengths - span + 1, 0)
            keep = np.flatnonzero(valid > 0)
            keep = keep[np.argsort(self._table.col("task")[keep], kind="stable")]  # by task
            cum = np.concatenate([[0], np.cumsum(valid[keep])])
            tasks = self._table.col("task")[keep]
            task_ids, first = np.unique(tasks, return_index=True)
            bounds = cum[np.append(first, len(keep))]
            self._index_cache[span] = _Index(
                cum,
                self._table.col("start")[keep],
                lengths[keep],
                tasks,
                task_ids,
                bounds[:-1],
                np.diff(bounds),
            )
        return self._index_cache[span]

    def window_counts(self, horizon: int | None = None, stride: int = 1) -> dict[int, int]:
        """{task: number of start positions `sample(..., horizon, stride)` draws from}: what a
        sharded replay needs to split a task-balanced batch across shards."""
        index = self._index(self._min_span(horizon, stride))
        return {int(t): int(n) for t, n in zip(index.task_ids, index.task_n)}

    def _min_span(self, horizon: int | None, stride: int) -> int:
        """Transitions a start needs: `min_horizon` segments by default, all of them for an
        explicit `horizon` (no padding)."""
        return (self.min_horizon if horizon is None else int(horizon)) * stride

    def sample(
        self,
        batch_size: int,
        horizon: int | None = None,
        stride: int = 1,
        device: str | torch.device | None = None,
        tasks: Sequence[int] | np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Sample `batch_size` windows, time-major: obs [H+1,B,*obs], action [H,B,A],
        reward [H,B,1], terminated [H,B,1] (float32 0/1), task [B] (int64), span [B] (int64).

        With stride s the observations are o_t, o_{t+s}, ..., o_{t+H*s} (one episode); action k is
        the FIRST action of segment k, a_{t+k*s} (the rest of the segment's actions are dropped),
        reward k is the undiscounted sum r_{t+k*s} + ... + r_{t+(k+1)*s-1}, and terminated k is
        true when any step of segment k terminated. `horizon` None: the replay's window, whose
        starts need only `min_horizon` segments, padded past the episode end (see the module
        doc); `span` = min(H*s, T - t), the real transitions of each window. `tasks` [B]: item b
        is drawn uniformly among the windows of task tasks[b] (ValueError if it has none);
        otherwise tasks are balanced. `device` given: torch tensors on it.
        """
        H = self.horizon if horizon is None else int(horizon)
        if batch_size < 1 or H < 1 or stride < 1:
            raise ValueError(
                f"need batch_size, horizon, stride >= 1, got {batch_size}, {H}, {stride}"
            )
        need = self._min_span(horizon, stride)
        index = self._index(need)
        if index.cum[-1] == 0:
            raise ValueError(
                f"no stored episode has >= {need} transitions to sample "
                f"({self.num_episodes} episodes, {self.num_transitions} transitions)"
            )
        u = self._draw(index, batch_size, tasks)
        k = np.searchsorted(index.cum, u, side="right") - 1  # episode of each draw
        t0 = u - index.cum[k]
        row0 = index.starts[k] + t0
        obs_rows = row0[None, :] + (np.arange(H + 1) * stride)[:, None]  # [H+1, B]
        last = index.starts[k] + index.lengths[k]  # final observation row of each episode
        padded = need < H * stride
        if padded:  # past the end: the final obs; its row's action/reward/terminated are 0
            obs_rows = np.minimum(obs_rows, last)
        act_rows = obs_rows[:-1]
        if stride == 1:
            reward = self._reward[act_rows]
            terminated = self._terminated[act_rows]
        else:
            seg = act_rows[..., None] + np.arange(stride)  # [H, B, s]
            if padded:
                seg = np.minimum(seg, last[:, None])
            reward = self._reward[seg].sum(-1, dtype=np.float32)
            terminated = self._terminated[seg].any(-1)
        out = {
            "obs": self._obs.take(obs_rows, axis=0),  # take: ~2x faster than fancy indexing
            "action": self._action.take(act_rows, axis=0),
            "reward": reward[..., None],
            "terminated": terminated[..., None].astype(np.float32),
            "task": index.tasks[k],
            "span": np.minimum(index.lengths[k] - t0, H * stride),
        }
        if device is not None:
            import torch

            return {key: torch.from_numpy(v).to(device) for key, v in out.items()}
        return out

    def _draw(
        self, index: _Index, batch_size: int, tasks: Sequence[int] | np.ndarray | None
    ) -> np.ndarray:
        """Window numbers [B] in `index`: task-balanced, or within the given per-item tasks.

        One task: the plain uniform draw over all windows (the same RNG calls as before tasks
        were balanced, so single-task runs sample bit-identically)."""
        if tasks is not None:
            tasks = np.asarray(tasks, np.int64).reshape(-1)
            if len(tasks) != batch_size:
                raise ValueError(f"{len(tasks)} tasks for a batch of {batch_size}")
            j = np.minimum(np.searchsorted(index.task_ids, tasks), len(index.task_ids) - 1)
            missing = np.unique(tasks[index.task_ids[j] != tasks])
            if len(missing):
                raise ValueError(f"no stored window of task(s) {missing.tolist()} to sample")
        elif len(index.task_ids) == 1:
            return self._rng.integers(0, index.cum[-1], size=batch_size)
        else:
            j = self._rng.integers(0, len(index.task_ids), size=batch_size)
        return index.task_lo[j] + self._rng.integers(0, index.task_n[j])

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
        """Sampler RNG state and the next episode id (small, for checkpoints); bulk data goes
        through save()/load(), and `load(before_id=state["next_episode_id"])` matches them."""
        return {"rng": _copy_state(self._rng.bit_generator.state), "next_episode_id": self._next_id}

    def set_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = _copy_state(state["rng"])

    # ----------------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an incremental, crash-safe Arrow snapshot to directory `path`."""
        from ldmpc.replay_snapshot import save_snapshot  # here: replay_snapshot imports this file

        save_snapshot(self, Path(path))

    def load(self, path: str | os.PathLike[str], before_id: int | None = None) -> None:
        """Replace the contents with the snapshot in `path` (UserError naming a bad file);
        with `before_id`, only its episodes whose id is smaller (see `load_snapshot`)."""
        from ldmpc.replay_snapshot import load_snapshot  # here: replay_snapshot imports this file

        load_snapshot(self, Path(path), before_id)

    # ----------------------------------------------------------------------------- a run's replay
    def snapshot(self) -> dict[str, Any]:
        """`RunReplay.snapshot`: save to `directory`, return `get_state()`."""
        self.save(self._run_directory())
        return self.get_state()

    def restore(self, state: dict[str, Any] | None, source: str) -> None:
        """`RunReplay.restore`: reload `directory` up to the state's next episode id."""
        if state is None:
            return
        folder = self._run_directory()
        if folder.is_dir():
            self.load(folder, before_id=state.get("next_episode_id"))
        elif int(state.get("next_episode_id", 0)) > 0:
            raise UserError(
                f"resume=true: {source} continues a run whose replay folder {folder} is "
                "missing; restore it, or start a new run (resume=false or another exp_name)"
            )
        self.set_state(state)

    def close(self) -> None:
        """Nothing to release (the shard actors' client kills its actors here)."""

    def _run_directory(self) -> Path:
        if self.directory is None:
            raise ValueError("this EpisodeReplay has no directory: build it with directory=...")
        return self.directory


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s+n) for each (s, n), vectorised."""
    total = int(lengths.sum())
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total) - offsets)


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(state))  # deep copy of plain ints/strings/dicts
