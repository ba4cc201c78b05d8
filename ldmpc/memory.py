"""Refuse a run whose memory cannot fit, before anything starts (docs/design.md §4).

Without it, `batch_size=1e9` or an rgb replay larger than RAM starts Ray, builds the model,
seeds for minutes and then dies in the allocator. The estimate is deliberately simple: its terms
are the ones that grow with a key, each counted once where it lives on this machine:

- replay at capacity: min(buffer_size, steps + seed_steps) transitions of the task's real
  observation (float32 for states, uint8 frames for rgb) plus action, reward and flags, twice:
  the replay grows its arrays by a quarter and holds old and new while it copies;
- one sampled batch per learner: batch_size x (window + 1) observations, and its activations:
  batch_size x (window + 1) rows of every network layer's width, kept for the backward;
- the model per learner: weights, gradients, two Adam moments and the target Q (~5 copies);
  per acting process (runners, the evaluator): one copy, and the planner's candidates;

A run is refused when their sum exceeds the memory available now (MemAvailable); the message
names the largest term, the key that sets it and a value that would fit. Online runs only: an
offline run's replay is its dataset, whose size is known once it is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ldmpc.errors import UserError

if TYPE_CHECKING:
    from ldmpc.config import Config

REPLAY_PEAK = 2.0  # old + grown arrays during the replay's last reallocation (see above)
LEARNER_COPIES = 5  # weights, gradients, Adam's two moments, the EMA target (an upper bound)
ACTIVATION_WIDTHS = 24  # hidden-layer widths kept per batch row for the backward (all nets)


@dataclass(frozen=True)
class Term:
    what: str
    key: str  # the key whose value the term grows with (linearly)
    bytes: float


def model_params(cfg: Config) -> int:
    """Parameters of this config's world model, counted on the meta device (no memory)."""
    from ldmpc.world_model import WorldModel

    try:
        with torch.device("meta"):
            return sum(p.numel() for p in WorldModel(cfg).parameters())
    except (RuntimeError, OverflowError) as err:  # widths too large to even describe
        dims = f"enc_dim={cfg.enc_dim} mlp_dim={cfg.mlp_dim} latent_dim={cfg.latent_dim}"
        raise UserError(f"the model cannot be built at {dims}: {err}") from None


def terms(cfg: Config) -> list[Term]:
    """The memory terms of a run on this machine, largest first."""
    obs_item = 1 if cfg.obs == "rgb" else 4  # uint8 frames, float32 states
    obs_bytes = math.prod(int(d) for d in cfg.obs_shape) * obs_item
    transition = obs_bytes + 4 * (cfg.action_dim + 3)  # action, reward, terminated, task/flags
    capacity = min(int(cfg.buffer_size), int(cfg.steps) + int(cfg.seed_steps))
    rows = int(cfg.batch_size) * (int(cfg.window) + 1)
    learners = max(1, int(cfg.num_learners))
    actors = max(1, int(cfg.num_env_runners)) + 1  # acting processes + the evaluator
    params = model_params(cfg)
    candidates = int(cfg.num_envs) * int(cfg.num_samples) * int(cfg.horizon)
    width = max(cfg.mlp_dim, cfg.enc_dim, cfg.latent_dim)
    return sorted(
        [
            Term("the replay at capacity", "buffer_size", REPLAY_PEAK * capacity * transition),
            Term("one replay batch", "batch_size", learners * rows * obs_bytes),
            Term(
                "the update's activations",
                "batch_size",
                learners * rows * ACTIVATION_WIDTHS * width * 4,
            ),
            Term("the model on the learners", "model_size", learners * LEARNER_COPIES * params * 4),
            Term("the model on the acting processes", "model_size", actors * params * 4),
            Term("the planner's candidates", "num_samples", actors * candidates * width * 4 * 4),
        ],
        key=lambda t: -t.bytes,
    )


def available_bytes() -> int:
    """Memory that can be allocated now (MemAvailable), or total RAM where that is unknown."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(cfg: Config, available: int | None = None) -> None:
    """One UserError (exit 2) when the run's estimated memory exceeds what is available: it
    names the largest part, the key that sets it and, where lowering that key alone would do,
    a value that fits."""
    have = available_bytes() if available is None else available
    parts = terms(cfg)
    need = sum(t.bytes for t in parts)
    if need <= have:
        return
    big = parts[0]
    by_key = sum(t.bytes for t in parts if t.key == big.key)  # all it sets scales with it
    room = have - (need - by_key)
    value = getattr(cfg, big.key)
    fits = ""
    if room > 0 and big.key != "model_size":
        if big.key == "buffer_size":  # the term is min(buffer_size, steps) transitions
            value = min(value, int(cfg.steps) + int(cfg.seed_steps))
        fits = f"; {big.key}={max(1, int(value * room / by_key * 0.9)):,} would fit"
    setting = f"{big.key}={getattr(cfg, big.key):,}"
    if big.key == "model_size":
        setting += f" with enc_dim={cfg.enc_dim} mlp_dim={cfg.mlp_dim} latent_dim={cfg.latent_dim}"
    raise UserError(
        f"this run needs ~{_gb(need)} of memory, {_gb(have)} is available: the largest part is "
        f"{big.what} ({_gb(big.bytes)}, set by {setting}){fits}"
    )


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"
