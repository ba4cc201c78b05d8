"""torch.compile with a clean fallback to eager.

torch.compile fails on some machines (on the 2-core CPU box inductor raised BackendCompilerFailed
inside TD-MPC2's compiled update; old GPUs lack Triton support). A run must not die for a speed
feature: the first failure prints one warning and the function runs eagerly from then on.
The wrapped functions must be safe to re-run after a partial run (ours zero grads first and
mutate no state before the caller checks the result); a stop (SIGINT/SIGTERM) abandons a
compilation in progress with StopRequestedError.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ldmpc.checkpoint import StopRequestedError, abandon_on_stop, announce_for_tests

try:  # narrow the fallback to compiler failures once a compiled call has worked
    from torch._dynamo.exc import TorchDynamoException as _CompilerError
except ImportError:  # pragma: no cover - torch without dynamo
    _CompilerError = RuntimeError  # type: ignore[misc,assignment]


def stop_in(err: BaseException) -> StopRequestedError | None:
    """The StopRequestedError behind `err` (the compiler wraps what its callbacks raise, e.g.
    in BackendCompilerFailed), if any."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, StopRequestedError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


_callbacks_lock = threading.Lock()
_callbacks_installed = False


def _install_stop_callbacks() -> None:
    """Let a stop abandon a compilation (~10 s with a warm cache, 60-90 s cold, here): dynamo
    calls these around every compilation, the lazily compiled backward and recompilations for
    new shapes included; in between, compiled code runs to its end (`abandon_on_stop`)."""
    global _callbacks_installed
    with _callbacks_lock:
        if _callbacks_installed:
            return
        from torch._dynamo.callback import on_compile_end, on_compile_start

        on_compile_start(lambda _args: abandon_on_stop(True))
        on_compile_end(lambda _args: abandon_on_stop(False))
        _callbacks_installed = True


class CompiledFn:
    """Callable that runs `torch.compile(fn)` and falls back to `fn` on a compiler failure.

    Until the first successful call any exception counts as a compile failure (the eager call
    that follows re-raises genuine errors of `fn` itself); afterwards only dynamo/inductor
    exceptions do (e.g. a failing recompilation for a new input shape).
    """

    def __init__(self, fn: Callable[..., Any], name: str, **compile_kwargs: Any) -> None:
        self.fn, self.name = fn, name
        # Static shapes: an agent meets a handful of them (training envs, eval envs, the replay
        # batch), each worth its own specialised kernels. Dynamic ones came from dynamo's
        # automatic recompile of a second agent in the process and crashed inductor's guard
        # creation on CUDA (torch 2.11, H100: IndexError in produce_guards), i.e. fell back to
        # eager; static recompiles did not (tests/test_diffusion_agent.py, cuda-inductor).
        compile_kwargs.setdefault("dynamic", False)
        _install_stop_callbacks()
        self.compiled: Callable[..., Any] | None = torch.compile(fn, **compile_kwargs)
        self.ok_once = False

    @property
    def active(self) -> bool:
        """True while the compiled version is in use (False after falling back)."""
        return self.compiled is not None

    def fall_back(self, err: BaseException) -> None:
        """Run eagerly from now on, with one warning naming the failure."""
        self.compiled = None
        first_line = (str(err).strip().splitlines() or [""])[0][:200]
        warnings.warn(
            f"torch.compile of '{self.name}' failed ({type(err).__name__}: {first_line}); "
            "running it eagerly from now on",
            RuntimeWarning,
            stacklevel=3,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.fn(*args, **kwargs)
        if not self.ok_once:
            announce_for_tests(f"compiling {self.name}")
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as err:
            if (stop := stop_in(err)) is not None:
                raise stop from None  # abandoned, not failed: no fallback
            if self.ok_once and not isinstance(err, _CompilerError):
                raise
            self.fall_back(err)
            return self.fn(*args, **kwargs)
        self.ok_once = True
        return out


# Inductor options for compiled losses: random ops as ATen calls, so a compiled loss draws the
# same numbers as eager code from the same generator state (`ldmpc.nets.dropout`'s random
# words, the target heads' randperm); inductor's own random lowering would draw per element.
LOSS_OPTIONS = {"fallback_random": True}


def wrapper_options(threaded: bool, device: torch.device) -> dict[str, Any]:
    """Inductor options for code that runs on two Python threads at once (`overlap=true`).

    Inductor's default Python wrapper calls each generated CPU kernel with the GIL held, so two
    threads running compiled code take turns (measured: update 30 -> 43 ms, plan 16 -> 34 ms
    side by side). Its C++ wrapper releases the GIL around the whole compiled graph (a compiled
    LayerNorm + Mish chain on two threads: 0.96x -> 1.92x the one-thread rate); it costs ~20 s
    more on a cold compile, so single-threaded runs keep the Python wrapper.
    """
    return {"cpp_wrapper": True} if threaded and device.type == "cpu" else {}


def plan_compile_kwargs(threaded: bool, device: torch.device) -> dict[str, Any]:
    """torch.compile arguments for the plan. On CUDA, inductor's CUDA graphs (mode
    "reduce-overhead"): a decision is hundreds of small kernels, each a launch, and a graph
    replays them all in one (its outputs are then overwritten by the next replay: the caller
    copies them, `ldmpc.agent.Agent.act`). On a CPU, `wrapper_options`."""
    if device.type == "cuda":
        return {"mode": "reduce-overhead"}
    return {"options": wrapper_options(threaded, device)}


def maybe_compile(
    fn: Callable[..., Any], enabled: bool, name: str, **compile_kwargs: Any
) -> Callable[..., Any]:
    """`fn` itself when disabled, else a `CompiledFn` that falls back to eager on failure."""
    return CompiledFn(fn, name, **compile_kwargs) if enabled else fn
