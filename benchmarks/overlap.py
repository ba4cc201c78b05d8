"""Async mode vs local mode: agent steps/s at the same update-to-data ratio (issue 6).

Local mode acts and learns in one process, one after the other. `async=true` with one remote
runner plans on one core while the driver learns on the other, so on 2 cores the ratio should
approach 2x when acting and learning cost about the same (docs/design.md §3.4); in general the
bound is (act + learn) / max(act, learn), from local mode's own time split (`ideal_vs_local`).
Both run utd_ratio=1 after a short seed phase; the measured updates per step shows the ratio
held. Alternated, medians reported.
"""

from __future__ import annotations

import statistics

from benchmarks.common import append_rows, quick, run_as_script, table
from benchmarks.topology import cores, measure

MODES = {
    "local": ["num_env_runners=0"],
    "async": ["num_env_runners=1", "num_cpus_per_env_runner=1", "async=true"],
}


def main() -> None:
    repeats, timed = (1, 100) if quick() else (2, 500)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in MODES}
    for _ in range(repeats):
        for name, args in MODES.items():
            samples[name].append(
                measure([*args, "seed_steps=200", "utd_ratio=1"], warm_steps=600, timed_steps=timed)
            )
    med = {
        name: {k: statistics.median(s[k] for s in runs) for k in runs[0]}
        for name, runs in samples.items()
    }
    act, learn = med["local"]["act_s_per_step"], med["local"]["learn_s_per_step"]
    ideal = (act + learn) / max(act, learn, 1e-12)
    rows = [
        {
            "mode": name,
            "env_steps_per_s": m["env_steps_per_s"],
            "updates_per_step": m["updates_per_step"],
            "vs_local": m["env_steps_per_s"] / med["local"]["env_steps_per_s"],
            # the most overlap can give: local's act + learn time over the larger of the two
            "ideal_vs_local": ideal,
            "repeats": repeats,
            "cores": cores(),
        }
        for name, m in med.items()
    ]
    print(table(rows))
    print(f"wrote {append_rows('overlap', rows)}")


if __name__ == "__main__":
    run_as_script(main)
