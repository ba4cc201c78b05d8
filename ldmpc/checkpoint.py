"""Checkpoints: atomic writes, a format version, a config fingerprint and safe (weights_only) loads.

Why each piece: a kill mid-write must never destroy the last good checkpoint (atomic temp+rename);
loading someone's file must not run code (torch.load(weights_only=True), so only tensors and plain
python are stored); and resuming or evaluating with a different task or model size must fail with
one line naming both, not with a shape error deep inside load_state_dict (fingerprint).

Run layout: <run_dir>/checkpoints/step_<N>.pt (the last `keep` are kept) plus latest.pt, a full
copy of the newest one that users can pass as `checkpoint=...`.
"""

from __future__ import annotations

import importlib.metadata
import os
import pickle
import re
import signal
import threading
import time
from collections import OrderedDict
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from ldmpc.atomic import atomic_copy, atomic_writer, fsync_dir, is_temp_file
from ldmpc.config import FINGERPRINT_ABSENT_MEANS
from ldmpc.errors import UserError

FORMAT_VERSION = 1
KEYS = ("format_version", "ldmpc_version", "fingerprint", "counters", "payload")
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")
_LEAVES = (type(None), bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.Size)


def ldmpc_version() -> str:
    try:
        return importlib.metadata.version("ldmpc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def to_safe(obj: Any, where: str = "payload") -> Any:
    """Convert `obj` to what torch.load(weights_only=True) accepts.

    numpy arrays become tensors, numpy scalars python scalars; dicts/lists/tuples are converted
    recursively. Anything else is a bug in the caller: TypeError naming where it sits.
    """
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, _LEAVES):
        return obj
    if isinstance(obj, dict):
        out = {k: to_safe(v, f"{where}.{k}") for k, v in obj.items()}
        return OrderedDict(out) if isinstance(obj, OrderedDict) else out
    if isinstance(obj, list | tuple):
        items = [to_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f"{where}: a {type(obj).__name__} cannot go into a weights_only checkpoint; "
        f"store tensors, numbers, strings, lists or dicts"
    )


def save_checkpoint(
    path: str | os.PathLike[str],
    payload: dict[str, Any],
    *,
    fingerprint: dict[str, Any],
    counters: dict[str, Any],
) -> Path:
    """Atomically write a checkpoint to `path` (parents are created); returns the path."""
    path = Path(path)
    obj = {
        "format_version": FORMAT_VERSION,
        "ldmpc_version": ldmpc_version(),
        "fingerprint": to_safe(fingerprint, "fingerprint"),
        "counters": to_safe(counters, "counters"),
        "payload": to_safe(payload),
    }
    with atomic_writer(path) as f:
        torch.save(obj, f)
    return path


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    expected_fingerprint: dict[str, Any] | None = None,
    map_location: str | torch.device | None = "cpu",
) -> dict[str, Any]:
    """Load and check a checkpoint; every problem is a one-line UserError naming the file.

    Returns the whole dict (format_version, ldmpc_version, fingerprint, counters, payload).
    """
    path = Path(path)
    obj = load_weights_only(path, "checkpoint", map_location)
    missing = [k for k in KEYS if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise UserError(f"checkpoint {path} is not an ldmpc checkpoint (missing {missing[0]!r})")
    if obj["format_version"] != FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} has format version {obj['format_version']} "
            f"(written by ldmpc {obj['ldmpc_version']}); this ldmpc {ldmpc_version()} reads "
            f"version {FORMAT_VERSION}"
        )
    if expected_fingerprint is not None:
        check_fingerprint(path, obj["fingerprint"], expected_fingerprint)
    return obj


def load_weights_only(
    path: Path, what: str, map_location: str | torch.device | None = "cpu"
) -> Any:
    """`torch.load(weights_only=True)` of a file (`what`: how messages name it); a missing,
    empty, corrupt or code-naming file is a one-line UserError. Used for ldmpc checkpoints and
    TD-MPC2 model files alike."""
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"{what} {path} is corrupt or truncated: the file is empty")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a valid pickle naming code: refuse to run it
            raise UserError(
                f"{what} {path} is unsafe to load with weights_only=True "
                f"(not written by ldmpc?): {_reason(e)}"
            ) from None
        raise UserError(f"{what} {path} is corrupt or truncated: {_reason(e)}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{what} {path} is corrupt or truncated: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    """The informative line of a torch/pickle error (torch wraps it in paragraphs of advice)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported" in ln:  # weights_only: "...: Unsupported global: GLOBAL x.y was not..."
            return ln[ln.index("Unsupported") :].split(" was not an allowed global")[0]
    first = lines[0] if lines else type(e).__name__
    return first.split(". This is an internal")[0]


def _norm(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    return value


def _show(value: Any) -> str:
    from ldmpc.config import format_value

    return "<unset>" if value is _MISSING else format_value(value)


_MISSING = object()


def check_fingerprint(path: Path, saved: dict[str, Any], expected: dict[str, Any]) -> None:
    """UserError listing every differing key with the checkpoint's and this run's value (a key
    that is left out for its older value reads as that value, `FINGERPRINT_ABSENT_MEANS`)."""
    saved, expected = FINGERPRINT_ABSENT_MEANS | saved, FINGERPRINT_ABSENT_MEANS | expected
    keys = [*expected, *(k for k in saved if k not in expected)]
    diff = [k for k in keys if _norm(saved.get(k, _MISSING)) != _norm(expected.get(k, _MISSING))]
    if diff:
        was = " ".join(f"{k}={_show(_norm(saved.get(k, _MISSING)))}" for k in diff)
        now = " ".join(f"{k}={_show(_norm(expected.get(k, _MISSING)))}" for k in diff)
        raise UserError(f"checkpoint {path} was trained with {was}; this run has {now}")


# ------------------------------------------------------------------------------- run layout
def checkpoint_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "checkpoints"


def _step_files(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(_STEP_RE.match(p.name), p) for p in folder.iterdir()]
    return sorted((int(m.group(1)), p) for m, p in found if m)


TEST_SAVE_DELAY_ENV = "LDMPC_TEST_SAVE_DELAY_S"  # tests: seconds a checkpoint write pauses


def save_run_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    payload: dict[str, Any],
    *,
    fingerprint: dict[str, Any],
    counters: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write step_<step>.pt, refresh latest.pt, delete all but the newest `keep` step files.

    Meant for one writer per run directory (it sweeps temp files left by a killed write).
    """
    if keep < 1:
        raise ValueError(f"keep={keep}: must be >= 1")
    folder = checkpoint_dir(run_dir)
    path = save_checkpoint(
        folder / f"step_{int(step)}.pt", payload, fingerprint=fingerprint, counters=counters
    )
    if delay := float(os.environ.get(TEST_SAVE_DELAY_ENV, "0")):  # tests: a slow write, with
        print(f"{TEST_SAVE_DELAY_ENV}: between {path.name} and latest.pt", flush=True)  # a line
        time.sleep(delay)
    atomic_copy(path, folder / "latest.pt")
    for _, old in _step_files(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    for leftover in folder.iterdir():  # temp files of a write that was killed (one writer per run)
        if is_temp_file(leftover.name):
            leftover.unlink(missing_ok=True)
    fsync_dir(folder)
    return path


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run: the highest step_<N>.pt, else latest.pt, else None.

    Step files are preferred because a kill between writing step_<N>.pt and refreshing latest.pt
    leaves latest.pt one checkpoint behind; every file present is complete (atomic writes).
    """
    steps = _step_files(run_dir)
    if steps:
        return steps[-1][1]
    latest = checkpoint_dir(run_dir) / "latest.pt"
    return latest if latest.is_file() else None


# ------------------------------------------------------------------------------- signals
RESTOP_S = 0.5  # how often a stop is raised again inside an abandonable call


class GracefulExit:
    """Turn SIGINT/SIGTERM into a flag so a training loop can checkpoint and exit cleanly.

    Usage: `with GracefulExit() as stop: while not stop.requested: ...` then save. A second
    SIGINT while a request is pending raises KeyboardInterrupt (a user's impatient Ctrl-C wins).
    Old handlers are restored on exit. Off the main thread (where Python cannot install signal
    handlers, e.g. inside some Ray actors) it installs nothing and `requested` stays False.
    """

    active: GracefulExit | None = None  # the one installed in this process (signals are global)

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signals = signals
        self.requested = False
        self.signum: int | None = None
        self.installed = False
        self.abandoning = 0  # depth of abandonable calls the main thread is in
        self._restopper: threading.Thread | None = None
        self._old: dict[int, Any] = {}
        self._depth = 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested:  # os.write: print() may be mid-write on this very thread
            name = signal.Signals(signum).name
            again = " (Ctrl-C again: exit now, without it)" if signum == signal.SIGINT else ""
            os.write(2, f"\nldmpc: {name}: stopping with a final checkpoint{again}\n".encode())
        self.requested = True
        self.signum = self.signum or signum
        if self.abandoning:
            if self._restopper is None:
                self._restopper = threading.Thread(target=self._restop, daemon=True)
                self._restopper.start()
            raise StopRequestedError(f"{signal.Signals(signum).name} during a long call")

    def _restop(self) -> None:
        """Deliver SIGTERM again while the main thread is still inside an abandonable call
        (`abandon_on_stop`): the first raise may have landed where Python drops it."""
        while True:
            time.sleep(RESTOP_S)
            if not self.abandoning or GracefulExit.active is not self:
                self._restopper = None
                return
            os.kill(os.getpid(), signal.SIGTERM)

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def __enter__(self) -> GracefulExit:
        self._depth += 1  # reentrant: a run's set-up and its loop share one (`graceful_exit`)
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._old[sig] = signal.signal(sig, self._handle)
            self.installed = True
            GracefulExit.active = self
        return self

    def reinstall(self) -> None:
        """Put this handler back after a library replaced it (Ray's core worker installs a
        SIGTERM handler that dumps a stack and aborts)."""
        if self.installed:
            for sig in self.signals:
                signal.signal(sig, self._handle)

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth:
            return
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        self.installed = False
        if GracefulExit.active is self:
            GracefulExit.active = None


TEST_ANNOUNCE_ENV = "LDMPC_TEST_ANNOUNCE"  # tests: a line on stdout as a long phase begins


def announce_for_tests(phase: str) -> None:
    """Stop drills (tests, benchmarks/stop_latency) send their signal once this line is read:
    "<TEST_ANNOUNCE_ENV>: <phase>", printed only when that variable is set."""
    if os.environ.get(TEST_ANNOUNCE_ENV):
        print(f"{TEST_ANNOUNCE_ENV}: {phase}", flush=True)


def graceful_exit() -> GracefulExit:
    """The stop handler already installed in this process (a run's set-up installs it before
    Ray starts, its loop reuses it), else a new one."""
    return GracefulExit.active or GracefulExit()


def reinstall_stop_handlers() -> None:
    """After a library installed its own SIGINT/SIGTERM handlers: ours again, if a run's."""
    if GracefulExit.active is not None:
        GracefulExit.active.reinstall()


class StopRequestedError(Exception):
    """A long unit of work inside a training loop (an evaluation) gave up because SIGINT or
    SIGTERM arrived; the loop then checkpoints the last consistent step."""


def abandon_on_stop(starting: bool) -> None:
    """Mark the start (`starting=True`) or end of a call the main thread may abandon at once
    on SIGINT/SIGTERM: one that can run far longer than a stop may wait (a compilation,
    10-90 s) and leaves no state half-changed when cut short (`ldmpc.compile`). Inside,
    the signal handler raises StopRequestedError instead of only setting the flag the loop
    polls, and re-raises it every RESTOP_S until the call is left (an exception raised in a
    weakref callback or a __del__ is printed and dropped, so one raise may not arrive). A
    stop already pending raises at the start. Off the main thread or outside a training loop
    it does nothing."""
    active = GracefulExit.active
    if active is None or threading.current_thread() is not threading.main_thread():
        return
    if not starting:
        active.abandoning = max(0, active.abandoning - 1)
        return
    if active.requested:
        raise StopRequestedError("a stop is pending")
    active.abandoning += 1


def stop_requested() -> bool:
    """True once SIGINT/SIGTERM reached this process's training loop (`GracefulExit`): long
    units of work inside it (an evaluation) poll this to give up within a step."""
    active = GracefulExit.active
    return active is not None and active.requested
