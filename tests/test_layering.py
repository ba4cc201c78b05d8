"""The core never imports Ray (DESIGN.md §1): only the top floor may, so every piece of math
can be tested, profiled and debugged in one process without a Ray install."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "ldmpc"
TOP_FLOOR = {"algorithm.py", "cli.py"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_modules_do_not_import_ray_or_the_actor_packages() -> None:
    offenders = {
        str(path.relative_to(CORE)): sorted(_imported_roots(path) & {"ray", "actors", "learner"})
        for path in CORE.rglob("*.py")
        if path.relative_to(CORE).as_posix() not in TOP_FLOOR
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_top_floor_exists() -> None:
    assert all((CORE / name).is_file() for name in TOP_FLOOR)


def test_the_ray_worker_setup_hook_is_light() -> None:
    """Every Ray worker of a run (replay shards, Tune trials, idle workers) imports the hook's
    module first: it must resolve to a function without importing RLlib or torch (~7 s of CPU
    per worker here)."""
    script = (
        "import importlib, sys; from actors.ray_init import WORKER_SETUP_HOOK as hook; "
        "module, name = hook.rsplit('.', 1); fn = getattr(importlib.import_module(module), name); "
        "fn(); heavy = sorted(m for m in ('ray.rllib', 'torch', 'gymnasium') if m in sys.modules); "
        "print(callable(fn), heavy)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.split() == ["True", "[]"], proc.stdout + proc.stderr
