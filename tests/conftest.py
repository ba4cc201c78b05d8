"""Shared test fixtures."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
import torch

from actors.ray_init import SHIELD_ENV
from ldmpc.mujoco_gl import configure_mujoco_gl

# As every entry point does: the GL backend first, before any test module imports dm_control.
configure_mujoco_gl()

# One Ray auth token for the whole test process (and the `ldmpc` subprocesses it starts): a driver
# keeps the token of its first ray.init, so a later local Ray started with another token fails
# ("Failed to start GCS"). Set here, nothing is written to ~/.ray/auth_token.
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
# Each local Ray the tests start stops ~4 s sooner without the SIGTERM shield
# (actors/ray_init.py); test_train_signals.py turns it back on where it checks it.
os.environ.setdefault(SHIELD_ENV, "0")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with `heavy` tests run first, most heavy tests first, each module kept whole.

    `make test` hands whole modules to two pytest-xdist workers (`--dist loadfile`) in this
    order: starting with the long ones lets the many short modules fill in at the end, so both
    workers finish close together instead of one running a 5-minute module alone.
    """
    heavy: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        heavy[module] = heavy.get(module, 0) + (item.get_closest_marker("heavy") is not None)
    rank = {module: i for i, module in enumerate(sorted(heavy, key=lambda m: -heavy[m]))}
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tests use tiny tensors: one thread is faster there and immune to other processes on
    the 2 cores (2-thread torch stalls when another process holds a core, docs/design.md §3.4)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
