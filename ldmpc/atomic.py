"""Crash-safe file writes: a reader sees either the old file or the complete new one.

Checkpoints and replay snapshots must survive a kill at any instant (docs/design.md §4, "nothing is
lost"). Every write goes to a temp file in the *same* directory (so the final rename never crosses
filesystems), is flushed and fsynced, then `os.replace`d over the target; the directory is fsynced
too so the rename itself is durable. Temp files carry TMP_MARKER so a later run can sweep them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ldmpc.errors import UserError

TMP_MARKER = ".tmp-"
FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left, disk quota exceeded


class DiskFullError(UserError):
    """A write found no space: one line naming the file, the free space and what it needs.
    The file's previous version is untouched (the write went to a temp file)."""

    def __init__(self, target: Path, needed: int, exact: bool = False) -> None:
        try:
            free = shutil.disk_usage(target.parent).free
        except OSError:
            free = 0
        need = f"{_mb(needed)} needed" if exact else f"more than {_mb(needed)} needed"
        super().__init__(
            f"no space left to write {target}: {_mb(free)} free on its filesystem, {need}; "
            "its previous version is intact (free space, then resume=true)"
        )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _full(err: BaseException) -> bool:
    """ENOSPC/EDQUOT, also where a library re-raised it without errno (pyarrow, torch.save's
    writer: RuntimeError)."""
    if isinstance(err, OSError) and err.errno in FULL:
        return True
    return isinstance(err, OSError | RuntimeError) and any(
        os.strerror(code) in str(err) for code in FULL
    )


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make renames/unlinks in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Yield a binary file; on clean exit it atomically becomes `path`, on error it vanishes."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}{TMP_MARKER}", dir=target.parent)
    except OSError as err:
        if _full(err):
            raise DiskFullError(target, _size(target)) from err
        raise
    sink = None
    try:
        with os.fdopen(fd, "wb") as f:
            sink = _Sink(f)
            yield sink  # type: ignore[misc]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        written = _size(Path(tmp))  # what reached the disk (the file is closed by now)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        cause = sink.error if sink is not None and sink.error is not None else err
        if _full(cause):  # more than was written, and likely the size of the old version
            raise DiskFullError(target, max(written, _size(target))) from cause
        raise
    fsync_dir(target.parent)


class _Sink:
    """The temp file, remembering a failed write: torch.save's writer swallows the OSError
    and fails later with its own RuntimeError ("unexpected pos"), which names no cause."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Atomically replace `path` with `data`."""
    try:
        with atomic_writer(path) as f:
            f.write(data)
    except DiskFullError as err:  # it needs all of data
        raise DiskFullError(Path(path), len(data), exact=True) from err.__cause__


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Atomically replace `dst` with a copy of `src`, streaming (no whole-file buffer in memory)."""
    with open(src, "rb") as fin, atomic_writer(dst) as fout:
        shutil.copyfileobj(fin, fout, length=1 << 20)


def is_temp_file(name: str) -> bool:
    """True for leftovers of an interrupted atomic write (safe to delete when no writer runs)."""
    return name.startswith(".") and TMP_MARKER in name
