"""The one-way import graph (docs/design.md §5), checked on every file with no exemptions:

    ldmpc.cli (the command line)  ->  actors  ->  learner  ->  ldmpc core  ->  torch, gymnasium

- the core (every module of `ldmpc/` but the command line) imports no Ray, `actors`, `learner`
  or the command line, so every piece of math can be tested, profiled and debugged in one process;
- `learner/` imports the core and Ray, never `actors/`;
- nothing imports the command line; the command line imports the Ray layer only inside the
  commands that need it, so `ldmpc tasks` and `ldmpc train --help` start without Ray;
- importing a package changes nothing: MuJoCo's GL backend is chosen by an explicit call.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "ldmpc" / "cli.py"
RAY_LAYER = {"ray", "actors", "learner"}


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute module names `path` imports (anywhere, or only at module level)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _roots(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def _package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _offenders(files: list[Path], forbidden: set[str], exact: set[str] = frozenset()) -> dict:
    found = {}
    for path in files:
        names = _imports(path)
        bad = sorted((_roots(names) & forbidden) | (names & exact))
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def test_the_core_imports_neither_ray_nor_the_ray_layer_nor_the_cli() -> None:
    core = [p for p in _package_files("ldmpc") if p != CLI]
    assert len(core) > 40  # the walk found the package
    assert _offenders(core, RAY_LAYER, exact={"ldmpc.cli"}) == {}


def test_the_learner_never_imports_the_acting_side_or_the_cli() -> None:
    files = _package_files("learner")
    assert files
    assert _offenders(files, {"actors"}, exact={"ldmpc.cli"}) == {}


def test_the_ray_layer_never_imports_the_cli() -> None:
    assert _offenders(_package_files("actors"), set(), exact={"ldmpc.cli"}) == {}


def test_the_cli_imports_the_ray_layer_only_inside_commands() -> None:
    top = _roots(_imports(CLI, top_level_only=True))
    assert top & RAY_LAYER == set()
    assert _roots(_imports(CLI)) & {"actors"}  # it does reach the Ray layer, lazily


def _run(script: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=ROOT,
        env=env,
    )
    return proc.stdout.strip().splitlines()[-1]


def test_tasks_and_help_start_without_ray() -> None:
    """`ldmpc tasks` and `ldmpc train --help` pay no Ray/RLlib import (~5 s here)."""
    script = """
import contextlib, io, sys
from ldmpc.cli import run
out = io.StringIO()
with contextlib.redirect_stdout(out):
    codes = [run(["tasks"]), run(["train", "--help"])]
print(codes, "cartpole-swingup" in out.getvalue(), "ray" in sys.modules)
"""
    assert _run(script) == "[0, 0] True False"


def test_importing_the_packages_changes_nothing() -> None:
    """No module picks the GL backend as a side effect of being imported (an explicit
    `configure_mujoco_gl()` call does, at process start)."""
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    script = (
        "import os, actors.online, actors.sweep, learner.tdmpc_learner, ldmpc.envs.dmcontrol; "
        "print(os.environ.get('MUJOCO_GL'))"
    )
    assert _run(script, env) == "None"


def test_the_ray_worker_setup_hook_is_light() -> None:
    """Every Ray worker of a run (replay shards, Tune trials, idle workers) imports the hook's
    module first: it must resolve to a function without importing RLlib or torch (~7 s of CPU
    per worker here), and it chooses the GL backend."""
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    script = (
        "import importlib, os, sys; from actors.ray_init import WORKER_SETUP_HOOK as hook; "
        "module, name = hook.rsplit('.', 1); fn = getattr(importlib.import_module(module), name); "
        "fn(); heavy = sorted(m for m in ('ray.rllib', 'torch', 'gymnasium') if m in sys.modules); "
        "print(callable(fn), heavy, 'MUJOCO_GL' in os.environ)"
    )
    assert _run(script, env).split() == ["True", "[]", "True"]
