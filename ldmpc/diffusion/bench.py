"""Micro-benchmark: one denoiser call over [E, N] sequences of T tokens vs MLP dynamics steps.

`python -m ldmpc.diffusion.bench [model_size] [threads] [device]` prints ms per call (medians
of calls alternated in one run, docs/design.md §3.4) and ratios to one TD-MPC2 MLP dynamics step
and to an H = T step MLP rollout of the same batch. Planner shapes: z_0 [E, 1, L] shared by the
N candidates, one noise draw per env.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch

from ldmpc.config import MODEL_SIZES
from ldmpc.diffusion.denoiser import TransformerDenoiser, denoiser_size
from ldmpc.diffusion.sampler import sample
from ldmpc.diffusion.schedule import EDMSchedule
from ldmpc.nets import SimNorm, mlp

E, N, T, A = 16, 512, 3, 6


def _median_ms(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():  # alternate: bursts of machine noise hit all alike
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in times.items()}


def cases(model_size: int, device: torch.device) -> dict[str, Callable[[], object]]:
    """The timed calls, all on the same E * N = 8192-row planner batch."""
    p = MODEL_SIZES[model_size]
    L, M = p["latent_dim"], p["mlp_dim"]
    dyn = mlp(L + A, [M, M], L, act=SimNorm(8)).to(device)
    size = denoiser_size(M)
    net = TransformerDenoiser(L, cond_dim=L, token_dim=A, max_tokens=T, size=size).to(device)
    sched = EDMSchedule()
    z = torch.rand(E, 1, L, device=device)
    za = torch.cat([z.expand(E, N, L), torch.rand(E, N, A, device=device)], -1)
    acts = torch.rand(E, N, T, A, device=device)
    noise = torch.randn(E, 1, T, L, device=device)

    def rollout() -> torch.Tensor:
        h = za
        for _ in range(T):
            h = torch.cat([dyn(h), h[..., L:]], -1)
        return h

    def diffusion(steps: int, envs: int = E) -> Callable[[], object]:
        sigmas = sched.sampling_sigmas(steps, device=device)

        def run() -> list[torch.Tensor]:
            outs = []
            for e in range(0, E, envs):
                cond, tokens = z[e : e + envs], acts[e : e + envs]

                def fn(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
                    return sched.denoise(net, x, s, cond=cond, tokens=tokens)  # noqa: B023

                outs.append(sample(fn, noise[e : e + envs], sigmas))
            return outs

        return run

    timed: dict[str, Callable[[], object]] = {"mlp_step": lambda: dyn(za), "mlp_rollout": rollout}
    for k in (1, 2, 3):  # the planner's CPU chunks hold 4 envs x 512 samples (2048 rows)
        timed[f"diffusion_{k}step"] = diffusion(k)
        timed[f"diffusion_{k}step_4env_chunks"] = diffusion(k, 4)
    return timed


def main(
    model_size: int = 1, threads: int = 1, device: str = "cpu", repeats: int = 15
) -> dict[str, float]:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    with torch.no_grad():
        ms = _median_ms(cases(model_size, dev), repeats, dev)
    width = denoiser_size(MODEL_SIZES[model_size]["mlp_dim"]).width
    print(
        f"model_size={model_size} threads={threads} device={device} "
        f"batch={E}x{N} sequences, T={T}, A={A}, denoiser width={width}"
    )
    for name, t in ms.items():
        print(
            f"  {name:<30} {t:8.2f} ms  x{t / ms['mlp_step']:5.2f} of an MLP step"
            f"  x{t / ms['mlp_rollout']:5.2f} of an H={T} MLP rollout"
        )
    return ms


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*(int(a) for a in args[:2]), *args[2:3])
