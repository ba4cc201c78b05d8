"""Sharded replay: K Ray actors each holding whole episodes, one driver-side client.

Why shards: one replay in the driver makes the driver hold all episodes and do all sampling work;
K actors spread memory, sampling and snapshot I/O over processes (and nodes), and a crash costs
one shard, which comes back from its own Arrow files (docs/design.md §3.3, §4).

- `ReplayShard`: a plain class (usable without Ray) wrapping one `EpisodeReplay` and one snapshot
  directory. `remote_shard_class()` turns it into a Ray actor with `max_restarts=-1`, so importing
  this module needs no running Ray.
- `ShardedReplay`: the driver's client. Routes each episode by a stable hash of a run-unique key,
  samples from all shards in proportion to their sizes (per task when several tasks are stored,
  so the batch is task-balanced globally as `EpisodeReplay.sample` is locally) and returns ONE
  batch in the format of `EpisodeReplay.sample`, and snapshots/restores all shards for
  checkpoints.

Restart rule: a shard that Ray *reconstructs* (its process died) reloads its directory; a shard
started for the first time never reads it, and in a fresh run writes an empty snapshot at once so
a later reconstruction cannot pick up a previous run's episodes. A resumed run starts the shards
with `resume=True` and calls `ShardedReplay.restore(state)`.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ldmpc.errors import UserError
from ldmpc.replay import Episode, EpisodeReplay, replay_args, replay_dir
from ldmpc.replay_snapshot import MANIFEST

if TYPE_CHECKING:
    from ldmpc.config import Config

__all__ = ["ReplayShard", "ShardedReplay", "remote_shard_class", "shard_dir", "shard_of"]

STATE_VERSION = 1
_BATCH_AXIS = {
    "task": 0,
    "span": 0,
}  # every other key of a sampled batch is time-major: batch axis 1


def shard_of(key: str | int | bytes, num_shards: int) -> int:
    """The shard of an episode key: the same in every process and Python run.

    Python's `hash()` of a str is salted per process, so it cannot route across a restart;
    CRC32 is fixed. Its low bits are linear in the input bits, so the shard comes from the high
    bits of a multiplicative (Fibonacci) mix instead of `crc % K`, which keeps consecutive
    integer keys evenly spread.
    """
    data = key if isinstance(key, bytes) else str(key).encode()
    mixed = (zlib.crc32(data) * 0x9E3779B1) & 0xFFFFFFFF
    return (mixed * num_shards) >> 32


def shard_dir(directory: str | os.PathLike[str], index: int) -> Path:
    """Snapshot directory of shard `index` under the run's replay directory."""
    return Path(directory) / f"shard_{index}"


def _was_reconstructed() -> bool:
    """True inside a Ray actor that Ray restarted after its process died."""
    try:
        import ray
    except ImportError:
        return False
    if not ray.is_initialized():
        return False
    ctx = ray.get_runtime_context()
    if ctx.get_actor_id() is None:
        return False
    with warnings.catch_warnings():  # Ray 2.60 trips its own deprecation warning in there
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ctx.was_current_actor_reconstructed)


def _pin_threads(threads: int) -> None:
    """Several actors share few cores and 2-core boxes stall when each one spins up all of them
    (docs/design.md §3.3). A shard never imports torch itself (it costs ~2 s per start), so torch is
    pinned only where something else loaded it; numpy's indexing and copies here use one thread.
    """
    if "torch" in sys.modules:
        from ldmpc.runtime import set_threads

        set_threads(threads)


class ReplayShard:
    """One shard: an `EpisodeReplay` plus its own Arrow snapshot directory (single writer).

    Snapshots are incremental (only new episodes are written), taken every `snapshot_every`
    added episodes (0: only on `snapshot()`) before `add_episodes` returns, so an acknowledged
    add is durable once a snapshot covers it. A kill loses at most the episodes added since the
    last snapshot; `snapshot_every=1` loses none.
    """

    def __init__(
        self,
        index: int,
        directory: str | os.PathLike[str],
        capacity: int,
        horizon: int,
        obs_shape: Sequence[int],
        action_dim: int,
        seed: int = 0,
        obs_dtype: Any = np.float32,
        snapshot_every: int = 0,
        resume: bool = False,
        threads: int = 1,
        min_horizon: int | None = None,
    ) -> None:
        _pin_threads(threads)
        self.index = int(index)
        self.directory = Path(directory)
        self.snapshot_every = int(snapshot_every)
        self.replay = EpisodeReplay(
            capacity, horizon, obs_shape, action_dim, seed, obs_dtype, min_horizon
        )
        self._seed = seed
        self._unsaved = 0  # episodes added since the last snapshot
        self.reconstructed = _was_reconstructed()
        self.restored_episodes = 0
        if self.reconstructed:
            if self._has_snapshot():
                self.replay.load(self.directory)
                self.restored_episodes = self.replay.num_episodes
        elif not resume:
            self.snapshot()  # empty: drops a previous run's files before any episode arrives

    def _has_snapshot(self) -> bool:
        return (self.directory / MANIFEST).is_file()

    # ------------------------------------------------------------------ data
    def add_episodes(self, episodes: list[Episode]) -> tuple[int, int]:
        """Store episodes (one RPC for many); snapshot when due. Returns `size()` after it."""
        for ep in episodes:
            self.replay.add_episode(ep)
        self._unsaved += len(episodes)
        if self.snapshot_every and self._unsaved >= self.snapshot_every:
            self.snapshot()
        return self.size()

    def sample(
        self,
        batch_size: int,
        horizon: int | None = None,
        stride: int = 1,
        tasks: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """`EpisodeReplay.sample` (numpy, time-major); ValueError when no window fits."""
        return self.replay.sample(batch_size, horizon, stride, tasks=tasks)

    def size(self) -> tuple[int, int]:
        """(transitions, episodes) held now."""
        return self.replay.num_transitions, self.replay.num_episodes

    def window_counts(self, horizon: int | None = None, stride: int = 1) -> dict[int, int]:
        """{task: valid windows} (`EpisodeReplay.window_counts`): the driver's per-task split."""
        return self.replay.window_counts(horizon, stride)

    def episode_ids(self) -> list[int]:
        """Shard-local ids of the live episodes, oldest first (cheap content fingerprint)."""
        return self.replay.episode_ids.tolist()

    def info(self) -> dict[str, Any]:
        """Process and restart facts, for logs and fault drills."""
        return {
            "index": self.index,
            "pid": os.getpid(),
            "reconstructed": self.reconstructed,
            "restored_episodes": self.restored_episodes,
            "directory": str(self.directory),
            "torch_loaded": "torch" in sys.modules,
        }

    # ------------------------------------------------------------------ persistence
    def snapshot(self) -> dict[str, Any]:
        """Write an incremental snapshot; returns `get_state()` plus the size it covers."""
        self.replay.save(self.directory)
        self._unsaved = 0
        transitions, episodes = self.size()
        return {**self.get_state(), "num_transitions": transitions, "num_episodes": episodes}

    def get_state(self) -> dict[str, Any]:
        """Sampler RNG and next episode id (small; the episodes themselves are in the files)."""
        return self.replay.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.replay.set_state(state)

    def load(self, before_id: int | None = None) -> tuple[int, int]:
        """Replace the contents with this shard's snapshot (minus ids >= before_id)."""
        self.replay.load(self.directory, before_id=before_id)
        return self.size()

    def restore(self, state: dict[str, Any]) -> tuple[int, int]:
        """Resume to a checkpoint: load the episodes it saw, its RNG, and rewrite the snapshot.

        The rewrite matters: episodes snapshotted after the checkpoint are dropped from memory
        here, and a later reconstruction must not bring them back from the files.
        """
        next_id = int(state["next_episode_id"])
        if self._has_snapshot():
            self.load(before_id=next_id)
        elif next_id > 0:
            raise UserError(
                f"replay shard {self.index}: snapshot {self.directory / MANIFEST} is missing, "
                f"but the checkpoint expects {next_id} episodes in it"
            )
        else:
            self.replay = self._empty_replay()
        self.set_state(state)
        self.snapshot()
        return self.size()

    def clear(self) -> tuple[int, int]:
        """Drop every episode, in memory and on disk (an empty snapshot)."""
        rng = self.replay.get_state()
        self.replay = self._empty_replay()
        self.replay.set_state(rng)
        self.snapshot()
        return self.size()

    def _empty_replay(self) -> EpisodeReplay:
        r = self.replay
        return EpisodeReplay(
            r.capacity, r.horizon, r.obs_shape, r.action_dim, self._seed, r.obs_dtype, r.min_horizon
        )


@functools.cache
def remote_shard_class() -> Any:
    """`ReplayShard` as a Ray actor class (built on first use: importing needs no Ray)."""
    import ray

    return ray.remote(ReplayShard)


def _shard_seed(seed: int, index: int) -> int:
    """Independent, reproducible sampler seed per shard."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class ShardedReplay:
    """Driver-side client of K `ReplayShard` actors; a drop-in for `EpisodeReplay`'s sampling.

    Shard sizes and per-task window counts are cached from the replies of `add`, `refresh`,
    `snapshot`, `restore` and `clear`, so `num_transitions`/`num_episodes` and a default-window
    `sample` cost no extra RPC. Each shard gets `capacity // num_shards`
    transitions (FIFO eviction is per shard). Actor calls are retried after a restart
    (`max_task_retries`): adds are at-least-once, so a kill between a shard's snapshot and its
    reply may store that batch twice (harmless for sampling).
    """

    def __init__(
        self,
        num_shards: int,
        directory: str | os.PathLike[str],
        capacity: int,
        horizon: int,
        obs_shape: Sequence[int],
        action_dim: int,
        seed: int = 0,
        obs_dtype: Any = np.float32,
        snapshot_every: int = 16,
        resume: bool = False,
        num_cpus: float = 0.0,
        max_task_retries: int = 3,
        min_horizon: int | None = None,
    ) -> None:
        if num_shards < 1 or capacity // num_shards < 1:
            raise ValueError(
                f"need replay_shards >= 1 and buffer_size >= replay_shards, "
                f"got {num_shards} shards for {capacity} transitions"
            )
        self.num_shards = int(num_shards)
        self.directory = Path(directory).resolve()
        self.horizon = int(horizon)
        self.shard_capacity = capacity // num_shards
        self._rng = np.random.default_rng(seed)
        self._added = 0  # episodes routed so far: the default run-unique key
        self._sizes = np.zeros((num_shards, 2), np.int64)  # (transitions, episodes) per shard
        self._windows: list[dict[int, int]] = [{} for _ in range(num_shards)]  # task -> windows
        cls = remote_shard_class().options(
            num_cpus=num_cpus, max_restarts=-1, max_task_retries=max_task_retries
        )
        self.shards = [
            cls.remote(
                i,
                str(shard_dir(self.directory, i)),
                self.shard_capacity,
                horizon,
                tuple(obs_shape),
                action_dim,
                seed=_shard_seed(seed, i),
                obs_dtype=np.dtype(obs_dtype),
                snapshot_every=snapshot_every,
                resume=resume,
                min_horizon=min_horizon,
            )
            for i in range(num_shards)
        ]

    @classmethod
    def from_config(
        cls, cfg: Config, num_shards: int, snapshot_every: int = 16, resume: bool = False
    ) -> ShardedReplay:
        """The algorithm's replay: `<run_dir>/replay/shard_<i>`, sized and typed by `cfg`."""
        return cls(
            num_shards,
            replay_dir(cfg),
            **replay_args(cfg),
            snapshot_every=snapshot_every,
            resume=resume,
        )

    # ------------------------------------------------------------------ sizes
    @property
    def num_transitions(self) -> int:
        return int(self._sizes[:, 0].sum())

    @property
    def num_episodes(self) -> int:
        return int(self._sizes[:, 1].sum())

    @property
    def shard_sizes(self) -> np.ndarray:
        """Cached (transitions, episodes) per shard, [K, 2]."""
        return self._sizes.copy()

    def refresh(self) -> np.ndarray:
        """Ask every shard for its size (e.g. after a restart); returns the [K, 2] sizes."""
        self._update(range(self.num_shards), [s.size.remote() for s in self.shards])
        return self.shard_sizes

    def _update(self, order: Sequence[int], size_refs: list[Any]) -> list[Any]:
        """Wait for calls to shards `order` that reply with their size (or a dict holding it),
        cache those sizes and the shards' window counts (asked in the same round trip: an
        actor runs one caller's calls in order); returns the replies."""
        order = list(order)
        count_refs = [self.shards[i].window_counts.remote() for i in order]
        replies = self._get([*size_refs, *count_refs])
        for i, reply, counts in zip(order, replies, replies[len(order) :]):
            if isinstance(reply, dict):
                reply = (reply["num_transitions"], reply["num_episodes"])
            self._sizes[i] = reply
            self._windows[i] = counts
        return replies[: len(order)]

    # ------------------------------------------------------------------ data
    def add(self, episodes: Sequence[Episode], keys: Sequence[Any] | None = None) -> None:
        """Route each episode to `shard_of(key)`; one `add_episodes` RPC per shard, in parallel.

        `keys` must be unique within the run (default: the running count of added episodes,
        which `state()` carries across resumes).
        """
        if keys is None:
            keys = range(self._added, self._added + len(episodes))
        elif len(keys) != len(episodes):
            raise ValueError(f"{len(keys)} keys for {len(episodes)} episodes")
        longest = max((len(ep["action"]) for ep in episodes), default=0)
        if longest > self.shard_capacity:
            raise UserError(
                f"an episode of {longest} transitions does not fit in a replay shard of "
                f"{self.shard_capacity} (buffer_size / replay_shards): raise buffer_size"
            )
        groups: dict[int, list[Episode]] = {}
        for ep, key in zip(episodes, keys):
            groups.setdefault(shard_of(key, self.num_shards), []).append(ep)
        self._added += len(episodes)
        order = sorted(groups)
        self._update(order, [self.shards[i].add_episodes.remote(groups[i]) for i in order])

    def sample(
        self,
        batch_size: int,
        horizon: int | None = None,
        stride: int = 1,
        device: Any = None,
    ) -> dict[str, Any]:
        """`batch_size` windows from all shards, split in proportion to their transitions.

        Same keys, shapes and dtypes as `EpisodeReplay.sample`; the shards' parts are shuffled
        together so any slice of the batch is a fair sample. With several tasks stored, each item
        picks a task uniformly (among tasks with a window in any shard), then a shard in
        proportion to its windows of that task, and the shard draws within that task: the
        global batch is task-balanced like `EpisodeReplay`'s. A shard that cannot serve its part
        (restarted with fewer episodes, or no episode long enough) is dropped after a size
        refresh and the batch is redrawn from the others.
        """
        if batch_size < 1:
            raise ValueError(f"need batch_size >= 1, got {batch_size}")
        usable = np.ones(self.num_shards, bool)
        error: ValueError | None = None
        while True:
            plan = self._split(batch_size, usable, horizon, stride)
            if plan is None:
                raise error or ValueError(
                    f"replay is empty: {self.num_shards} shards hold no transitions"
                )
            refs = [
                self.shards[i].sample.remote(len(t), horizon, stride, tasks=t)
                if t is not None
                else self.shards[i].sample.remote(n, horizon, stride)
                for i, (n, t) in plan.items()
            ]
            parts, failed = [], []
            for i, ref in zip(plan, refs):
                try:
                    parts.append(self._get(ref))
                except ValueError as e:  # no window of this length in that shard (or bad arguments)
                    failed.append(i)
                    error = e
            if not failed:
                return _merge(parts, self._rng, device)
            usable[failed] = False
            self.refresh()

    def _split(
        self, batch_size: int, usable: np.ndarray, horizon: int | None, stride: int
    ) -> dict[int, tuple[int, np.ndarray | None]] | None:
        """{shard: (items, per-item tasks or None)} for one batch; None when nothing is usable.

        One task (or none known): the split in proportion to shard transitions (the draws of a
        single-task run are unchanged). Several: task-balanced, by per-(shard, task) windows.
        """
        if horizon is None and stride == 1:
            windows = self._windows
        else:  # another window length: other counts (not cached; a rare call)
            windows = self._get([s.window_counts.remote(horizon, stride) for s in self.shards])
        task_ids = sorted({t for i in np.flatnonzero(usable) for t in windows[i]})
        if len(task_ids) > 1:
            counts = np.array(
                [[windows[i].get(t, 0) for t in task_ids] for i in range(len(usable))]
            )
            counts[~usable] = 0
            per_task = np.bincount(
                self._rng.integers(0, len(task_ids), batch_size), minlength=len(task_ids)
            )
            split = np.stack(
                [self._rng.multinomial(n, c / c.sum()) for n, c in zip(per_task, counts.T)], 1
            )  # [K, tasks]
            ids = np.asarray(task_ids, np.int64)
            return {
                int(i): (int(split[i].sum()), np.repeat(ids, split[i]))
                for i in np.flatnonzero(split.sum(1))
            }
        weights = np.where(usable, self._sizes[:, 0], 0).astype(np.float64)
        if weights.sum() <= 0:
            return None
        counts = self._rng.multinomial(batch_size, weights / weights.sum())
        return {int(i): (int(counts[i]), None) for i in np.flatnonzero(counts)}

    # ------------------------------------------------------------------ checkpoints
    def snapshot(self) -> dict[str, Any]:
        """Snapshot every shard (in parallel) and return the state for the checkpoint.

        Call it right before writing the checkpoint: `restore(state)` later drops any episode
        a shard snapshotted after this point.
        """
        shard_states = self._update(
            range(self.num_shards), [s.snapshot.remote() for s in self.shards]
        )
        return self._state([_small(s) for s in shard_states])

    def state(self) -> dict[str, Any]:
        """Checkpoint state without writing files (RNGs, next ids, routing counter)."""
        return self._state(self._get([s.get_state.remote() for s in self.shards]))

    def _state(self, shard_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "num_shards": self.num_shards,
            "rng": self._rng.bit_generator.state,
            "episodes_added": self._added,
            "shards": shard_states,
        }

    def restore(self, state: dict[str, Any] | None, source: str = "the checkpoint") -> None:
        """Return to a checkpoint's replay: each shard reloads its files up to the state.
        None (the run has no checkpoint): empty every shard, in memory and on disk, since the
        run folder may hold an older run's shard files."""
        if state is None:
            self.clear()
            return
        if int(state.get("num_shards", -1)) != self.num_shards:
            raise UserError(
                f"{source}'s replay has {state.get('num_shards')} shards, this run "
                f"{self.num_shards}: resume with replay_shards={state.get('num_shards')}"
            )
        self._update(
            range(self.num_shards),
            [s.restore.remote(st) for s, st in zip(self.shards, state["shards"])],
        )
        self._rng.bit_generator.state = state["rng"]
        self._added = int(state["episodes_added"])

    def clear(self) -> None:
        """Empty every shard in memory and on disk (e.g. `resume=true` found no checkpoint)."""
        self._update(range(self.num_shards), [s.clear.remote() for s in self.shards])

    def close(self) -> None:
        """Kill the shard actors for good (their files stay): frees the directories for a new
        client; the object is unusable afterwards."""
        import ray

        for shard in self.shards:
            ray.kill(shard, no_restart=True)
        self.shards = []

    @staticmethod
    def _get(refs: Any) -> Any:
        """`ray.get`, re-raising a shard's UserError/ValueError as itself: one clear line for
        the CLI instead of Ray's wrapper with the remote traceback."""
        import ray

        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, UserError | ValueError):
                raise e.cause from None
            raise


def _small(shard_state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in shard_state.items() if k not in ("num_transitions", "num_episodes")}


def _merge(
    parts: list[dict[str, np.ndarray]], rng: np.random.Generator, device: Any
) -> dict[str, Any]:
    """Concatenate shard batches along the batch axis in a random order (one copy)."""
    sizes = [len(p["task"]) for p in parts]
    total = sum(sizes)
    perm = rng.permutation(total)
    bounds = np.cumsum([0, *sizes])
    out: dict[str, Any] = {}
    for key, first in parts[0].items():
        axis = _BATCH_AXIS.get(key, 1)
        shape = list(first.shape)
        shape[axis] = total
        buf = np.empty(shape, first.dtype)
        for p, lo, hi in zip(parts, bounds[:-1], bounds[1:]):
            index = (slice(None),) * axis + (perm[lo:hi],)
            buf[index] = p[key]
        out[key] = buf
    if device is not None:
        import torch

        return {k: torch.from_numpy(v).to(device) for k, v in out.items()}
    return out
