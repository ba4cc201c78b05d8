"""Ray side: `ldmpc tune <sweep.yaml> [key=value ...]`, a Ray Tune sweep of `ldmpc train` runs.
(In `actors/` because it imports ray; `ldmpc/sweep_spec.py` holds the Ray-free part.)

The sweep file format is documented in `ldmpc/sweep_spec.py`, which checks it before Ray starts
(one line, exit 2, for every mistake). Here the checked spec becomes Tune objects:
- a function trainable that builds each trial's config with `ldmpc.config.load` and calls
  `run_training(cfg, on_eval=...)`; every evaluation is one `tune.report` (flat keys: `step`,
  `updates`, `episodes`, `eval/<key>`), so ASHA and PBT decide at evaluations;
- each trial trains in its own run directory inside its Tune trial directory, 1 CPU and
  `torch_threads=1` by default, no progress bar;
- with PBT every report carries a checkpoint (the run's `checkpoints/latest.pt` and `replay/`);
  a trial that Tune restarts from a checkpoint copies it into its run directory and runs with
  `resume=true` (the fingerprint covers the architecture, not the mutated hyperparameters).
Results go to `<work_dir>/tune/<sweep file stem>/`; the best trial is printed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldmpc.checkpoint import StopRequestedError
from ldmpc.errors import UserError
from ldmpc.sweep_spec import Dimension, SweepSpec, load_spec

if TYPE_CHECKING:
    from ldmpc.config import Config

CHECKPOINTS_KEPT = 4  # per trial (PBT); Tune warns that <= 2 can delete one being cloned


def run_sweep(path: str, overrides: list[str]) -> int:
    """Check the sweep file, run it on Ray Tune, print the best trial. Returns the exit code."""
    spec = load_spec(path, overrides)
    try:
        os.makedirs(spec.storage_path, exist_ok=True)
    except OSError as e:
        raise UserError(f"work_dir: cannot create {spec.storage_path}: {e.strerror}") from None
    if not os.access(spec.storage_path, os.W_OK | os.X_OK):
        raise UserError(f"work_dir: {spec.storage_path} is not a writable directory")
    import ray

    from actors.ray_init import init_ray, shutdown_ray
    from ldmpc.config import parse

    started = init_ray(parse(spec.base))
    try:
        if started and not spec.base.get("address") and not os.environ.get("RAY_ADDRESS"):
            check_trial_resources(spec, ray.cluster_resources())  # a cluster may autoscale
        with _sigterm_stops_tune() as stopped:
            try:
                results = _tuner(spec).fit()
            except StopRequestedError:  # before Tune's own handlers were in place
                results = None
    finally:
        if started:
            shutdown_ray()  # at once: Ray's graceful wait is ~1 s per process
    if stopped:
        where = os.path.join(spec.storage_path, spec.name)
        print(f"ldmpc: {stopped[0]}: the sweep stopped; the trials' results so far are in {where}")
        return 0
    return report_best(spec, results)


@contextlib.contextmanager
def _sigterm_stops_tune() -> Iterator[list[str]]:
    """SIGTERM ends the sweep the way Ctrl-C does in Tune (its handler for SIGINT and SIGUSR1:
    stop the trials, save the experiment state, return from fit()). Without this, the SIGTERM
    handler Ray's core worker installs dumped a stack and aborted the driver. Yields a list that
    names the signal once one came (a Ctrl-C is Tune's own: the best trial so far is printed)."""
    import signal

    stopped: list[str] = []

    def stop(signum: int, frame: Any) -> None:
        if not stopped:
            stopped.append(signal.Signals(signum).name)
            if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):  # fit() not begun:
                raise StopRequestedError("the sweep had not started")  # SIGUSR1 would kill
            signal.raise_signal(signal.SIGUSR1)  # Tune's graceful stop (installed by fit())

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield stopped
    finally:
        signal.signal(signal.SIGTERM, old)


def check_trial_resources(spec: SweepSpec, have: dict[str, float]) -> None:
    """One line instead of a sweep that waits forever for a trial Ray cannot place."""
    for kind, need in (("CPU", spec.cpus_per_trial), ("GPU", spec.gpus_per_trial)):
        if need > have.get(kind, 0.0) + 1e-9:
            raise UserError(
                f"{spec.name}: {kind.lower()}s_per_trial={need:g} but this Ray has "
                f"{have.get(kind, 0.0):g} {kind}s"
            )


# ------------------------------------------------------------------------------- Tune objects
def _tuner(spec: SweepSpec) -> Any:
    import warnings

    from ray import tune

    # Trials run RLlib inside a function trainable; a reused actor would share its process.
    warnings.filterwarnings("ignore", message="Consider boosting PBT performance")

    pbt = spec.scheduler["type"] == "pbt"
    trainable = tune.with_parameters(train_trial, base=spec.base, with_checkpoints=pbt)
    resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}
    keep = CHECKPOINTS_KEPT if pbt else None
    return tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={d.key: _domain(d) for d in spec.search},
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            num_samples=spec.num_samples,
            max_concurrent_trials=spec.max_concurrent_trials,
            scheduler=_scheduler(spec),
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=spec.storage_path,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )


def _trial_dirname(trial: Any) -> str:
    """Short, unique trial folders (Tune's default repeats every parameter in the name)."""
    return f"trial_{trial.trial_id}"


def _domain(d: Dimension) -> Any:
    """A search dimension as a Tune domain (ranges over integer keys draw integers)."""
    from ray import tune

    if d.kind == "grid":
        return tune.grid_search(list(d.values))
    if d.kind == "choice":
        return tune.choice(list(d.values))
    lo, hi = d.values
    if d.integer:
        return (tune.lograndint if d.kind == "loguniform" else tune.randint)(int(lo), int(hi) + 1)
    return (tune.loguniform if d.kind == "loguniform" else tune.uniform)(lo, hi)


def _scheduler(spec: SweepSpec) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    settings = dict(spec.scheduler)
    kind = settings.pop("type")
    if kind == "asha":
        return ASHAScheduler(**settings)
    if kind == "pbt":
        mutations = {
            d.key: (list(d.values) if d.kind == "choice" else _domain(d)) for d in spec.search
        }
        return PopulationBasedTraining(
            hyperparam_mutations=mutations, custom_explore_fn=RangeClip(spec.search), **settings
        )
    return FIFOScheduler()


class RangeClip:
    """PBT's explore step scales a value by 0.8 or 1.2, which can leave the searched range
    (and a key's valid range, e.g. tau > 1): the ranges in the sweep file are hard bounds."""

    def __init__(self, search: tuple[Dimension, ...]) -> None:
        self.bounds = {d.key: d.values for d in search if d.kind in ("loguniform", "uniform")}

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for key, (lo, hi) in self.bounds.items():
            if key in config:
                config[key] = type(config[key])(min(max(config[key], lo), hi))
        return config


# ------------------------------------------------------------------------------- the trial
def train_trial(config: dict[str, Any], base: dict[str, Any], with_checkpoints: bool) -> None:
    """One Tune trial: `ldmpc train` with base + sampled overrides in the trial's own folder."""
    from ray import tune

    from actors.online import run_training
    from ldmpc.config import load

    checkpoint = tune.get_checkpoint()
    overrides = {
        **{k: v for k, v in base.items() if k != "address"},  # the trial is inside Ray already
        **config,
        "work_dir": tune.get_context().get_trial_dir(),
        "progress": False,
        "resume": checkpoint is not None,
        # a trial evaluates inside its own CPU share, and PBT's checkpoint must hold the
        # weights its reported score was measured with
        "eval_parallel": False,
    }
    cfg = load(overrides)
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            restore_run(Path(folder), cfg)
    run_training(cfg, on_eval=_reporter(cfg, with_checkpoints))


def _reporter(cfg: Config, with_checkpoints: bool) -> Any:
    """The `on_eval` hook: one Tune report per evaluation (with a checkpoint for PBT)."""
    from ray import tune

    from actors.online import save

    def report(step: int, result: dict[str, float], algo: Any) -> None:
        metrics = {
            "step": step,
            "updates": algo.counters.updates,
            "episodes": algo.counters.episodes,
            **{f"eval/{k}": float(v) for k, v in result.items()},
        }
        if not with_checkpoints or step == 0:  # PBT never perturbs at step 0
            tune.report(metrics)
            return
        save(algo, cfg)
        with tempfile.TemporaryDirectory(prefix=".tune_ckpt_", dir=cfg.run_dir) as staging:
            stage_run(Path(cfg.run_dir), Path(staging))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(staging))

    return report


def stage_run(run_dir: Path, staging: Path) -> None:
    """What a trial restarts from: checkpoints/latest.pt and replay/ (hard links: Tune copies
    them into its checkpoint folder; every file there is written once, atomically)."""
    (staging / "checkpoints").mkdir()
    _link_or_copy(run_dir / "checkpoints" / "latest.pt", staging / "checkpoints" / "latest.pt")
    if (run_dir / "replay").is_dir():
        shutil.copytree(run_dir / "replay", staging / "replay", copy_function=_link_or_copy)


def _link_or_copy(src: Any, dst: Any) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def restore_run(folder: Path, cfg: Config) -> None:
    """Put a Tune checkpoint (possibly another trial's, under PBT) into this trial's run
    directory, replacing its own checkpoints and replay, so `resume=true` continues from it."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("checkpoints", "replay"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
        if (folder / name).is_dir():
            shutil.copytree(folder / name, run_dir / name)


# ------------------------------------------------------------------------------- the summary
def report_best(spec: SweepSpec, results: Any) -> int:
    """Print the best trial (metric, step, searched values); exit 1 when a trial failed."""
    where = os.path.join(spec.storage_path, spec.name)
    failed = sum(1 for r in results if r.error is not None)
    try:
        best = results.get_best_result(metric=spec.metric, mode=spec.mode, scope="last")
    except RuntimeError:
        best = None
    if best is None or best.metrics is None or spec.metric not in best.metrics:
        print(f"ldmpc: error: no trial reported {spec.metric}; see {where}", file=sys.stderr)
        return 1
    print(format_best(spec, best, len(results), failed))
    print(f"results: {where}")
    if failed:
        print(f"ldmpc: error: {failed} trial(s) failed; see error.txt in {where}", file=sys.stderr)
        return 1
    return 0


def format_best(spec: SweepSpec, best: Any, trials: int, failed: int) -> str:
    """A short table: the best trial's metric and the config values the sweep chose."""
    from ldmpc.config import format_value

    m = best.metrics
    trial = os.path.basename(best.path)
    lines = [
        f"best of {trials} trials ({failed} failed): {trial}  "
        f"{spec.metric}={m[spec.metric]:.4g} at step {m.get('step', '?')}"
    ]
    chosen = {d.key: best.config.get(d.key) for d in spec.search}
    width = max((len(k) for k in chosen), default=0)
    for key, value in chosen.items():
        shown = f"{value:.4g}" if isinstance(value, float) else format_value(value)
        lines.append(f"  {key:<{width}}  {shown}")
    return "\n".join(lines)
