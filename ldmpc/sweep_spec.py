"""Sweep files for `ldmpc tune`: read, check and describe them, without Ray.

Why a separate module: every mistake in a sweep file must end as one line before Ray starts
(docs/design.md §4), and these checks are plain Python that tests run in milliseconds. `sweep.py`
turns the checked `SweepSpec` into Ray Tune objects.

Format (YAML; every key but `search` and `base` is optional):

    metric: eval/episode_reward   # a reported value: eval/episode_reward, eval/episode_success,
                                  #   eval/episode_reward_std, eval/episode_score (multitask),
                                  #   step, updates, episodes
    mode: max                     # max | min
    num_samples: 8                # trials (with grid: repeats of the whole grid)
    max_concurrent_trials: 2      # default: as many as the CPUs allow
    cpus_per_trial: 1             # Ray resources of one trial (torch_threads defaults to 1)
    gpus_per_trial: 0
    scheduler:                    # fifo (default) | asha | pbt; time_attr: step (agent steps,
      type: asha                  #   default) | training_iteration | time_total_s
      time_attr: step
      max_t: 50000                # asha: max_t (default: steps), grace_period (default:
      grace_period: 5000          #   eval_freq), reduction_factor, brackets
      reduction_factor: 3         # pbt: perturbation_interval (required), burn_in_period,
                                  #   quantile_fraction, resample_probability, synch
    base: {task: cartpole-swingup, model_size: 1, steps: 50000}   # config keys of every trial
    search:                       # config key -> one of:
      lr: {loguniform: [1.0e-4, 1.0e-3]}   #   {loguniform: [lo, hi]}  {uniform: [lo, hi]}
      iterations: {choice: [1, 2]}         #   {choice: [a, b, ...]}   {grid: [a, b, ...]}

Integer keys sampled from a range draw integers. With `pbt`, `search` is also the mutation
space (so `grid` is refused; a perturbed value is clipped to its range), and a searched key
may not change the checkpoint's fingerprint
(architecture, task, dynamics...): a trial restarted from another trial's checkpoint must load
it. Each trial runs the local topology (no remote runners, learners or replay shards) in its
`cpus_per_trial` CPUs, with its own run directory inside its trial directory.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from ldmpc.errors import UserError, close_matches

# evaluate()'s result (episode_score: multitask runs' mean normalized score)
EVAL_KEYS = ("episode_reward", "episode_reward_std", "episode_success", "episode_score")
REPORTED = ("step", "updates", "episodes", *(f"eval/{k}" for k in EVAL_KEYS))
TIME_ATTRS = ("step", "training_iteration", "time_total_s")
TOP_KEYS = (
    "metric", "mode", "num_samples", "max_concurrent_trials", "cpus_per_trial",
    "gpus_per_trial", "scheduler", "base", "search",
)  # fmt: skip
SCHEDULER_KEYS = {
    "fifo": (),
    "asha": ("time_attr", "max_t", "grace_period", "reduction_factor", "brackets"),
    "pbt": (
        "time_attr", "perturbation_interval", "burn_in_period", "quantile_fraction",
        "resample_probability", "synch",
    ),
}  # fmt: skip
SPACE_TYPES = ("loguniform", "uniform", "choice", "grid")
# Keys the sweep sets for every trial, or that need more than one trial's resources.
NOT_SEARCHABLE = ("work_dir", "resume", "progress", "address", "checkpoint")
REMOTE_KEYS = ("num_env_runners", "num_learners", "replay_shards")
MAX_COMBINATIONS = 512  # search values checked together; beyond this, each key alone


@dataclass(frozen=True)
class Dimension:
    """One searched config key: a range (loguniform, uniform) or a list (choice, grid)."""

    key: str
    kind: str
    values: tuple[Any, ...]
    integer: bool = False  # the key is an int: ranges draw integers


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep file (plus command-line overrides of `base`)."""

    path: str
    name: str
    metric: str = "eval/episode_reward"
    mode: str = "max"
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "fifo"})
    base: dict[str, Any] = field(default_factory=dict)
    search: tuple[Dimension, ...] = ()

    @property
    def storage_path(self) -> str:
        """<work_dir>/tune (absolute): Tune writes the sweep to <storage_path>/<name>."""
        return os.path.abspath(os.path.join(str(self.base.get("work_dir", "runs")), "tune"))


def load_spec(path: str, overrides: list[str] | None = None) -> SweepSpec:
    """Read and check a sweep file; `overrides` (key=value) win over its `base`."""
    raw = _read_yaml(path)
    where = os.path.basename(path)
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        key = str(unknown[0])
        raise UserError(
            f"{where}: unknown key '{key}'{close_matches(key, TOP_KEYS)} "
            f"(allowed: {', '.join(TOP_KEYS)})"
        )
    base = _base(raw.get("base"), overrides or [], where)
    spec = SweepSpec(
        path=os.path.abspath(path),
        name=os.path.splitext(os.path.basename(path))[0],
        metric=_metric(raw.get("metric", "eval/episode_reward"), where),
        mode=_one_of(raw.get("mode", "max"), ("max", "min"), f"{where}: mode"),
        num_samples=_number(raw.get("num_samples", 1), f"{where}: num_samples", int, 1),
        max_concurrent_trials=(
            None
            if raw.get("max_concurrent_trials") is None
            else _number(raw["max_concurrent_trials"], f"{where}: max_concurrent_trials", int, 1)
        ),
        cpus_per_trial=_number(raw.get("cpus_per_trial", 1), f"{where}: cpus_per_trial", float),
        gpus_per_trial=_number(raw.get("gpus_per_trial", 0), f"{where}: gpus_per_trial", float),
        base=base,
        search=_search(raw.get("search"), where),
    )
    from ldmpc.config import parse

    cfg = _parse(parse, base, f"{where}: base")
    if cfg.data_dir is not None:
        raise UserError(f"{where}: base data_dir= (offline training) cannot be swept here yet")
    if cfg.eval_freq == 0:
        raise UserError(f"{where}: base eval_freq=0: trials report at evaluations; set eval_freq")
    scheduler = _scheduler(raw.get("scheduler"), cfg, where)
    spec = SweepSpec(**{**spec.__dict__, "scheduler": scheduler})
    _check_search_values(spec, where)
    if scheduler["type"] == "pbt":
        _check_pbt(spec, cfg, where)
    return spec


# ------------------------------------------------------------------------------- reading
def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"sweep file not found: {path} (see tune_configs/)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read sweep file {path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise UserError(f"{path}: malformed YAML{at}: {problem}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sweep keys, got {type(raw).__name__}")
    return raw


def _number(value: Any, where: str, kind: type, minimum: float = 0) -> Any:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or value < minimum:
        word = "an integer" if kind is int else "a number"
        raise UserError(f"{where}={value!r}: expected {word} >= {minimum:g}")
    return kind(value)


def _one_of(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        suggestion = close_matches(str(value), allowed)
        raise UserError(f"{where}={value!r}{suggestion}: allowed {', '.join(allowed)}")
    return str(value)


def _metric(value: Any, where: str) -> str:
    if value not in REPORTED:
        raise UserError(
            f"{where}: metric={value!r} is not reported by trials"
            f"{close_matches(str(value), REPORTED)} (reported: {', '.join(REPORTED)})"
        )
    return str(value)


def _base(raw: Any, overrides: list[str], where: str) -> dict[str, Any]:
    """`base` plus command-line overrides; the trial-level defaults a sweep needs."""
    from ldmpc.config import KEY_ALIASES, split_overrides

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: base must be a mapping of config keys, got {type(raw).__name__}")
    base = {KEY_ALIASES.get(str(k), str(k)): v for k, v in raw.items()}
    base = {k: _as_declared(k, v) for k, v in base.items()}
    base.update(split_overrides(overrides))
    for key in ("resume", "checkpoint"):
        if key in base:
            raise UserError(f"{where}: base sets {key}, which the sweep manages per trial")
    base.setdefault("torch_threads", 1)
    return base


def _search(raw: Any, where: str) -> tuple[Dimension, ...]:
    from ldmpc.config import FIELDS, KEY_ALIASES, USER_KEYS, _base_type, coerce

    if raw is None or raw == {}:
        return ()
    if not isinstance(raw, dict):
        raise UserError(f"{where}: search must be a mapping key -> {{type: values}}")
    dims = []
    for key, space in raw.items():
        key = KEY_ALIASES.get(str(key), str(key))
        at = f"{where}: search.{key}"
        if key not in FIELDS or FIELDS[key].metadata["derived"]:
            raise UserError(f"{at}: unknown config key{close_matches(key, USER_KEYS)}")
        if key in NOT_SEARCHABLE:
            raise UserError(f"{at}: set by the sweep for every trial, it cannot be searched")
        if not isinstance(space, dict) or len(space) != 1:
            raise UserError(f"{at}: expected one of {{{': ..., '.join(SPACE_TYPES)}: ...}}")
        ((kind, values),) = space.items()
        kind = _one_of(kind, SPACE_TYPES, f"{at}: search-space type")
        if not isinstance(values, list) or not values:
            raise UserError(f"{at}: {kind} needs a non-empty list, got {values!r}")
        type_name = _base_type(FIELDS[key].type)
        try:
            values = [
                coerce(key, v) if isinstance(v, str) else _as_declared(key, v) for v in values
            ]
        except ValueError as e:
            raise UserError(f"{at}: {e} is not a valid {type_name}") from None
        if kind in ("loguniform", "uniform"):
            _check_range(values, kind, type_name, at)
        dims.append(Dimension(key, kind, tuple(values), integer=type_name == "int"))
    return tuple(dims)


def _as_declared(key: str, value: Any) -> Any:
    """YAML reads `lr: 1` as an int; a float key gets a float (OmegaConf warns otherwise)."""
    from ldmpc.config import FIELDS, _base_type

    is_int = isinstance(value, int) and not isinstance(value, bool)
    if is_int and key in FIELDS and _base_type(FIELDS[key].type) == "float":
        return float(value)
    return value


def _check_range(values: list[Any], kind: str, type_name: str, at: str) -> None:
    if type_name not in ("int", "float"):
        raise UserError(f"{at}: {kind} needs a numeric key; use choice for a {type_name}")
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if len(values) != 2 or not numeric or not values[0] < values[1]:
        raise UserError(f"{at}: {kind} needs [lo, hi] with lo < hi, got {values!r}")
    if kind == "loguniform" and values[0] <= 0:
        raise UserError(f"{at}: loguniform needs lo > 0, got {values[0]!r}")


# ------------------------------------------------------------------------------- checking
def _parse(parse: Any, overrides: dict[str, Any], where: str) -> Any:
    try:
        cfg = parse(overrides)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    remote = [k for k in REMOTE_KEYS if cfg[k]]
    if remote:
        raise UserError(
            f"{where}: {remote[0]}={cfg[remote[0]]}: a sweep trial runs the local topology "
            "in its cpus_per_trial CPUs (set it to 0)"
        )
    return cfg


def _check_search_values(spec: SweepSpec, where: str) -> None:
    """Every searched value must make a valid config with `base` (together, when few)."""
    from ldmpc.config import parse

    dims = spec.search
    if not dims:
        return
    sizes = [len(d.values) for d in dims]
    total = 1
    for n in sizes:
        total *= n
    if total <= MAX_COMBINATIONS:
        combos = itertools.product(*(d.values for d in dims))
        for combo in combos:
            values = dict(zip((d.key for d in dims), combo, strict=True))
            shown = " ".join(f"{k}={v}" for k, v in values.items())
            _parse(parse, {**spec.base, **values}, f"{where}: search ({shown})")
        return
    for d in dims:
        for v in d.values:
            _parse(parse, {**spec.base, d.key: v}, f"{where}: search.{d.key}={v}")


def _scheduler(raw: Any, cfg: Any, where: str) -> dict[str, Any]:
    """The scheduler's checked settings, with defaults that follow from `base`."""
    if raw is None:
        raw = {"type": "fifo"}
    if not isinstance(raw, dict) or "type" not in raw:
        raise UserError(f"{where}: scheduler must be a mapping with a type (fifo, asha, pbt)")
    kind = _one_of(raw["type"], tuple(SCHEDULER_KEYS), f"{where}: scheduler.type")
    at = f"{where}: scheduler"
    for key in raw:
        if key != "type" and key not in SCHEDULER_KEYS[kind]:
            allowed = ", ".join(SCHEDULER_KEYS[kind]) or "none"
            raise UserError(f"{at}: unknown key '{key}' for {kind} (allowed: {allowed})")
    out: dict[str, Any] = {"type": kind}
    if kind == "fifo":
        return out
    out["time_attr"] = _one_of(raw.get("time_attr", "step"), TIME_ATTRS, f"{at}.time_attr")
    by_step = out["time_attr"] == "step"
    if kind == "asha":
        out["max_t"] = _number(raw.get("max_t", cfg.steps), f"{at}.max_t", int, 1)
        grace = raw.get("grace_period", cfg.eval_freq if by_step else 1)
        out["grace_period"] = _number(grace, f"{at}.grace_period", int, 1)
        out["reduction_factor"] = _number(
            raw.get("reduction_factor", 3), f"{at}.reduction_factor", float, 1.01
        )
        out["brackets"] = _number(raw.get("brackets", 1), f"{at}.brackets", int, 1)
        if out["grace_period"] > out["max_t"]:
            raise UserError(
                f"{at}: grace_period={out['grace_period']} exceeds max_t={out['max_t']}"
            )
        return out
    if "perturbation_interval" not in raw:
        raise UserError(f"{at}: pbt needs perturbation_interval (in {out['time_attr']} units)")
    interval = _number(raw["perturbation_interval"], f"{at}.perturbation_interval", float, 1)
    if by_step and interval < cfg.eval_freq:
        raise UserError(
            f"{at}.perturbation_interval={interval:g} is shorter than eval_freq={cfg.eval_freq}: "
            "trials report (and can be perturbed) only at evaluations"
        )
    out["perturbation_interval"] = interval
    out["burn_in_period"] = _number(raw.get("burn_in_period", 0), f"{at}.burn_in_period", float)
    quantile = _number(raw.get("quantile_fraction", 0.25), f"{at}.quantile_fraction", float)
    resample = _number(raw.get("resample_probability", 0.25), f"{at}.resample_probability", float)
    if not 0 < quantile <= 0.5:
        raise UserError(f"{at}.quantile_fraction={quantile:g}: must be in (0, 0.5]")
    if resample > 1:
        raise UserError(f"{at}.resample_probability={resample:g}: must be in [0, 1]")
    out["quantile_fraction"], out["resample_probability"] = quantile, resample
    synch = raw.get("synch", False)
    if not isinstance(synch, bool):
        raise UserError(f"{at}.synch={synch!r}: expected true or false")
    out["synch"] = synch
    return out


def _check_pbt(spec: SweepSpec, cfg: Any, where: str) -> None:
    """PBT restarts trials from other trials' checkpoints: those must load (fingerprint)."""
    from ldmpc.config import fingerprint, parse

    if not spec.search:
        raise UserError(f"{where}: pbt needs a search space (it is also the mutation space)")
    if cfg.save_agent is False:
        raise UserError(f"{where}: pbt needs checkpoints; remove save_agent=false from base")
    reference = fingerprint(cfg)
    for d in spec.search:
        if d.kind == "grid":
            raise UserError(f"{where}: search.{d.key}: pbt mutates values; use choice, not grid")
        for v in d.values:
            if fingerprint(parse({**spec.base, d.key: v})) != reference:
                raise UserError(
                    f"{where}: search.{d.key}: pbt cannot mutate it, it changes the model's "
                    "checkpoint fingerprint (architecture, task, dynamics); move it to base"
                )
