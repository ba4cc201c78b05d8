"""Crash-safe file writes: a reader sees either the old file or the complete new one.

Checkpoints and replay snapshots must survive a kill at any instant (docs/design.md §4, "nothing is
lost"). Every write goes to a temp file in the *same* directory (so the final rename never crosses
filesystems), is flushed and fsynced, then `os.replace`d over the target; the directory is fsynced
too so the rename itself is durable. Temp files carry TMP_MARKER so a later run can sweep them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TMP_MARKER = ".tmp-"


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
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}{TMP_MARKER}", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Atomically replace `path` with `data`."""
    with atomic_writer(path) as f:
        f.write(data)


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Atomically replace `dst` with a copy of `src`, streaming (no whole-file buffer in memory)."""
    with open(src, "rb") as fin, atomic_writer(dst) as fout:
        shutil.copyfileobj(fin, fout, length=1 << 20)


def is_temp_file(name: str) -> bool:
    """True for leftovers of an interrupted atomic write (safe to delete when no writer runs)."""
    return name.startswith(".") and TMP_MARKER in name
