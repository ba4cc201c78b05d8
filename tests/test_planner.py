"""Planner: batched == per-env, goal seeking on an analytic model, warm start, bounds, masks."""

from __future__ import annotations

import math
from typing import Any

import torch
from world_models import random_model

from ldmpc import config
from ldmpc.math_utils import two_hot
from ldmpc.planner import PlanNoise, model_evals_per_decision, plan, sample_noise, warm_start

SMALL = ["num_samples=64", "num_elites=8", "num_pi_trajs=4", "iterations=3"]


def make_cfg(*overrides: str, obs_dim: int = 5, action_dim: int = 2):
    args = ["model_size=1", "mlp_dim=64", "latent_dim=32", "enc_dim=64", *SMALL, *overrides]
    return config.derive(config.parse(args), (obs_dim,), action_dim)


def test_batched_plan_equals_per_env_plans() -> None:
    cfg = make_cfg()
    model = random_model(cfg)
    E = 4
    z = model.encode(torch.randn(E, 5))
    prev = torch.rand(E, cfg.horizon, 2) * 2 - 1
    is_first = torch.tensor([True, False, False, True])
    noise = sample_noise(cfg, E, "cpu", torch.Generator().manual_seed(1))
    for eval_mode in (False, True):
        action, mean = plan(model, z, prev, is_first, cfg, eval_mode, noise)
        assert action.shape == (E, 2) and mean.shape == (E, cfg.horizon, 2)
        for e in range(E):
            a_e, m_e = plan(
                model, z[e : e + 1], prev[e : e + 1], is_first[e : e + 1], cfg, eval_mode,
                noise.select(e),
            )  # fmt: skip
            torch.testing.assert_close(a_e, action[e : e + 1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(m_e, mean[e : e + 1], atol=1e-4, rtol=1e-4)


def test_noise_select_and_cat_round_trip() -> None:
    cfg = make_cfg()
    noise = sample_noise(cfg, 3, "cpu", torch.Generator().manual_seed(0))
    joined = PlanNoise.cat([noise.select(i) for i in range(3)])
    for a, b in zip(joined.tensors(), noise.tensors()):
        assert torch.equal(a, b)
    assert noise.act.shape == (cfg.iterations, 3, cfg.num_samples - cfg.num_pi_trajs, 3, 2)
    assert noise.heads.shape == (cfg.iterations, 2)
    assert (noise.heads[:, 0] != noise.heads[:, 1]).all()


def test_same_generator_seed_same_action() -> None:
    cfg = make_cfg()
    model = random_model(cfg)
    z = model.encode(torch.randn(2, 5))
    first = torch.ones(2, dtype=torch.bool)
    a1, _ = plan(model, z, None, first, cfg, generator=torch.Generator().manual_seed(5))
    a2, _ = plan(model, z, None, first, cfg, generator=torch.Generator().manual_seed(5))
    a3, _ = plan(model, z, None, first, cfg, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)


def test_warm_start_shifts_only_continuing_envs() -> None:
    cfg = make_cfg()
    prev = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    mean = warm_start(prev, torch.tensor([False, True]), cfg, torch.zeros(2, 4))
    torch.testing.assert_close(mean[0, :2], prev[0, 1:])
    assert (mean[0, 2] == 0).all() and (mean[1] == 0).all()
    assert (warm_start(None, torch.tensor([False, False]), cfg, torch.zeros(2, 4)) == 0).all()
    # is_first behaves exactly like having no previous mean.
    model = random_model(cfg)
    z = model.encode(torch.randn(2, 5))
    noise = sample_noise(cfg, 2, "cpu", torch.Generator().manual_seed(3))
    first = torch.ones(2, dtype=torch.bool)
    a1, m1 = plan(model, z, prev, first, cfg, noise=noise)
    a2, m2 = plan(model, z, None, first, cfg, noise=noise)
    assert torch.equal(a1, a2) and torch.equal(m1, m2)


def test_actions_bounded_and_mask_zeroes_padded_dims() -> None:
    cfg = make_cfg("max_std=50", "min_std=10")
    model = random_model(cfg)
    z = model.encode(torch.randn(3, 5))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    first = torch.ones(3, dtype=torch.bool)
    action, mean = plan(model, z, None, first, cfg, generator=torch.Generator(), action_mask=mask)
    assert action.abs().max() <= 1.0
    assert action[1, 1] == 0 and action[2, 0] == 0
    assert (mean[1, :, 1] == 0).all() and (mean[2, :, 0] == 0).all()


def test_model_evals_per_decision() -> None:
    cfg = config.derive(config.parse(["model_size=1"]), (5,), 1)
    evals = model_evals_per_decision(cfg)
    assert evals["dynamics"] == 24 * 2 + 24 * 3 + 6 * (512 - 24) * 3
    assert evals["q_heads"] == 6 * 512 * 2


class PointMass:
    """Analytic stand-in for the world model: z' = z + dt * a, reward = -|z' - goal|.

    It has the interface the planner calls on a `WorldModel` (mlp dynamics, one task); rewards
    are returned as two-hot logits so that the planner's decoding recovers them. The policy
    prior is pure noise, so any goal seeking comes from MPPI itself.
    """

    diffusion_dynamics = False

    def __init__(self, cfg: Any, goal: torch.Tensor, dt: float = 0.1) -> None:
        self.cfg, self.goal, self.dt = cfg, goal, dt

    def discount(self, task: Any, default: float) -> float:
        return default

    def next_and_reward(self, z: torch.Tensor, a: torch.Tensor, task: Any = None) -> Any:
        return self.next(z, a, task), self.reward(z, a, task)

    def next(self, z: torch.Tensor, a: torch.Tensor, task: Any = None) -> torch.Tensor:
        return z + self.dt * a

    def true_reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return -(self.next(z, a) - self.goal).norm(dim=-1, keepdim=True)

    def reward(self, z: torch.Tensor, a: torch.Tensor, task: Any = None) -> torch.Tensor:
        r = self.true_reward(z, a)
        return torch.log(two_hot(r, self.cfg.num_bins, self.cfg.vmin, self.cfg.vmax) + 1e-12)

    def pi(self, z: torch.Tensor, task: Any = None, eps: torch.Tensor | None = None) -> Any:
        eps = torch.randn(*z.shape[:-1], 2) if eps is None else eps
        return torch.tanh(eps), {}

    def Q(self, z: torch.Tensor, a: torch.Tensor, task: Any = None, **kw: Any) -> Any:  # noqa: N802
        return self.true_reward(z, a) * 5.0


def test_mppi_on_point_mass_seeks_the_goal() -> None:
    cfg = make_cfg("num_samples=128", "num_elites=16", "iterations=4", action_dim=2)
    goal = torch.tensor([1.0, -0.5])
    model = PointMass(cfg, goal)
    E, T = 4, 15
    gen = torch.Generator().manual_seed(0)
    z = torch.zeros(E, 2)
    zr = torch.zeros(E, 2)
    first = torch.ones(E, dtype=torch.bool)
    state = None
    ret_plan = torch.zeros(E)
    ret_rand = torch.zeros(E)
    for t in range(T):
        action, state = plan(model, z, state, first, cfg, eval_mode=True, generator=gen)
        if t == 0:
            direction = goal / goal.norm()
            cos = (action @ direction) / action.norm(dim=-1)
            assert (cos > 0.8).all(), cos
        first = torch.zeros(E, dtype=torch.bool)
        ret_plan += model.true_reward(z, action).squeeze(-1)
        z = model.next(z, action)
        rand = torch.rand(E, 2, generator=gen) * 2 - 1
        ret_rand += model.true_reward(zr, rand).squeeze(-1)
        zr = model.next(zr, rand)
    assert (ret_plan > ret_rand + 1.0).all(), (ret_plan, ret_rand)
    # Ends up near the goal (max speed 0.1 * sqrt(2) per step; distance ~1.12).
    assert ((z - goal).norm(dim=-1) < 0.2).all()
    assert math.isfinite(float(ret_plan.sum()))


def test_cached_policy_rollout_equals_full_value_estimate() -> None:
    from ldmpc.planner import _candidate_values, bootstrap, rollout

    cfg = make_cfg()
    model = random_model(cfg)
    E, P, N = 3, cfg.num_pi_trajs, cfg.num_samples
    z = model.encode(torch.randn(E, 5)).unsqueeze(1)
    pi_actions = torch.rand(E, P, cfg.horizon, 2) * 2 - 1
    sampled = torch.rand(E, N - P, cfg.horizon, 2) * 2 - 1
    term_eps = torch.randn(E, N, 2)
    heads = torch.tensor([1, 0])
    no_dyn_noise = torch.zeros(E, 1, 0, 0)  # mlp dynamics draw no model noise
    cached = _candidate_values(
        model,
        z,
        rollout(model, z, pi_actions, cfg),
        sampled,
        term_eps,
        heads,
        cfg,
        None,
        no_dyn_noise,
    )
    G, z_H = rollout(model, z, torch.cat([pi_actions, sampled], 1), cfg)  # the plain estimate
    full = bootstrap(model, G, z_H, term_eps, heads, cfg)
    torch.testing.assert_close(cached, full.squeeze(-1), atol=1e-5, rtol=1e-5)


class KnownBest(PointMass):
    """Reward -|a - best|^2 at every step; the "diffusion proposals" are copies of the best
    sequence, as proposals that imitate the planner's own choices become."""

    def true_reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return -(a - self.goal).square().sum(-1, keepdim=True)

    def propose(self, z: torch.Tensor, noise: torch.Tensor, task: Any = None) -> torch.Tensor:
        return self.goal.expand(noise.shape).clone()

    def Q(self, z: torch.Tensor, a: torch.Tensor, task: Any = None, **kw: Any) -> Any:  # noqa: N802
        return torch.zeros(*a.shape[:-1], 1)  # the bootstrap's random pi action must not rank


def test_identical_best_proposals_do_not_collapse_the_exploration_std() -> None:
    # 16 copies of the best sequence fill all 16 elite slots. Their own spread is 0, so the
    # refit std fell to min_std; the Gaussians' refit must keep it (planner._own_candidates).
    cfg = make_cfg(
        "proposal=both", "num_diffusion_proposals=16", "num_samples=128", "num_elites=16",
        "iterations=2", action_dim=2,
    )  # fmt: skip
    best = torch.tensor([0.3, -0.2])
    model, E = KnownBest(cfg, best), 8
    z, first = torch.zeros(E, 2), torch.ones(E, dtype=torch.bool)
    noise = sample_noise(cfg, E, "cpu", torch.Generator().manual_seed(0))
    a_eval, _ = plan(model, z, None, first, cfg, eval_mode=True, noise=noise)
    a_train, _ = plan(model, z, None, first, cfg, eval_mode=False, noise=noise)
    torch.testing.assert_close(a_eval, best.expand(E, 2))  # the proposals still win
    inside = a_train.abs() < 1.0  # unclamped: a_train = a_eval + std * final
    std = ((a_train - a_eval) / noise.final)[inside]
    assert inside.sum() >= E and (std > 3 * cfg.min_std).all(), std
