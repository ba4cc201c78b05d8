"""Runs that cannot fit in memory are refused before anything starts (one line, exit 2), and
integer keys take exact integers only ("1e6" yes, "1.5" no)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ldmpc.config import derive, parse
from ldmpc.errors import UserError
from ldmpc.memory import check_memory, terms

GB = 10**9
CARTPOLE = ((5,), 1)
RGB = ((9, 64, 64), 1)  # three stacked 64x64 RGB frames
MAKE_TRAIN = [
    "task=cartpole-swingup", "model_size=1", "batch_size=64", "iterations=2", "num_samples=128",
    "num_elites=16", "num_pi_trajs=8", "seed_steps=1000", "steps=100000",
]  # fmt: skip


def _cfg(args: list[str], shapes: tuple = CARTPOLE):
    return derive(parse(args), *shapes)


def test_the_make_train_budget_and_tdmpc2_defaults_fit_in_4_gb() -> None:
    check_memory(_cfg(MAKE_TRAIN), available=4 * GB)
    check_memory(_cfg(["task=cartpole-swingup", "steps=1000000"]), available=4 * GB)


def test_a_huge_batch_is_refused_naming_the_key_and_a_value_that_fits() -> None:
    with pytest.raises(UserError, match=r"set by batch_size=1,000,000,000\); batch_size=\d"):
        check_memory(_cfg([*MAKE_TRAIN, "batch_size=1e9"]), available=16 * GB)


def test_a_replay_that_cannot_fit_is_refused() -> None:
    cfg = _cfg([*MAKE_TRAIN, "buffer_size=1e9", "steps=1e9"])
    with pytest.raises(UserError, match=r"the replay at capacity .*buffer_size=\d"):
        check_memory(cfg, available=16 * GB)


def test_an_rgb_replay_larger_than_ram_is_refused_but_a_short_run_is_not() -> None:
    cfg = _cfg(["task=cartpole-swingup", "obs=rgb", "model_size=1", "steps=2000000"], RGB)
    replay = next(t for t in terms(cfg) if t.key == "buffer_size")
    assert replay.bytes > 36 * GB  # 1M transitions x 36.9 kB
    with pytest.raises(UserError, match="replay at capacity"):
        check_memory(cfg, available=24 * GB)
    short = _cfg(["task=cartpole-swingup", "obs=rgb", "model_size=1", "steps=100000"], RGB)
    check_memory(short, available=24 * GB)  # its replay never holds more than its steps


def test_train_refuses_before_writing_anything(tmp_path: Path, capsys) -> None:
    from ldmpc.cli import main

    work = tmp_path / "runs"
    code = main(["train", "task=cartpole-swingup", "batch_size=1e9", f"work_dir={work}"])
    err = capsys.readouterr().err
    assert code == 2 and "batch_size" in err and len(err.strip().splitlines()) == 1, err
    assert not work.exists()


@pytest.mark.parametrize(
    ("raw", "value"), [("1e6", 1_000_000), ("2_000", 2000), ("64", 64), ("1.0e3", 1000)]
)
def test_integer_keys_take_exact_integers(raw: str, value: int) -> None:
    assert parse([f"batch_size={raw}"]).batch_size == value


@pytest.mark.parametrize("raw", ["1.5", "1e-3", "1e19", "inf", "nan", "abc"])
def test_integer_keys_refuse_what_is_not_an_exact_integer(raw: str) -> None:
    with pytest.raises(UserError, match="batch_size"):
        parse([f"batch_size={raw}"])


def test_widths_too_large_to_build_are_one_line() -> None:
    with pytest.raises(UserError, match="mlp_dim=10000000000"):
        check_memory(_cfg([*MAKE_TRAIN, "mlp_dim=1e10"]), available=16 * GB)
