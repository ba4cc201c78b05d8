"""Losses: finite, decreasing on a fixed batch, one backward reaches exactly the right params."""

from __future__ import annotations

import torch

from ldmpc import config
from ldmpc.losses import RunningScale, policy_loss, td_target, total_loss, world_model_loss
from ldmpc.world_model import WorldModel


def make_cfg(*overrides: str):
    return config.derive(config.parse(["model_size=1", *overrides]), (5,), 2)


def make_batch(horizon: int = 3, batch: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(horizon + 1, batch, 5, generator=g),
        "action": torch.rand(horizon, batch, 2, generator=g) * 2 - 1,
        "reward": torch.rand(horizon, batch, 1, generator=g),
    }


def test_losses_finite_with_expected_keys() -> None:
    cfg = make_cfg()
    model = WorldModel(cfg).train()
    loss, metrics, new_scale = total_loss(model, make_batch(), cfg, RunningScale(cfg.tau))
    assert loss.ndim == 0 and torch.isfinite(loss)
    for key in ("consistency_loss", "reward_loss", "value_loss", "pi_loss", "pi_scale"):
        assert torch.isfinite(metrics[key]), key
    assert new_scale.shape == (1,) and new_scale.item() >= 1.0


def test_one_backward_reaches_every_part_but_the_target() -> None:
    cfg = make_cfg()
    model = WorldModel(cfg).train()
    loss, _, _ = total_loss(model, make_batch(), cfg, RunningScale(cfg.tau))
    loss.backward()
    for part in (model._encoder, model._dynamics, model._reward, model._Qs, model._pi):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads), type(part).__name__
        assert sum(g.abs().sum() for g in grads) > 0
    for buf in model.q_params(target=True).values():
        assert not buf.requires_grad and buf.grad is None


def test_policy_loss_only_moves_the_policy() -> None:
    cfg = make_cfg()
    model = WorldModel(cfg).train()
    zs = model.encode(make_batch()["obs"])
    loss, _, _ = policy_loss(model, zs, cfg, RunningScale(cfg.tau))
    loss.backward()
    assert all(p.grad is not None for p in model._pi.parameters())
    others = [*model._encoder.parameters(), *model._Qs.parameters(), *model._dynamics.parameters()]
    assert all(p.grad is None for p in others)


def test_world_model_loss_does_not_touch_policy() -> None:
    cfg = make_cfg()
    model = WorldModel(cfg).train()
    loss, _, zs = world_model_loss(model, make_batch(), cfg)
    loss.backward()
    assert zs.shape == (4, 32, cfg.latent_dim)
    assert all(p.grad is None for p in model._pi.parameters())


def test_td_target_respects_terminated() -> None:
    cfg = make_cfg()
    model = WorldModel(cfg).eval()
    with torch.no_grad():
        for buf in model.q_params(target=True).values():
            buf.normal_()
    z = model.encode(torch.randn(3, 8, 5))
    r = torch.rand(3, 8, 1)
    torch.manual_seed(0)
    live = td_target(model, z, r, torch.zeros_like(r), cfg)
    torch.manual_seed(0)
    done = td_target(model, z, r, torch.ones_like(r), cfg)
    torch.testing.assert_close(done, r)
    assert not torch.allclose(live, r)


def test_losses_decrease_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    cfg = make_cfg("mlp_dim=64", "latent_dim=32", "enc_dim=64")
    model = WorldModel(cfg).train()
    scale = RunningScale(cfg.tau)
    batch = make_batch(batch=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(50):
        loss, metrics, new_scale = total_loss(model, batch, cfg, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.soft_update_target_Q(cfg.tau)
        scale.commit(new_scale)
        history.append({k: v.item() for k, v in metrics.items()})
    first, last = history[0], history[-1]
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert last["reward_loss"] < 0.5 * first["reward_loss"]
    assert last["value_loss"] < 0.5 * first["value_loss"]
    assert last["wm_loss"] < first["wm_loss"]


def test_running_scale_tracks_percentile_range() -> None:
    scale = RunningScale(tau=1.0)
    x = torch.linspace(0, 100, 101).unsqueeze(-1)
    value = scale.compute(x)
    torch.testing.assert_close(value, torch.tensor([90.0]))
    assert scale.value.item() == 1.0  # compute() does not commit
    scale.commit(value)
    assert scale.value.item() == 90.0
    small = RunningScale(tau=0.5)
    torch.testing.assert_close(small.compute(torch.zeros(10, 1)), torch.tensor([1.0]))
