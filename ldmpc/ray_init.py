"""Top floor: joining or starting Ray for a run (temp dir, logging, resources, address).

Like `algorithm.py` and `cli.py` this module may import ray; the core below never does.
"""

from __future__ import annotations

import logging
import os

from omegaconf import DictConfig

from actors.env_runner import quiet_ray_logs
from ldmpc.errors import UserError

# Ray's unix sockets live at <temp>/ray/session_<date>_<time>_<us>_<pid>/sockets/plasma_store,
# ~68 characters below its temp dir, and Linux caps a socket path at 107.
_RAY_SOCKET_SUFFIX = len("/ray/session_2026-01-01_00-00-00_000000_9999999/sockets/plasma_store")
_SOCKET_PATH_MAX = 107


def check_ray_temp_dir() -> None:
    """One clear line instead of Ray's OSError deep in startup when the temp dir is too long."""
    temp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    if len(temp) + _RAY_SOCKET_SUFFIX > _SOCKET_PATH_MAX:
        name = "RAY_TMPDIR" if os.environ.get("RAY_TMPDIR") else "TMPDIR"
        raise UserError(
            f"{name}={temp} is too long for Ray's unix sockets: use a directory of at most "
            f"{_SOCKET_PATH_MAX - _RAY_SOCKET_SUFFIX} characters (e.g. a mkdtemp under /tmp)"
        )


def init_ray(cfg: DictConfig) -> bool:
    """Start a local Ray (no dashboard, temp files under RAY_TMPDIR); False if already up."""
    import ray

    if ray.is_initialized():
        return False
    check_ray_temp_dir()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray/RLlib log informational WARNINGs on every start (token auth on, new API stack,
    # deprecations, gputil): noise for a user. Real errors still show.
    quiet_ray_logs()
    quiet = logging.getLogger("ray").level
    ray.init(
        num_cpus=len(os.sched_getaffinity(0)),
        include_dashboard=False,
        dashboard_host="127.0.0.1",
        log_to_driver=cfg.num_env_runners > 0 or cfg.num_learners > 0,
        logging_level=quiet,
    )
    check_resources(cfg)
    return True


def check_resources(cfg: DictConfig) -> None:
    """One line instead of a run that waits forever for env runners Ray cannot place."""
    import ray

    have = ray.cluster_resources()
    for kind, per in (("CPU", cfg.num_cpus_per_env_runner), ("GPU", cfg.num_gpus_per_env_runner)):
        need = cfg.num_env_runners * per
        if need > have.get(kind, 0.0) + 1e-9:
            key = f"num_{kind.lower()}s_per_env_runner"
            raise UserError(
                f"num_env_runners={cfg.num_env_runners} x {key}={per:g} needs {need:g} {kind}s; "
                f"this Ray has {have.get(kind, 0.0):g}: lower them (fractions such as 0.5 work)"
            )
