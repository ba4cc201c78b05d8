"""World model: shapes, parameter counts of the presets, init, target EMA, detached Q path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ldmpc import config
from ldmpc.world_model import WorldModel


def make_cfg(*overrides: str, obs_dim: int = 5, action_dim: int = 1):
    return config.derive(config.parse(["model_size=1", *overrides]), (obs_dim,), action_dim)


@pytest.mark.parametrize(("size", "expected_m"), [(1, 1.0), (5, 5.0)])
def test_shapes_and_parameter_counts(size: int, expected_m: float) -> None:
    cfg = make_cfg(f"model_size={size}")
    model = WorldModel(cfg)
    print(f"model_size={size}: {model.total_params:,} parameters")
    assert 0.75 * expected_m < model.total_params / 1e6 < 1.3 * expected_m
    B, L = 7, cfg.latent_dim
    z = model.encode(torch.randn(B, 5))
    assert z.shape == (B, L)
    a, info = model.pi(z)
    assert a.shape == (B, 1) and a.abs().max() <= 1
    assert set(info) >= {"mean", "log_std", "entropy", "scaled_entropy"}
    assert info["log_std"].min() >= cfg.log_std_min and info["log_std"].max() <= cfg.log_std_max
    assert model.next(z, a).shape == (B, L)
    assert model.reward(z, a).shape == (B, cfg.num_bins)
    assert model.Q(z, a, return_type="all").shape == (cfg.num_q, B, cfg.num_bins)
    for rt in ("min", "avg"):
        assert model.Q(z, a, return_type=rt).shape == (B, 1)
    # Time-major inputs [H, B, ...] work everywhere.
    zs = model.encode(torch.randn(3, B, 5))
    assert model.Q(zs, torch.zeros(3, B, 1), return_type="all").shape == (cfg.num_q, 3, B, 101)


def test_zero_init_outputs_and_target_copy() -> None:
    cfg = make_cfg()
    model = WorldModel(cfg)
    z = model.encode(torch.randn(4, 5))
    a = torch.zeros(4, 1)
    # Zero-initialised last layers: uniform logits -> predicted reward and Q are exactly ~0.
    assert model.reward(z, a).std(-1).max() == 0
    assert model.Q(z, a, return_type="avg").abs().max() < 1e-5
    for name, p in model.q_params().items():
        assert torch.equal(p, model.q_params(target=True)[name])


def test_soft_update_moves_target_by_tau() -> None:
    model = WorldModel(make_cfg())
    live = model.q_params()
    with torch.no_grad():
        for p in live.values():
            p.add_(1.0)
    before = {k: v.clone() for k, v in model.q_params(target=True).items()}
    model.soft_update_target_Q(0.25)
    for k, v in model.q_params(target=True).items():
        torch.testing.assert_close(v, before[k] + 0.25 * (live[k].detach() - before[k]))
    assert all(not v.requires_grad for v in model.q_params(target=True).values())
    assert any(k.startswith("_target_Qs_") for k in model.state_dict())


def test_detached_q_gives_no_param_grads_but_input_grads() -> None:
    model = WorldModel(make_cfg())
    with torch.no_grad():
        model._Qs.last_weight.normal_()
    z = model.encode(torch.randn(4, 5)).detach()
    a = torch.zeros(4, 1, requires_grad=True)
    model.Q(z, a, return_type="avg", detach=True).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in model._Qs.parameters())


def test_pi_with_given_eps_is_deterministic_and_eval_mean() -> None:
    cfg = make_cfg(action_dim=3)
    model = WorldModel(cfg)
    z = model.encode(torch.randn(6, 5))
    eps = torch.randn(6, 3)
    a1, _ = model.pi(z, eps=eps)
    a2, _ = model.pi(z, eps=eps)
    assert torch.equal(a1, a2)
    a0, info = model.pi(z, eps=torch.zeros(6, 3))
    torch.testing.assert_close(a0, info["mean"])
    # TD-MPC2's scaled entropy is -(unsquashed Gaussian log-prob) * action dims.
    _, info = model.pi(z, eps=eps)
    log_std = info["log_std"]
    unsquashed = (-0.5 * eps.pow(2) - log_std - 0.5 * torch.log(torch.tensor(2 * torch.pi))).sum(-1)
    torch.testing.assert_close(
        info["scaled_entropy"].squeeze(-1), -3 * unsquashed, rtol=1e-4, atol=1e-4
    )


def test_multitask_embedding_and_action_mask() -> None:
    cfg = make_cfg(obs_dim=5, action_dim=2)
    mt = dataclasses.replace(
        cfg,
        multitask=True,
        tasks=["a", "b", "c"],
        action_dims=[2, 1, 2],
        discounts=[cfg.discount] * 3,
        task_dim=16,
    )
    model = WorldModel(mt)
    task = torch.tensor([0, 1, 2, 1])
    z = model.encode(torch.randn(4, 5), task)
    assert z.shape == (4, cfg.latent_dim)
    a, info = model.pi(z, task)
    assert a[1, 1] == 0 and a[3, 1] == 0 and info["mean"][1, 1] == 0
    # Time-major [H, B] inputs broadcast the per-sequence task.
    zs = model.encode(torch.randn(3, 4, 5), task)
    assert model.next(zs, torch.zeros(3, 4, 2), task).shape == (3, 4, cfg.latent_dim)
    with pytest.raises(ValueError, match="task"):
        model.encode(torch.randn(4, 5))


def test_next_and_reward_matches_next_and_reward_with_shared_latent() -> None:
    model = WorldModel(make_cfg(action_dim=2))
    with torch.no_grad():
        model._reward[-1].weight.normal_()
    z = model.encode(torch.randn(3, 1, 5))  # one latent per env, shared by its samples
    a = torch.rand(3, 6, 2) * 2 - 1
    nz, logits = model.next_and_reward(z, a)
    zx = z.expand(3, 6, -1)
    torch.testing.assert_close(nz, model.next(zx, a), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits, model.reward(zx, a), atol=1e-4, rtol=1e-4)
