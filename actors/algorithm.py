"""TD-MPC2's training loop as a custom RLlib Algorithm (new API stack): the Ray layer's top.

RLlib is the skeleton, not the algorithm (docs/design.md §3.3). `LdmpcAlgorithm.training_step`:
1. samples one chunk (`rollout_fragment_length` vector steps) from the env runners — uniform
   random actions during the seed phase, the planner module afterwards;
2. stitches the returned episode chunks into whole episodes and adds them to `EpisodeReplay`;
3. owes `utd_ratio` updates per new env step (and `seed_steps` pretraining updates when the seed
   phase ends, as TD-MPC2 does) and pays at most `max_updates_per_round` of them per round
   through `LearnerGroup.update(batch=...)` — no env steps are taken while a backlog remains,
   so the pretraining burst keeps TD-MPC2's order but the loop stays responsive;
4. syncs the new weights (with their version) to the env runners.
One `training_step()` repeats such rounds for `seconds_per_training_step` to amortize RLlib's
per-iteration cost.

`actors.online.run_training(cfg)` (the `ldmpc train` entry) drives it with the one training loop
(`ldmpc.trainer`): Ray, evaluation, logging and checkpoints.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
    WEIGHTS_SEQ_NO,
)

from actors.env_runner import (
    EpisodeStitcher,
    FinishedEpisode,
    LdmpcEnvRunner,
    register_ldmpc_env,
)
from actors.planner_module import PlannerModule, module_config
from actors.replay_shard import ShardedReplay
from ldmpc.checkpoint import stop_requested
from ldmpc.config import Config, to_dict
from ldmpc.envs.multitask import multitask_episode
from ldmpc.errors import UserError
from ldmpc.replay import EpisodeReplay, RunReplay, replay_args, replay_dir
from ldmpc.update import check_nonfinite_streak
from learner.tdmpc_learner import NONFINITE_STREAK, TdmpcLearner, to_batch_major

MAX_UPDATES_PER_ROUND = 32  # bounds one round of updates (SIGTERM / progress latency)
# One `training_step()` repeats rounds (sample, learn, sync) for this long: RLlib's per-train()
# work (metrics reduce, result dict, runner state sync) costs a few ms, as much as a GPU update.
SECONDS_PER_TRAINING_STEP = 0.5
ASYNC_WAIT_S = 0.02  # async mode: how long a round with nothing to learn waits for samples
SAMPLE_TAG = "sample"  # tag of async sample requests
SET_STATE_TAG = "set_state"  # tag of async weight hand-overs to remote runners


@dataclass
class Counters:
    """Everything `resume=true` must restore besides weights, optimizers and replay."""

    env_steps: int = 0
    episodes: int = 0
    updates: int = 0
    owed_updates: float = 0.0  # updates due but not yet run (seed pretraining, utd backlog)


class LdmpcConfig(AlgorithmConfig):
    """RLlib config + our derived config (`self.ldmpc`, a plain dict so RLlib can copy it)."""

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or LdmpcAlgorithm)
        self.ldmpc: dict[str, Any] = {}
        self.max_updates_per_round = MAX_UPDATES_PER_ROUND
        self.seconds_per_training_step = SECONDS_PER_TRAINING_STEP

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=PlannerModule)

    def get_default_learner_class(self) -> type:
        return TdmpcLearner

    def validate(self) -> None:
        super().validate()
        if not self.ldmpc:
            raise ValueError("LdmpcConfig.ldmpc is empty: build it with rllib_config(cfg)")


def env_config(cfg: Config) -> dict[str, Any]:
    """What the env creator (`actors.env_runner.make_ldmpc_env`) needs; multitask runs add the
    task set, the padded sizes and the run's number of sub-envs (the round-robin stride)."""
    out: dict[str, Any] = {"task": cfg.task, "obs": cfg.obs, "seed": cfg.seed}
    if cfg.multitask:
        out.update(
            tasks=list(cfg.tasks),
            obs_dim=int(cfg.obs_shape[0]),
            action_dim=int(cfg.action_dim),
            num_envs=int(cfg.num_envs),
            num_sub_envs=max(int(cfg.num_env_runners), 1) * int(cfg.num_envs),
        )
    return out


def rllib_config(cfg: Config) -> LdmpcConfig:
    """Translate our derived config into RLlib's settings (local topology by default)."""
    from ldmpc.runtime import resolve_device

    device = resolve_device(cfg.device)
    config = (
        LdmpcConfig()
        .environment(
            env=register_ldmpc_env(),
            env_config=env_config(cfg),
            normalize_actions=False,  # actions are already in [-1, 1]
            clip_actions=True,
        )
        .env_runners(
            env_runner_cls=LdmpcEnvRunner,
            num_env_runners=cfg.num_env_runners,
            num_cpus_per_env_runner=cfg.num_cpus_per_env_runner,
            num_gpus_per_env_runner=cfg.num_gpus_per_env_runner,
            num_envs_per_env_runner=cfg.num_envs,
            rollout_fragment_length=1,  # one vector step per training_step, as TD-MPC2
            gym_env_vectorize_mode="sync",
            explore=True,
        )
        .learners(
            num_learners=cfg.num_learners,
            num_cpus_per_learner=cfg.num_cpus_per_learner,
            # remote learners: what the config asks; the local one follows `device`
            num_gpus_per_learner=(
                cfg.num_gpus_per_learner if cfg.num_learners else int(device.type == "cuda")
            ),
            local_gpu_idx=device.index or 0,
        )
        .rl_module(model_config=module_config(cfg))
        # Learning rates, clipping and the non-finite skip are ldmpc.update.Update's (the learner
        # runs it in _update), so RLlib's grad_clip / torch_skip_nan_gradients are not set.
        .training(lr=cfg.lr, train_batch_size_per_learner=cfg.batch_size)
        .framework("torch")
        .fault_tolerance(restart_failed_env_runners=True)
        .debugging(seed=cfg.seed, log_level="WARN")
    )
    config.ldmpc = to_dict(cfg)
    return config


class LdmpcAlgorithm(Algorithm):
    """TD-MPC2 on RLlib: env runners plan, our replay stores episodes, the learner updates."""

    @classmethod
    def get_default_config(cls) -> LdmpcConfig:
        return LdmpcConfig()

    def _setup_logdir(self) -> None:
        """Keep RLlib's per-trial files inside the run directory, not in ~/ray_results."""
        run_dir = getattr(self.config, "ldmpc", {}).get("run_dir")
        if self._storage is not None or not run_dir:
            super()._setup_logdir()
            return
        self._logdir = os.path.abspath(os.path.join(run_dir, "rllib"))
        os.makedirs(self._logdir, exist_ok=True)

    def setup(self, config: AlgorithmConfig) -> None:
        super().setup(config)
        self.cfg = Config.from_dict(self.config.ldmpc)
        cfg = self.cfg
        self.replay = make_replay(cfg)
        self.stitcher = EpisodeStitcher()
        self.counters = Counters()
        self.finished: list[FinishedEpisode] = []  # drained by run_training's logger
        self._recent = deque(maxlen=20)
        self._weights_version = 0  # learner updates since this process started
        self._synced_version = 0  # the version last sent to the env runners
        self._acted_version = 0
        # No sampling at or beyond this env step (run_training sets the next eval/checkpoint/end
        # step, so those happen at exact multiples as in TD-MPC2); owed updates are still paid.
        self.sample_until = int(cfg.steps)
        self._updater: ThreadPoolExecutor | None = None  # overlap=true: the update thread

    def restore_env_runners(self, env_runner_group: Any) -> list[int]:
        """RLlib brings crashed runners back with the weights; reseed them from the step reached
        so a restarted runner does not replay its step-0 randomness (env resets, noise)."""
        restored = super().restore_env_runners(env_runner_group)
        if restored:
            self._sync_weights(force=True)  # RLlib gave them the driver runner's (older) ones
            step = self.counters.env_steps
            env_runner_group.foreach_env_runner(
                lambda runner: runner.reseed_acting(step),
                remote_worker_ids=restored,
                local_env_runner=False,
            )
        return restored

    # ------------------------------------------------------------------ the loop
    def training_step(self) -> None:
        """Rounds of (sample one vector step, pay owed updates, sync) for a fixed wall time,
        or until `sample_until` is reached and no update is owed."""
        deadline = time.perf_counter() + self.config.seconds_per_training_step
        while True:
            can_sample = self.counters.env_steps < self.sample_until
            self._round(can_sample)
            finished = not can_sample and not self.can_learn
            # a stop ends the step after this round: no further rounds (the seed phase's end
            # would start the catch-up updates and their first compile, ~10 s)
            if finished or time.perf_counter() >= deadline or stop_requested():
                break
        self._aggregate_runner_metrics()
        self._log_counters()

    def _round(self, can_sample: bool) -> None:
        if self.cfg.async_learning:
            self._round_async(can_sample)
            return
        if self.cfg.overlap:
            self._round_overlapped(can_sample)
            return
        if can_sample and not self.can_learn:
            self._owe(self._collect())
        self._pay_owed()

    def _round_async(self, can_sample: bool) -> None:
        """One round of async mode: runners sample while this process (or the learner actors)
        learns, so acting and learning run on different cores.

        Update-to-data control: every stored env step still owes `utd_ratio` updates (`_owe`);
        new sample requests go out only while the backlog is at most `max_update_lag`, so the
        runners pause when learning falls behind and `updates / env_steps` stays within
        `max_update_lag / env_steps` of `utd_ratio` (until replay holds a whole episode,
        sampling goes on, as in sync mode). Each runner has at most one request in
        flight (RLlib's per-runner limit), and a request is issued only while the steps already
        in flight leave room before `sample_until`. Runners plan with weights that may lag by
        the updates of one round; they report the version they acted with.
        """
        self._fetch_samples(0.0)
        self._request_samples(can_sample)  # at once: a runner never idles while we learn
        if not self.can_learn:
            self._fetch_samples(ASYNC_WAIT_S)  # nothing to learn yet: wait for data instead
            self._request_samples(can_sample)
        self._pay_owed()

    def _round_overlapped(self, can_sample: bool) -> None:
        """One round of `overlap=true` (local mode): the owed updates run on a second thread
        while this one plans and steps the envs, one core each.

        The decision is planned with the weights after the previous round's updates, as in
        the sync loop; what changes is that this round's updates sample replay as it was
        before this round's step (an episode that ends now is sampled from the next round).
        Everything that mutates shared state stays on this thread: replay sampling happens
        before the updates start, counters, metrics and the weight copy after they end. The
        runner plans with its own copy of the weights (an update changes them in place).
        During the seed phase's catch-up nothing is sampled until the backlog is paid, as in
        the sync loop.
        """
        learnable = self.can_learn
        n = min(int(self.counters.owed_updates), self.config.max_updates_per_round)
        n = n if learnable else 0
        batches = [self._learn_batch() for _ in range(n)]
        # No second thread until the update and the plan have both run in this process: a
        # compile ends by restoring the global RNG (dynamo), which would rewind the draws
        # (dropout) the other thread made meanwhile, a different run each time. Run after the
        # step instead, the updates give the same numbers (their batches are already drawn).
        threaded = n and self._compiled_both()
        updating = self._update_thread().submit(self._update_all, batches) if threaded else None
        sampled = 0
        # as the sync loop: sample while nothing can be learned (no whole episode yet), else
        # only once this round pays the whole backlog
        if can_sample and (not learnable or self.counters.owed_updates - n < 1):
            sampled = self._collect()
        if n:
            self._learned(updating.result() if updating is not None else self._update_all(batches))
            if self._weights_version - self._synced_version >= self.cfg.sync_every:
                self._sync_weights()
        self._owe(sampled)

    def _compiled_both(self) -> bool:
        """The update and the plan have both run in this process (so both are compiled):
        updates have been made here, and a step after the seed phase was planned."""
        return self._weights_version > 0 and self.counters.env_steps > self.cfg.seed_steps

    def _update_thread(self) -> ThreadPoolExecutor:
        if self._updater is None:
            # OpenMP's thread count is per thread: a new thread would run inductor's and
            # oneDNN's kernels on every core, against the planning thread
            threads = torch.get_num_threads()
            self._updater = ThreadPoolExecutor(
                1, thread_name_prefix="ldmpc-update", initializer=torch.set_num_threads,
                initargs=(threads,),
            )  # fmt: skip
        return self._updater

    @property
    def can_learn(self) -> bool:
        """An update is owed and replay holds a whole episode to sample it from."""
        return self.counters.owed_updates >= 1 and self.replay.num_episodes > 0

    def _pay_owed(self) -> None:
        """Up to `max_updates_per_round` owed updates, then the weights when `sync_every` is due."""
        if self.can_learn:
            self._learn(min(int(self.counters.owed_updates), self.config.max_updates_per_round))
            if self._weights_version - self._synced_version >= self.cfg.sync_every:
                self._sync_weights()

    def _fetch_samples(self, timeout_s: float) -> None:
        """Store the results of finished async sample requests (waiting up to timeout_s)."""
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            ready = self.env_runner_group.fetch_ready_async_reqs(
                tags=SAMPLE_TAG, timeout_seconds=timeout_s
            )
        chunks = [chunk for _, result in ready for chunk in result]
        if chunks:
            self._owe(self._store(chunks))

    def _request_samples(self, can_sample: bool) -> None:
        """One sample request to every idle runner, while the utd backlog and room allow."""
        group = self.env_runner_group
        in_flight = group.num_in_flight_async_reqs(tag=SAMPLE_TAG) * self.cfg.num_envs
        room = self.sample_until - self.counters.env_steps - in_flight
        # with no whole episode in replay nothing can be learned: sample on (else deadlock)
        keep_up = self.counters.owed_updates <= self.cfg.max_update_lag
        if can_sample and room > 0 and (keep_up or self.replay.num_episodes == 0):
            group.foreach_env_runner_async(
                "sample", tag=SAMPLE_TAG, kwargs={"random_actions": self.seeding}
            )

    @property
    def seeding(self) -> bool:
        return self.counters.env_steps < self.cfg.seed_steps

    def _collect(self) -> int:
        """One sample call on all runners; finished episodes go to replay. Returns env steps.

        Random actions (seed phase) may only ever switch to planning, never back: RLlib's
        episode chunks would then lack the STATE_OUT column for some steps.
        """
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            chunks = synchronous_parallel_sample(
                worker_set=self.env_runner_group,
                random_actions=self.seeding,
                sample_timeout_s=self.config.sample_timeout_s,
                _uses_new_env_runners=True,
            )
        return self._store(chunks)

    def _store(self, chunks: list[Any]) -> int:
        """Count the steps of sampled episode chunks; whole episodes go to replay."""
        new_steps = sum(len(c) for c in chunks)
        self.counters.env_steps += new_steps
        finished = self._to_replay(self.stitcher.add(chunks))
        for ep in finished:
            ep.step = self.counters.env_steps
            self.finished.append(ep)
            self._recent.append(ep.ret)
            self._acted_version = max(self._acted_version, ep.weights_seq_no)
            self.counters.episodes += 1
            ep.episode = self.counters.episodes
        return new_steps

    def _to_replay(self, episodes: list[FinishedEpisode]) -> list[FinishedEpisode]:
        """Store whole episodes (one RPC per shard when sharded). Multitask: the task-id slot
        leaves the observations first (`ldmpc.envs.multitask`)."""
        if self.cfg.multitask:
            for ep in episodes:
                ep.data = multitask_episode(ep.data, list(self.cfg.action_dims))
                ep.task = ep.data["task"]
        if episodes:
            self.replay.add([ep.data for ep in episodes])
        return episodes

    def _aggregate_runner_metrics(self) -> None:
        """Runner metrics once per training_step, not per round (a reduce costs ~1 ms)."""
        group = self.env_runner_group
        if group.num_remote_workers() <= 0:
            results = [group.local_env_runner.get_metrics()]
        else:
            results = group.foreach_env_runner(
                lambda runner: runner.get_metrics(),
                local_env_runner=False,
                timeout_seconds=self.config.sample_timeout_s,
            )
        self.metrics.aggregate(results, key=ENV_RUNNER_RESULTS)

    def _owe(self, new_steps: int) -> None:
        """TD-MPC2's schedule: nothing while seeding, `seed_steps` updates when it ends, then
        `utd_ratio` per env step (fractions carry over)."""
        seed, now = self.cfg.seed_steps, self.counters.env_steps
        before = now - new_steps
        if now < seed:
            return
        if before < seed:
            self.counters.owed_updates += seed + self.cfg.utd_ratio * (now - seed)
        else:
            self.counters.owed_updates += self.cfg.utd_ratio * new_steps

    def _learn(self, n: int) -> None:
        """n gradient updates, each on a fresh replay batch (one LearnerGroup.update each)."""
        for _ in range(n):
            self._learned(self._update_all([self._learn_batch()]))

    def _learn_batch(self) -> MultiAgentBatch:
        batch = to_batch_major(self.replay.sample(self.cfg.batch_size))
        return MultiAgentBatch(
            {DEFAULT_MODULE_ID: SampleBatch(batch)}, env_steps=self.cfg.batch_size
        )

    def _update_all(self, batches: list[MultiAgentBatch]) -> list[tuple[float, Any]]:
        """One LearnerGroup.update per batch: (seconds, results) each. Touches nothing of this
        object but the learner group (it may run on the update thread)."""
        timesteps = {NUM_ENV_STEPS_SAMPLED_LIFETIME: self.counters.env_steps}
        out = []
        for batch in batches:
            start = time.perf_counter()
            results = self.learner_group.update(batch=batch, timesteps=timesteps)
            out.append((time.perf_counter() - start, results))
        return out

    def _learned(self, done: list[tuple[float, Any]]) -> None:
        """Book finished updates: timers, learner metrics, the non-finite check, counters."""
        for seconds, results in done:
            self.metrics.log_value((TIMERS, LEARNER_UPDATE_TIMER), seconds)
            self.metrics.aggregate(results, key=LEARNER_RESULTS)
            self._check_nonfinite()
            self.counters.owed_updates -= 1
            self.counters.updates += 1
            self._weights_version += 1

    def _check_nonfinite(self) -> None:
        streak = self.metrics.peek((LEARNER_RESULTS, NONFINITE_STREAK), default=0)
        check_nonfinite_streak(streak, self.cfg.lr, "the env's rewards/observations")

    def _sync_weights(self, force: bool = False) -> None:
        """Send the learner's weights and their version to the env runners that act.

        - Only the driver's runner acts: with a local learner on its device it plans with the
          learner's own tensors (`_share_with_local_runner`), else it loads a torch state dict
          directly (1.3 ms instead of 11 ms for RLlib's numpy round trip at model_size 1).
        - Remote runners: one object-store copy for all of them, fire and forget; while a
          runner still loads the previous weights nothing is copied or sent (the next round
          retries; `force` sends anyway: resume, restored runners). Runners report the version
          they acted with. The driver's runner does not act then, so it is not updated: loading
          weights there cost ~20 ms per sync in async mode. Restored runners get fresh weights
          right after RLlib restarts them (`restore_env_runners`).
        """
        import ray

        group = self.env_runner_group
        if not force and group.num_remote_workers() > 0 and self._runners_busy_loading():
            return  # retried next round: `_synced_version` still says these are owed
        self._synced_version = self._weights_version
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            if group.num_remote_workers() <= 0 and not self.learner_group.is_local:
                group.sync_weights(
                    from_worker_or_learner_group=self.learner_group, inference_only=True
                )
                return
            # sync_every > 1 asks for weights that lag; overlap updates while the runner plans
            sharing = self.cfg.sync_every == 1 and not self.cfg.overlap
            if group.num_remote_workers() <= 0 and sharing and self._share_with_local_runner():
                return
            if group.num_remote_workers() <= 0 and group.local_env_runner.copy_weights(
                self._local_learner_module(), self._weights_version
            ):
                return
            state = {
                COMPONENT_RL_MODULE: self._module_weights(),
                WEIGHTS_SEQ_NO: self._weights_version,
            }
            if group.num_remote_workers() <= 0:
                group.local_env_runner.set_state(state)
                return
            # numpy arrays go into the object store as one buffer copy each; torch tensors are
            # pickled (model_size 1: 5.5 vs 10.2 ms per put). The runner's module converts back.
            state[COMPONENT_RL_MODULE] = {
                k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
                for k, v in state[COMPONENT_RL_MODULE].items()
            }
            group.foreach_env_runner_async_fetch_ready(
                "set_state", tag=SET_STATE_TAG, kwargs={"state": ray.put(state)}
            )

    def _share_with_local_runner(self) -> bool:
        """Local learner + the driver's runner acting: the runner plans with the learner's own
        tensors (no copy per update: 4 % of a `make train` step went to loading a copy, py-spy).
        True when the runner holds them, with the current version."""
        runner = self.env_runner_group.local_env_runner
        module = self._local_learner_module()
        if runner.shares_weights(module):
            runner.set_weights_version(self._weights_version)
            return True
        return runner.share_weights(module, self._weights_version)

    def _local_learner_module(self) -> Any:
        """The module of the learner in this process (num_learners=0), unwrapped."""
        lookup = self.learner_group.foreach_learner(lambda lrn: lrn.module[DEFAULT_MODULE_ID])
        return _first(lookup).unwrapped()

    def _runners_busy_loading(self) -> bool:
        """True while a runner has not yet taken the last weights sent. RLlib would drop a new
        request then anyway (one per runner in flight besides its sample), but only after this
        process had copied the state into the object store: ~16 % of an async learner's time
        when it sent after every update (py-spy, docs/results.md)."""
        group = self.env_runner_group
        group.fetch_ready_async_reqs(tags=SET_STATE_TAG, timeout_seconds=0.0)
        return group.num_in_flight_async_reqs(tag=SET_STATE_TAG) > 0

    def _module_weights(self) -> Any:
        """The learner's module weights as a runner's `set_state` takes them."""
        if self.learner_group.is_local:
            return self._local_learner_module().state_dict()
        state = self.learner_group.get_state(
            components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}", inference_only=True
        )
        return state[COMPONENT_LEARNER][COMPONENT_RL_MODULE]

    def _log_counters(self) -> None:
        values = {
            **asdict(self.counters),
            "replay_transitions": self.replay.num_transitions,
            "replay_episodes": self.replay.num_episodes,
            "weights_version": self._weights_version,
            "acted_weights_version": self._acted_version,
            "episode_return_recent": float(np.mean(self._recent)) if self._recent else np.nan,
        }
        for key, value in values.items():
            self.metrics.log_value(("ldmpc", key), value, window=1)

    def store_open_episodes(self) -> int:
        """At the end of a run: store the running episodes as truncated ones (nothing is lost;
        a resumed run starts fresh episodes). Not counted as finished episodes."""
        return len(self._to_replay(self.stitcher.flush()))

    def pop_finished(self) -> list[FinishedEpisode]:
        out, self.finished = self.finished, []
        return out

    # ------------------------------------------------------------------ state (checkpoints)
    def ldmpc_state(self) -> dict[str, Any]:
        """Agent state (weights, optimizers, Q scale, RNG) and counters (replay: see
        `replay.snapshot`)."""
        return {"agent": self.agent_weights(), "counters": asdict(self.counters)}

    def set_ldmpc_state(self, state: dict[str, Any]) -> None:
        """Inverse of `ldmpc_state` (replay: `replay.restore`); syncs the runners."""
        self.learner_group.foreach_learner(
            lambda lrn: lrn.set_agent_state(DEFAULT_MODULE_ID, state["agent"])
        )
        self.counters = Counters(**state["counters"])
        step = self.counters.env_steps
        self.env_runner_group.foreach_env_runner(
            lambda runner: runner.reseed_acting(step), local_env_runner=True
        )
        self._sync_weights(force=True)

    def initialize_weights(self) -> str:
        """`init_from=`: the file is read once here and every learner loads the same tensors
        (DDP replicas agree), then the runners get them; returns what was loaded."""
        from ldmpc.init_from import source_weights

        path = str(self.cfg.init_from)
        source, what = source_weights(path, self.cfg)  # read once, here: a bad file is one line

        def load(learner: Any) -> str:
            from ldmpc.init_from import load_matching

            model = learner.module[DEFAULT_MODULE_ID].unwrapped().model
            return load_matching(model, source, what, path)

        try:
            lines = [r.get() for r in self.learner_group.foreach_learner(load)]
        except Exception as err:  # a remote learner's UserError arrives wrapped by Ray
            cause = getattr(err, "cause", None)
            if isinstance(cause, UserError):
                raise cause from None
            raise
        self._sync_weights(force=True)
        return lines[0]

    def cleanup(self) -> None:
        if getattr(self, "_updater", None) is not None:
            self._updater.shutdown(wait=True)
        if getattr(self, "replay", None) is not None:  # setup may have failed before it
            self.replay.close()
        super().cleanup()

    def agent_weights(self) -> dict[str, Any]:
        """The learner's full agent state (what `Agent.load_state_dict` takes)."""
        return _first(
            self.learner_group.foreach_learner(lambda lrn: lrn.agent_state(DEFAULT_MODULE_ID))
        )


def make_replay(cfg: Config) -> RunReplay:
    """The driver's replay (replay_shards=0) or a client of `replay_shards` shard actors; both
    snapshot to `<run_dir>/replay`."""
    if cfg.replay_shards:
        return ShardedReplay.from_config(
            cfg, cfg.replay_shards, snapshot_every=cfg.replay_snapshot_every, resume=cfg.resume
        )
    return EpisodeReplay(**replay_args(cfg), directory=replay_dir(cfg))


def _first(results: Any) -> Any:
    """The first learner's answer (all learners hold identical weights after an update)."""
    return next(iter(results)).get()


def build_algorithm(cfg: Config) -> LdmpcAlgorithm:
    return rllib_config(cfg).build_algo()
