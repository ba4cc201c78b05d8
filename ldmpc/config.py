"""Typed configuration: TD-MPC2's keys and defaults plus ldmpc's own, validated once.

Users override keys exactly as in TD-MPC2 (`task=dog-run steps=7000000 compile=true`).
`parse()` turns overrides into a validated config (an OmegaConf view of the `Config` schema, which
type-checks every assignment); `derive()` fills the values that follow from the task and the
environment (episode length, shapes, seed steps, discount, bins) and returns a frozen `Config`.
That one typed, read-only object is what every later module takes (the core, the RLlib module
and learner: `Config.from_dict` rebuilds it from the plain dict RLlib carries).
"""

from __future__ import annotations

import dataclasses
import decimal
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, read_write
from omegaconf.errors import OmegaConfBaseException

from ldmpc.errors import UserError, close_matches

# Parameter counts (M) -> architecture, as in TD-MPC2. Explicit user overrides win over a preset.
MODEL_SIZES: dict[int, dict[str, int]] = {
    1: {"enc_dim": 256, "mlp_dim": 384, "latent_dim": 128, "num_enc_layers": 2, "num_q": 2},
    5: {"enc_dim": 256, "mlp_dim": 512, "latent_dim": 512, "num_enc_layers": 2, "num_q": 5},
    19: {"enc_dim": 1024, "mlp_dim": 1024, "latent_dim": 768, "num_enc_layers": 3, "num_q": 5},
    48: {"enc_dim": 1792, "mlp_dim": 1792, "latent_dim": 768, "num_enc_layers": 4, "num_q": 5},
    317: {"enc_dim": 4096, "mlp_dim": 4096, "latent_dim": 1376, "num_enc_layers": 5, "num_q": 8},
}

# Values of the extension switches that exist today; others are rejected with a clear line.
IMPLEMENTED = {
    "dynamics": ("mlp", "diffusion"),
    "proposal": ("policy", "diffusion", "both"),
    "planner": ("mppi", "ssr"),
    "obs": ("state", "rgb"),
    "precision": ("fp32", "bf16", "auto"),
}
ALLOWED = {
    "dynamics": ("mlp", "diffusion"),
    "proposal": ("policy", "diffusion", "both"),
    "planner": ("mppi", "ssr"),
    "obs": ("state", "rgb"),
    "precision": ("fp32", "bf16", "auto"),
}


def _f(default: Any, help: str, derived: bool = False) -> Any:
    """A config field with a one-line meaning (shown by `ldmpc train --help`)."""
    meta = {"help": help, "derived": derived}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, eq=False)
class Config:
    """Every key a run reads. Field order is the order of `--help`. Frozen: built once by
    `derive()` (or `from_dict`), then read-only everywhere."""

    # environment
    task: str = _f("cartpole-swingup", "task (see `ldmpc tasks`) or task set: mt30, mt80, mw10")
    obs: str = _f("state", "observation type: state | rgb (3 stacked 64x64 frames, uint8)")
    # evaluation
    checkpoint: str | None = _f(None, "checkpoint file to evaluate (ldmpc's or TD-MPC2's)")
    init_from: str | None = _f(
        None, "train: start the world model from this ldmpc checkpoint or TD-MPC2 model file"
    )
    eval_episodes: int = _f(10, "episodes per evaluation (run as one vector env)")
    eval_freq: int = _f(50_000, "agent steps between evaluations (0: never evaluate)")
    eval_parallel: bool = _f(
        False,
        "online CPU runs: evaluate a snapshot of the weights in a Ray actor beside training "
        "(as RLlib's evaluation_parallel_to_training); pays when a core is spare, e.g. "
        "torch_threads=1 or async (docs/results.md)",
    )
    # training
    steps: int = _f(10_000_000, "total agent (env) steps")
    batch_size: int = _f(256, "sequences per update")
    reward_coef: float = _f(0.1, "weight of the reward cross-entropy loss")
    value_coef: float = _f(0.1, "weight of the value cross-entropy loss")
    consistency_coef: float = _f(20.0, "weight of the latent consistency loss")
    rho: float = _f(0.5, "temporal decay of losses over the horizon")
    lr: float = _f(3e-4, "learning rate")
    enc_lr_scale: float = _f(0.3, "encoder learning-rate multiplier")
    grad_clip_norm: float = _f(20.0, "gradient clipping norm")
    tau: float = _f(0.01, "EMA coefficient of the target Q-networks")
    discount_denom: float = _f(5.0, "discount heuristic: (L/denom - 1)/(L/denom), L=episode length")
    discount_min: float = _f(0.95, "lower clip of the discount heuristic")
    discount_max: float = _f(0.995, "upper clip of the discount heuristic")
    buffer_size: int = _f(
        1_000_000,
        "replay capacity in transitions (FIFO by episode); obs=rgb keeps 36.9 kB per "
        "transition in RAM (1e6: 37 GB)",
    )
    utd_ratio: float = _f(1.0, "gradient updates per agent step after the seed phase")
    seed_steps: int = _f(0, "random-action steps first (0: max(1000, 5 x episode length))")
    exp_name: str = _f("default", "experiment name (part of the run directory)")
    eval_task: str | None = _f(None, "multitask eval: only this task of the set (default all)")
    data_dir: str | None = _f(None, "offline training: dataset directory (see README)")
    # planning
    mpc: bool = _f(True, "plan with MPPI (false: act with the policy prior)")
    iterations: int = _f(6, "MPPI iterations per decision (+2 when action_dim >= 20, as TD-MPC2)")
    num_samples: int = _f(512, "MPPI candidate trajectories per iteration")
    num_elites: int = _f(64, "elite trajectories refitting the sampling distribution")
    num_pi_trajs: int = _f(24, "candidates drawn from the policy prior")
    horizon: int = _f(3, "planning horizon (also the training rollout length)")
    min_std: float = _f(0.05, "lower bound of the MPPI standard deviation")
    max_std: float = _f(2.0, "initial / upper MPPI standard deviation")
    temperature: float = _f(0.5, "MPPI softmax temperature")
    # actor
    log_std_min: float = _f(-10.0, "policy log-std lower bound")
    log_std_max: float = _f(2.0, "policy log-std upper bound")
    entropy_coef: float = _f(1e-4, "policy entropy bonus")
    # critic
    num_bins: int = _f(101, "two-hot bins for reward and value")
    vmin: float = _f(-10.0, "lowest bin (symlog space)")
    vmax: float = _f(10.0, "highest bin (symlog space)")
    # architecture
    model_size: int = _f(5, f"parameter preset in M: {' | '.join(map(str, MODEL_SIZES))}")
    num_enc_layers: int = _f(2, "encoder layers (set by model_size unless given)")
    enc_dim: int = _f(256, "encoder width (set by model_size unless given)")
    num_channels: int = _f(32, "conv channels of the rgb encoder")
    mlp_dim: int = _f(512, "hidden width of dynamics/reward/Q/policy (set by model_size)")
    latent_dim: int = _f(512, "latent state size (set by model_size unless given)")
    task_dim: int = _f(96, "task embedding size (multitask only)")
    num_q: int = _f(5, "Q-ensemble size (set by model_size unless given)")
    dropout: float = _f(0.01, "dropout in the Q-networks")
    simnorm_dim: int = _f(8, "SimNorm group size (must divide latent_dim)")
    # diffusion extensions (docs/design.md §3.2)
    dynamics: str = _f("mlp", "latent dynamics: mlp | diffusion")
    proposal: str = _f("policy", "planner proposals: policy | diffusion | both")
    planner: str = _f("mppi", "planner: mppi | ssr (sample-score-rank)")
    num_diffusion_proposals: int = _f(32, "diffusion action proposals per env and decision")
    diffusion_steps: int = _f(1, "deterministic sampler steps of the dynamics denoiser (1-3)")
    proposal_steps: int = _f(2, "sampler steps of the proposal denoiser (2-3 keep draws diverse)")
    diffusion_sampler: str = _f("euler", "diffusion sampler: euler (DDIM) | heun")
    diffusion_target: str = _f("v", "denoiser output: v | x0 (EDM preconditioning)")
    diffusion_residual: bool = _f(
        True, "diffusion dynamics generate z_t - z_0 (the change from the latent they start at)"
    )
    diffusion_coef: float = _f(1.0, "weight of the dynamics denoising loss (dynamics=diffusion)")
    proposal_coef: float = _f(1.0, "weight of the proposal denoising loss (diffusion proposals)")
    scales: list[int] = _f(
        [1],
        "temporal scales of diffusion dynamics (token t of scale s: the "
        "latent s*(t+1) steps ahead); ascending, starts with 1",
    )
    plan_scales: list[int] = _f(
        [1],
        "scales the planner scores: [1] (TD-MPC2) or [1,s]: fine "
        "head of horizon steps + coarse tail of horizon tokens at s",
    )
    # runtime
    device: str = _f("auto", "torch device: auto | cpu | cuda | cuda:N")
    num_envs: int = _f(1, "envs per env runner, planned in one batched call")
    num_env_runners: int = _f(0, "remote env-runner actors (0: act in the driver, local mode)")
    num_learners: int = _f(
        0, "remote learners (0: learn in the driver; >=2: DDP, gloo on CPU / nccl on GPU)"
    )
    num_cpus_per_learner: float = _f(1.0, "CPUs Ray reserves per remote learner")
    num_gpus_per_learner: float = _f(0.0, "GPUs per remote learner (0: CPU; DDP uses nccl on GPU)")
    replay_shards: int = _f(0, "replay shard actors (0: replay lives in the driver)")
    replay_snapshot_every: int = _f(
        16, "episodes a replay shard receives between its Arrow snapshots (and at checkpoints)"
    )
    sync_every: int = _f(1, "learner updates between weight broadcasts to the env runners")
    async_learning: bool = _f(
        False,
        "overlap sampling and learning (alias: async); utd_ratio is held by pausing the "
        "runners when the update backlog exceeds max_update_lag",
    )
    overlap: bool = _f(
        False,
        "local mode: run the owed updates on a second thread while the next step is planned "
        "(one torch thread each; updates sample replay as of the step before). make train "
        "turns it on with eval_parallel=true: 1.25x the sync loop here (docs/results.md)",
    )
    max_update_lag: int = _f(
        64, "async: the most updates learning may fall behind the env steps (utd_ratio x steps)"
    )
    address: str | None = _f(
        None, "Ray cluster to join (auto | host:port | ray://host:port); null: start a local Ray"
    )
    num_cpus_per_env_runner: float = _f(
        1.0, "CPUs Ray reserves per remote env runner (0.5: two per core)"
    )
    num_gpus_per_env_runner: float = _f(0.0, "GPUs per remote env runner (its planner's device)")
    torch_threads: int = _f(0, "torch CPU threads per process (0: all cores of this process)")
    checkpoint_freq: int = _f(50_000, "agent steps between checkpoints (0: only at the end)")
    resume: bool = _f(False, "continue the run in the run directory (steps, optimizer, replay)")
    # logging
    work_dir: str = _f("runs", "root of run directories: <work_dir>/<task>/<seed>/<exp_name>")
    enable_wandb: bool = _f(False, "log to Weights & Biases (offline unless WANDB_API_KEY is set)")
    wandb_project: str = _f("ldmpc", "wandb project")
    wandb_entity: str | None = _f(None, "wandb entity")
    save_csv: bool = _f(True, "write train.csv and eval.csv")
    save_video: bool = _f(False, "write an mp4 per eval episode")
    save_agent: bool = _f(True, "write checkpoints")
    compile: bool = _f(False, "torch.compile hot functions (falls back to eager where it fails)")
    precision: str = _f(
        "fp32",
        "matmul precision of updates and planning: fp32 | bf16 | auto (bf16 where this "
        "machine multiplies bf16 clearly faster); weights and checkpoints stay fp32",
    )
    seed: int = _f(1, "random seed")
    progress: bool = _f(True, "show a progress bar")
    # derived (filled by derive(); not settable)
    episode_length: int = _f(0, "agent steps per episode", derived=True)
    action_repeat: int = _f(0, "simulator steps per agent step", derived=True)
    obs_shape: list[int] = _f([], "observation shape", derived=True)
    window: int = _f(0, "replay window in agent steps: horizon * max(scales)", derived=True)
    action_dim: int = _f(0, "action size", derived=True)
    discount: float = _f(0.0, "discount from the heuristic", derived=True)
    bin_size: float = _f(0.0, "two-hot bin width", derived=True)
    metric: str = _f("", "eval metric: return | success | score (multitask)", derived=True)
    multitask: bool = _f(False, "true for task sets", derived=True)
    tasks: list[str] = _f([], "tasks of the run", derived=True)
    obs_dims: list[int] = _f([], "per-task observation sizes (multitask)", derived=True)
    action_dims: list[int] = _f([], "per-task action sizes (multitask)", derived=True)
    episode_lengths: list[int] = _f([], "per-task episode lengths", derived=True)
    discounts: list[float] = _f([], "per-task discounts", derived=True)
    run_dir: str = _f("", "run directory", derived=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """The inverse of `to_dict` (RLlib carries the config as a plain dict)."""
        return cls(**values)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
USER_KEYS = [name for name, f in FIELDS.items() if not f.metadata["derived"]]


def help_text() -> str:
    """Lines `key=default  meaning` for every settable key."""
    lines = []
    for name in USER_KEYS:
        f = FIELDS[name]
        default = f.default_factory() if callable(f.default_factory) else f.default
        lines.append(f"  {name + '=' + format_value(default):<34} {f.metadata['help']}")
    return "\n".join(lines)


def format_value(value: Any) -> str:
    """A value as a user would type it as an override (null, true/false, [a,b])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig":
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


# Keys users type that are not Python identifiers (the issue's `async=true`).
KEY_ALIASES = {"async": "async_learning"}


def split_overrides(overrides: list[str]) -> dict[str, str]:
    """`['a=1', 'b=x']` -> {'a': '1', 'b': 'x'}; rejects malformed items and unknown keys."""
    out: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("+")
        key = KEY_ALIASES.get(key, key)
        if not sep or not key:
            raise UserError(f"bad argument '{item}': expected key=value (e.g. task=walker-walk)")
        if key not in FIELDS:
            raise UserError(f"unknown config key '{key}'{close_matches(key, USER_KEYS)}")
        if FIELDS[key].metadata["derived"]:
            raise UserError(f"'{key}' is derived from the task and cannot be set")
        out[key] = value
    return out


def parse(overrides: list[str] | dict[str, Any] | None = None) -> DictConfig:
    """Build a validated (not yet derived) config from TD-MPC2-style overrides."""
    given = split_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    for key in given:
        if key not in FIELDS or FIELDS[key].metadata["derived"]:
            raise UserError(f"unknown config key '{key}'{close_matches(key, USER_KEYS)}")
    cfg = OmegaConf.structured(Config)  # read-only (the schema is frozen): writes opened here
    with read_write(cfg):
        for key, raw in given.items():
            try:
                cfg[key] = coerce(key, raw) if isinstance(raw, str) else raw
            except (ValueError, OmegaConfBaseException):
                expected = _type_name(FIELDS[key].type)
                raise UserError(f"{key}={raw!s}: expected {expected}") from None
        if cfg.model_size not in MODEL_SIZES:
            sizes = ", ".join(map(str, MODEL_SIZES))
            raise UserError(f"model_size={cfg.model_size}: allowed {sizes}")
        for key, value in MODEL_SIZES[cfg.model_size].items():
            if key not in given:
                cfg[key] = value
    validate(cfg)
    return cfg


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _base_type(t: Any) -> str:
    """'int', 'float', 'bool', 'str' or 'list' from a (string) annotation like 'str | None'."""
    text = str(getattr(t, "__name__", t))
    return "list" if text.startswith("list") else text.split("|")[0].strip()


def _type_name(t: Any) -> str:
    return _TYPE_NAMES.get(_base_type(t), str(t))


def coerce(key: str, raw: str) -> Any:
    """Convert an override's text to the key's declared type (ValueError when it does not fit)."""
    t = FIELDS[key].type
    if raw.strip().lower() in ("null", "none", "~") and "None" in str(t):
        return None
    kind = _base_type(t)
    if kind == "int":  # "1e6" is taken, exactly; "1.5" and "1e-3" are not ints
        try:
            number = decimal.Decimal(raw.replace("_", "").strip())
        except decimal.InvalidOperation:
            raise ValueError(raw) from None
        if not number.is_finite() or number != number.to_integral_value() or abs(number) >= 2**63:
            raise ValueError(raw)
        return int(number)
    if kind == "float":
        return float(raw)
    if kind == "bool":
        word = raw.strip().lower()
        if word not in ("true", "false"):
            raise ValueError(raw)
        return word == "true"
    if kind == "list":
        value = yaml.safe_load(raw)
        return value if isinstance(value, list) else [value]
    return raw


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise UserError(f"{key}={format_value(value)}: {allowed}")


# (predicate, what is allowed, keys): the per-key range checks of validate().
RANGE_RULES: list[tuple[Callable[[Any], bool], str, tuple[str, ...]]] = [
    (
        lambda v: v >= 1,
        "must be a positive integer",
        (
            "steps",
            "batch_size",
            "buffer_size",
            "eval_episodes",
            "horizon",
            "iterations",
            "num_samples",
            "num_elites",
            "enc_dim",
            "mlp_dim",
            "latent_dim",
            "num_enc_layers",
            "num_envs",
            "replay_snapshot_every",
            "sync_every",
            "max_update_lag",
            "simnorm_dim",
            "num_channels",
            "diffusion_steps",
            "proposal_steps",
        ),
    ),
    (
        lambda v: v >= 0,
        "must be >= 0",
        (
            "seed",
            "num_pi_trajs",
            "task_dim",
            "torch_threads",
            "checkpoint_freq",
            "eval_freq",
            "seed_steps",
            "num_env_runners",
            "num_learners",
            "num_cpus_per_learner",
            "num_gpus_per_learner",
            "replay_shards",
            "num_diffusion_proposals",
            "diffusion_coef",
            "proposal_coef",
            "num_cpus_per_env_runner",
            "num_gpus_per_env_runner",
        ),
    ),
    (
        lambda v: v > 0 and math.isfinite(v),
        "must be > 0",
        (
            "lr",
            "temperature",
            "min_std",
            "grad_clip_norm",
            "utd_ratio",
            "enc_lr_scale",
            "discount_denom",
        ),
    ),
    (lambda v: 0 < v <= 1, "must be in (0, 1]", ("rho", "tau")),
]


def validate(cfg: DictConfig) -> None:
    """Range and combination checks; each failure names the key, the value and what is allowed."""
    for ok, allowed, keys in RANGE_RULES:
        for key in keys:
            _check(ok(cfg[key]), key, cfg[key], allowed)
    _check(0 <= cfg.dropout < 1, "dropout", cfg.dropout, "must be in [0, 1)")
    _check(
        0 < cfg.discount_min <= cfg.discount_max < 1,
        "discount_min",
        cfg.discount_min,
        f"need 0 < discount_min <= discount_max (= {cfg.discount_max}) < 1",
    )
    _check(cfg.num_q >= 2, "num_q", cfg.num_q, "must be >= 2 (two Qs are subsampled per target)")
    _check(cfg.num_bins >= 2, "num_bins", cfg.num_bins, "must be >= 2")
    _check(cfg.vmin < cfg.vmax, "vmin", cfg.vmin, f"must be < vmax (= {cfg.vmax})")
    _check(
        cfg.max_std >= cfg.min_std, "max_std", cfg.max_std, f"must be >= min_std (= {cfg.min_std})"
    )
    _check(
        cfg.log_std_min < cfg.log_std_max,
        "log_std_min",
        cfg.log_std_min,
        f"must be < log_std_max (= {cfg.log_std_max})",
    )
    _check(
        cfg.num_elites <= cfg.num_samples,
        "num_elites",
        cfg.num_elites,
        f"must be <= num_samples (= {cfg.num_samples})",
    )
    _check(
        cfg.num_pi_trajs <= cfg.num_samples,
        "num_pi_trajs",
        cfg.num_pi_trajs,
        f"must be <= num_samples (= {cfg.num_samples})",
    )
    _check(
        cfg.latent_dim % cfg.simnorm_dim == 0,
        "simnorm_dim",
        cfg.simnorm_dim,
        f"must divide latent_dim (= {cfg.latent_dim})",
    )
    _check(
        cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
        "device",
        cfg.device,
        "allowed: auto, cpu, cuda, cuda:N",
    )
    for key, allowed in ALLOWED.items():
        value = cfg[key]
        _check(value in allowed, key, value, f"allowed: {', '.join(allowed)}")
        if value not in IMPLEMENTED[key]:
            raise UserError(
                f"{key}={value} is not implemented yet in this version "
                f"(available: {', '.join(IMPLEMENTED[key])})"
            )
    _validate_diffusion(cfg)
    if cfg.overlap:
        _check(
            cfg.num_env_runners == 0 and cfg.num_learners == 0 and not cfg.async_learning,
            "overlap", cfg.overlap,
            "overlaps acting and learning inside one process: needs num_env_runners=0, "
            "num_learners=0 and async=false",
        )  # fmt: skip
        _check(
            cfg.torch_threads in (0, 1), "torch_threads", cfg.torch_threads,
            "overlap=true runs two threads with one torch thread each: set 1 (or 0)",
        )  # fmt: skip
    if cfg.async_learning and cfg.num_env_runners == 0:
        raise UserError(
            "async=true overlaps remote env runners with learning: set num_env_runners >= 1 "
            "(with num_env_runners=0 acting runs in the driver, between updates)"
        )
    if cfg.data_dir is not None:
        from ldmpc.datasets import find_dataset  # exists, holds a dataset (read at train time)

        find_dataset(cfg.data_dir)
        for key in ("num_env_runners", "num_learners", "replay_shards"):
            _check(cfg[key] == 0, key, cfg[key], "must be 0 with data_dir= (offline, in-process)")
    from ldmpc.tasks import resolve_tasks  # local: tasks imports nothing heavy, but keep order

    specs = resolve_tasks(cfg.task)
    names = [spec.name for spec in specs]
    if cfg.eval_task is not None and cfg.eval_task not in names:
        raise UserError(
            f"eval_task={cfg.eval_task} is not a task of task={cfg.task}"
            f"{close_matches(cfg.eval_task, names)}"
        )
    if len(specs) > 1 and cfg.obs != "state":
        raise UserError(
            f"obs={cfg.obs} with {len(specs)} tasks: multitask runs use obs=state "
            "(observations are zero-padded to the largest task, as in TD-MPC2)"
        )


def _validate_diffusion(cfg: DictConfig) -> None:
    """The diffusion switches must form a planner with candidates to score."""
    _check(
        cfg.diffusion_sampler in ("euler", "heun"),
        "diffusion_sampler",
        cfg.diffusion_sampler,
        "allowed: euler, heun",
    )
    _check(
        cfg.diffusion_target in ("v", "x0"),
        "diffusion_target",
        cfg.diffusion_target,
        "allowed: v, x0",
    )
    proposals = cfg.proposal in ("diffusion", "both")
    if cfg.planner == "ssr" and not proposals:
        raise UserError(
            f"planner=ssr ranks diffusion proposals, but proposal={cfg.proposal} draws none: "
            "set proposal=diffusion or proposal=both"
        )
    if proposals:
        _check(
            cfg.num_diffusion_proposals >= 1,
            "num_diffusion_proposals",
            cfg.num_diffusion_proposals,
            f"must be >= 1 with proposal={cfg.proposal}",
        )
    scales, plan_scales = list(cfg.scales), list(cfg.plan_scales)
    _check(
        bool(scales) and scales[0] == 1 and scales == sorted(set(scales)),
        "scales",
        scales,
        "must be ascending integers starting with 1, e.g. [1,2,4]",
    )
    if scales != [1] and cfg.dynamics != "diffusion":
        raise UserError(
            f"scales={format_value(scales)} needs dynamics=diffusion (mlp dynamics have one scale)"
        )
    _check(
        plan_scales[:1] == [1]
        and len(plan_scales) <= 2
        and set(plan_scales) <= set(scales)
        and (len(plan_scales) == 1 or plan_scales[1] > 1),
        "plan_scales",
        plan_scales,
        f"must be [1] or [1,s] with s in scales (= {scales})",
    )
    if cfg.planner == "mppi":
        pool = cfg.num_pi_trajs * (cfg.proposal != "diffusion")
        pool += cfg.num_diffusion_proposals * proposals
        _check(
            pool <= cfg.num_samples,
            "num_samples",
            cfg.num_samples,
            f"must be >= the policy + diffusion candidates (= {pool}) with planner=mppi",
        )


def discount_heuristic(episode_length: int, denom: float, lo: float, hi: float) -> float:
    """TD-MPC2's discount: longer episodes get a longer effective horizon, clipped to [lo, hi]."""
    frac = episode_length / denom
    return float(min(max((frac - 1) / frac, lo), hi)) if frac > 1 else lo


def run_dir_of(cfg: DictConfig | Config) -> str:
    """<work_dir>/<task>/<seed>/<exp_name>, as TD-MPC2 lays out its logs."""
    return os.path.join(cfg.work_dir, cfg.task, str(cfg.seed), cfg.exp_name)


def derive(
    cfg: DictConfig,
    obs_shape: tuple[int, ...],
    action_dim: int,
    dims: tuple[list[int], list[int]] | None = None,
) -> Config:
    """Fill every derived value in one place; the run's frozen `Config`.

    Multitask (a task set or list): `dims` = (obs dims, action dims) per task; the model's
    obs_shape / action_dim are the largest (TD-MPC2 zero-pads to them), each task keeps its own
    episode length and discount, and eval reports the normalized score (`metric=score`).
    """
    from ldmpc.tasks import resolve_tasks

    specs = resolve_tasks(cfg.task)
    cfg = cfg.copy()
    with read_write(cfg):
        _fill_derived(cfg, specs, obs_shape, action_dim, dims)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]  # a frozen Config


def _fill_derived(
    cfg: DictConfig,
    specs: list[Any],
    obs_shape: tuple[int, ...],
    action_dim: int,
    dims: tuple[list[int], list[int]] | None,
) -> None:
    cfg.tasks = [s.name for s in specs]
    cfg.multitask = len(specs) > 1
    cfg.episode_length = max(s.episode_length for s in specs)
    cfg.episode_lengths = [s.episode_length for s in specs]
    cfg.action_repeat = specs[0].action_repeat
    cfg.metric = "score" if cfg.multitask else specs[0].metric
    obs_dims, action_dims = dims if dims is not None else ([], [])
    cfg.obs_dims = [int(d) for d in obs_dims] or [math.prod(obs_shape)] * len(specs)
    cfg.action_dims = [int(d) for d in action_dims] or [int(action_dim)] * len(specs)
    if max(cfg.obs_dims) > math.prod(obs_shape) or max(cfg.action_dims) > action_dim:
        raise ValueError(f"per-task dims {dims} exceed obs_shape {obs_shape} / {action_dim}")
    cfg.obs_shape = list(obs_shape)
    cfg.window = cfg.horizon * max(cfg.scales)
    if cfg.window > cfg.episode_length:
        raise UserError(
            f"horizon * max(scales) = {cfg.window} exceeds the episode length "
            f"{cfg.episode_length} of task={cfg.task}: no replay window would fit"
        )
    cfg.action_dim = int(action_dim)
    if cfg.action_dim >= 20:  # TD-MPC2's heuristic for large (padded) action spaces
        cfg.iterations += 2
    cfg.discounts = [
        discount_heuristic(n, cfg.discount_denom, cfg.discount_min, cfg.discount_max)
        for n in cfg.episode_lengths
    ]
    cfg.discount = max(cfg.discounts)  # the longest episodes' (single task: its own)
    cfg.bin_size = (cfg.vmax - cfg.vmin) / (cfg.num_bins - 1)
    if cfg.seed_steps == 0:
        cfg.seed_steps = max(1000, 5 * cfg.episode_length)
    cfg.run_dir = run_dir_of(cfg)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain-python view (for checkpoints, CSV headers, wandb, RLlib's configs)."""
    return dataclasses.asdict(cfg)


# Fingerprint keys that are left out for their older value: what a fingerprint without one
# means (a direct diffusion checkpoint predates diffusion_residual).
FINGERPRINT_ABSENT_MEANS: dict[str, Any] = {"diffusion_residual": False}


def fingerprint(cfg: Config) -> dict[str, Any]:
    """The keys a checkpoint must agree on to be loadable into this config."""
    keys = (
        "task",
        "obs",
        "model_size",
        "enc_dim",
        "mlp_dim",
        "latent_dim",
        "num_enc_layers",
        "num_q",
        "task_dim",
        "simnorm_dim",
        "num_bins",
        "dynamics",
        "proposal",
        "obs_shape",
        "action_dim",
    )
    fp = {k: (list(cfg.obs_shape) if k == "obs_shape" else getattr(cfg, k)) for k in keys}
    if cfg.obs == "rgb":  # the conv encoder's width (absent from state checkpoints)
        fp["num_channels"] = cfg.num_channels
    if cfg.dynamics == "diffusion" and cfg.diffusion_residual:  # absent from older checkpoints
        fp["diffusion_residual"] = True
    if list(cfg.scales) != [1]:  # multi-scale denoiser shapes (absent from one-scale checkpoints)
        fp["scales"] = list(cfg.scales)
    if cfg.dynamics == "diffusion" or cfg.proposal != "policy":  # denoisers: one token per step
        fp["horizon"] = cfg.horizon
    return fp


def load(overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """parse() + one probe env for the observation/action shapes + derive(): a run's config."""
    from ldmpc.envs import make_env
    from ldmpc.tasks import resolve_tasks

    cfg = parse(overrides)
    specs = resolve_tasks(cfg.task)
    if len(specs) > 1:
        from ldmpc.envs.multitask import task_dims

        obs_dims, action_dims = task_dims(tuple(s.name for s in specs))
        dims = (list(obs_dims), list(action_dims))
        return derive(cfg, (max(obs_dims),), max(action_dims), dims)
    env = make_env(specs[0].name, seed=cfg.seed, obs=cfg.obs)
    try:
        obs_shape = tuple(env.observation_space.shape)
        action_dim = int(env.action_space.shape[0])
    finally:
        env.close()
    return derive(cfg, obs_shape, action_dim)
