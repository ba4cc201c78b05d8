"""Learning throughput of the learner group: updates/s with 2 DDP learners vs 1 remote learner
(and the driver's local learner), same total batch (issue 6).

With 2 learners each one computes half the batch and gloo (CPU) or nccl (GPU) averages the
gradients, so the ideal ratio is 2x minus the all-reduce. The batch is TD-MPC2's 256 so the
split has work to share. The replay is filled by 200 random-action steps; the timed part is
learning only (`_learn`), alternated between topologies, medians reported. Run it on a machine
with a free core per learner: on a busy 2-core box the two learners share one core.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from benchmarks.common import append_rows, quick, ratio_rows, run_as_script, table
from benchmarks.topology import BASE, cores

TOPOLOGIES = {"local": 0, "1 learner": 1, "2 learners": 2}


def updates_per_s(learners: int, updates: int) -> float:
    import ray

    from actors.algorithm import build_algorithm
    from actors.ray_init import init_ray
    from ldmpc.config import load

    work = tempfile.mkdtemp(prefix="ldb")
    os.environ["RAY_TMPDIR"] = work
    share = max(cores() / 2, 0.5)
    gpu = os.environ.get("LDMPC_BENCH_GPU") == "1"
    cfg = load([
        *BASE, f"work_dir={work}", "batch_size=256", "seed_steps=100000",
        f"num_learners={learners}", f"num_cpus_per_learner={share}",
        f"num_gpus_per_learner={1 / max(learners, 1) if gpu else 0}",
        f"device={'cuda' if gpu else 'cpu'}",
    ])  # fmt: skip
    init_ray(cfg)
    try:
        algo = build_algorithm(cfg)
        try:
            algo.sample_until = 200  # random actions only (seed_steps is never reached)
            while algo.replay.num_episodes < 2:
                algo.train()
            algo._learn(4)  # warm-up
            t0 = time.perf_counter()
            algo._learn(updates)
            return updates / (time.perf_counter() - t0)
        finally:
            algo.stop()
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    repeats, updates = (1, 8) if quick() else (2, 64)
    samples: dict[str, list[float]] = {name: [] for name in TOPOLOGIES}
    for _ in range(repeats):
        for name, learners in TOPOLOGIES.items():
            samples[name].append(updates_per_s(learners, updates))
    rows = ratio_rows(samples, "learners", "updates_per_s", "1 learner", batch=256, cores=cores())
    print(table(rows))
    print(f"wrote {append_rows('learner_scaling', rows)}")


if __name__ == "__main__":
    run_as_script(main)
