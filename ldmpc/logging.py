"""Run output: a progress bar, train.csv / eval.csv, a learning-curve PNG, optional wandb.

On resume the CSV files are cut back to the resumed step, so the curve continues from the
checkpoint without a gap or duplicated points.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from typing import Any

from ldmpc.atomic import atomic_write_bytes
from ldmpc.config import Config

TRAIN_FIELDS = [
    "step",
    "episode",
    "episode_reward",
    "episode_success",
    "elapsed_s",
    "steps_per_s",
    "updates",
    "updates_per_s",
]
EVAL_FIELDS = ["step", "episode_reward", "episode_reward_std", "episode_success", "elapsed_s"]
METRIC_KEYS = {"return": "episode_reward", "success": "episode_success", "score": "episode_score"}


def eval_fields(cfg: Config) -> list[str]:
    """eval.csv columns; multitask runs add the mean score and reward/success/score per task."""
    if not cfg.multitask:
        return EVAL_FIELDS
    per_task = [f"{kind}/{task}" for task in cfg.tasks for kind in ("reward", "success", "score")]
    return [*EVAL_FIELDS, "episode_score", *per_task]


def train_fields(cfg: Config) -> list[str]:
    """train.csv columns; multitask runs say which task each episode played."""
    return [*TRAIN_FIELDS, "task"] if cfg.multitask else TRAIN_FIELDS


def _read_rows(path: str) -> list[dict[str, str]]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _rows_to_text(fields: list[str], rows: list[dict[str, Any]]) -> str:
    lines = [",".join(fields)]
    lines += [",".join(_cell(row.get(f, "")) for f in fields) for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class CsvLog:
    """Append-only CSV with a fixed header; `truncate_after(step)` rewrites it atomically."""

    def __init__(self, path: str, fields: list[str]) -> None:
        self.path, self.fields = path, fields

    def truncate_after(self, step: int) -> None:
        rows = [r for r in _read_rows(self.path) if int(float(r["step"])) <= step]
        atomic_write_bytes(self.path, _rows_to_text(self.fields, rows).encode())

    def append(self, row: dict[str, Any]) -> None:
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as fh:
            if new:
                fh.write(",".join(self.fields) + "\n")
            fh.write(",".join(_cell(row.get(f, "")) for f in self.fields) + "\n")

    def rows(self) -> list[dict[str, str]]:
        return _read_rows(self.path)


def plot_curve(eval_rows: list[dict[str, str]], path: str, title: str, metric: str) -> None:
    """Redraw the learning curve (mean ± std of eval episodes) into a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = METRIC_KEYS[metric]
    steps = [float(r["step"]) for r in eval_rows]
    mean = [float(r[key] or "nan") for r in eval_rows]
    std = [
        float(r.get("episode_reward_std") or 0.0) if metric == "return" else 0.0 for r in eval_rows
    ]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    per_task = sorted(k for k in (eval_rows[0] if eval_rows else {}) if k.startswith("score/"))
    for col in per_task:  # multitask: each task's score, thin, under the mean
        values = [float(r.get(col) or "nan") for r in eval_rows]
        ax.plot(steps, values, lw=0.8, alpha=0.5, label=col[6:] if len(per_task) <= 10 else None)
    ax.plot(steps, mean, marker="o", color="tab:blue", label="ldmpc")
    ax.fill_between(
        steps,
        [m - s for m, s in zip(mean, std)],
        [m + s for m, s in zip(mean, std)],
        color="tab:blue",
        alpha=0.2,
    )
    ax.set_xlabel("agent steps")
    ylabels = {"success": "success rate", "return": "episode return", "score": "mean score"}
    ax.set_ylabel(ylabels[metric])
    ax.set_title(title)
    if 1 < len(per_task) <= 10:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


class RunLogger:
    """Everything a run prints or writes about its progress."""

    def __init__(self, cfg: Config, start_step: int = 0, resumed: bool = False) -> None:
        self.cfg = cfg
        os.makedirs(cfg.run_dir, exist_ok=True)
        self.train_csv = CsvLog(os.path.join(cfg.run_dir, "train.csv"), train_fields(cfg))
        self.eval_csv = CsvLog(os.path.join(cfg.run_dir, "eval.csv"), eval_fields(cfg))
        self.curve_path = os.path.join(cfg.run_dir, "curve.png")
        self.start_time = time.time()
        if resumed:
            self.train_csv.truncate_after(start_step)
            self.eval_csv.truncate_after(start_step)
            # elapsed_s continues across resumes (wall-time comparisons read it)
            rows = self.train_csv.rows() + self.eval_csv.rows()
            self.start_time -= max((float(r.get("elapsed_s") or 0) for r in rows), default=0.0)
        self.last_eval: float | None = None
        self.last_train: float | None = None
        self._bar = None
        if cfg.progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=cfg.steps,
                initial=start_step,
                unit="step",
                dynamic_ncols=True,
                desc=cfg.task,
                mininterval=1.0,
                smoothing=0.05,
            )
        self._wandb = _init_wandb(cfg) if cfg.enable_wandb else None
        self._step = start_step

    def missing_eval_at(self, step: int) -> bool:
        """eval.csv has no row for `step` (False without CSVs: then nobody can tell).

        A run writes its checkpoint at an eval step before that eval, so a stop in between
        resumes at the step with its eval still owed.
        """
        if not self.cfg.save_csv:
            return False
        return all(int(float(r["step"])) != step for r in self.eval_csv.rows())

    def missing_eval_since(self, step: int) -> bool:
        """eval.csv has no row at `step` or later (False without CSVs: nobody can tell)."""
        if not self.cfg.save_csv:
            return False
        return all(int(float(r["step"])) < step for r in self.eval_csv.rows())

    @property
    def elapsed(self) -> float:
        return time.time() - self.start_time

    def log_train(self, step: int, metrics: dict[str, Any]) -> None:
        self.last_train = metrics.get("episode_reward", self.last_train)
        if self.cfg.save_csv:
            self.train_csv.append({"step": step, "elapsed_s": self.elapsed, **metrics})
        if self._wandb is not None:
            self._wandb.log({f"train/{k}": v for k, v in metrics.items()}, step=step)

    def log_eval(self, step: int, metrics: dict[str, Any]) -> None:
        self.last_eval = metrics.get(METRIC_KEYS[self.cfg.metric])
        row = {"step": step, "elapsed_s": self.elapsed, **metrics}
        if self.cfg.save_csv:
            self.eval_csv.append(row)
            plot_curve(self.eval_csv.rows(), self.curve_path, self.cfg.task, self.cfg.metric)
        if self._wandb is not None:  # its own x-axis: it may land after later train steps
            self._wandb.log({"eval/step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
        std = metrics.get("episode_reward_std", float("nan"))
        self.write(
            f"eval  step={step:>9,d}  return={metrics.get('episode_reward', math.nan):8.1f}"
            f" ± {std:6.1f}  success={metrics.get('episode_success', 0.0):.2f}"
            + (f"  score={metrics['episode_score']:5.1f}" if "episode_score" in metrics else "")
            + f"  elapsed={self.elapsed / 60:6.1f} min"
        )

    def progress(self, step: int, **fields: float) -> None:
        """Advance the bar to `step` and show the latest figures."""
        if self._bar is None:
            return
        self._bar.update(max(0, step - self._step))
        self._step = step
        post = {"ep_ret": self.last_train, "eval": self.last_eval, **fields}
        self._bar.set_postfix(
            {k: f"{v:.1f}" for k, v in post.items() if v is not None}, refresh=False
        )

    def write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._wandb is not None:
            self._wandb.finish()


def _init_wandb(cfg: Config) -> Any:
    """wandb in offline mode unless WANDB_API_KEY is set; the key itself is never logged."""
    import wandb

    from ldmpc.config import to_dict

    if not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
    run_id = f"{cfg.task}-{cfg.seed}-{cfg.exp_name}".replace("/", "_")
    run = wandb.init(
        project=cfg.wandb_project,
        entity=cfg.wandb_entity,
        config=to_dict(cfg),
        dir=cfg.run_dir,
        id=run_id,
        name=run_id,
        resume="allow",
    )
    # an evaluation beside training lands after later train steps: plot it against its own step
    run.define_metric("eval/step")
    run.define_metric("eval/*", step_metric="eval/step")
    return run
