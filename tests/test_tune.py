"""`ldmpc tune` (issue 6, part 4): sweep files are checked before Ray starts (one line, exit 2),
the shipped files are valid, and real Tune sweeps on a real local Ray run ASHA and PBT trials
end to end (mw-reach: 100-step episodes, tiny planner), then print the best trial."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from ray_temp import ray_temp_env

from ldmpc.cli import main
from ldmpc.sweep_spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
TINY_BASE = """
base:
  task: mw-reach
  model_size: 1
  steps: 200
  seed_steps: 100
  eval_freq: 100
  eval_episodes: 1
  iterations: 1
  num_samples: 16
  num_elites: 4
  num_pi_trajs: 2
  batch_size: 16
  checkpoint_freq: 0
"""
LR = "search:\n  lr: {loguniform: [1.0e-4, 1.0e-3]}\n"

# (sweep file text, a piece of the expected one-line error)
BAD_FILES = [
    ("metric: [unclosed\n", "malformed YAML at line"),
    ("- a\n- b\n", "expected a mapping"),
    ("schedular: {type: asha}\n", "did you mean: scheduler"),
    ("scheduler: {type: hyperband}\n", "scheduler.type='hyperband'"),
    ("scheduler: {type: asha, patience: 3}\n", "unknown key 'patience' for asha"),
    ("scheduler: {type: asha, max_t: 100, grace_period: 500}\n", "exceeds max_t"),
    ("scheduler: {type: pbt}\n" + LR, "needs perturbation_interval"),
    ("scheduler: {type: pbt, perturbation_interval: 10}\n" + LR, "shorter than eval_freq"),
    ("metric: eval/return\n", "not reported by trials"),
    ("mode: maximum\n", "mode='maximum'"),
    ("num_samples: 0\n", "num_samples=0: expected an integer >= 1"),
    ("base: {horizn: 3}\n", "did you mean: horizon"),
    ("base: {lr: -1}\n", "lr=-1.0: must be > 0"),
    ("search: {utd_ratio: {choice: [1, 0]}}\n", "utd_ratio=0.0: must be > 0"),
    ("base: {num_env_runners: 2}\n", "local topology"),
    ("base: {resume: true}\n", "manages per trial"),
    ("base: {eval_freq: 0}\n", "trials report at evaluations"),
    ("search: {lr: {normal: [0, 1]}}\n", "search-space type='normal'"),
    ("search: {lrr: {choice: [1]}}\n", "did you mean: lr"),
    ("search: {work_dir: {choice: [a, b]}}\n", "cannot be searched"),
    ("search: {lr: {loguniform: [1.0e-3, 1.0e-4]}}\n", "lo < hi"),
    ("search: {dynamics: {uniform: [0, 1]}}\n", "needs a numeric key"),
    ("search: {num_elites: {choice: [4, 9999]}}\n", "num_elites=9999: must be <= num_samples"),
    ("search: {iterations: {choice: [one]}}\n", "not a valid int"),
    ("scheduler: {type: pbt, perturbation_interval: 100}\nsearch: {lr: {grid: [1.0e-4]}}\n",
     "use choice, not grid"),
    ("scheduler: {type: pbt, perturbation_interval: 100}\nsearch: {latent_dim: {choice: [64]}}\n",
     "fingerprint"),
]  # fmt: skip


def _write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _one_line_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], needle: str) -> None:
    assert main(["tune", *args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(("text", "needle"), BAD_FILES, ids=[n for _, n in BAD_FILES])
def test_bad_sweep_file_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    path = _write(
        tmp_path, text if text.startswith(("base", "- ", "metric: [")) else TINY_BASE + text
    )
    _one_line_exit_2(capsys, [str(path), f"work_dir={tmp_path}"], needle)
    assert not (tmp_path / "tune").exists()  # nothing started
    if "ray" in sys.modules:
        import ray

        assert not ray.is_initialized()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "needs a sweep file first"),
        (["lr=1"], "needs a sweep file first"),
        (["/nonexistent/sweep.yaml"], "sweep file not found"),
        (["{tmp}"], "cannot read sweep file"),  # a directory
        (["{tmp}/ok.yaml", "lr=fast"], "lr=fast: expected a number"),
        (["{tmp}/ok.yaml", "horizn=3"], "did you mean: horizon"),
        (["{tmp}/ok.yaml", "work_dir={tmp}/ok.yaml/runs"], "work_dir: cannot create"),
    ],
)
def test_bad_command_line_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    _write(tmp_path, TINY_BASE + LR, "ok.yaml")
    _one_line_exit_2(capsys, [a.format(tmp=tmp_path) for a in args], needle)


@pytest.mark.parametrize(
    "path", sorted((ROOT / "tune_configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_sweep_files_are_valid(path: Path) -> None:
    spec = load_spec(str(path), ["work_dir=/tmp/x"])
    assert spec.search and spec.storage_path == "/tmp/x/tune"
    assert path.read_text().startswith("#")  # each file documents itself
    assert spec.base["torch_threads"] == 1


def test_cli_overrides_win_over_base(tmp_path: Path) -> None:
    spec = load_spec(str(_write(tmp_path, TINY_BASE + LR)), ["steps=300", "torch_threads=2"])
    assert spec.base["steps"] == "300" and spec.base["torch_threads"] == "2"
    assert spec.base["task"] == "mw-reach"


# ------------------------------------------------------------------------------- real Tune runs
@pytest.fixture
def ray_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Ray's files in a short temp dir (unix socket paths are limited); one torch thread here."""
    threads = torch.get_num_threads()
    with ray_temp_env(prefix="ldt") as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def _trial_results(exp: Path) -> dict[str, list[dict]]:
    return {
        t.name: [json.loads(line) for line in (t / "result.json").read_text().splitlines()]
        for t in sorted(exp.glob("trial_*"))
    }


def test_unplaceable_trial_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ray_tmp: None
) -> None:
    cpus = len(os.sched_getaffinity(0))
    path = _write(tmp_path, TINY_BASE + LR + f"cpus_per_trial: {cpus + 1}\n")
    _one_line_exit_2(capsys, [str(path), f"work_dir={tmp_path}"], f"cpus_per_trial={cpus + 1}")
    import ray

    assert not ray.is_initialized()  # the local Ray it started is shut down


@pytest.mark.heavy
def test_asha_sweep_of_two_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ray_tmp: None
) -> None:
    sweep = TINY_BASE + LR + "num_samples: 2\n"
    sweep += "scheduler: {type: asha, max_t: 200, grace_period: 100, reduction_factor: 2}\n"
    path = _write(tmp_path, sweep, "asha_tiny.yaml")
    assert main(["tune", str(path), f"work_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    exp = tmp_path / "tune" / "asha_tiny"
    results = _trial_results(exp)
    assert len(results) == 2
    for rows in results.values():  # every trial reported the metric at step 0 and 100 at least
        assert [r["step"] for r in rows][:2] == [0, 100]
        assert all("eval/episode_reward" in r for r in rows)
    best = max(results, key=lambda t: results[t][-1]["eval/episode_reward"])
    assert f"best of 2 trials (0 failed): {best}" in out
    assert "\n  lr  " in out and f"results: {exp}" in out
    for trial in results:  # each trial trained in its own run directory
        assert (exp / trial / "mw-reach" / "1" / "default" / "eval.csv").is_file()


# ~1.5 min of a 2-core `make test`: `make bench` runs it; the ASHA sweep above stays in `make test`
@pytest.mark.slow
def test_pbt_sweep_clones_checkpoints_with_mutated_lr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ray_tmp: None
) -> None:
    """Synchronous PBT perturbs at the last evaluation (step 100): the weaker trial restarts
    from the other's checkpoint and replay with a mutated lr, resumes and checkpoints again."""
    from ldmpc.checkpoint import load_checkpoint

    sweep = TINY_BASE.replace("steps: 200\n", "steps: 100\n") + LR + "num_samples: 2\n"
    sweep += "scheduler: {type: pbt, perturbation_interval: 100, synch: true}\n"
    path = _write(tmp_path, sweep, "pbt_tiny.yaml")
    assert main(["tune", str(path), f"work_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    exp = tmp_path / "tune" / "pbt_tiny"
    assert "best of 2 trials (0 failed)" in out
    (policy,) = exp.glob("pbt_policy_*.txt")  # one trial cloned the other
    target, source, *_, old, new = json.loads(policy.read_text().splitlines()[0])
    assert target != source and old["lr"] != new["lr"]
    for trial in sorted(exp.glob("trial_*")):
        lr = json.loads((trial / "params.json").read_text())["lr"]  # its final config
        ckpt = load_checkpoint(trial / "mw-reach" / "1" / "default" / "checkpoints" / "latest.pt")
        assert ckpt["counters"]["env_steps"] == 100
        assert ckpt["payload"]["agent"]["pi_optim"]["param_groups"][0]["lr"] == pytest.approx(lr)
        assert (trial / "mw-reach" / "1" / "default" / "replay").is_dir()


@pytest.mark.heavy
def test_sigterm_stops_the_sweep_like_ctrl_c(tmp_path: Path) -> None:
    """SIGTERM to `ldmpc tune` (a real subprocess, trials running) ends the sweep the way
    Ctrl-C does in Tune: trials stopped, experiment state saved, exit 0 with one line saying
    where the results are; Ray's own SIGTERM handler (a stack dump, then abort) never runs and
    no Ray process is left."""
    import signal
    import subprocess
    import time

    base = TINY_BASE.replace("steps: 200", "steps: 100000")
    path = _write(tmp_path, base + LR + "num_samples: 2\n", "long_sweep.yaml")
    exp = tmp_path / "tune" / "long_sweep"
    with ray_temp_env("ldtune") as ray_env:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ldmpc.cli", "tune", str(path), f"work_dir={tmp_path}"],
            env={**os.environ, **ray_env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        deadline = time.time() + 300
        reports = lambda: [len(f.read_text().splitlines()) for f in exp.glob("*/result.json")]  # noqa: E731
        while max(reports(), default=0) < 2:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.time() < deadline, "no trial reported twice within 300 s"
            time.sleep(0.5)
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        print(f"stop latency of a sweep: {time.time() - sent:.2f} s")
        assert proc.returncode == 0, out
        assert f"SIGTERM: the sweep stopped; the trials' results so far are in {exp}" in out, out
        assert "SIGTERM received" not in out and "Traceback" not in out, out
        left = subprocess.run(["pgrep", "-f", ray_env["RAY_TMPDIR"]], capture_output=True)
        assert not left.stdout, left.stdout
