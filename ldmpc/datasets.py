"""Offline datasets: TD-MPC2's episode files and ldmpc's Arrow datasets, read, checked against a
run, and converted (`ldmpc data convert`).

Formats (facts from TD-MPC2's `trainer/offline_trainer.py`, `common/buffer.py`, its multitask
env wrapper and its issue tracker; no code of theirs is used):
- TD-MPC2: a directory of `*.pt` files, each a `torch.save`d TensorDict of batch shape
  [episodes N, L+1]: obs [N, L+1, D], action [N, L+1, A], reward [N, L+1], task [N, L+1] (int;
  constant within an episode) and, in newer files, terminated [N, L+1]. Step 0 holds the first
  observation only: its action and reward are fillers (NaN since Dec 2023, arbitrary before), so
  action[t+1] and reward[t+1] belong to the step obs[t] -> obs[t+1]. All episodes of a file have
  one length (L+1 = 501 in their mt30 data, 101 in mt80). Observations are zero-padded to the
  widest task of the set and actions padded to its largest action (mt30: 24 and 6). Task ids
  index TD-MPC2's mt80 list, whose first 30 entries are mt30 in the same order (maintainer's
  answer in tdmpc2 issue #65), so one table serves both.
- ldmpc: a directory written by `EpisodeReplay.save` (Arrow chunks + manifest.json) plus
  `tasks.json`, the task names its episodes' task ids index. Without tasks.json (e.g. a run's
  own replay folder) the ids index the training run's `cfg.tasks` (`convert` keeps them so).
- Episodes without task ids (a TD-MPC2 file without `task`) are taken as the run's single task:
  the format cannot tell which task they hold.

Fitting episodes to a run: task names become indices into cfg.tasks (episodes of other tasks are
dropped and counted); observation columns beyond the task's own width must be zero (padding) and
are cut; action columns beyond it are cut (the env never sees them: TD-MPC2 crops them too); both
are then zero-padded to the run's widths (multitask runs). Anything else is one line naming the
file and both shapes. Loading never runs code from a file: torch.load(weights_only=True); a
TensorDict file is allowed only its own package's classes, and only when that package is there.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pickle
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ldmpc.errors import UserError
from ldmpc.tasks import TASK_SETS

if TYPE_CHECKING:
    from ldmpc.config import Config

TDMPC2_TASKS: list[str] = TASK_SETS["mt80"]  # what TD-MPC2's task ids index (mt30 = first 30)
TASKS_FILE = "tasks.json"
MANIFEST = "manifest.json"  # written last by EpisodeReplay.save: its presence marks a dataset
REQUIRED = ("obs", "action", "reward")
_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError)


# ------------------------------------------------------------------------------ finding
@dataclass(frozen=True)
class Source:
    """A dataset found on disk (nothing read yet): its kind and files."""

    path: Path
    kind: str  # "tdmpc2" | "arrow"
    files: tuple[Path, ...]


def find_dataset(path: str | os.PathLike[str], key: str = "data_dir") -> Source:
    """Where the dataset is and which format; cheap (config validation calls it).

    A directory with manifest.json is an ldmpc Arrow dataset; else its `*.pt` files are TD-MPC2
    episode files; a single `.pt` file is one TD-MPC2 file.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{key}={path}: no such file or directory")
    if p.is_file():
        if p.suffix != ".pt":
            raise UserError(f"{key}={path}: expected a directory or a TD-MPC2 .pt episode file")
        return Source(p, "tdmpc2", (p,))
    if (p / MANIFEST).is_file():
        return Source(p, "arrow", (p / MANIFEST,))
    files = tuple(sorted(f for f in p.glob("*.pt") if f.is_file()))
    if files:
        return Source(p, "tdmpc2", files)
    raise UserError(
        f"{key}={path}: no dataset there (expected TD-MPC2 *.pt episode files or an ldmpc "
        f"Arrow dataset with {MANIFEST}; see `ldmpc data convert`)"
    )


# ------------------------------------------------------------------------------ reading
@dataclass
class Block:
    """Episodes of one length: obs [N, T+1, *obs], action [N, T, A], reward [N, T],
    terminated [N, T] bool, task_ids [N] (None: unknown) indexing `names` (None: the run's)."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    task_ids: np.ndarray | None
    names: list[str] | None
    origin: str

    def __len__(self) -> int:
        return len(self.reward)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__).split(". This is an internal")[0]


# What a pickled TensorDict may name, and nothing else of its package (no function that merely
# lives in it): the classes and rebuild helpers tensordict itself allow-lists for
# torch.load(weights_only=True) (its `_reductions.py`, 0.15), plus the module paths of older
# releases. Checked by saving TensorDicts with tensordict 0.2.1 (TD-MPC2's era: the class and
# `utils._StringOnlyDict`) and 0.15.3 (`_reductions._make_td` + `_td.TensorDict`; a lazy stack,
# a locked or a consolidated TensorDict add the other three).
TENSORDICT_GLOBALS = (
    "tensordict._td.TensorDict",
    "tensordict._lazy.LazyStackedTensorDict",
    "tensordict._reductions._make_td",
    "tensordict._reductions._rebuild_tensordict_files_consolidated",
    "tensordict.utils._LockedSchema",
    "tensordict.tensordict.TensorDict",  # tensordict <= 0.2
    "tensordict.tensordict.LazyStackedTensorDict",
    "tensordict.utils._StringOnlyDict",  # <= 0.4: a dict subclass, rebuilt as a plain dict
)
# weights_only loading fills only plain dicts (SETITEMS): a dict subclass is rebuilt as a dict,
# as tensordict 0.15 itself registers it
_AS_DICT = "tensordict.utils._StringOnlyDict"


def _allowed_globals(names: list[str], path: Path) -> list[Any]:
    """(object, name) pairs for the globals a TensorDict file names: only TENSORDICT_GLOBALS,
    and only when tensordict is installed (each is registered under the name the file uses)."""
    foreign = [g for g in names if g not in TENSORDICT_GLOBALS]
    if foreign:
        raise UserError(
            f"{path} holds objects that safe loading refuses ({foreign[0]}); ldmpc reads .pt "
            "files holding a dict of tensors or a TensorDict"
        )
    if names and importlib.util.find_spec("tensordict") is None:
        raise UserError(
            f"{path} holds a TensorDict: reading it needs the `tensordict` package (pip install "
            "tensordict), which ldmpc does not install; or, where it is installed, re-save the "
            "file as plain tensors with torch.save(td.to_dict(), path)"
        )
    out: list[Any] = []
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            obj = dict if name == _AS_DICT else getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            raise UserError(
                f"{path} names {name}, which the installed tensordict lacks (the file was "
                "written with another tensordict version)"
            ) from None
        out.append((obj, name))
    return out


def _torch_load(path: Path) -> Any:
    """torch.load(weights_only=True), memory-mapped where the file format allows (a TD-MPC2
    chunk is ~10 GB: only the episodes kept are copied into RAM)."""
    import torch

    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty")
    mmap = zipfile.is_zipfile(path)
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path) if mmap else []
    except _LOAD_ERRORS as e:
        raise UserError(f"{path} is corrupt or truncated: {_first_line(e)}") from None
    names = list(unsafe)
    for _ in range(8):  # legacy-format files name their globals only as loading meets them
        try:
            with torch.serialization.safe_globals(_allowed_globals(names, path)):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            marker = "Unsupported global: GLOBAL "
            name = str(e).split(marker)[1].split()[0] if marker in str(e) else None
            if name is None or name in names:
                raise UserError(f"{path} is corrupt or truncated: {_first_line(e)}") from None
            names.append(name)
        except _LOAD_ERRORS as e:
            raise UserError(f"{path} is corrupt or truncated: {_first_line(e)}") from None
    raise UserError(f"{path} names too many classes to load safely: {', '.join(names)}")


def _fields(obj: Any, path: Path) -> dict[str, np.ndarray]:
    """obs/action/reward (+ task, terminated) of a dict or TensorDict as numpy arrays."""
    import torch

    if not hasattr(obj, "keys"):
        raise UserError(
            f"{path} holds a {type(obj).__name__}; expected a dict or TensorDict with keys "
            "obs, action, reward (and optionally task, terminated)"
        )
    keys = set(obj.keys())
    missing = [k for k in REQUIRED if k not in keys]
    if missing:
        raise UserError(f"{path} lacks '{missing[0]}' (has: {', '.join(sorted(map(str, keys)))})")
    out = {}
    for key in (*REQUIRED, "task", "terminated"):
        if key not in keys:
            continue
        value = obj[key]
        if not isinstance(value, torch.Tensor):
            raise UserError(
                f"{path}: '{key}' is a {type(value).__name__}, expected a tensor "
                "(dict observations are not supported)"
            )
        try:
            out[key] = value.detach().numpy()
        except TypeError:
            raise UserError(f"{path}: '{key}' has dtype {value.dtype}, which numpy lacks") from None
    return out


def read_tdmpc2_file(path: Path) -> Block:
    """One TD-MPC2 episode file as a Block: shapes checked, step-0 fillers dropped, task ids
    (mt80 indices) taken from step 0. Arrays stay memory-mapped until used."""
    f = _fields(_torch_load(path), path)
    if f["reward"].ndim == 1:  # one episode saved alone: [L+1, ...]
        f = {k: v[None] for k, v in f.items()}
    reward, obs, action = f["reward"], f["obs"], f["action"]
    if reward.ndim != 2 or reward.shape[1] < 2:
        raise UserError(f"{path}: reward {list(reward.shape)} must be [episodes, L+1] with L >= 1")
    lead = list(reward.shape)
    n, steps = lead
    if n < 1:
        raise UserError(f"{path} holds no episodes (reward {lead})")
    if obs.ndim < 3 or list(obs.shape[:2]) != lead or 0 in obs.shape:
        raise UserError(f"{path}: obs {list(obs.shape)} must be [{n}, {steps}, obs_dim >= 1]")
    if action.ndim != 3 or list(action.shape[:2]) != lead or action.shape[2] < 1:
        raise UserError(
            f"{path}: action {list(action.shape)} must be [{n}, {steps}, action_dim >= 1]"
        )
    for key in ("task", "terminated"):
        if key in f and list(f[key].shape) != lead:
            raise UserError(f"{path}: {key} {list(f[key].shape)} must be {lead}")
    task_ids = None
    if "task" in f:
        task = f["task"]
        if task.dtype.kind not in "iu":  # ids stored as floats must be whole numbers
            first = np.asarray(task[:, 0], np.float64)
            bad = np.flatnonzero(~np.isfinite(first) | (first != np.round(first)))
            if len(bad):
                raise UserError(
                    f"{path}: task id {first[bad[0]]} of episode {int(bad[0])} is not an integer"
                )
        if not np.array_equal(task, np.broadcast_to(task[:, :1], task.shape)):
            raise UserError(f"{path}: the task id changes within an episode")
        task_ids = np.asarray(task[:, 0], np.int64)
        bad = task_ids[(task_ids < 0) | (task_ids >= len(TDMPC2_TASKS))]
        if len(bad):
            raise UserError(
                f"{path}: task id {int(bad[0])} is outside TD-MPC2's {len(TDMPC2_TASKS)}-task list"
            )
    term = f.get("terminated")
    terminated = np.zeros(reward[:, 1:].shape, bool)
    if term is not None:
        terminated = np.nan_to_num(np.asarray(term[:, 1:], np.float32)) != 0
    return Block(
        obs=obs,
        action=action[:, 1:],
        reward=reward[:, 1:],
        terminated=terminated,
        task_ids=task_ids,
        names=TDMPC2_TASKS if task_ids is not None else None,
        origin=str(path),
    )


def _check_finite(block: Block, i: int) -> None:
    """Episode i holds finite values: checked per episode as it is copied (a whole memory-mapped
    chunk is never scanned at once, and episodes that are left out are not read)."""
    for key in ("obs", "action", "reward"):
        arr = getattr(block, key)[i]
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise UserError(
                f"{block.origin}: {key} of episode {i} holds NaN or inf "
                "(beyond TD-MPC2's step-0 fillers)"
            )


# (task ids or None, the names they index or None, lengths, origin) of a block's episodes
EpisodeTasks = tuple[np.ndarray | None, list[str] | None, np.ndarray, str]


@dataclass
class Dataset:
    """An opened dataset: its blocks (memory-mapped TD-MPC2 files, or one block per episode of
    an Arrow dataset) and an upper bound of its transitions (the replay capacity it needs)."""

    source: Source
    transitions: int
    obs_shape: tuple[int, ...]
    action_dim: int
    obs_dtype: np.dtype
    _blocks: list[Block] = field(default_factory=list)
    _replay: Any = None  # Arrow: the dataset loaded into an EpisodeReplay
    _names: list[str] | None = None

    def blocks(self) -> Iterator[Block]:
        """The episodes, block by block (`fill` checks the values of those it keeps)."""
        if self._replay is None:
            yield from self._blocks
            return
        for ep in self._replay.episodes():  # one copy at a time
            yield Block(
                obs=ep["obs"][None],
                action=ep["action"][None],
                reward=ep["reward"][None],
                terminated=ep["terminated"][None],
                task_ids=np.array([ep["task"]]),
                names=self._names,
                origin=f"{self.source.path} (episode id {ep['id']})",
            )

    def episode_tasks(self) -> Iterator[EpisodeTasks]:
        """(task ids, the names they index, lengths, origin) of each block's episodes, without
        reading observations: what `fill` sizes the replay by before copying anything."""
        if self._replay is None:
            for b in self._blocks:
                yield b.task_ids, b.names, np.full(len(b), b.reward.shape[1]), b.origin
            return
        table = self._replay._table  # the episode table: ids and lengths, no data
        yield table.col("task"), self._names, table.col("length"), str(self.source.path)

    def task_names(self) -> list[str] | None:
        """Names of the tasks present, in the order of the list the ids index (None: unknown)."""
        if self._replay is not None:
            return self._names
        if any(b.task_ids is None for b in self._blocks):
            return None
        present = set(np.concatenate([b.task_ids for b in self._blocks]).tolist())
        return [name for i, name in enumerate(TDMPC2_TASKS) if i in present]


def open_dataset(path: str | os.PathLike[str], key: str = "data_dir") -> Dataset:
    """Find and open a dataset; every problem is one line naming the file."""
    source = find_dataset(path, key)
    if source.kind == "arrow":
        return _open_arrow(source)
    blocks = [read_tdmpc2_file(f) for f in source.files]
    shapes = {(b.obs.shape[2:], b.action.shape[2], b.obs.dtype.str) for b in blocks}
    if len(shapes) > 1:
        raise UserError(f"{key}={path}: its files disagree on obs/action shapes: {sorted(shapes)}")
    obs_shape, action_dim, dtype = shapes.pop()
    total = sum(b.reward.size for b in blocks)
    return Dataset(source, total, tuple(obs_shape), int(action_dim), np.dtype(dtype), blocks)


def _open_arrow(source: Source) -> Dataset:
    from ldmpc.replay import EpisodeReplay

    try:
        m = json.loads((source.path / MANIFEST).read_text())
        obs_shape = tuple(int(d) for d in m["obs_shape"])
        action_dim, transitions = int(m["action_dim"]), int(m["num_transitions"])
        dtype = np.dtype(m["obs_dtype"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{source.path / MANIFEST} is corrupt: {type(e).__name__}: {e}") from None
    if action_dim < 1 or not obs_shape or min(obs_shape) < 1:
        raise UserError(
            f"{source.path / MANIFEST}: obs_shape {list(obs_shape)} action_dim {action_dim}; "
            "both need sizes >= 1"
        )
    names = _read_task_names(source.path)
    replay = EpisodeReplay(
        capacity=max(1, transitions),
        horizon=1,
        obs_shape=obs_shape,
        action_dim=action_dim,
        obs_dtype=dtype,
    )
    replay.load(source.path)
    ids = replay._table.col("task")
    if len(ids) and ids.min() < 0:
        raise UserError(f"{source.path}: an episode's task id is {int(ids.min())} (< 0)")
    if names is not None and len(ids) and ids.max() >= len(names):
        raise UserError(
            f"{source.path}: an episode's task id {int(ids.max())} is beyond the "
            f"{len(names)} task(s) its {TASKS_FILE} names"
        )
    return Dataset(source, transitions, obs_shape, action_dim, dtype, _replay=replay, _names=names)


def _read_task_names(path: Path) -> list[str] | None:
    file = path / TASKS_FILE
    if not file.is_file():
        return None
    try:
        names = json.loads(file.read_text())
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("expected a list of task names")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{file} is corrupt: {type(e).__name__}: {e}") from None
    return names


# ------------------------------------------------------------------------------ fitting
@dataclass(frozen=True)
class Target:
    """What episodes must become: task list (None: keep the dataset's ids), the padded shapes,
    and each task's own observation and action widths (before padding)."""

    tasks: list[str] | None
    obs_shape: tuple[int, ...]
    action_dim: int
    obs_widths: tuple[int, ...]
    action_widths: tuple[int, ...]
    obs_dtype: np.dtype

    def describe(self, k: int) -> str:
        name = f"task={self.tasks[k]}" if self.tasks else f"task id {k}"
        obs = [self.obs_widths[k]] if len(self.obs_shape) == 1 else list(self.obs_shape)
        return f"{name} has obs_shape {obs} action_dim {self.action_widths[k]}"


def run_target(cfg: Config) -> Target:
    """A run's target: cfg.tasks, cfg.obs_shape/action_dim (the padded widths), and each task's
    own widths (`obs_dims`, `action_dims`)."""
    return Target(
        tasks=list(cfg.tasks),
        obs_shape=tuple(cfg.obs_shape),
        action_dim=int(cfg.action_dim),
        obs_widths=tuple(int(d) for d in cfg.obs_dims),
        action_widths=tuple(int(a) for a in cfg.action_dims),
        obs_dtype=np.dtype(np.uint8 if cfg.obs == "rgb" else np.float32),
    )


def own_target(ds: Dataset) -> Target:
    """Keep a dataset's shapes; task ids become indices into the names present (if known), or
    stay as they are (unnamed ids: e.g. a multitask run's replay folder, whose ids index that
    run's tasks)."""
    names = ds.task_names()
    if names is not None:
        n = max(1, len(names))
    else:
        ids = [t for t, _, _, _ in ds.episode_tasks() if t is not None and len(t)]
        n = 1 + max((int(t.max()) for t in ids), default=0)
    return Target(
        tasks=names,
        obs_shape=ds.obs_shape,
        action_dim=ds.action_dim,
        obs_widths=(ds.obs_shape[0],) * n,
        action_widths=(ds.action_dim,) * n,
        obs_dtype=np.dtype(np.float32) if ds.obs_dtype.kind == "f" else ds.obs_dtype,
    )


def _task_index(
    ids: np.ndarray | None, names: list[str] | None, n: int, origin: str, target: Target
) -> np.ndarray:
    """Each of n episodes' index into target.tasks, -1 for tasks the target does not train.
    Episodes without task ids are taken as the target's single task (nothing in the file can
    tell which task they are: a wrong one shows only as a shape mismatch)."""
    if ids is None:
        if target.tasks is not None and len(target.tasks) > 1:
            raise UserError(
                f"{origin} has no task ids; a run of {len(target.tasks)} tasks needs them"
            )
        return np.zeros(n, np.int64)
    ids = np.asarray(ids, np.int64)
    if names is None or target.tasks is None:  # ids index the target's list already
        limit = len(target.tasks) if target.tasks is not None else None
        if limit is not None and len(ids) and ids.max() >= limit:
            raise UserError(
                f"{origin}: task id {int(ids.max())} is beyond this run's "
                f"{limit} task(s) (add a {TASKS_FILE} naming the dataset's tasks)"
            )
        return ids
    lookup = {name: k for k, name in enumerate(target.tasks)}
    return np.array([lookup.get(names[i], -1) for i in ids], np.int64)


def _fit(block: Block, i: int, k: int, target: Target) -> tuple[np.ndarray, np.ndarray]:
    """Episode i's obs and actions cut to task k's own widths, then padded to the target's."""
    obs, action = block.obs[i], block.action[i]
    have = (
        f"{block.origin} holds obs_shape {list(obs.shape[1:])} action_dim {action.shape[1]}; "
        f"{target.describe(k)}"
    )
    if len(target.obs_shape) != 1 or obs.ndim != 2:  # pixels: exact shapes only
        if obs.shape[1:] != target.obs_shape or action.shape[1] != target.action_dim:
            raise UserError(have)
        return obs, action
    w, aw = target.obs_widths[k], target.action_widths[k]
    if obs.shape[1] < w or action.shape[1] < aw:
        raise UserError(have)
    if obs.shape[1] > w and np.any(obs[:, w:]):
        raise UserError(f"{have} (columns beyond {w} are not zero padding)")
    obs, action = obs[:, :w], action[:, :aw]
    if w < target.obs_shape[0]:
        obs = np.pad(obs, ((0, 0), (0, target.obs_shape[0] - w)))
    if aw < target.action_dim:
        action = np.pad(action, ((0, 0), (0, target.action_dim - aw)))
    return obs, action


@dataclass
class FillStats:
    episodes: int = 0
    transitions: int = 0
    longest: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # task name -> episodes left out
    tasks: set[int] = field(default_factory=set)  # target task indices with episodes

    def line(self) -> str:
        text = f"{self.episodes:,} episodes ({self.transitions:,} transitions)"
        if self.dropped:
            left = ", ".join(f"{k} ({v})" for k, v in sorted(self.dropped.items()))
            text += f"; left out episodes of other tasks: {left}"
        return text


def fill(replay: Any, ds: Dataset, target: Target) -> FillStats:
    """Add every episode of `ds` that belongs to `target`, fitted to its shapes, to `replay`.

    First from task ids and lengths alone: which episodes are kept (task ids checked) and the
    rows they need, reserved in `replay` at once (no regrowing while it fills); then each kept
    episode is checked for NaN/inf, fitted and copied."""
    stats = FillStats()
    transitions = episodes = 0
    for ids, names, lengths, origin in ds.episode_tasks():
        index = _task_index(ids, names, len(lengths), origin, target)
        for i in np.flatnonzero(index < 0):
            name = names[ids[i]] if names else str(ids[i])
            stats.dropped[name] = stats.dropped.get(name, 0) + 1
        transitions += int(lengths[index >= 0].sum())
        episodes += int((index >= 0).sum())
    replay.reserve(transitions, episodes)
    for block in ds.blocks():
        index = _task_index(block.task_ids, block.names, len(block), block.origin, target)
        for i in np.flatnonzero(index >= 0):
            _check_finite(block, int(i))
            obs, action = _fit(block, int(i), int(index[i]), target)
            replay.add_episode(
                {
                    "obs": obs,
                    "action": action,
                    "reward": block.reward[i],
                    "terminated": block.terminated[i],
                    "task": int(index[i]),
                }
            )
            T = block.reward.shape[1]
            stats.tasks.add(int(index[i]))
            stats.episodes += 1
            stats.transitions += T
            stats.longest = max(stats.longest, T)
    return stats


# ------------------------------------------------------------------------------ a run's replay
def load_for_run(cfg: Config) -> tuple[Any, dict[str, Any]]:
    """The whole dataset at cfg.data_dir in an EpisodeReplay sized to hold it (capacity
    max(buffer_size, dataset transitions)), and a summary a checkpoint keeps to match it."""
    from ldmpc.replay import EpisodeReplay, replay_args

    ds = open_dataset(cfg.data_dir)
    args = replay_args(cfg)
    replay = EpisodeReplay(**{**args, "capacity": max(args["capacity"], ds.transitions, 1)})
    stats = fill(replay, ds, run_target(cfg))
    where = f"data_dir={cfg.data_dir}"
    if stats.episodes == 0:
        present = ", ".join(ds.task_names() or ["unknown"])
        raise UserError(f"{where} holds no episode of task={cfg.task} (its tasks: {present})")
    try:
        replay.sample(1)  # the replay's own rule for which episodes are long enough
    except ValueError:
        raise UserError(
            f"{where}: its longest episode has {stats.longest} steps, too few for a training "
            f"window (horizon={cfg.horizon}, window={cfg.window})"
        ) from None
    print(f"offline dataset {cfg.data_dir} ({ds.source.kind}): {stats.line()}", flush=True)
    missing = [name for k, name in enumerate(cfg.tasks) if k not in stats.tasks]
    if missing:  # a multitask run still trains (and evaluates) them, on no data of their own
        print(
            f"ldmpc: warning: {where} holds no episode of {len(missing)} of this run's "
            f"{len(cfg.tasks)} tasks: {', '.join(missing)}",
            file=sys.stderr,
            flush=True,
        )
    summary = {"episodes": stats.episodes, "transitions": stats.transitions}
    return replay, summary


# ------------------------------------------------------------------------------ writing
def write_arrow(replay: Any, dst: Path, tasks: list[str] | None) -> None:
    """Write `replay` as an ldmpc dataset into `dst` (new or empty) via a sibling temp folder
    that is renamed into place: a kill leaves no half dataset behind."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        if tasks is not None:
            (tmp / TASKS_FILE).write_text(json.dumps(tasks, indent=1))
        replay.save(tmp)  # manifest.json last
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_tdmpc2(path: Path, episodes: list[dict[str, Any]], tasks: list[str] | None) -> None:
    """Write equal-length episodes as one TD-MPC2 episode file (a plain dict of tensors: step 0
    holds the first observation, NaN action and reward; task ids index TD-MPC2's mt80 list)."""
    import torch

    from ldmpc.atomic import atomic_writer

    lengths = {len(ep["reward"]) for ep in episodes}
    if len(lengths) != 1:
        raise UserError(f"{path}: TD-MPC2 files hold episodes of one length; got {sorted(lengths)}")
    obs = np.stack([ep["obs"] for ep in episodes])
    action = np.stack([ep["action"] for ep in episodes]).astype(np.float32)
    reward = np.stack([ep["reward"] for ep in episodes]).astype(np.float32)
    term = np.stack([ep["terminated"] for ep in episodes]).astype(np.float32)
    nan = np.full((len(episodes), 1), np.nan, np.float32)
    nan_action = np.full((len(episodes), 1, action.shape[2]), np.nan, np.float32)
    out = {
        "obs": torch.from_numpy(obs),
        "action": torch.from_numpy(np.concatenate([nan_action, action], 1)),
        "reward": torch.from_numpy(np.concatenate([nan, reward], 1)),
        "terminated": torch.from_numpy(np.concatenate([nan, term], 1)),
    }
    if tasks is not None:
        missing = sorted({tasks[ep["task"]] for ep in episodes} - set(TDMPC2_TASKS))
        if missing:
            raise UserError(f"{path}: task {missing[0]} has no id in TD-MPC2's task list")
        ids = np.array([TDMPC2_TASKS.index(tasks[ep["task"]]) for ep in episodes], np.int32)
        out["task"] = torch.from_numpy(np.repeat(ids[:, None], obs.shape[1], 1))
    with atomic_writer(path) as f:
        torch.save(out, f)


def _check_dst(out: Path, dst: str) -> None:
    """dst is new (or an empty directory) and its nearest existing parent is a directory this
    process can create entries in (tried with a temp folder, removed at once: permission bits
    alone do not tell, e.g. for root or /proc). Checked before any conversion work."""
    if out.exists() and (out.suffix == ".pt" or not out.is_dir() or any(out.iterdir())):
        raise UserError(f"dst={dst} already exists and is not an empty directory; choose a new one")
    probe = Path(os.path.abspath(out)).parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"dst={dst}: {probe} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ldmpc-probe-", dir=probe))
    except OSError as e:
        raise UserError(f"dst={dst}: cannot write in {probe} ({e.strerror or e})") from None


def convert(src: str, dst: str, task: str | None = None, obs: str | None = None) -> str:
    """`ldmpc data convert`: TD-MPC2 episode files (or an ldmpc dataset) -> an ldmpc Arrow
    dataset, or a TD-MPC2 file when dst ends in .pt. With `task=` only that task's (or task
    set's) episodes are kept, fitted to its shapes (and `obs=`); without, shapes and tasks stay
    as they are. Returns the summary line it prints."""
    from ldmpc.replay import EpisodeReplay

    if not task and obs not in (None, "state"):
        raise UserError(
            f"obs={obs} needs task=: it picks the task's observation shape; without task= "
            "the dataset's observations are kept as they are"
        )
    out = Path(dst).expanduser()
    _check_dst(out, dst)
    ds = open_dataset(src, key="src")
    if task:
        from ldmpc.config import load

        target = run_target(load([f"task={task}", f"obs={obs or 'state'}"]))
    else:
        target = own_target(ds)
        if target.tasks is None and len(target.obs_widths) > 1 and out.suffix == ".pt":
            raise UserError(
                f"src={src}: its episodes carry task ids without names ({TASKS_FILE} is absent), "
                f"which a TD-MPC2 file cannot keep (its ids index TD-MPC2's task list): add "
                f"{TASKS_FILE} to src, pass task=, or write an Arrow dataset (dst=<dir>)"
            )
    replay = EpisodeReplay(
        capacity=max(1, ds.transitions),
        horizon=1,
        obs_shape=target.obs_shape,
        action_dim=target.action_dim,
        obs_dtype=target.obs_dtype,
    )
    stats = fill(replay, ds, target)
    if stats.episodes == 0:
        if not task:
            raise UserError(f"src={src} holds no episodes")
        present = ", ".join(ds.task_names() or ["unknown"])
        raise UserError(f"src={src} holds no episode of task={task} (its tasks: {present})")
    try:
        if out.suffix == ".pt":
            write_tdmpc2(out, list(replay.episodes()), target.tasks)
        else:
            write_arrow(replay, out, target.tasks)
    except OSError as e:
        raise UserError(f"dst={dst}: writing it failed: {e.strerror or e}") from None
    if target.tasks:
        tasks = ", ".join(target.tasks)
    elif len(target.obs_widths) == 1:
        tasks = "one unnamed task"
    else:
        ids = ", ".join(map(str, sorted(stats.tasks)))
        tasks = f"unnamed task ids {ids} (they index the training run's tasks)"
    line = (
        f"converted {src} ({ds.source.kind}) -> {dst}: {stats.line()}; obs_shape "
        f"{list(target.obs_shape)} action_dim {target.action_dim}; tasks: {tasks}"
    )
    print(line, flush=True)
    return line
