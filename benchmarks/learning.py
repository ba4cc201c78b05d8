"""Learning: cartpole-swingup to 100k agent steps at the `make train` CPU budget.

Runs `ldmpc train` as a subprocess with checkpoints under benchmarks/results/learning/; a second
invocation continues it (`resume=true`), so a long run can span several sessions. At the end it
prints the eval curve beside TD-MPC2's public returns at the same steps (docs/design.md §3.1).
"""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
import sys
from pathlib import Path

from benchmarks.common import RESULTS, append_rows, env_int, quick, run_as_script, table

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def make_train_budget() -> list[str]:
    """The `TRAIN_ARGS` of the Makefile: one source of truth for the CPU budget."""
    text = MAKEFILE.read_text().replace("\\\n", " ")
    match = re.search(r"^TRAIN_ARGS \?=(.*)$", text, flags=re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no TRAIN_ARGS line in {MAKEFILE}")
    return [a for a in shlex.split(match.group(1)) if not a.startswith("steps=")]


PLANNING_KEYS = (
    "iterations", "num_samples", "num_elites", "num_pi_trajs", "horizon", "min_std", "max_std",
    "temperature", "planner", "proposal", "num_diffusion_proposals",
)  # fmt: skip


def make_train_planning() -> list[str]:
    """The planning overrides of the `make train` budget (model and task keys left out)."""
    return [a for a in make_train_budget() if a.split("=")[0] in PLANNING_KEYS]


TDMPC2_CARTPOLE = {100_000: 839, 200_000: 872, 500_000: 876, 1_000_000: 876}


def target_steps() -> int:
    return env_int("LEARNING_STEPS", 5000 if quick() else 100_000)


def run_args(steps: int) -> list[str]:
    """The `ldmpc train` overrides of this benchmark's run (without resume/progress)."""
    work = RESULTS / "learning"
    return [*make_train_budget(), f"steps={steps}", f"work_dir={work}", f"exp_name=bench{steps}"]


def run_dir(steps: int) -> Path:
    """Where that run writes, as the config derives it."""
    from ldmpc import config

    return Path(config.run_dir_of(config.parse(run_args(steps))))


def main() -> None:
    steps = target_steps()
    run_dir_ = run_dir(steps)
    resume = (run_dir_ / "checkpoints" / "latest.pt").exists()
    args = [*run_args(steps), f"resume={str(resume).lower()}", "progress=false"]
    print(f"ldmpc train {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "ldmpc.cli", "train", *args], check=False)
    rows = _eval_rows(run_dir_ / "eval.csv")
    for row in rows:
        ref = TDMPC2_CARTPOLE.get(int(row["step"]))
        row["tdmpc2_public"] = ref if ref is not None else ""
    print(table(rows))
    print(f"curve: {run_dir_ / 'curve.png'}; exit code {proc.returncode}")
    if rows:
        last = rows[-1]
        append_rows("learning", [{"steps": last["step"], "return": last["episode_reward"]}])


def _eval_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [
            {k: r[k] for k in ("step", "episode_reward", "episode_reward_std", "elapsed_s")}
            for r in csv.DictReader(fh)
        ]


if __name__ == "__main__":
    run_as_script(main)
