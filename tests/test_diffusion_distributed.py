"""Issue #7 acceptance, distributed: every diffusion switch (diffusion dynamics, both proposal
sources, multi-scale training and a coarse planning tail) in a real local Ray run with a remote
env runner, a replay shard actor and a remote learner; the final checkpoint resumes in a new
process and continues, and `ldmpc eval` scores it. (One learner: the cheapest real topology;
DDP itself is covered by test_distributed.py, and the same switches were run by hand with
num_learners=2 for 600 updates across a resume.)

mw-reach: 100-step episodes, so one env finishes an episode every 100 steps and the replay's
6-step windows (horizon 3 x scale 2) have episodes to come from after the first one.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_temp import ray_temp_env

SWITCHES = ["dynamics=diffusion", "proposal=both", "scales=[1,2]", "plan_scales=[1,2]"]
RUN = [
    "task=mw-reach", "model_size=1", "mlp_dim=64", "latent_dim=32", "enc_dim=64",
    "batch_size=16", "num_samples=32", "iterations=1", "num_elites=4", "num_pi_trajs=4",
    "num_diffusion_proposals=8", "progress=false", "torch_threads=1", "checkpoint_freq=0",
    "seed_steps=100", "eval_freq=100000", "eval_episodes=1",
    "num_env_runners=1", "num_envs=1", "num_cpus_per_env_runner=0.5",
    "num_learners=1", "num_cpus_per_learner=0.5", "replay_shards=1", "replay_snapshot_every=1",
    *SWITCHES,
]  # fmt: skip


@pytest.fixture
def ray_env() -> Iterator[dict[str, str]]:
    """Environment for the CLI processes: each starts its own local Ray in a short temp dir
    (unix socket paths are limited), never a cluster recorded elsewhere."""
    with ray_temp_env() as env:
        yield {**os.environ, **env}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "ldmpc.cli", *args],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    print(f"ldmpc {args[0]}: {time.monotonic() - start:.0f} s")
    return proc


@pytest.mark.heavy
def test_diffusion_switches_train_resume_and_eval_distributed(
    ray_env: dict[str, str], tmp_path: Path
) -> None:
    from ldmpc.checkpoint import load_checkpoint

    run = [*RUN, f"work_dir={tmp_path}"]
    _cli(ray_env, "train", *run, "steps=200")
    (ckpt_dir,) = tmp_path.rglob("checkpoints")
    first = load_checkpoint(str(ckpt_dir / "latest.pt"))
    assert first["counters"]["env_steps"] == 200 and first["counters"]["updates"] >= 200
    model = first["payload"]["agent"]["model"]
    for part in ("_diff_dynamics", "_proposals"):  # zero-initialised outputs: trained if moved
        assert model[f"{part}.net.out.weight"].abs().max() > 0, part
    assert first["fingerprint"]["scales"] == [1, 2]

    _cli(ray_env, "train", *run, "steps=300", "resume=true")  # a new process continues
    second = load_checkpoint(str(ckpt_dir / "latest.pt"))
    assert second["counters"]["env_steps"] == 300
    assert second["counters"]["updates"] >= first["counters"]["updates"] + 100
    replay = second["payload"]["replay"]  # the shard reloaded episodes 0-1, then stored #2
    assert replay["episodes_added"] == 3 and replay["shards"][0]["next_episode_id"] == 3
    (train_csv,) = tmp_path.rglob("train.csv")
    steps = [int(r["step"]) for r in csv.DictReader(train_csv.open())]
    assert steps == [100, 200, 300], steps  # one curve: the resumed run appended its episode

    out = _cli(ray_env, "eval", *run, f"checkpoint={ckpt_dir / 'latest.pt'}").stdout
    assert "mw-reach  step=300  return=" in out, out
