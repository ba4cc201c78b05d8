"""Arrow IPC snapshots of an `EpisodeReplay`: the save/load behind `EpisodeReplay.save/load`.

Kept apart from the ring buffer because it is its own concern (file format, crash safety,
corruption checks) and the only user of pyarrow. A snapshot directory holds immutable chunk files
`episodes_<first id>_<generation>.arrow` and a `manifest.json` naming the live ones. save() writes
only episodes that no earlier snapshot holds, then the manifest (atomically, last), then deletes
chunks that no longer hold live episodes. A kill at any point leaves the previous manifest and
every file it names intact. One writer per directory is assumed (a replay shard owns its
directory).
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ldmpc.atomic import atomic_write_bytes, fsync_dir, is_temp_file
from ldmpc.errors import UserError
from ldmpc.replay import EpisodeReplay, _EpisodeTable, _ranges

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNK_PREFIX = "episodes_"
CHUNK_BYTES = 64 << 20  # target size of one snapshot chunk file: bounds memory and dead disk space


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


def load_snapshot(replay: EpisodeReplay, path: Path, before_id: int | None = None) -> None:
    """Restore `replay`'s episodes, ids and order from `path`; its RNG is left alone.

    The replay's own capacity applies: a larger snapshot loses its oldest episodes. Nothing is
    changed when any file is missing or corrupt (everything is read and checked first).
    `before_id` keeps only episodes with smaller ids: a run snapshots its replay just before
    its checkpoint, so after a kill in between the snapshot may hold episodes that the
    checkpoint (its counters, its RNG) has not seen yet; resuming drops them.
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
    if len(lengths) != m["num_episodes"] or int(lengths.sum()) != m["num_transitions"]:
        raise UserError(
            f"replay snapshot {path} is inconsistent with its manifest: "
            f"{len(lengths)} episodes / {int(lengths.sum())} transitions found, "
            f"manifest says {m['num_episodes']} / {m['num_transitions']}"
        )
    next_id = m["next_episode_id"]
    if before_id is not None and before_id < next_id:  # ids ascend: the dropped ones are a suffix
        cols = {k: v[cols["id"] < before_id] for k, v in cols.items()}
        lengths, next_id = cols["length"], before_id
    rows = int((lengths + 1).sum())
    replay._alloc(max(rows + rows // 4, 1))
    offset = 0
    for arr in arrays:
        n = min(len(arr["reward"]), rows - offset)  # before_id: the dropped suffix is not copied
        if n <= 0:
            break
        replay._obs[offset : offset + n] = arr["obs"][:n]
        replay._action[offset : offset + n] = arr["action"][:n]
        replay._reward[offset : offset + n] = arr["reward"][:n]
        replay._terminated[offset : offset + n] = arr["terminated"][:n]
        offset += n
    starts = np.cumsum(lengths + 1) - (lengths + 1)
    replay._table = _EpisodeTable.from_columns(start=starts, **cols)
    replay._write = rows
    replay._num_transitions = int(lengths.sum())
    replay._next_id = next_id
    replay._index_cache.clear()
    saved_upto = int(cols["id"][-1]) if len(lengths) else -1
    replay._saved = _SaveState(path, m["generation"], list(m["chunks"]), saved_upto)
    if next_id != m["next_episode_id"]:  # dropped episodes: their ids will be reused, so the
        replay._saved = None  # next save rewrites the snapshot instead of adding to its chunks
    while replay.num_transitions > replay.capacity:
        replay._evict_oldest()
