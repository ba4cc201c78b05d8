"""Config: defaults, presets, overrides, validation, derived values, read-only."""

from __future__ import annotations

import dataclasses

import pytest

from ldmpc import config
from ldmpc.errors import UserError


def test_defaults_match_tdmpc2() -> None:
    cfg = config.parse([])
    assert (cfg.horizon, cfg.iterations, cfg.num_samples, cfg.num_elites) == (3, 6, 512, 64)
    assert (cfg.num_pi_trajs, cfg.min_std, cfg.max_std, cfg.temperature) == (24, 0.05, 2.0, 0.5)
    assert (cfg.batch_size, cfg.lr, cfg.enc_lr_scale, cfg.rho) == (256, 3e-4, 0.3, 0.5)
    assert (cfg.grad_clip_norm, cfg.tau, cfg.num_bins, cfg.vmin, cfg.vmax) == (
        20,
        0.01,
        101,
        -10,
        10,
    )
    assert (cfg.consistency_coef, cfg.reward_coef, cfg.value_coef) == (20, 0.1, 0.1)
    assert (cfg.simnorm_dim, cfg.task_dim, cfg.model_size) == (8, 96, 5)


@pytest.mark.parametrize("size", sorted(config.MODEL_SIZES))
def test_model_size_presets(size: int) -> None:
    cfg = config.parse([f"model_size={size}"])
    for key, value in config.MODEL_SIZES[size].items():
        assert cfg[key] == value


def test_explicit_key_wins_over_preset() -> None:
    cfg = config.parse(["model_size=1", "mlp_dim=64"])
    assert cfg.mlp_dim == 64 and cfg.latent_dim == 128


def test_override_types_are_coerced() -> None:
    cfg = config.parse(["steps=7000000", "compile=true", "lr=1e-3", "exp_name=abc"])
    assert cfg.steps == 7_000_000 and cfg.compile is True and cfg.lr == 1e-3
    assert config.parse(["eval_freq=0"]).eval_freq == 0  # 0: never evaluate


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["horizn=3"], "did you mean: horizon"),
        (["steps=-5"], "steps=-5"),
        (["eval_freq=-1"], "eval_freq=-1: must be >= 0"),
        (["steps=abc"], "expected an integer"),
        (["model_size=7"], "allowed 1, 5, 19, 48, 317"),
        (["num_elites=600"], "num_elites=600"),
        (["rho=0"], "(0, 1]"),
        (["dynamics=transformer"], "allowed: mlp, diffusion"),
        (["task=cartpole-swingupp"], "did you mean: cartpole-swingup"),
        (["episode_length=3"], "derived"),
        (["nokeyvalue"], "key=value"),
    ],
)
def test_bad_values_name_key_and_allowed(args: list[str], needle: str) -> None:
    with pytest.raises(UserError, match=None) as err:
        config.parse(args)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_derive_fills_values_and_freezes() -> None:
    cfg = config.derive(config.parse(["task=cartpole-swingup"]), (5,), 1)
    assert cfg.episode_length == 500 and cfg.action_repeat == 2
    assert cfg.seed_steps == 2500  # max(1000, 5 x 500)
    assert cfg.discount == pytest.approx(0.99)  # (100-1)/100
    assert cfg.bin_size == pytest.approx(0.2)
    assert cfg.run_dir.endswith("cartpole-swingup/1/default")
    assert isinstance(cfg, config.Config)  # one typed object from here on, read-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3  # type: ignore[misc]
    assert config.to_dict(config.Config.from_dict(config.to_dict(cfg))) == config.to_dict(cfg)


def test_large_action_spaces_plan_two_more_iterations() -> None:
    """TD-MPC2 adds 2 MPPI iterations when the (padded) action size is at least 20 (dog,
    humanoid, MyoSuite hands); smaller ones keep the configured count."""
    small = config.derive(config.parse(["task=dog-run", "iterations=4"]), (5,), 19)
    large = config.derive(config.parse(["task=dog-run", "iterations=4"]), (5,), 20)
    assert (small.iterations, large.iterations) == (4, 6)


def test_help_lists_every_settable_key() -> None:
    text = config.help_text()
    for key in config.USER_KEYS:
        assert f"  {key}=" in text
    assert "episode_length=" not in text


def test_fingerprint_round_trips_through_plain_dict() -> None:
    cfg = config.derive(config.parse(["model_size=1"]), (5,), 1)
    assert config.fingerprint(cfg)["model_size"] == 1
    assert config.to_dict(cfg)["task"] == "cartpole-swingup"
