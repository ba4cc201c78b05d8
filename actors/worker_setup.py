"""What every Ray worker process does first: Ray/RLlib's informational log lines off, and MuJoCo's
GL backend chosen before anything imports dm_control (ray.rllib does).

Its own module, importing nothing heavy, because ray.init names `setup_worker` as the
`worker_process_setup_hook`: every worker Ray starts for the job (replay shards, Tune trials,
idle workers, not only env runners) imports it first. Kept in `actors.env_runner`, the hook made
each of them import RLlib: ~7 s of CPU per worker on this 2-core machine, and two small actors
took 7.8 s instead of 1.9 s to answer.
"""

from __future__ import annotations

import logging
import os

from ldmpc.mujoco_gl import configure_mujoco_gl


def quiet_ray_logs() -> None:
    """Ray/RLlib's informational warnings (deprecations, token auth) off unless LDMPC_DEBUG=1;
    real errors still show."""
    level = logging.DEBUG if os.environ.get("LDMPC_DEBUG") == "1" else logging.ERROR
    for name in ("ray", "ray.rllib", "ray.tune"):
        logging.getLogger(name).setLevel(level)


def setup_worker() -> None:
    """The worker setup hook: quiet logs, then the GL backend (no import side effects anywhere)."""
    quiet_ray_logs()
    configure_mujoco_gl()
