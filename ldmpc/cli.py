"""`ldmpc train|eval|tune|tasks|data|import|export` with TD-MPC2-style `key=value` overrides.

Every user mistake ends as ONE line on stderr and exit code 2 (`UserError`); anything else is a
bug and keeps its traceback. `LDMPC_DEBUG=1` shows tracebacks for user errors too.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from ldmpc.errors import UserError

if TYPE_CHECKING:
    from ldmpc.config import Config

COMMANDS = {
    "train": "train an agent: ldmpc train task=cartpole-swingup model_size=1 steps=100000",
    "eval": "evaluate a checkpoint: ldmpc eval task=... checkpoint=path [eval_episodes=10]",
    "tune": "run a Ray Tune sweep: ldmpc tune tune_configs/<file>.yaml [key=value ...]",
    "tasks": "list the registered tasks, grouped by suite, and which suites work here",
    "data": "datasets: ldmpc data convert src=<dir|file.pt> dst=<dir|file.pt> [task=...]",
    "import": "a TD-MPC2 model: ldmpc import tdmpc2 src=<file.pt> dst=<new.pt> task=... [key=...]",
    "export": "to TD-MPC2: ldmpc export tdmpc2 src=<ckpt.pt> dst=<new.pt> task=... [key=...]",
}
DATA_USAGE = """usage: ldmpc data convert src=<dir|file.pt> dst=<dir|file.pt> [task=...] [obs=state]

Convert TD-MPC2 episode files (*.pt; task ids index TD-MPC2's mt80 list) into an ldmpc Arrow
dataset for `ldmpc train data_dir=<dst>`, or write a TD-MPC2 file when dst ends in .pt.
  src=   a TD-MPC2 .pt file, a directory of them, or an ldmpc dataset directory
  dst=   a new (or empty) directory; or a new .pt file
  task=  keep only this task's (or task set's) episodes, fitted to its observation/action sizes
         (TD-MPC2's zero padding is cut); default: keep everything as it is
  obs=   state | rgb (with task=)"""
DATA_KEYS = ("src", "dst", "task", "obs")
IMPORT_USAGE = """usage: ldmpc import tdmpc2 src=<file.pt> dst=<new.pt> task=<task> [key=value ...]

Convert a model file written by TD-MPC2 (its current layout under any tensordict version, or
the 2023 layout of its public checkpoints) into an ldmpc checkpoint for `ldmpc eval`.
task= is a task, or a task set (mt30, mt80) for a multitask model. The model's sizes are read
from its tensors and printed; they must fit the config (task=, model_size= and any other
key=value, as for `ldmpc train`). `ldmpc eval checkpoint=<TD-MPC2 file>` reads such a file
directly."""
EXPORT_USAGE = """usage: ldmpc export tdmpc2 src=<ckpt.pt> dst=<new.pt> task=<task> [key=value ...]

Write the world model of an ldmpc checkpoint (dynamics=mlp proposal=policy obs=state) as a
TD-MPC2 model file in its current layout ({"model": state_dict}), which TD-MPC2's own `load`
reads. The config (task=, model_size=, ...) must be the checkpoint's."""
USAGES = {"data": DATA_USAGE, "import": IMPORT_USAGE, "export": EXPORT_USAGE}


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage mistakes as a UserError (one line, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `ldmpc --help`)")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ldmpc",
        description="Latent Dynamics Diffusion MPC. Overrides are key=value, as in TD-MPC2.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, text in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text, add_help=False)
        p.add_argument("-h", "--help", action="store_true", help="show keys and exit")
        p.add_argument("args", nargs=argparse.REMAINDER, help="key=value overrides")
    return parser


def _print_keys(command: str) -> None:
    from ldmpc.config import help_text

    if command in USAGES:
        print(USAGES[command])
        return
    print(f"usage: ldmpc {command} [key=value ...]\n\n{COMMANDS[command]}\n\nkeys (default):")
    print(help_text())


def check_writable(path: str) -> None:
    """Fail early, with one line, when the run directory cannot be created or written."""
    target = os.path.abspath(path)
    probe = target
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"work_dir={path}: {probe} is not a writable directory")


def make_run_dir(cfg: Config) -> None:
    """Create the run directory now: as root `os.access` says yes to nearly everything (even
    /proc), so only creating it tells; any OSError is one line naming the path and the reason."""
    check_writable(cfg.work_dir)
    try:
        os.makedirs(cfg.run_dir, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"work_dir={cfg.work_dir}: cannot create the run directory {cfg.run_dir}: "
            f"{err.strerror or err}"
        ) from None


def check_precision(cfg: Config) -> Config:
    """`precision=bf16` without bf16 hardware is one line now (not inside a Ray actor later);
    `auto` is decided once, here, says what it chose and why, and the run's config carries the
    choice, so every actor computes in the same precision."""
    import dataclasses

    import torch

    from ldmpc.precision import resolve_precision
    from ldmpc.runtime import resolve_device

    dtype, why = resolve_precision(cfg.precision, resolve_device(cfg.device).type)
    if cfg.precision == "fp32":
        return cfg
    print(f"ldmpc: {why}", flush=True)
    return dataclasses.replace(cfg, precision="bf16" if dtype == torch.bfloat16 else "fp32")


def cmd_train(args: list[str]) -> int:
    from ldmpc.config import load

    cfg = check_precision(load(args))
    if cfg.address is None and cfg.data_dir is None:  # online, on this machine alone
        from ldmpc.memory import check_memory

        check_memory(cfg)
    make_run_dir(cfg)
    if cfg.data_dir is not None:  # offline: one process, no Ray
        from ldmpc.offline import run_offline

        run_offline(cfg)
        return 0
    from actors.ray_init import cluster_address

    cluster_address(cfg)  # a bad address= is one line now, not after RLlib's ~5 s import
    from actors.online import run_training

    run_training(cfg)
    return 0


def cmd_eval(args: list[str]) -> int:
    from ldmpc.config import load
    from ldmpc.evaluate import evaluate_checkpoint

    cfg = check_precision(load(args))
    if not cfg.checkpoint:
        raise UserError("eval needs checkpoint=<path to a .pt file written by ldmpc train>")
    evaluate_checkpoint(cfg)
    return 0


def cmd_tune(args: list[str]) -> int:
    if not args or "=" in args[0]:
        raise UserError(
            "tune needs a sweep file first: ldmpc tune tune_configs/<file>.yaml [key=value ...]"
        )
    from actors.sweep import run_sweep  # imports ray lazily, only once the file is checked

    return run_sweep(args[0], args[1:])


def cmd_data(args: list[str]) -> int:
    if not args or args[0] != "convert":
        got = f" (got {args[0]!r})" if args else ""
        raise UserError(
            f"data needs a subcommand{got}: ldmpc data convert src=... dst=... [task=...]"
        )
    from ldmpc.datasets import convert
    from ldmpc.errors import close_matches

    given: dict[str, str] = {}
    for item in args[1:]:
        key, sep, value = item.partition("=")
        if not sep or key not in DATA_KEYS:
            hint = close_matches(key, DATA_KEYS) if sep else ""
            raise UserError(
                f"data convert: bad argument '{item}'{hint}; keys: {', '.join(DATA_KEYS)}"
            )
        given[key] = value
    missing = [k for k in ("src", "dst") if not given.get(k)]
    if missing:
        raise UserError(f"data convert needs {missing[0]}=<path> (see `ldmpc data --help`)")
    convert(
        given["src"], given["dst"], task=given.get("task") or None, obs=given.get("obs", "state")
    )
    return 0


def cmd_import(args: list[str]) -> int:
    return _tdmpc2_transfer("import", args)


def cmd_export(args: list[str]) -> int:
    return _tdmpc2_transfer("export", args)


def _tdmpc2_transfer(command: str, args: list[str]) -> int:
    """`ldmpc import|export tdmpc2 src=... dst=... task=... [key=value ...]`: the config
    (task, model_size, ...) says what the model must fit; src/dst are the two files."""
    if not args or args[0] != "tdmpc2":
        got = f" (got {args[0]!r})" if args else ""
        raise UserError(
            f"{command} needs a format{got}: ldmpc {command} tdmpc2 src=... dst=... task=..."
        )
    paths = {k: v for k, _, v in (a.partition("=") for a in args[1:]) if k in ("src", "dst")}
    missing = [k for k in ("src", "dst") if not paths.get(k)]
    if missing:
        raise UserError(
            f"{command} tdmpc2 needs {missing[0]}=<path> (see `ldmpc {command} --help`)"
        )
    if not any(a.startswith("task=") for a in args[1:]):
        raise UserError(f"{command} tdmpc2 needs task=<task or task set> (the model's task)")
    from ldmpc.config import load
    from ldmpc.tdmpc2_models import export_tdmpc2, import_tdmpc2

    overrides = [a for a in args[1:] if a.partition("=")[0] not in ("src", "dst")]
    transfer = import_tdmpc2 if command == "import" else export_tdmpc2
    print(transfer(paths["src"], paths["dst"], load(overrides)))
    return 0


def cmd_tasks(args: list[str]) -> int:
    if args:
        raise UserError(f"`ldmpc tasks` takes no arguments, got: {' '.join(args)}")
    from ldmpc.tasks import format_registry

    print(format_registry())
    return 0


HANDLERS: dict[str, Callable[[list[str]], int]] = {
    "train": cmd_train,
    "eval": cmd_eval,
    "tune": cmd_tune,
    "tasks": cmd_tasks,
    "data": cmd_data,
    "import": cmd_import,
    "export": cmd_export,
}


def run(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    if ns.help:
        _print_keys(ns.command)
        return 0
    return HANDLERS[ns.command](list(ns.args))


def main(argv: list[str] | None = None) -> int:
    from ldmpc.mujoco_gl import configure_mujoco_gl

    configure_mujoco_gl()  # at process start, before anything imports dm_control (ray.rllib does)
    try:
        return run(argv)
    except UserError as err:
        if os.environ.get("LDMPC_DEBUG") == "1":
            traceback.print_exc()
        print(f"ldmpc: error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as err:
        print(f"ldmpc: interrupted{f' {err}' if str(err) else ''}", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:  # `ldmpc tasks | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
