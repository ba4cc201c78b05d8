"""A private place for one local Ray that a test starts (in-process or in an `ldmpc` child)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def ray_temp_env(prefix: str = "ldr") -> Iterator[dict[str, str]]:
    """The variables a test's Ray needs, with a fresh RAY_TMPDIR removed on exit.

    The directory is short on purpose: Ray's AF_UNIX socket paths must stay under 107 bytes, so
    pytest's deep tmp_path will not do. RAY_ADDRESS is emptied so that a cluster started
    elsewhere on this machine is never joined; usage stats stay off (no network here). Ray's
    workers run at niceness 0, not Ray's default 15, so that under `make test`'s two pytest
    workers a test's actors share the cores with the other worker on equal terms. Callers merge
    the dict into a child's environment or set it with monkeypatch.
    """
    temp = tempfile.mkdtemp(prefix=prefix)
    try:
        yield {
            "RAY_TMPDIR": temp,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ADDRESS": "",
            "RAY_worker_niceness": "0",
        }
    finally:
        shutil.rmtree(temp, ignore_errors=True)
