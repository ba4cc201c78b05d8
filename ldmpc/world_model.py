"""TD-MPC2's implicit world model: encoder, latent dynamics, reward, policy prior, Q-ensemble.

There is no decoder: the latent is trained only to predict rewards, values and itself
(consistency), which is what planning needs. The target Q-ensemble is a set of buffers (EMA of the
live Q parameters); the policy loss reads Q through detached parameters, so one backward pass
over world-model loss + policy loss trains each part with its own objective (docs/design.md §3.3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ldmpc.conv_encoder import pixel_encoder
from ldmpc.math_utils import bounded_log_std, gaussian_logprob, squash, two_hot_inv
from ldmpc.nets import QEnsemble, SimNorm, mlp, weight_init

if TYPE_CHECKING:
    from ldmpc.config import Config

RETURN_TYPES = ("min", "avg", "all")


class WorldModel(nn.Module):
    """All learned parts of the agent. Methods mirror TD-MPC2: encode, next, reward, pi, Q.

    `task` arguments are long tensors broadcastable (right-aligned) to the leading dims of the
    latent, e.g. [B] for z [H, B, L], or [E, 1] for planner latents [E, N, L]. They are ignored
    unless `cfg.multitask`.
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.multitask = bool(cfg.multitask)
        L, A = cfg.latent_dim, cfg.action_dim
        T = cfg.task_dim if self.multitask else 0
        self.num_bins, self.vmin, self.vmax = cfg.num_bins, cfg.vmin, cfg.vmax
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max
        self.num_q = cfg.num_q
        if self.multitask:
            # max_norm keeps embeddings on the unit ball as in TD-MPC2.
            self._task_emb = nn.Embedding(len(cfg.tasks), T, max_norm=1)
            self.register_buffer("_action_masks", _action_masks(cfg))
            # derived from the config, not saved: a resumed or PBT-exploited run keeps its own
            self.register_buffer("_discounts", _task_discounts(cfg), persistent=False)
        self.pixels = cfg.obs == "rgb"
        if self.pixels:  # uint8 frame stacks -> conv net (ldmpc.conv_encoder)
            self._encoder = pixel_encoder(cfg)
        else:
            enc_hidden = max(cfg.num_enc_layers - 1, 1) * [cfg.enc_dim]
            obs_dim = int(cfg.obs_shape[0])
            self._encoder = mlp(obs_dim + T, enc_hidden, L, act=SimNorm(cfg.simnorm_dim))
        self._dynamics = (  # dynamics=diffusion replaces it (below)
            mlp(L + A + T, 2 * [cfg.mlp_dim], L, act=SimNorm(cfg.simnorm_dim))
            if cfg.dynamics == "mlp"
            else None
        )
        self._reward = mlp(L + A + T, 2 * [cfg.mlp_dim], cfg.num_bins)
        self._pi = mlp(L + T, 2 * [cfg.mlp_dim], 2 * A)
        self._Qs = QEnsemble(cfg.num_q, L + A + T, 2 * [cfg.mlp_dim], cfg.num_bins, cfg.dropout)
        self.apply(weight_init)
        # Diffusion parts (docs/design.md §3.2), built only when switched on; own inits
        # (adaLN-zero).
        self.diffusion_dynamics = cfg.dynamics == "diffusion"
        self.diffusion_proposals = cfg.proposal in ("diffusion", "both")
        self._diff_dynamics: nn.Module | None = None
        self._proposals: nn.Module | None = None
        if self.diffusion_dynamics:
            from ldmpc.diffusion.latent_dynamics import DiffusionDynamics

            self._diff_dynamics = DiffusionDynamics(cfg, cond_extra=T)
        if self.diffusion_proposals:
            from ldmpc.diffusion.action_proposals import ActionProposals

            self._proposals = ActionProposals(cfg, cond_extra=T)
        # Zero-init outputs of reward and Q: predictions start at exactly 0 (uniform logits).
        with torch.no_grad():
            self._reward[-1].weight.zero_()
            self._Qs.last_weight.zero_()
        for name, p in self._Qs.named_parameters():
            self.register_buffer(f"_target_Qs_{name}", p.detach().clone())

    # ----------------------------------------------------------------- parameters
    @property
    def total_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def q_params(self, target: bool = False, detach: bool = False) -> dict[str, torch.Tensor]:
        """Q-ensemble parameters: live, detached views (policy loss) or the EMA target."""
        if target:
            return {n: getattr(self, f"_target_Qs_{n}") for n, _ in self._Qs.named_parameters()}
        params = dict(self._Qs.named_parameters())
        return {n: p.detach() for n, p in params.items()} if detach else params

    @torch.no_grad()
    def soft_update_target_Q(self, tau: float) -> None:  # noqa: N802 (TD-MPC2 name)
        """target <- (1 - tau) * target + tau * live (Polyak averaging, in place)."""
        live = self.q_params(detach=True)
        target = self.q_params(target=True)
        names = list(live)
        torch._foreach_lerp_([target[n] for n in names], [live[n] for n in names], tau)

    # ----------------------------------------------------------------- components
    def task_emb(self, x: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
        """Append the task embedding to x (multitask only)."""
        if not self.multitask:
            return x
        if task is None:
            raise ValueError("multitask world model needs a task tensor, got task=None")
        emb = self._task_emb(task.long())
        return torch.cat([x, emb.expand(*x.shape[:-1], emb.shape[-1])], dim=-1)

    def action_mask(self, task: torch.Tensor | None) -> torch.Tensor | None:
        """[..., A] 0/1 mask of the task's real action dims (None when single-task)."""
        if not self.multitask or task is None:
            return None
        return self._action_masks[task.long()]

    def discount(self, task: torch.Tensor | None, default: float) -> torch.Tensor | float:
        """Per-task discount [..., 1] (TD-MPC2 derives one per task from its episode length);
        `default` (cfg.discount) when single-task."""
        if not self.multitask or task is None:
            return default
        return self._discounts[task.long()].unsqueeze(-1)

    def encode(self, obs: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Observation [..., obs_dim] (obs=rgb: uint8 frames [..., C, H, W]) -> latent [..., L]."""
        if self.pixels:
            return self._encoder(obs)
        return self._encoder(self.task_emb(obs, task))

    def next(
        self, z: torch.Tensor, a: torch.Tensor, task: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Latent dynamics: (z, a) -> next latent."""
        return self._dynamics(torch.cat([self.task_emb(z, task), a], dim=-1))

    def generate(
        self,
        z: torch.Tensor,
        actions: torch.Tensor,
        noise: torch.Tensor,
        task: torch.Tensor | None = None,
        scale: int = 1,
    ) -> torch.Tensor:
        """Diffusion dynamics: z [..., L] + actions [..., T * scale, A] -> the latents scale,
        2 scale, ..., T scale steps ahead [..., T, L] (noise [..., H, L] pre-drawn; see
        `DiffusionDynamics.generate`)."""
        return self._diff_dynamics.generate(self.task_emb(z, task), actions, noise, scale)

    def propose(
        self, z: torch.Tensor, noise: torch.Tensor, task: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Diffusion action proposals: z [E, 1, L], noise [E, P, H, A] -> [E, P, H, A]."""
        return self._proposals.generate(self.task_emb(z, task), noise)

    def reward(
        self, z: torch.Tensor, a: torch.Tensor, task: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reward logits [..., num_bins] (decode with `two_hot_inv`)."""
        return self._reward(torch.cat([self.task_emb(z, task), a], dim=-1))

    def next_and_reward(
        self, z: torch.Tensor, a: torch.Tensor, task: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(next latent, reward logits) for planning, where z may be shared across samples.

        z [..., 1, L] broadcasts against a [..., N, A]: the first layers of dynamics and reward
        are split into a latent part (computed once per env) and an action part, which saves
        the latent part of both first layers at the first planning step (~5% of a size-1 plan,
        ~9% at size 5) and the [z, a] concatenation at every step. Same values as `next` and
        `reward` up to float round-off.
        """
        s = self.task_emb(z, task)
        outs = []
        for net in (self._dynamics, self._reward):
            first = net[0]
            w_s, w_a = first.weight[:, : s.shape[-1]], first.weight[:, s.shape[-1] :]
            h = F.linear(a, w_a).add_(F.linear(s, w_s, first.bias))  # broadcasts s over N
            outs.append(net[1:](first.act(first.ln(h))))
        return outs[0], outs[1]

    def pi(
        self,
        z: torch.Tensor,
        task: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sample from the squashed-Gaussian policy prior.

        `eps` (standard normal, [..., A]) can be given so that a caller controls the randomness
        (the planner pre-draws all its noise). Returns the action in [-1, 1] and an info dict with
        the squashed mean, log_std, entropy (-log_prob) and TD-MPC2's action-dim scaled entropy.
        """
        mean, raw_log_std = self._pi(self.task_emb(z, task)).chunk(2, dim=-1)
        log_std = bounded_log_std(raw_log_std, self.log_std_min, self.log_std_max)
        if eps is None:
            eps = torch.randn_like(mean)
        mask = self.action_mask(task)
        if mask is not None:  # padded action dims: zero mean, unit std, no noise
            mean, log_std, eps = mean * mask, log_std * mask, eps * mask
            size = mask.sum(-1, keepdim=True)
        else:
            size = mean.shape[-1]
        log_prob = gaussian_logprob(eps, log_std)
        scaled_log_prob = log_prob * size
        action = mean + eps * log_std.exp()
        mean, action, log_prob = squash(mean, action, log_prob)
        # Entropy bonus scaled with the action dimension, as TD-MPC2 (keeps entropy_coef generic).
        entropy_scale = scaled_log_prob / (log_prob + 1e-8)
        info = {
            "mean": mean,
            "log_std": log_std,
            "entropy": -log_prob,
            "scaled_entropy": -log_prob * entropy_scale,
        }
        return action, info

    def Q(  # noqa: N802 (TD-MPC2's name)
        self,
        z: torch.Tensor,
        a: torch.Tensor,
        task: torch.Tensor | None = None,
        return_type: str = "min",
        target: bool = False,
        detach: bool = False,
        heads: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """State-action value.

        'all': logits of every head [num_q, ..., num_bins]. 'min' / 'avg': min / mean of two
        randomly chosen heads, decoded to scalars [..., 1]; only those two heads are evaluated.
        `heads` ([2] long) fixes the pair (the planner pre-draws it); otherwise it is drawn with
        `generator`. `target` uses the EMA parameters, `detach` the live ones without gradient.
        """
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type={return_type!r}: expected one of {RETURN_TYPES}")
        x = torch.cat([self.task_emb(z, task), a], dim=-1)
        params = self.q_params(target=target, detach=detach)
        training = self.training and not target  # the target ensemble never uses dropout
        if return_type == "all":
            return self._Qs(x, params, training=training)
        if heads is None:
            # no `generator=None`: inductor's C++ wrapper cannot call randperm.generator
            kw = {} if generator is None else {"generator": generator}
            heads = torch.randperm(self.num_q, device=z.device, **kw)[:2]
        q = two_hot_inv(self._Qs(x, params, heads, training), self.num_bins, self.vmin, self.vmax)
        return q.min(0).values if return_type == "min" else q.mean(0)


def _action_masks(cfg: Config) -> torch.Tensor:
    """[num_tasks, A] masks from `cfg.action_dims` (per-task sizes)."""
    dims = cfg.action_dims
    masks = torch.zeros(len(cfg.tasks), cfg.action_dim)
    for i, d in enumerate(dims):
        masks[i, : int(d)] = 1.0
    return masks


def task_discount(model: Any, task: torch.Tensor | None, cfg: Config) -> torch.Tensor | float:
    """The discount of each item's task ([..., 1], multitask) or cfg.discount (single task);
    shared by the TD target and the planner's returns."""
    return model.discount(task, cfg.discount)


def _task_discounts(cfg: Config) -> torch.Tensor:
    """[num_tasks] discounts from `cfg.discounts` (one per task, derived from its length)."""
    discounts = cfg.discounts
    return torch.tensor([float(d) for d in discounts])
