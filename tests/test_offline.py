"""Offline training from a dataset (`ldmpc train data_dir=...`) and `ldmpc data convert`.

The dataset is built here: random-action episodes of cartpole-balance (reward depends smoothly on
the pole angle, cart position and control), written in TD-MPC2's layout and in ours. "Learns" is
measured on two held-out episodes: the reward head's R^2 against the true rewards (an untrained
or mean-predicting model scores <= 0). Measured: R^2 0.92-0.94 after 200 updates (batch 16-32),
-1.6 untrained; mean reward loss 1.29 -> 0.62 from the first to the second 100 updates.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ldmpc.cli import main
from ldmpc.datasets import TDMPC2_TASKS, open_dataset, read_tdmpc2_file, write_arrow, write_tdmpc2
from ldmpc.errors import UserError
from ldmpc.replay import EpisodeReplay

TASK = "cartpole-balance"  # obs 5, action 1; TD-MPC2 task id 8
TINY = [
    "model_size=1", "batch_size=32", "mpc=false", "eval_episodes=1", "torch_threads=1",
    "progress=false", "checkpoint_freq=0",
]  # fmt: skip


def random_episodes(task: str, n: int, seed: int) -> list[dict[str, Any]]:
    """n whole episodes of uniform random actions (seeded)."""
    from ldmpc.envs import make_env

    env = make_env(task, seed)
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n):
        obs, _ = env.reset(seed=seed + i)
        o, a, r, done = [obs], [], [], False
        while not done:
            action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            obs, reward, term, trunc, _ = env.step(action)
            o.append(obs), a.append(action), r.append(reward)
            done = term or trunc
        episodes.append(
            {
                "obs": np.asarray(o, np.float32),
                "action": np.asarray(a, np.float32),
                "reward": np.asarray(r, np.float32),
                "terminated": np.zeros(len(a), bool),
                "task": 0,
            }
        )
    env.close()
    return episodes


def synthetic(n: int, steps: int, obs_dim: int, action_dim: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "obs": rng.normal(size=(steps + 1, obs_dim)).astype(np.float32),
            "action": rng.uniform(-1, 1, (steps, action_dim)).astype(np.float32),
            "reward": rng.uniform(0, 1, steps).astype(np.float32),
            "terminated": np.zeros(steps, bool),
            "task": 0,
        }
        for _ in range(n)
    ]


def arrow_dataset(path: Path, episodes: list[dict], tasks: list[str] | None) -> Path:
    first = episodes[0]
    replay = EpisodeReplay(
        capacity=sum(len(e["reward"]) for e in episodes),
        horizon=1,
        obs_shape=first["obs"].shape[1:],
        action_dim=first["action"].shape[1],
    )
    replay.add(episodes)
    write_arrow(replay, path, tasks)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("offline_data")
    episodes = random_episodes(TASK, 8, seed=0)
    write_tdmpc2(root / "tdmpc2" / "chunk_0.pt", episodes[:6], [TASK])
    return {"root": root, "train": episodes[:6], "heldout": episodes[6:]}


def one_line_error(capsys: pytest.CaptureFixture[str], rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ldmpc: error: "), err
    return lines[0]


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


# ------------------------------------------------------------------------------ formats
def test_tdmpc2_layout_and_convert_round_trip(data: dict[str, Any], tmp_path: Path) -> None:
    src = data["root"] / "tdmpc2" / "chunk_0.pt"
    raw = torch.load(src, weights_only=True)
    assert raw["obs"].shape == (6, 501, 5) and raw["action"].shape == (6, 501, 1)
    assert raw["reward"].shape == (6, 501) and raw["task"].shape == (6, 501)
    assert raw["action"][:, 0].isnan().all() and raw["reward"][:, 0].isnan().all()
    assert (raw["task"] == TDMPC2_TASKS.index(TASK)).all() and TDMPC2_TASKS.index(TASK) == 8
    ep = data["train"][2]  # action[t+1], reward[t+1] belong to obs[t] -> obs[t+1]
    assert np.array_equal(raw["action"][2, 1:].numpy(), ep["action"])
    assert np.array_equal(raw["reward"][2, 1:].numpy(), ep["reward"])

    arrow = tmp_path / "arrow"
    assert main(["data", "convert", f"src={src.parent}", f"dst={arrow}", f"task={TASK}"]) == 0
    assert json.loads((arrow / "tasks.json").read_text()) == [TASK]
    blocks = list(open_dataset(arrow).blocks())
    assert len(blocks) == 6
    for block, ep in zip(blocks, data["train"], strict=True):
        assert np.array_equal(block.obs[0], ep["obs"])
        assert np.array_equal(block.action[0], ep["action"])
        assert np.array_equal(block.reward[0], ep["reward"])
        assert block.task_ids.tolist() == [0] and block.names == [TASK]

    back = tmp_path / "back.pt"
    assert main(["data", "convert", f"src={arrow}", f"dst={back}"]) == 0
    again = torch.load(back, weights_only=True)
    for key in ("obs", "action", "reward", "task"):
        assert torch.equal(again[key].nan_to_num(-7), raw[key].nan_to_num(-7)), key


def test_convert_cuts_padding_and_maps_task_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An mt30-style file: two tasks zero-padded to obs 24 / action 6, ids into mt80's list."""
    cart = synthetic(2, 20, 5, 1, seed=1)
    pend = synthetic(3, 20, 3, 1, seed=2)
    padded = []
    for ep, task_id in [*((e, 8) for e in cart), *((e, 7) for e in pend)]:
        obs = np.zeros((21, 24), np.float32)
        obs[:, : ep["obs"].shape[1]] = ep["obs"]
        action = np.random.default_rng(0).uniform(-1, 1, (20, 6)).astype(np.float32)
        action[:, :1] = ep["action"]  # columns beyond a task's actions are never seen: cut
        padded.append({**ep, "obs": obs, "action": action, "task": task_id})
    src = tmp_path / "mt30" / "chunk_0.pt"
    write_tdmpc2(src, padded, TDMPC2_TASKS)
    dst = tmp_path / "cart"
    assert main(["data", "convert", f"src={src}", f"dst={dst}", f"task={TASK}"]) == 0
    out = capsys.readouterr().out
    assert (
        "2 episodes (40 transitions); left out episodes of other tasks: pendulum-swingup (3)" in out
    )
    blocks = list(open_dataset(dst).blocks())
    assert [b.obs.shape[2] for b in blocks] == [5, 5]
    for block, ep in zip(blocks, cart, strict=True):
        assert np.array_equal(block.obs[0], ep["obs"])
        assert np.array_equal(block.action[0], ep["action"])

    padded[0]["obs"][3, 20] = 1.0  # not padding: a different task's data
    bad = tmp_path / "bad.pt"
    write_tdmpc2(bad, padded, TDMPC2_TASKS)
    line = one_line_error(capsys, main(["data", "convert", f"src={bad}", f"dst={tmp_path / 'x'}",
                                        f"task={TASK}"]))  # fmt: skip
    assert "obs_shape [24] action_dim 6" in line and "obs_shape [5] action_dim 1" in line
    assert "not zero padding" in line


def test_multitask_run_fits_each_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """mt30-style file (3 tasks padded to obs 24 / action 6) -> a 2-task run: each task's episodes
    cut to its own widths, padded to the run's (obs 5, action 1), ids mapped by name."""
    from ldmpc.config import load
    from ldmpc.datasets import load_for_run

    def pad(ep: dict, task_id: int) -> dict:
        obs = np.zeros((21, 24), np.float32)
        obs[:, : ep["obs"].shape[1]] = ep["obs"]
        action = np.zeros((20, 6), np.float32)
        action[:, : ep["action"].shape[1]] = ep["action"]
        return {**ep, "obs": obs, "action": action, "task": task_id}

    walker = [pad(e, 1) for e in synthetic(1, 20, 24, 6, seed=3)]
    pend = [pad(e, 7) for e in synthetic(2, 20, 3, 1, seed=4)]
    cart = [pad(e, 8) for e in synthetic(2, 20, 5, 1, seed=5)]
    write_tdmpc2(tmp_path / "mt30" / "c.pt", walker + pend + cart, TDMPC2_TASKS)
    run = ["task=cartpole-balance,pendulum-swingup", f"data_dir={tmp_path / 'mt30'}"]
    cfg = load([*run, "model_size=1", f"work_dir={tmp_path}"])
    assert list(cfg.tasks) == ["cartpole-balance", "pendulum-swingup"] and cfg.obs_shape == [5]
    replay, summary = load_for_run(cfg)
    assert summary == {"episodes": 4, "transitions": 80}
    assert "left out episodes of other tasks: walker-walk (1)" in capsys.readouterr().out
    stored = list(replay.episodes())
    assert [e["task"] for e in stored] == [1, 1, 0, 0]
    for ep, src in zip(stored, pend + cart, strict=True):
        width = 3 if ep["task"] == 1 else 5
        assert np.array_equal(ep["obs"][:, :width], src["obs"][:, :width])
        assert not ep["obs"][:, width:].any()
        assert np.array_equal(ep["action"], src["action"][:, :1])
    assert main(["train", *run, "steps=30", f"work_dir={tmp_path}", *TINY]) == 0


def test_tensordict_file_needs_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """TD-MPC2's released files are pickled TensorDicts. With the package there, only its
    TensorDict classes and rebuild helpers are allowed (not any other name of the package);
    without it, one line naming it (a stand-in class plays tensordict._td.TensorDict)."""
    pkg = tmp_path / "fake" / "tensordict"
    pkg.mkdir(parents=True)
    (pkg / "_td.py").write_text(
        "class TensorDict:\n"
        "    def __init__(self, d):\n        self._d = dict(d)\n"
        "    def keys(self):\n        return self._d.keys()\n"
        "    def __getitem__(self, k):\n        return self._d[k]\n"
    )
    (pkg / "__init__.py").write_text(
        "from tensordict._td import TensorDict\n\ndef load_anything(path):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(pkg.parent))
    import tensordict  # the stand-in

    ep = synthetic(2, 10, 5, 1)
    td = tensordict.TensorDict(
        {
            "obs": torch.from_numpy(np.stack([e["obs"] for e in ep])),
            "action": torch.zeros(2, 11, 1),
            "reward": torch.zeros(2, 11),
        }
    )
    path, legacy = tmp_path / "td.pt", tmp_path / "legacy.pt"
    torch.save(td, path)
    torch.save(td, legacy, _use_new_zipfile_serialization=False)  # globals met while loading
    for file in (path, legacy):
        block = read_tdmpc2_file(file)
        assert block.obs.shape == (2, 11, 5) and block.action.shape == (2, 10, 1)
    # a function of the package is not a TensorDict: refused, though tensordict is installed
    sneaky = _write(tmp_path / "s" / "c.pt", {**td._d, "hook": tensordict.load_anything})
    rc = main(["train", f"task={TASK}", f"data_dir={sneaky}", *TINY])
    assert "refuses (tensordict.load_anything)" in one_line_error(capsys, rc)

    monkeypatch.delitem(sys.modules, "tensordict")
    monkeypatch.delitem(sys.modules, "tensordict._td")
    sys.path.remove(str(pkg.parent))
    rc = main(["train", f"task={TASK}", f"data_dir={path}", *TINY])
    assert "needs the `tensordict` package" in one_line_error(capsys, rc)
    with pytest.raises(UserError, match="needs the `tensordict` package"):
        read_tdmpc2_file(legacy)


# ------------------------------------------------------------------------------ training
def reward_r2(checkpoint: Path | None, episodes: list[dict]) -> float:
    """R^2 of the reward head's predictions on `episodes` (checkpoint None: untrained)."""
    from ldmpc.agent import Agent
    from ldmpc.checkpoint import load_checkpoint
    from ldmpc.config import load
    from ldmpc.math_utils import two_hot_inv

    cfg = load([f"task={TASK}", "model_size=1"])
    agent = Agent(cfg)
    if checkpoint is not None:
        agent.load_state_dict(load_checkpoint(checkpoint)["payload"]["agent"])
    obs = torch.from_numpy(np.concatenate([e["obs"][:-1] for e in episodes]))
    action = torch.from_numpy(np.concatenate([e["action"] for e in episodes]))
    reward = np.concatenate([e["reward"] for e in episodes])
    with torch.no_grad():
        logits = agent.model.reward(agent.model.encode(obs), action)
    pred = two_hot_inv(logits, cfg.num_bins, cfg.vmin, cfg.vmax).reshape(-1).numpy()
    return float(1 - ((pred - reward) ** 2).mean() / reward.var())


@pytest.mark.heavy
def test_offline_training_learns_the_reward(data: dict[str, Any], tmp_path: Path) -> None:
    dataset = arrow_dataset(tmp_path / "arrow", data["train"], [TASK])
    work = tmp_path / "runs"
    args = [f"task={TASK}", f"data_dir={dataset}", "steps=200", "eval_freq=200", f"work_dir={work}"]
    assert main(["train", *args, *TINY, "batch_size=16"]) == 0
    run = work / TASK / "1" / "default"
    assert [r["step"] for r in read_csv(run / "eval.csv")] == ["0", "200"]
    assert (run / "curve.png").stat().st_size > 0
    losses = read_csv(run / "offline.csv")
    assert [r["step"] for r in losses] == ["100", "200"]
    # measured 1.29 -> 0.62 (reward) and 1.29 -> 0.57 (value)
    assert float(losses[1]["reward_loss"]) < 0.75 * float(losses[0]["reward_loss"])
    checkpoint = run / "checkpoints" / "latest.pt"
    trained, untrained = reward_r2(checkpoint, data["heldout"]), reward_r2(None, data["heldout"])
    assert untrained < 0.2 and trained > 0.7, (untrained, trained)  # measured -1.6 / 0.92
    evaluate = ["eval", f"task={TASK}", f"checkpoint={checkpoint}", f"work_dir={work}", *TINY]
    assert main(evaluate) == 0
    # an online resume=true in the offline run's directory is refused before it acts
    from actors.online import resume
    from ldmpc.config import load

    with pytest.raises(UserError, match="offline run's checkpoint"):
        resume(None, load([f"task={TASK}", f"work_dir={work}", "resume=true", *TINY]))


def test_sigterm_checkpoints_and_resume_continues(
    data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ldmpc.checkpoint import load_checkpoint

    work = tmp_path / "runs"
    args = [f"task={TASK}", f"data_dir={data['root'] / 'tdmpc2'}", f"work_dir={work}", *TINY]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ldmpc.cli", "train", *args, "steps=100000", "eval_freq=100000",
         "checkpoint_freq=20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    run = work / TASK / "1" / "default"
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "step_20.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no 20 updates within 120 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGTERM: checkpoint" in out and "resume=true" in out
    done = load_checkpoint(run / "checkpoints" / "latest.pt")["counters"]["offline_updates"]
    assert 20 <= done < 100000

    assert main(["train", *args, f"steps={done + 20}", "eval_freq=100000", "resume=true"]) == 0
    latest = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert latest["counters"]["offline_updates"] == done + 20
    steps = [int(r["step"]) for r in read_csv(run / "offline.csv")]
    assert steps == sorted(set(steps)) and steps[-1] == done + 20
    assert [r["step"] for r in read_csv(run / "eval.csv")] == ["0"]  # no second eval at resume

    other = arrow_dataset(tmp_path / "other", data["heldout"], [TASK])
    args[1] = f"data_dir={other}"
    rc = main(["train", *args, "steps=100000", "resume=true"])
    assert "was trained on a dataset of episodes=6" in one_line_error(capsys, rc)


# ------------------------------------------------------------------------------ bad inputs
def _write(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def _nan_reward(tmp: Path) -> Path:
    eps = synthetic(2, 20, 5, 1)
    eps[1]["reward"][7] = np.nan
    write_tdmpc2(tmp / "nan" / "c.pt", eps, [TASK])
    return tmp / "nan"


def _truncated(tmp: Path) -> Path:
    write_tdmpc2(tmp / "t" / "c.pt", synthetic(2, 20, 5, 1), [TASK])
    data = (tmp / "t" / "c.pt").read_bytes()
    (tmp / "t" / "c.pt").write_bytes(data[: len(data) // 2])
    return tmp / "t"


def _garbage_manifest(tmp: Path) -> Path:
    (tmp / "a").mkdir()
    (tmp / "a" / "manifest.json").write_text("{not json")
    return tmp / "a"


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _garbage(tmp: Path) -> Path:
    (tmp / "g").mkdir()
    (tmp / "g" / "c.pt").write_bytes(b"not a torch file at all")
    return tmp / "g"


def _pendulum_shapes(tmp: Path) -> Path:
    write_tdmpc2(tmp / "p" / "c.pt", synthetic(2, 20, 3, 1), ["pendulum-swingup"])
    return tmp / "p"


def _tensors(n: int = 2, steps: int = 11, obs: int = 5, act: int = 1, **extra: Any) -> dict:
    return {"obs": torch.zeros(n, steps, obs), "action": torch.zeros(n, steps, act),
            "reward": torch.zeros(n, steps), **extra}  # fmt: skip


def _ids_beyond_tasks_json(tmp: Path) -> Path:
    eps = synthetic(2, 10, 5, 1)
    eps[1]["task"] = 1
    return arrow_dataset(tmp / "a", eps, [TASK])  # tasks.json names one task, ids 0 and 1


BAD_DATA = {
    "missing": (lambda tmp: tmp / "nowhere", "no such file or directory"),
    "empty dir": (_empty, "no dataset there"),
    "garbage .pt": (_garbage, "is corrupt or truncated"),
    "truncated .pt": (_truncated, "is corrupt or truncated"),
    "a bare tensor": (lambda tmp: _write(tmp / "c.pt", torch.zeros(3)), "holds a Tensor"),
    "no action": (lambda t: _write(t / "c.pt", {"obs": torch.zeros(1, 5, 5)}), "lacks 'action'"),
    "NaN reward": (_nan_reward, "reward of episode 1 holds NaN"),
    "corrupt manifest": (_garbage_manifest, "is corrupt"),
    "other task": (_pendulum_shapes, "holds no episode of task=cartpole-balance"),
    "0 episodes": (lambda t: _write(t / "c.pt", _tensors(n=0)), "holds no episodes"),
    "action width 0": (lambda t: _write(t / "c.pt", _tensors(act=0)), "action_dim >= 1"),
    "obs width 0": (lambda t: _write(t / "c.pt", _tensors(obs=0)), "obs_dim >= 1"),
    "task id 5.5": (lambda t: _write(t / "c.pt", _tensors(task=torch.full((2, 11), 5.5))),
                    "task id 5.5 of episode 0 is not an integer"),
    "task id NaN": (lambda t: _write(t / "c.pt", _tensors(task=torch.full((2, 11), np.nan))),
                    "is not an integer"),
    "ids beyond tasks.json": (_ids_beyond_tasks_json, "task id 1 is beyond the 1 task(s)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_dataset_is_one_line_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, needle = BAD_DATA[case]
    rc = main(["train", f"task={TASK}", f"data_dir={build(tmp_path)}", *TINY])
    assert needle in one_line_error(capsys, rc)


def test_shape_mismatch_names_both_shapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tdmpc2(tmp_path / "d" / "c.pt", synthetic(2, 20, 3, 1), None)  # no task ids
    rc = main(["train", f"task={TASK}", f"data_dir={tmp_path / 'd'}", *TINY])
    line = one_line_error(capsys, rc)
    assert "obs_shape [3] action_dim 1" in line
    assert "task=cartpole-balance has obs_shape [5] action_dim 1" in line


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["num_learners=2"], "num_learners=2: must be 0 with data_dir="),
        (["replay_shards=1"], "replay_shards=1: must be 0 with data_dir="),
    ],
)
def test_offline_rejects_ray_topology(
    extra: list[str], needle: str, data: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["train", f"task={TASK}", f"data_dir={data['root'] / 'tdmpc2'}", *extra, *TINY])
    assert needle in one_line_error(capsys, rc)


def test_convert_refuses_to_overwrite(
    data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    rc = main(["data", "convert", f"src={data['root'] / 'tdmpc2'}", f"dst={tmp_path / 'dst'}"])
    assert "already exists" in one_line_error(capsys, rc)
    assert os.listdir(tmp_path / "dst") == ["keep.txt"]
    rc = main(["data", "convert", f"dst={tmp_path / 'x'}"])
    assert "needs src=" in one_line_error(capsys, rc)
    assert "subcommand" in one_line_error(capsys, main(["data", "export"]))


# ------------------------------------------------------------------------------ regressions
def _replay_folder(path: Path, tasks: list[int]) -> Path:
    """A multitask run's own `replay/` folder: an EpisodeReplay snapshot, no tasks.json."""
    eps = synthetic(len(tasks), 10, 5, 1)
    for ep, task in zip(eps, tasks, strict=True):
        ep["task"] = task
    replay = EpisodeReplay(capacity=100, horizon=1, obs_shape=(5,), action_dim=1)
    replay.add(eps)
    replay.save(path)
    return path


def test_convert_replay_folder_keeps_unnamed_task_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was an IndexError (widths sized for one task, ids 0 and 2 passed through)."""
    src = _replay_folder(tmp_path / "replay", [0, 2])
    dst = tmp_path / "out"
    assert main(["data", "convert", f"src={src}", f"dst={dst}"]) == 0
    assert "unnamed task ids 0, 2 (they index the training run's tasks)" in capsys.readouterr().out
    assert not (dst / "tasks.json").exists()
    assert [b.task_ids.tolist() for b in open_dataset(dst).blocks()] == [[0], [2]]
    # a TD-MPC2 file would read them as TD-MPC2's ids: refused, before any work
    rc = main(["data", "convert", f"src={src}", f"dst={tmp_path / 'x.pt'}"])
    assert "task ids without names" in one_line_error(capsys, rc)
    rc = main(["train", f"task={TASK}", f"data_dir={dst}", *TINY])
    assert "task id 2 is beyond this run's 1 task(s)" in one_line_error(capsys, rc)


def _regular_file(tmp: Path) -> str:
    (tmp / "file").write_text("mine")
    return str(tmp / "file" / "sub")


BAD_DST = {
    "/proc dir": (lambda tmp: "/proc/nope/ds", "cannot write in /proc"),
    "/proc .pt": (lambda tmp: "/proc/nope.pt", "cannot write in /proc"),
    "below a file": (_regular_file, "file is not a directory"),
}


@pytest.mark.parametrize("case", list(BAD_DST))
def test_convert_unwritable_dst_is_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _replay_folder(tmp_path / "replay", [0, 0])
    build, needle = BAD_DST[case]
    rc = main(["data", "convert", f"src={src}", f"dst={build(tmp_path)}"])
    assert needle in one_line_error(capsys, rc)
    assert set(os.listdir(tmp_path)) - {"file"} == {"replay"}  # nothing written, no probe left


def test_convert_write_failure_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An OSError of the final write (disk full, a vanished directory) names dst."""
    import ldmpc.datasets as datasets

    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datasets, "write_arrow", full)
    src = _replay_folder(tmp_path / "replay", [0])
    rc = main(["data", "convert", f"src={src}", f"dst={tmp_path / 'out'}"])
    assert f"dst={tmp_path / 'out'}: writing it failed: No space left" in one_line_error(capsys, rc)


def test_convert_obs_without_task_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _replay_folder(tmp_path / "replay", [0])
    rc = main(["data", "convert", f"src={src}", f"dst={tmp_path / 'o'}", "obs=rgb"])
    assert "obs=rgb needs task=" in one_line_error(capsys, rc)
    assert main(["data", "convert", f"src={src}", f"dst={tmp_path / 'o'}", "obs=state"]) == 0


def test_fill_reads_kept_episodes_only_and_allocates_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """NaN/inf is checked per kept episode (a left-out task's episodes are never scanned), and
    the run's replay is sized once from task ids and lengths: no regrowth while filling."""
    from ldmpc.config import load
    from ldmpc.datasets import load_for_run

    cart, pend = synthetic(3, 20, 5, 1, seed=1), synthetic(2, 20, 5, 1, seed=2)
    pend[1]["obs"][4, 2] = np.inf  # an episode the run leaves out
    for ep, task_id in [*((e, 8) for e in cart), *((e, 7) for e in pend)]:
        ep["task"] = task_id
    write_tdmpc2(tmp_path / "d" / "c.pt", cart + pend, TDMPC2_TASKS)

    def no_regrowth(self: EpisodeReplay, n_rows: int) -> int:
        raise AssertionError("the replay regrew while filling")

    monkeypatch.setattr(EpisodeReplay, "_grow", no_regrowth)
    cfg = load([f"task={TASK}", f"data_dir={tmp_path / 'd'}", "model_size=1"])
    replay, summary = load_for_run(cfg)
    assert summary == {"episodes": 3, "transitions": 60}
    assert replay._rows == 3 * 21  # exactly the kept episodes' rows
    assert "pendulum-swingup (2)" in capsys.readouterr().out

    cart[2]["reward"][5] = np.nan  # a kept one: one line naming it
    write_tdmpc2(tmp_path / "d" / "c.pt", cart + pend, TDMPC2_TASKS)
    rc = main(["train", f"task={TASK}", f"data_dir={tmp_path / 'd'}", *TINY])
    assert "reward of episode 2 holds NaN" in one_line_error(capsys, rc)


def test_replay_reserve() -> None:
    eps = synthetic(3, 10, 5, 1)
    replay = EpisodeReplay(capacity=100, horizon=1, obs_shape=(5,), action_dim=1)
    replay.reserve(30, 3)
    assert replay._rows == 33
    arrays = replay._obs
    replay.add(eps)
    assert replay._obs is arrays and replay.num_episodes == 3  # filled in place
    replay.reserve(1000, 10)  # not empty: left as it is
    assert replay._rows == 33
    small = EpisodeReplay(capacity=20, horizon=1, obs_shape=(5,), action_dim=1)
    small.reserve(1000, 5)  # at most `capacity` transitions are ever held
    assert small._rows == 25


def test_multitask_dataset_lacking_a_task_warns_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ldmpc.config import load
    from ldmpc.datasets import load_for_run

    cart = synthetic(2, 20, 5, 1)
    for ep in cart:
        ep["task"] = 8
    write_tdmpc2(tmp_path / "d" / "c.pt", cart, TDMPC2_TASKS)
    run = ["task=cartpole-balance,pendulum-swingup", f"data_dir={tmp_path / 'd'}", "model_size=1"]
    _, summary = load_for_run(load(run))
    assert summary == {"episodes": 2, "transitions": 40}
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"ldmpc: warning: data_dir={tmp_path / 'd'} holds no episode of 1 of this run's 2 "
        "tasks: pendulum-swingup"
    ]
