"""Acting throughput of remote env runners: env steps/s of runners x envs = 1x1, 1x8 and 2x8
against 1x1, at the `make train` planning budget (issue 6).

Learning is nearly off (utd_ratio=0.001) so the figure is acting alone: each runner steps its
vector env and plans for all its envs in one batched call. On a CPU, batching amortizes dispatch
overhead only (the FLOPs per env stay, docs/design.md §3.4), so 1x8 gains less than on a GPU; a
second runner adds a core. Topologies are measured in alternation, `repeats` times; medians
reported.
"""

from __future__ import annotations

from benchmarks.common import append_rows, quick, ratio_rows, run_as_script, table
from benchmarks.topology import cores, measure

TOPOLOGIES = {"1x1": (1, 1), "1x8": (1, 8), "2x8": (2, 8)}


def main() -> None:
    repeats, timed = (1, 64) if quick() else (2, 400)
    share = max(cores() / 2, 0.5)  # two runners must fit this machine
    samples: dict[str, list[float]] = {name: [] for name in TOPOLOGIES}
    for _ in range(repeats):
        for name, (runners, envs) in TOPOLOGIES.items():
            topology = [f"num_env_runners={runners}", f"num_envs={envs}"]
            acting_only = [f"num_cpus_per_env_runner={share}", "seed_steps=1", "utd_ratio=0.001"]
            rate = measure(
                [*topology, *acting_only], warm_steps=2 * runners * envs, timed_steps=timed
            )
            samples[name].append(rate["env_steps_per_s"])
    rows = ratio_rows(samples, "runners_x_envs", "env_steps_per_s", "1x1", cores=cores())
    print(table(rows))
    print(f"wrote {append_rows('runner_scaling', rows)}")


if __name__ == "__main__":
    run_as_script(main)
