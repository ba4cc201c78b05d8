"""`make train task=... obs=...`: lower-case make variables are config keys, forwarded after the
CPU budget so they win (the issue's `make train task=mw-door-open`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(*args: str) -> str:
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", "train", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    (line,) = [ln for ln in proc.stdout.splitlines() if "ldmpc.cli train" in ln]
    return line


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_train_forwards_config_keys_after_the_budget() -> None:
    plain = _dry_run()
    assert "task=cartpole-swingup" in plain and "obs=" not in plain
    line = _dry_run("task=mw-door-open", "obs=rgb", "ARGS=seed=3")
    budget_end = line.index("checkpoint_freq=2500")
    assert line.index("task=mw-door-open") > budget_end  # the CLI keeps a key's last value
    assert line.index("obs=rgb") > budget_end
    assert line.rstrip().endswith("seed=3")
