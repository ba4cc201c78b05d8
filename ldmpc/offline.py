"""`ldmpc train data_dir=...`: offline training from a dataset, in one process (no Ray).

As TD-MPC2's offline trainer: the whole dataset is the replay, `steps` counts gradient updates,
and the agent is evaluated in the real env every `eval_freq` updates (and at update 0). The run
writes what an online run writes: eval.csv + curve.png (x = updates), a progress bar, checkpoints
in the same format and fingerprint (`ldmpc eval checkpoint=...` reads them), plus offline.csv,
the mean losses of every LOG_EVERY updates. SIGINT/SIGTERM finish the current update and write a
checkpoint; `resume=true` continues from the newest one (weights, optimizers, updates, sampler
RNG) after re-reading the dataset, which must still hold what the checkpoint was trained on.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ldmpc.config import Config
from ldmpc.errors import UserError
from ldmpc.evaluate import evaluate_at
from ldmpc.trainer import Trainer
from ldmpc.update import check_nonfinite_streak

LOG_EVERY = 100  # updates per offline.csv row (and progress refresh)
LOSS_FIELDS = [
    "step",
    "elapsed_s",
    "updates_per_s",
    "wm_loss",
    "consistency_loss",
    "reward_loss",
    "value_loss",
    "pi_loss",
    "diffusion_loss",
    "proposal_loss",
    "grad_norm",
    "skipped_updates",
]


class LossLog:
    """Means of the update metrics over LOG_EVERY updates -> one offline.csv row."""

    def __init__(self, cfg: Config, start: int, t0: float) -> None:
        from ldmpc.logging import CsvLog

        self.csv = CsvLog(os.path.join(cfg.run_dir, "offline.csv"), LOSS_FIELDS)
        self.enabled = bool(cfg.save_csv)
        if start > 0 and self.enabled:
            self.csv.truncate_after(start)
        self.sums: dict[str, float] = {}
        self.count = 0
        self.seconds = 0.0  # spent sampling + updating (evaluations excluded)
        self.t0 = t0

    def add(self, info: dict[str, float], seconds: float) -> None:
        for key, value in info.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1
        self.seconds += seconds

    def flush(self, step: int) -> float:
        """Write the row (when there is one); returns updates/s of its updates."""
        rate = self.count / max(self.seconds, 1e-9)
        if self.count and self.enabled:
            row = {k: v / self.count for k, v in self.sums.items() if k in LOSS_FIELDS}
            row.update(step=step, elapsed_s=time.time() - self.t0, updates_per_s=rate)
            row["skipped_updates"] = self.sums.get("skipped", 0.0)
            self.csv.append(row)
        self.sums, self.count, self.seconds = {}, 0, 0.0
        return rate


class OfflineTrainer(Trainer):
    """Offline progress: one step is one update on a dataset batch."""

    def __init__(self, cfg: Config) -> None:
        from ldmpc.agent import Agent
        from ldmpc.datasets import load_for_run
        from ldmpc.runtime import resolve_device

        super().__init__(cfg)
        self.device = resolve_device(cfg.device)
        self.replay, self.dataset = load_for_run(cfg)
        self.agent = Agent(cfg, self.device)
        self.suspects = f"the dataset's rewards/observations in {cfg.data_dir}"  # divergence
        self.step = 0

    def resume(self) -> int:
        self.step = resume(self.agent, self.replay, self.dataset, self.cfg)
        return self.step

    def initialize(self) -> str:
        from ldmpc.init_from import load_init_weights

        return load_init_weights(self.agent.model, self.cfg)

    def started(self, start: int) -> None:
        self.losses = LossLog(self.cfg, start, self.log.start_time)

    def evaluate(self, step: int) -> dict[str, float]:
        return evaluate_at(self.agent, self.cfg, step)

    def advance(self, until: int) -> int:
        cfg = self.cfg
        t = time.perf_counter()
        info = self.agent.update(self.replay.sample(cfg.batch_size, device=self.device))
        self.losses.add(info, time.perf_counter() - t)
        self.step += 1
        check_nonfinite_streak(self.agent.counters["consecutive_skips"], cfg.lr, self.suspects)
        if self.step % LOG_EVERY == 0 or self.step == cfg.steps:
            self.log.progress(self.step, upd_s=self.losses.flush(self.step))
        return self.step

    def finish(self, step: int) -> None:
        self.losses.flush(step)

    def save(self, step: int) -> Any:
        return save(self.agent, self.replay, self.dataset, self.cfg, step)


def run_offline(cfg: Config) -> dict[str, Any]:
    """Train cfg.steps updates on the dataset at cfg.data_dir; returns the final figures."""
    from ldmpc.runtime import set_threads

    set_threads(cfg.torch_threads)
    trainer = OfflineTrainer(cfg)
    out = trainer.run()
    return {
        "updates": out.step,
        "skipped_updates": trainer.agent.counters["skipped_updates"],
        "eval": out.last_eval,
        "interrupted": out.interrupted,
        "checkpoint": str(out.checkpoint) if out.checkpoint else None,
    }


def save(agent: Any, replay: Any, dataset: dict[str, Any], cfg: Config, step: int) -> Any:
    """A run checkpoint at `step` updates (None when save_agent=false).

    `replay: None` tells an online `resume=true` that there is no replay to restore.
    """
    from ldmpc.checkpoint import save_run_checkpoint
    from ldmpc.config import fingerprint

    if not cfg.save_agent:
        return None
    payload = {
        "agent": agent.state_dict(),
        "offline": {"sampler": replay.get_state(), "dataset": dataset},
        "replay": None,
    }
    counters = {"updates": step, "offline_updates": step}
    return save_run_checkpoint(
        cfg.run_dir, step, payload, fingerprint=fingerprint(cfg), counters=counters
    )


def resume(agent: Any, replay: Any, dataset: dict[str, Any], cfg: Config) -> int:
    """Restore the newest checkpoint of the run; returns the update to continue from."""
    from ldmpc.checkpoint import latest_checkpoint, load_checkpoint
    from ldmpc.config import fingerprint

    path = latest_checkpoint(cfg.run_dir)
    if path is None:
        print(f"resume=true: no checkpoint in {cfg.run_dir} yet, starting from update 0")
        return 0
    ckpt = load_checkpoint(path, expected_fingerprint=fingerprint(cfg), map_location=agent.device)
    offline = ckpt["payload"].get("offline")
    if offline is None:
        raise UserError(
            f"resume=true: {path} belongs to an online run; offline training (data_dir=) "
            "continues offline runs only: choose another exp_name"
        )
    if dict(offline["dataset"]) != dataset:
        raise UserError(
            f"resume=true: {path} was trained on a dataset of {_kv(offline['dataset'])}; "
            f"data_dir={cfg.data_dir} now holds {_kv(dataset)}"
        )
    agent.load_state_dict(ckpt["payload"]["agent"])
    replay.set_state(offline["sampler"])
    return int(ckpt["counters"]["offline_updates"])


def _kv(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in d.items())
