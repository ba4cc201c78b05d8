"""Batched MPPI in latent space for E envs at once (TD-MPC2's planner, vectorised over envs).

Every tensor is [E, N, H, A]-shaped: one pass of the world model scores all candidates of all
envs, with no Python loop over samples and no host/device sync inside the loop. (On a CPU the
envs are scored in cache-sized groups, see `CPU_ROWS_PER_CHUNK`; on a GPU in one pass.)

Randomness design: all noise of one decision is drawn up front into a `PlanNoise` whose tensors
have the env as their leading dim (the pair of Q heads per iteration is shared by all envs).
Planning is then a deterministic function of (model, z, warm start, noise), so env e of a
batched plan equals a single-env plan fed `noise.select(e)` (up to float round-off of batched
matmuls). Callers that want per-env generators can build the noise env by env and `cat` it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from ldmpc.math_utils import two_hot_inv
from ldmpc.world_model import task_discount

if TYPE_CHECKING:
    from ldmpc.config import Config


@dataclass
class PlanNoise:
    """Pre-drawn randomness of one planning decision for E envs.

    pi_eps [E, P, H, A]: policy-prior trajectories; act [I, E, G, H, A]: Gaussian candidates;
    term_eps [I, E, N, A]: policy action at the end of the horizon; heads [I, 2]: Q heads
    averaged per iteration (shared by envs); gumbel [E, K]: elite choice; final [E, A]: exploration;
    dyn [E, 1, H, L]: diffusion dynamics (one draw per env, shared by its candidates and
    iterations; [E, 1, 0, 0] with mlp dynamics); prop [E, D, H, A]: diffusion proposals.
    (P, D, G) = `pool_sizes(cfg)`, N = P + D + G.
    """

    pi_eps: torch.Tensor
    act: torch.Tensor
    term_eps: torch.Tensor
    heads: torch.Tensor
    gumbel: torch.Tensor
    final: torch.Tensor
    dyn: torch.Tensor
    prop: torch.Tensor

    def select(self, idx: int | slice | torch.Tensor) -> PlanNoise:
        """The noise of a subset of envs (same values as in the batched draw)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return PlanNoise(
            pi_eps=self.pi_eps[idx],
            act=self.act[:, idx],
            term_eps=self.term_eps[:, idx],
            heads=self.heads,
            gumbel=self.gumbel[idx],
            final=self.final[idx],
            dyn=self.dyn[idx],
            prop=self.prop[idx],
        )

    @staticmethod
    def cat(parts: list[PlanNoise]) -> PlanNoise:
        """Join per-env noise (e.g. drawn from per-env generators); heads come from the first."""
        env_dim = {"pi_eps": 0, "act": 1, "term_eps": 1, "gumbel": 0, "final": 0, "dyn": 0}
        env_dim["prop"] = 0
        out = {k: torch.cat([getattr(p, k) for p in parts], dim=d) for k, d in env_dim.items()}
        return PlanNoise(heads=parts[0].heads, **out)

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]


def pool_sizes(cfg: Config) -> tuple[int, int, int]:
    """Candidates per env and iteration: (P policy-prior trajectories, D diffusion proposals,
    G Gaussian samples). MPPI fills `num_samples` with Gaussians; ssr scores P + D only."""
    proposal = cfg.proposal
    P = cfg.num_pi_trajs if proposal != "diffusion" else 0
    D = cfg.num_diffusion_proposals if proposal in ("diffusion", "both") else 0
    G = cfg.num_samples - P - D if cfg.planner == "mppi" else 0
    return P, D, G


def plan_iterations(cfg: Config) -> int:
    return cfg.iterations if cfg.planner == "mppi" else 1


def sample_noise(
    cfg: Config, num_envs: int, device: torch.device | str, generator: torch.Generator | None = None
) -> PlanNoise:
    """Draw all randomness of one decision for `num_envs` envs from `generator`."""
    E, It, K = num_envs, plan_iterations(cfg), cfg.num_elites
    (P, D, G), H, A = pool_sizes(cfg), cfg.horizon, cfg.action_dim
    kw = {"device": device, "generator": generator}
    heads = torch.rand(It, cfg.num_q, **kw).argsort(dim=-1)[:, :2]
    uniform = torch.rand(E, K, **kw).clamp_(1e-20, 1.0 - 1e-7)
    diffusion = cfg.dynamics == "diffusion"
    return PlanNoise(
        pi_eps=torch.randn(E, P, H, A, **kw),
        act=torch.randn(It, E, G, H, A, **kw),
        term_eps=torch.randn(It, E, P + D + G, A, **kw),
        heads=heads,
        gumbel=-torch.log(-torch.log(uniform)),
        final=torch.randn(E, A, **kw),
        # drawn last, so mlp-dynamics decisions keep the random stream they always had
        dyn=torch.randn(E, 1, H if diffusion else 0, cfg.latent_dim if diffusion else 0, **kw),
        prop=torch.randn(E, D, H, A, **kw),
    )


def model_evals_per_decision(cfg: Config) -> dict[str, int]:
    """Analytic count of world-model rows evaluated per env per decision, by head.

    `dynamics` is the headline number a benchmark reports as "model evaluations": latent
    transitions predicted. Policy trajectories are generated (P x (H-1) transitions) and rolled
    out once with the proposals (P + D) x H, Gaussian candidates in every iteration. Diffusion
    dynamics predict H transitions per candidate with each of `diffusion_steps` denoiser calls,
    so they count steps x H; a coarse tail (plan_scales = [1, s]) adds 1 + 2 + ... + H tokens
    per candidate; `proposal` counts the proposal denoiser's action tokens.
    """
    It, (P, D, G), H = plan_iterations(cfg), pool_sizes(cfg), cfg.horizon
    heun = cfg.diffusion_sampler == "heun"
    calls = (lambda n: 2 * n - 1) if heun else (lambda n: n)  # denoiser calls of n steps
    per_step = 1
    gen_pi = P * (H - 1)
    if cfg.dynamics == "diffusion":
        per_step = calls(cfg.diffusion_steps)
        gen_pi = P * (H * (H - 1) // 2)  # autoregressive: prefixes of 1..H-1 tokens
    rolled = (P + D) + It * G  # candidate rollouts per decision
    tail = H * (H + 1) // 2 if len(cfg.plan_scales) > 1 else 0  # prefixes
    return {
        "dynamics": per_step * (gen_pi + (P + D) * H + It * G * H + rolled * tail),
        "reward": (P + D) * H + It * G * H + rolled * (H if tail else 0),
        "pi": P * H + It * (P + D + G) + rolled * (H if tail else 0),
        "q_heads": It * (P + D + G) * 2,
        "proposal": D * H * (calls(cfg.proposal_steps) if D else 0),
    }


def warm_start(
    prev_mean: torch.Tensor | None, is_first: torch.Tensor, cfg: Config, like: torch.Tensor
) -> torch.Tensor:
    """Initial MPPI mean [E, H, A]: the previous mean shifted one step (zero-padded), or zeros
    where the episode starts (`is_first`) or no previous mean exists."""
    E = like.shape[0]
    mean = torch.zeros(E, cfg.horizon, cfg.action_dim, device=like.device, dtype=like.dtype)
    if prev_mean is None:
        return mean
    keep = (~is_first.to(device=like.device, dtype=torch.bool)).to(like.dtype)
    mean[:, :-1] = prev_mean[:, 1:] * keep[:, None, None]
    return mean


@torch.no_grad()
def rollout(
    model: Any,
    z: torch.Tensor,
    actions: torch.Tensor,
    cfg: Config,
    task: torch.Tensor | None = None,
    dyn_noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Discounted model return [E, N, 1] of action sequences and the final latents [E, N, L].

    z [E, 1, L] (each env's latent, broadcast over its N candidates), actions [E, N, H, A];
    dyn_noise [E, 1, H, L]: the pre-drawn noise of diffusion dynamics (unused with mlp).
    """
    if model.diffusion_dynamics:
        return _diffusion_rollout(model, z, actions, cfg, task, dyn_noise)
    G = torch.zeros(1, device=z.device, dtype=z.dtype)
    gamma = task_discount(model, task, cfg)
    discount = 1.0
    for t in range(cfg.horizon):
        a = actions[:, :, t]
        z, logits = model.next_and_reward(z, a, task)
        G = G + discount * two_hot_inv(logits, cfg.num_bins, cfg.vmin, cfg.vmax)
        discount = discount * gamma
    return G, z.expand(*actions.shape[:2], z.shape[-1])


def _diffusion_rollout(
    model: Any,
    z: torch.Tensor,
    actions: torch.Tensor,
    cfg: Config,
    task: torch.Tensor | None,
    dyn_noise: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rollout` with diffusion dynamics: all H latents in one sampler pass, then the reward
    head on every (z_t, a_t) pair at once."""
    if dyn_noise is None:
        raise ValueError("diffusion dynamics need pre-drawn noise (PlanNoise.dyn)")
    zs = model.generate(z, actions, dyn_noise, task)  # [E, N, H, L]
    E, N, H = actions.shape[:3]
    z_in = torch.cat([z.expand(E, N, -1).unsqueeze(2), zs[:, :, :-1]], dim=2)  # z_0..z_{H-1}
    task_t = task.unsqueeze(-1) if task is not None else None  # [E, 1] -> [E, 1, 1]
    r = two_hot_inv(model.reward(z_in, actions, task_t), cfg.num_bins, cfg.vmin, cfg.vmax)
    gamma = task_discount(model, task, cfg)  # float, or [E, 1, 1] per task
    discounts = gamma ** torch.arange(H, device=z.device, dtype=z.dtype)
    G = (r.squeeze(-1) * discounts).sum(-1, keepdim=True)
    if len(cfg.plan_scales) > 1:
        return _coarse_tail(model, zs[:, :, -1], G, cfg, task, dyn_noise)
    return G, zs[:, :, -1]


def bootstrap_steps(cfg: Config) -> int:
    """Agent steps covered before the Q bootstrap: the horizon, plus the coarse tail's
    horizon * s steps when plan_scales = [1, s]."""
    plan_scales = list(cfg.plan_scales)
    return cfg.horizon * (1 + (plan_scales[1] if len(plan_scales) > 1 else 0))


def _coarse_tail(
    model: Any,
    z_head: torch.Tensor,
    ret: torch.Tensor,
    cfg: Config,
    task: torch.Tensor | None,
    dyn_noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """plan_scales = [1, s]: extend each candidate's return past the fine head (exact rule).

    From z_H, K = horizon coarse tokens at scale s follow the policy prior's mean action,
    held for the s steps of its token: a_k = pi_mean(z_{H+sk}). Token k adds
    gamma^(H+sk) * r(z_{H+sk}, a_k) * (1 + gamma + ... + gamma^(s-1)) (the reward head's one-step
    reward, taken as constant over the token), and z_{H+s(k+1)} comes from the causal denoiser
    at scale s on the held actions so far (one call per token; same noise draw as the head).
    The caller then bootstraps with gamma^(H+sK) Q(z_{H+sK}, pi(z_{H+sK})) (`bootstrap_steps`).
    """
    H, s = cfg.horizon, cfg.plan_scales[1]
    gamma = task_discount(model, task, cfg)  # float, or [E, 1, 1] per task
    hold = sum(gamma**j for j in range(s))
    zt, held = z_head, []
    zero = torch.zeros(*zt.shape[:-1], cfg.action_dim, device=zt.device, dtype=zt.dtype)
    for k in range(H):
        a, _ = model.pi(zt, task, eps=zero)  # eps = 0: the squashed mean
        r = two_hot_inv(model.reward(zt, a, task), cfg.num_bins, cfg.vmin, cfg.vmax)
        ret = ret + gamma ** (H + s * k) * hold * r
        held.append(a.unsqueeze(-2).expand(*a.shape[:-1], s, a.shape[-1]))
        zt = model.generate(z_head, torch.cat(held, dim=-2), dyn_noise, task, scale=s)[..., -1, :]
    return ret, zt


@torch.no_grad()
def bootstrap(
    model: Any,
    ret: torch.Tensor,
    z: torch.Tensor,
    term_eps: torch.Tensor,
    heads: torch.Tensor,
    cfg: Config,
    task: torch.Tensor | None = None,
) -> torch.Tensor:
    """G + discount^T * Q(z_T, pi(z_T)), Q = mean of the two heads in `heads` (TD-MPC2 'avg');
    T = horizon (plus the coarse tail's steps, see `bootstrap_steps`)."""
    a, _ = model.pi(z, task, eps=term_eps)
    q = model.Q(z, a, task, return_type="avg", heads=heads)
    return ret + task_discount(model, task, cfg) ** bootstrap_steps(cfg) * q


# On a CPU, activations of more rows than this fall out of the L2/L3 caches and every
# elementwise pass becomes memory-bound: measured on the 2-core box (size 1, 16 envs x 512
# samples), one [8192, ...] pass cost ~20% more per env than chunks of 4 envs.
CPU_ROWS_PER_CHUNK = 2048


def _env_chunks(num_envs: int, rows_per_env: int, device: torch.device) -> list[slice]:
    """Groups of envs evaluated together: cache-sized on a CPU, all envs at once elsewhere."""
    step = CPU_ROWS_PER_CHUNK // max(rows_per_env, 1) if device.type == "cpu" else num_envs
    step = max(1, min(num_envs, step))
    return [slice(s, s + step) for s in range(0, num_envs, step)]


def _candidate_values(
    model: Any,
    z: torch.Tensor,
    fixed_rollout: tuple[torch.Tensor, torch.Tensor],
    sampled: torch.Tensor,
    term_eps: torch.Tensor,
    heads: torch.Tensor,
    cfg: Config,
    task: torch.Tensor | None,
    dyn_noise: torch.Tensor,
) -> torch.Tensor:
    """Values [E, N] of [fixed (policy trajectories, proposals), sampled] candidates.

    The fixed candidates' rollout is the same in every iteration (same actions, same model
    noise), so it is computed once per decision; only their bootstrap is redrawn (TD-MPC2
    recomputes it all, with identical results).
    """
    out = []
    for sl in _env_chunks(z.shape[0], term_eps.shape[1], z.device):
        t = task[sl] if task is not None else None
        G, z_H = rollout(model, z[sl], sampled[sl], cfg, t, dyn_noise[sl])
        G = torch.cat([fixed_rollout[0][sl], G], dim=1)
        z_H = torch.cat([fixed_rollout[1][sl], z_H], dim=1)
        out.append(bootstrap(model, G, z_H, term_eps[sl], heads, cfg, t))
    return torch.cat(out).squeeze(-1).nan_to_num(0.0)


@torch.no_grad()
def policy_trajectories(
    model: Any,
    z: torch.Tensor,
    pi_eps: torch.Tensor,
    cfg: Config,
    task: torch.Tensor | None,
    dyn_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Roll the policy prior through the model: [E, P, H, A] candidate action sequences.

    With diffusion dynamics the causal denoiser is re-run on the growing action prefix, so
    z_{t+1} is exactly the latent the full-sequence rollout will give (same noise)."""
    P = pi_eps.shape[1]
    z0 = z.unsqueeze(1).expand(-1, P, -1)
    zp = z0
    diffusion = model.diffusion_dynamics
    acts = []
    for t in range(cfg.horizon):
        a, _ = model.pi(zp, task, eps=pi_eps[:, :, t])
        acts.append(a)
        if t < cfg.horizon - 1:
            if diffusion:
                zp = model.generate(z0, torch.stack(acts, dim=2), dyn_noise, task)[:, :, -1]
            else:
                zp = model.next(zp, a, task)
    return torch.stack(acts, dim=2)


def _fixed_candidates(
    model: Any, z: torch.Tensor, noise: PlanNoise, cfg: Config, task: torch.Tensor | None
) -> torch.Tensor:
    """The candidates that do not depend on the MPPI mean: policy-prior trajectories and
    diffusion proposals, [E, P + D, H, A] (P or D may be 0)."""
    parts = []
    if noise.pi_eps.shape[1]:
        parts.append(policy_trajectories(model, z, noise.pi_eps, cfg, task, noise.dyn))
    if noise.prop.shape[1]:
        parts.append(model.propose(z.unsqueeze(1), noise.prop, task))
    if not parts:
        return noise.prop  # [E, 0, H, A]
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


@torch.no_grad()
def plan(
    model: Any,
    z: torch.Tensor,
    prev_mean: torch.Tensor | None,
    is_first: torch.Tensor,
    cfg: Config,
    eval_mode: bool = False,
    noise: PlanNoise | None = None,
    generator: torch.Generator | None = None,
    action_mask: torch.Tensor | None = None,
    task: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One MPPI decision for E envs: (action [E, A] in [-1, 1], new mean [E, H, A]).

    z [E, L]: current latents; prev_mean [E, H, A] or None; is_first [E] bool (no warm start);
    noise: pre-drawn (else drawn from `generator`); action_mask [E, A]: padded dims forced to 0;
    task [E] long (multitask). In eval mode the final exploration noise is not added.
    """
    E = z.shape[0]
    if noise is None:
        noise = sample_noise(cfg, E, z.device, generator)
    task_n = task.unsqueeze(1) if task is not None else None  # broadcast over samples
    mask = action_mask[:, None, None, :] if action_mask is not None else None  # [E, 1, 1, A]

    fixed = _fixed_candidates(model, z, noise, cfg, task_n)  # [E, P + D, H, A]
    if mask is not None:
        fixed = fixed * mask
    zs = z.unsqueeze(1)  # [E, 1, L]: broadcast over samples inside the model
    fixed_rollout = rollout(model, zs, fixed, cfg, task_n, noise.dyn)
    if cfg.planner == "ssr":
        return _rank(model, fixed, fixed_rollout, noise, cfg, eval_mode, task_n, action_mask)
    mean = warm_start(prev_mean, is_first, cfg, z)
    std = torch.full_like(mean, cfg.max_std)
    own = _own_candidates(noise, z.device)
    for i in range(cfg.iterations):
        sampled = (mean.unsqueeze(1) + std.unsqueeze(1) * noise.act[i]).clamp(-1, 1)
        if mask is not None:
            sampled = sampled * mask
        value = _candidate_values(
            model,
            zs,
            fixed_rollout,
            sampled,
            noise.term_eps[i],
            noise.heads[i],
            cfg,
            task_n,
            noise.dyn,
        )  # [E, N]
        actions = torch.cat([fixed, sampled], dim=1)  # [E, N, H, A]
        elites, score, mean, spread = _refit(value, actions, cfg.num_elites, cfg.temperature)
        if own is not None:  # proposals must not narrow the search (see `_own_candidates`)
            own_spread = _refit(value[:, own], actions[:, own], cfg.num_elites, cfg.temperature)[3]
            spread = torch.maximum(spread, own_spread)
        std = spread.clamp(cfg.min_std, cfg.max_std)
        if mask is not None:
            mean, std = mean * mask[:, 0], std * mask[:, 0]

    # Pick one elite by its score (Gumbel-max), execute its first action (+ std noise if exploring).
    choice = (score.log() + noise.gumbel).argmax(dim=1)  # [E]
    action = elites[torch.arange(E, device=z.device), choice, 0]  # [E, A]
    if not eval_mode:
        action = action + std[:, 0] * noise.final
    action = action.clamp(-1, 1)
    if action_mask is not None:
        action = action * action_mask
    return action, mean


def _refit(
    value: torch.Tensor, actions: torch.Tensor, num_elites: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MPPI refit on the top `num_elites` candidates by value: (elites [E, K, H, A], their
    softmax scores [E, K], the score-weighted mean [E, H, A] and std around it [E, H, A])."""
    elite_value, elite_idx = torch.topk(value, min(num_elites, value.shape[1]), dim=1)
    elites = actions.gather(1, elite_idx[:, :, None, None].expand(-1, -1, *actions.shape[2:]))
    score = torch.softmax(temperature * elite_value.float(), dim=1)  # fp32 under bf16 too
    w = score[:, :, None, None]
    mean = (w * elites).sum(1)
    return elites, score, mean, (w * (elites - mean.unsqueeze(1)).pow(2)).sum(1).sqrt()


def _own_candidates(noise: PlanNoise, device: torch.device) -> torch.Tensor | None:
    """Indices of the MPPI pool without the diffusion proposals (policy prior + Gaussians), or
    None when no proposals join the pool (plain TD-MPC2: nothing changes).

    Why: the proposals imitate the planner's past choices, so for a given latent they are
    near-copies; when they score best they fill every elite slot and the refit std falls to
    min_std. On cartpole-swingup at 27.5k steps (proposals agent, `make train` budget) the
    executed action's exploration std was 0.05 (= min_std) with the proposals in the pool and
    0.21 with the same weights without them; the baseline agent's was 0.23. So the std is the
    larger of the two refits: the proposals still steer the mean, but the Gaussians explore and
    the executed action is perturbed as widely as TD-MPC2's would be."""
    P, D, G = noise.pi_eps.shape[1], noise.prop.shape[1], noise.act.shape[2]
    if D == 0 or P + G == 0:
        return None
    # built on the device (no host-to-device copy, which would sync a GPU stream)
    ar = torch.arange(P + D + G, device=device)
    return torch.cat([ar[:P], ar[P + D :]])


def _rank(
    model: Any,
    candidates: torch.Tensor,
    cand_rollout: tuple[torch.Tensor, torch.Tensor],
    noise: PlanNoise,
    cfg: Config,
    eval_mode: bool,
    task: torch.Tensor | None,
    action_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """planner=ssr: score every candidate once and execute the best one's first action (no
    MPPI refit). Exploration adds min_std Gaussian noise; the returned "mean" is the chosen
    sequence (ssr keeps no warm start, but the state has the same shape as MPPI's)."""
    value = (
        bootstrap(model, *cand_rollout, noise.term_eps[0], noise.heads[0], cfg, task)
        .squeeze(-1)
        .nan_to_num(0.0)
    )  # [E, P + D]
    best = value.argmax(dim=1)
    seq = candidates[torch.arange(candidates.shape[0], device=value.device), best]  # [E, H, A]
    action = seq[:, 0]
    if not eval_mode:
        action = action + cfg.min_std * noise.final
    action = action.clamp(-1, 1)
    if action_mask is not None:
        action = action * action_mask
    return action, seq
