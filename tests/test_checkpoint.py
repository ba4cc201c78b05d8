"""Checkpoints: bit-exact round trips, weights_only loads, one-line errors, layout, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ldmpc.checkpoint import (
    GracefulExit,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_run_checkpoint,
)
from ldmpc.errors import UserError
from ldmpc.replay import EpisodeReplay

FP = {"task": "cartpole-swingup", "model_size": 1, "obs_shape": [5], "action_dim": 1}


def tiny_model_and_optim(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Mish(), torch.nn.Linear(8, 2))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def train_step(model: torch.nn.Module, optim: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    loss = model(torch.randn(16, 4, generator=g)).pow(2).mean()
    optim.zero_grad()
    loss.backward()
    optim.step()


def test_round_trip_is_bit_exact_and_training_continues_identically(tmp_path: Path) -> None:
    model, optim = tiny_model_and_optim(0)
    for i in range(3):
        train_step(model, optim, i)
    replay = EpisodeReplay(100, 3, (2,), 1, seed=3)
    payload = {
        "model": model.state_dict(),
        "optim": optim.state_dict(),
        "replay": replay.get_state(),
        "np_array": np.arange(6, dtype=np.float32).reshape(2, 3),
        "np_scalar": np.float64(0.25),
        "misc": {"tuple": (1, "a"), "none": None, "flag": True},
    }
    path = save_checkpoint(
        tmp_path / "a.pt", payload, fingerprint=FP, counters={"step": 3, "episode": 1}
    )
    ck = load_checkpoint(path, expected_fingerprint=FP)
    assert ck["format_version"] == 1 and ck["counters"] == {"step": 3, "episode": 1}
    assert ck["ldmpc_version"] and ck["fingerprint"] == FP
    p = ck["payload"]
    assert torch.equal(p["np_array"], torch.arange(6.0).reshape(2, 3))
    assert p["np_scalar"] == 0.25 and p["misc"] == {"tuple": (1, "a"), "none": None, "flag": True}

    model2, optim2 = tiny_model_and_optim(1)
    model2.load_state_dict(p["model"])
    optim2.load_state_dict(p["optim"])
    replay2 = EpisodeReplay(100, 3, (2,), 1, seed=99)
    replay2.set_state(p["replay"])
    assert replay2.get_state() == replay.get_state()
    train_step(model, optim, 7)
    train_step(model2, optim2, 7)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert a.dtype == b.dtype and a.numpy().tobytes() == b.numpy().tobytes()


def test_plain_weights_only_torch_load_works(tmp_path: Path) -> None:
    model, optim = tiny_model_and_optim(0)
    train_step(model, optim, 0)
    rng_state = np.random.default_rng(5).bit_generator.state  # 128-bit python ints
    save_checkpoint(
        tmp_path / "c.pt",
        {"m": model.state_dict(), "o": optim.state_dict(), "rng": rng_state},
        fingerprint=FP,
        counters={},
    )
    obj = torch.load(tmp_path / "c.pt", weights_only=True)
    assert obj["payload"]["rng"] == rng_state


def test_unsupported_payload_type_fails_at_save_time(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"payload\.bad\[1\]: a object cannot go"):
        save_checkpoint(tmp_path / "x.pt", {"bad": [1, object()]}, fingerprint=FP, counters={})
    assert not (tmp_path / "x.pt").exists() and not os.listdir(tmp_path)


def test_missing_truncated_and_garbage_files_are_one_line_user_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(UserError, match=f"^checkpoint not found: {missing}$"):
        load_checkpoint(missing)
    path = save_checkpoint(tmp_path / "a.pt", {"w": torch.ones(1000)}, fingerprint=FP, counters={})
    data = path.read_bytes()
    for name, content in (("trunc", data[: len(data) // 2]), ("empty", b""), ("junk", b"x" * 99)):
        bad = tmp_path / f"{name}.pt"
        bad.write_bytes(content)
        with pytest.raises(UserError, match=f"checkpoint {bad} is corrupt or truncated") as err:
            load_checkpoint(bad)
        assert "\n" not in str(err.value)


def test_unsafe_and_foreign_files_are_rejected(tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"x": np.zeros(2)}, unsafe)  # raw numpy: not weights_only loadable
    with pytest.raises(
        UserError, match=r"unsafe to load with weights_only=True .*Unsupported global"
    ) as err:
        load_checkpoint(unsafe)
    assert "\n" not in str(err.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="is not an ldmpc checkpoint"):
        load_checkpoint(foreign)
    old = tmp_path / "old.pt"
    torch.save({"format_version": 99, "ldmpc_version": "9.0", "fingerprint": {}, "counters": {},
                "payload": {}}, old)  # fmt: skip
    with pytest.raises(
        UserError, match=f"checkpoint {old} has format version 99 .*reads version 1"
    ):
        load_checkpoint(old)


def test_fingerprint_mismatch_lists_every_differing_key(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "a.pt", {}, fingerprint=FP, counters={})
    run = {**FP, "task": "walker-walk", "model_size": 5}
    with pytest.raises(UserError) as err:
        load_checkpoint(path, expected_fingerprint=run)
    assert str(err.value) == (
        f"checkpoint {path} was trained with task=cartpole-swingup model_size=1; "
        f"this run has task=walker-walk model_size=5"
    )
    with pytest.raises(UserError, match=r"obs_shape=\[5\] dynamics=<unset>; this run has "
                       r"obs_shape=\[6\] dynamics=diffusion"):  # fmt: skip
        load_checkpoint(
            path, expected_fingerprint={**FP, "obs_shape": (6,), "dynamics": "diffusion"}
        )
    assert load_checkpoint(path, expected_fingerprint={**FP, "obs_shape": (5,)})  # tuple == list


def test_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "a.pt", {"v": 1}, fingerprint=FP, counters={})

    def killed_mid_write(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"v": 2}, fingerprint=FP, counters={})
    monkeypatch.undo()
    assert load_checkpoint(path)["payload"] == {"v": 1}
    assert os.listdir(tmp_path) == ["a.pt"]


def test_run_layout_keeps_last_k_and_latest(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".step_9999.pt.tmp-x1").write_bytes(b"killed")
    for step in (100, 200, 300, 1000, 1100):
        save_run_checkpoint(
            tmp_path, step, {"s": step}, fingerprint=FP, counters={"step": step}, keep=3
        )
    folder = tmp_path / "checkpoints"
    assert sorted(os.listdir(folder)) == [
        "latest.pt", "step_1000.pt", "step_1100.pt", "step_300.pt"
    ]  # fmt: skip
    assert latest_checkpoint(tmp_path) == folder / "step_1100.pt"  # numeric, not lexical
    assert load_checkpoint(folder / "latest.pt")["counters"]["step"] == 1100
    for p in folder.glob("step_*.pt"):
        p.unlink()
    assert latest_checkpoint(tmp_path) == folder / "latest.pt"


def test_graceful_exit_restores_handlers_and_double_sigint_forces() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with GracefulExit() as stop:
        assert stop.installed and not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from ldmpc.checkpoint import GracefulExit, save_run_checkpoint
    steps = 0
    with GracefulExit() as stop:
        print("ready", flush=True)
        while not stop.requested:
            steps += 1
            time.sleep(0.001)
        save_run_checkpoint(sys.argv[1], steps, {"weights": [steps]}, fingerprint={},
                            counters={"step": steps, "signal": stop.signal_name})
    print("saved", steps, flush=True)
    """
)


def test_sigterm_writes_a_final_checkpoint_and_exits_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAIN_SCRIPT, str(tmp_path)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    ck = load_checkpoint(latest_checkpoint(tmp_path))
    assert ck["counters"]["signal"] == "SIGTERM"
    assert out == f"saved {ck['counters']['step']}\n"


def test_a_stop_inside_an_abandonable_call_raises_at_once_and_again() -> None:
    """Inside a call marked abandonable (a compilation), SIGTERM raises StopRequestedError
    from the handler instead of only setting the flag; since Python drops an exception raised
    in a weakref callback or __del__, it is raised again every RESTOP_S until the call is
    left. Outside one it only sets the flag; a pending stop refuses to start another."""
    import time

    from ldmpc.checkpoint import RESTOP_S, StopRequestedError, abandon_on_stop

    with GracefulExit() as stop:
        abandon_on_stop(True)
        try:
            with pytest.raises(StopRequestedError):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            assert stop.requested and stop.signal_name == "SIGTERM"
            started = time.monotonic()
            with pytest.raises(StopRequestedError):  # as if the first raise had been dropped
                time.sleep(5)
            assert time.monotonic() - started < RESTOP_S + 1.0
        finally:
            abandon_on_stop(False)
        with pytest.raises(StopRequestedError):
            abandon_on_stop(True)
        assert stop.abandoning == 0
    with GracefulExit() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(RESTOP_S * 2)  # outside: a flag, no raise, nothing sent again
        assert stop.requested and stop.abandoning == 0


def test_a_runs_set_up_and_loop_share_one_stop_handler() -> None:
    """`graceful_exit()` reuses the handler a run's set-up installed (before Ray starts), so a
    stop then is still seen by the loop; `reinstall_stop_handlers` puts it back after a library
    (Ray's core worker) replaced it; leaving the outer block restores the old handlers."""
    from ldmpc.checkpoint import graceful_exit, reinstall_stop_handlers

    before = signal.getsignal(signal.SIGTERM)
    with graceful_exit() as outer:
        os.kill(os.getpid(), signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as a library's own handler would
        reinstall_stop_handlers()
        with graceful_exit() as inner:
            assert inner is outer and inner.requested
        assert signal.getsignal(signal.SIGTERM) == outer._handle  # still installed
        os.kill(os.getpid(), signal.SIGTERM)  # the default action would end the test run
    assert signal.getsignal(signal.SIGTERM) == before
