"""Mixed precision: `precision=fp32|bf16|auto` for the update's forward pass and for planning.

bf16 runs the matmuls and activations in bfloat16 through `torch.autocast`; the weights, their
gradients, the optimizer state, the target-Q EMA and checkpoints stay fp32, so a checkpoint
resumes under either setting. Where numerics need it the code reads fp32 explicitly: two-hot
decoding and cross-entropy (`ldmpc.math_utils`), the softmax over MPPI's elites, the Q-scale
percentiles. Measured on a 2-core AVX512-BF16 CPU at the `make train` budget, one thread: an
update 36.6 ms with compile=true + bf16, 47.6 ms compile=true fp32, 56.1 ms eager fp32; a
decision unchanged by bf16 (docs/results.md). Without compile bf16 gains little (1.1x update)
and slows planning: the casts and unfused small ops eat the faster matmuls.

`auto` picks bf16 only where this machine multiplies bf16 matrices clearly faster than fp32
(a CUDA device with bf16 support; a CPU with AVX512-BF16 or AMX whose measured bf16 matmul at a
model shape is at least `AUTO_MIN_SPEEDUP` faster) and says why in one line. The command line
decides it once (`ldmpc.cli.check_precision`) and the run's config carries the choice to every
actor.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator

import torch

from ldmpc.errors import UserError

AUTO_MIN_SPEEDUP = 2.0
_PROBE_SHAPE = (256, 384, 384)  # a size-1 layer over a batch-64, horizon-3 rollout


def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX), not by emulation."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:  # not Linux: trust oneDNN's own check
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_has_bf16()


@functools.cache
def measured_bf16_speedup(device_type: str) -> float:
    """fp32 / bf16 time of one matmul at a model shape on this machine (medians of a few)."""
    device = torch.device(device_type)
    m, k, n = _PROBE_SHAPE
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        samples = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(10):
                a @ b
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            samples.append(time.perf_counter() - t0)
        times[dtype] = sorted(samples)[len(samples) // 2]
    return times[torch.float32] / times[torch.bfloat16]


@functools.cache
def resolve_precision(precision: str, device_type: str) -> tuple[torch.dtype, str]:
    """(compute dtype, one line saying why) for a config's `precision` on a device type.

    `bf16` where the hardware has no bf16 support is a UserError (one line, exit 2).
    """
    device = torch.device(device_type)
    if precision == "fp32":
        return torch.float32, "precision=fp32"
    supported = bf16_supported(device)
    if precision == "bf16":
        if not supported:
            raise UserError(
                f"precision=bf16: this {device_type.upper()} has no native bf16 matmuls "
                "(a CPU needs AVX512-BF16 or AMX); use precision=fp32 or auto"
            )
        return torch.bfloat16, "precision=bf16"
    if not supported:
        return torch.float32, f"precision=auto: fp32 (no native bf16 on this {device_type})"
    if device.type == "cuda":
        return torch.bfloat16, "precision=auto: bf16 (this GPU supports bf16)"
    speedup = measured_bf16_speedup(device_type)
    shape = "x".join(map(str, _PROBE_SHAPE))
    if speedup >= AUTO_MIN_SPEEDUP:
        why = f"bf16 (this CPU multiplies bf16 {speedup:.1f}x faster than fp32 at {shape})"
        return torch.bfloat16, f"precision=auto: {why}"
    why = f"fp32 (bf16 matmuls only {speedup:.1f}x faster here at {shape})"
    return torch.float32, f"precision=auto: {why}"


@contextlib.contextmanager
def compute_precision(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Autocast to `dtype` on `device` (nothing for fp32).

    Without autocast's weight-cast cache: it is one process-wide map behind a mutex, and
    leaving an autocast region frees its entries under that mutex, which needs the GIL, while
    another thread entering a cast holds the GIL and waits for the mutex (`overlap=true`
    deadlocked so, planning beside an update). Compiled graphs make their own casts anyway.
    """
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False):
        yield
