"""Ray side: joining or starting Ray for a run (temp dir, logging, resources, address).

It lives in `actors/` because it imports ray; the core never does (docs/design.md §5).

`address=` (else RAY_ADDRESS, which `ray job submit` sets for its jobs) joins a running cluster;
null starts a private local Ray. An address is probed with a plain TCP connect first: ray.init
retries an address where nothing listens for more than 5 minutes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from ldmpc.config import Config
from ldmpc.errors import UserError

# Ray's unix sockets live at <temp>/ray/session_<date>_<time>_<us>_<pid>/sockets/plasma_store,
# ~68 characters below its temp dir, and Linux caps a socket path at 107.
_RAY_SOCKET_SUFFIX = len("/ray/session_2026-01-01_00-00-00_000000_9999999/sockets/plasma_store")
_SOCKET_PATH_MAX = 107

PROBE_TIMEOUT_S = 3.0
# HTTP/2 client preface + an empty SETTINGS frame: a gRPC server (Ray's GCS, the Ray Client
# server) answers with its own SETTINGS frame (type byte 0x04), an HTTP/1 server with "HTTP/".
_H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 0x04
# A joined cluster may still be scaling up (cluster.yaml starts with no GPU workers): how long to
# wait for the autoscaler before the one-line resource error.
CLUSTER_WAIT_S = float(os.environ.get("LDMPC_CLUSTER_WAIT_S", "600"))
_POLL_S = 5.0
SHIELD_ENV = "LDMPC_SHIELD_RAY"
# Every worker Ray starts for a run (local or joined) calls this first (see
# actors/worker_setup.py for why it lives in a module of its own).
WORKER_SETUP_HOOK = "actors.worker_setup.setup_worker"


def check_ray_temp_dir() -> None:
    """One clear line instead of Ray's OSError deep in startup when the temp dir is too long."""
    temp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    if len(temp) + _RAY_SOCKET_SUFFIX > _SOCKET_PATH_MAX:
        name = "RAY_TMPDIR" if os.environ.get("RAY_TMPDIR") else "TMPDIR"
        raise UserError(
            f"{name}={temp} is too long for Ray's unix sockets: use a directory of at most "
            f"{_SOCKET_PATH_MAX - _RAY_SOCKET_SUFFIX} characters (e.g. a mkdtemp under /tmp)"
        )


def init_ray(cfg: Config) -> bool:
    """Join the cluster at `cfg.address` (else RAY_ADDRESS), or start a local Ray.

    Returns False when Ray was already up (a Tune trial), else True: the caller then ends with
    `ray.shutdown()`, which stops a local Ray and only disconnects from a joined cluster.
    """
    import ray

    from actors.worker_setup import quiet_ray_logs
    from ldmpc.checkpoint import announce_for_tests, reinstall_stop_handlers

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray/RLlib log informational WARNINGs on every start (token auth on, new API stack,
    # deprecations, gputil): noise for a user. Real errors still show.
    quiet_ray_logs()
    quiet = logging.getLogger("ray").level
    log_to_driver = cfg.num_env_runners > 0 or cfg.num_learners > 0
    target = cluster_address(cfg)
    if target is None:
        check_ray_temp_dir()
        with _sigterm_blocked():
            ray.init(
                address="local",  # never a `ray start` cluster found on this machine by chance
                num_cpus=len(os.sched_getaffinity(0)),
                include_dashboard=False,
                dashboard_host="127.0.0.1",
                log_to_driver=log_to_driver,
                logging_level=quiet,
                # every worker quiets Ray's lines and picks the GL backend before importing RLlib
                runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK},
            )
            # ray.init replaced the run's SIGTERM handler (its driver's exits with code 15, its
            # core worker's dumps a stack and aborts); put it back before the main thread's
            # shield comes off. (A SIGTERM *during* ray.init, ~3 s, still meets Ray's own.)
            reinstall_stop_handlers()
        announce_for_tests("Ray is up")
    else:
        label, address = target
        _join(label, address, log_to_driver=log_to_driver, level=quiet)
        reinstall_stop_handlers()
    try:
        check_resources(cfg, wait_s=0.0 if target is None else CLUSTER_WAIT_S)
    except UserError:
        ray.shutdown()  # the caller never got True, so it would not
        raise
    return True


def cluster_address(cfg: Config) -> tuple[str, str] | None:
    """(label for messages, probed address for ray.init), or None for a local Ray."""
    if cfg.address:
        label, raw = f"address={cfg.address}", str(cfg.address)
    elif os.environ.get("RAY_ADDRESS"):
        label, raw = f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}", os.environ["RAY_ADDRESS"]
    else:
        return None
    raw = raw.strip()
    if raw == "local":
        return None
    if raw == "auto":
        raw = _auto_address(label)
        label = f"{label} ({raw})"
    scheme = "ray://" if raw.startswith("ray://") else ""
    host, port = _host_port(label, raw.removeprefix(scheme))
    probe(label, host, port)
    return label, raw


def _auto_address(label: str) -> str:
    """RAY_ADDRESS, else the cluster the last `ray start` on this machine recorded.

    Ray's own "auto" also joins any Ray process it finds by `ps`, e.g. another run's private
    Ray that ends with that run: never wanted here.
    """
    if os.environ.get("RAY_ADDRESS", "auto") != "auto":
        return os.environ["RAY_ADDRESS"]
    from ray._common.utils import get_ray_address_file

    path = get_ray_address_file(None)
    try:
        with open(path) as fh:
            found = fh.read().strip()
    except OSError:
        found = ""
    if not found:
        raise UserError(
            f"{label}: no Ray cluster was started on this machine (no {path}); start one with "
            '"ray start --head" or give its host:port'
        )
    return found


def _host_port(label: str, raw: str) -> tuple[str, int]:
    if raw.startswith(("http://", "https://")):
        raise UserError(
            f"{label}: that is a dashboard/job-server URL (for `ray job submit --address`); "
            "address= takes the cluster's host:port (ray start --port, default 6379)"
        )
    host, sep, port = raw.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(
            f"{label}: expected auto, host:port or ray://host:port (e.g. 10.0.0.5:6379)"
        )
    return host, int(port)


def probe(label: str, host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> None:
    """A one-line UserError unless a gRPC server (Ray's GCS) answers at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_H2_HELLO)
            reply = sock.recv(9)
    except ConnectionRefusedError:
        why = "connection refused"
    except socket.gaierror:
        why = f"unknown host {host}"
    except TimeoutError:
        why = f"no answer within {timeout:g} s"
    except OSError as err:
        why = err.strerror or type(err).__name__
    else:
        if len(reply) > 3 and reply[3] == _H2_SETTINGS:
            return
        if reply.startswith(b"HTTP/"):
            raise UserError(
                f"{label}: an HTTP server answers there (the Ray dashboard?), not the cluster's "
                "GCS: use the port given to `ray start --head --port` (default 6379)"
            )
        why = "something answers, but not Ray (no gRPC reply)"
    raise UserError(
        f"{label}: no Ray cluster answers there ({why}); start one with "
        '"ray start --head" or fix the address'
    )


def _join(label: str, address: str, *, log_to_driver: bool, level: int) -> None:
    """ray.init(address): Ray rejects num_cpus/include_dashboard for an existing cluster."""
    import ray
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    # As `ray start` does: a token at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    # ~/.ray/auth_token) means token auth unless RAY_AUTH_MODE says otherwise.
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        with _stderr_kept_on_success():
            ray.init(
                address=address,
                log_to_driver=log_to_driver,
                logging_level=level,
                # merged with a submitted job's runtime_env (Ray raises only on a conflict)
                runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK},
            )
    except ConnectionError as err:
        if "InvalidAuthToken" in _chain(err) or "AuthenticationError" in _chain(err):
            raise UserError(
                f"{label}: the cluster refused this driver's auth token; give it the cluster's "
                "token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) with "
                "RAY_AUTH_MODE=token"
            ) from err
        raise UserError(f"{label}: could not join the Ray cluster ({err})") from err


@contextlib.contextmanager
def _stderr_kept_on_success() -> Iterator[None]:
    """Hold what is written to fd 2 (Ray's C++ core logs there) and pass it on unless the block
    fails: a refused token is retried ~20 times with a warning line each, and the failure is
    reported as one line. LDMPC_DEBUG=1 shows everything."""
    if os.environ.get("LDMPC_DEBUG") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                held.seek(0)
                sys.stderr.buffer.write(held.read())
                sys.stderr.flush()


def _chain(err: BaseException | None) -> str:
    """Names and messages of an exception and its causes, for matching."""
    parts = []
    while err is not None:
        parts.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def check_resources(cfg: Config, wait_s: float = 0.0) -> None:
    """One line instead of a run that waits forever for env runners Ray cannot place.

    On a joined cluster (`wait_s` > 0) a shortfall is first asked of the autoscaler and
    waited for: a `ray up` cluster starts GPU workers only on demand.
    """
    short = _shortfall(cfg)
    if short and wait_s > 0:
        short = _wait_for_autoscaler(cfg, short, wait_s)
    if short:
        raise UserError(short)


def _actor_groups(cfg: Config) -> list[tuple[str, int, float, float]]:
    """(name, count, CPUs each, GPUs each) of every kind of actor the run asks Ray to place."""
    runners = cfg.num_env_runners
    return [
        ("env_runner", runners, cfg.num_cpus_per_env_runner, cfg.num_gpus_per_env_runner),
        ("learner", cfg.num_learners, cfg.num_cpus_per_learner, cfg.num_gpus_per_learner),
    ]


def _shortfall(cfg: Config) -> str | None:
    import ray

    have = ray.cluster_resources()
    for column, kind in ((2, "CPU"), (3, "GPU")):
        asks = [(g[0], g[1], g[column]) for g in _actor_groups(cfg) if g[1] and g[column]]
        need = sum(count * per for _, count, per in asks)
        if need > have.get(kind, 0.0) + 1e-9:
            parts = " + ".join(
                f"num_{name}s={count} x num_{kind.lower()}s_per_{name}={per:g}"
                for name, count, per in asks
            )
            return (
                f"{parts} needs {need:g} {kind}s; this Ray has {have.get(kind, 0.0):g}: "
                "lower them (fractions such as 0.5 work)"
            )
    return None


def _wait_for_autoscaler(cfg: Config, short: str, wait_s: float) -> str | None:
    from ray.autoscaler.sdk import request_resources

    bundles: list[dict[str, Any]] = []
    for _, count, cpus, gpus in _actor_groups(cfg):
        bundle = {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}
        bundles += [bundle] * count if bundle else []
    request_resources(bundles=bundles)
    print(
        f"ldmpc: {short.split(':')[0]}; waiting up to {wait_s:g} s for the cluster to scale up "
        "(`ray status` shows it; LDMPC_CLUSTER_WAIT_S sets the wait)",
        file=sys.stderr,
        flush=True,
    )
    deadline = time.monotonic() + wait_s
    try:
        while short and time.monotonic() < deadline:
            time.sleep(min(_POLL_S, max(deadline - time.monotonic(), 0.0)))
            short = _shortfall(cfg)
    finally:
        request_resources()  # the runners' own demands keep the nodes from here on
    return short


def shutdown_ray() -> None:
    """`ray.shutdown()` for the local Ray this process started, without its graceful wait.

    Ray stops its processes with SIGTERM and waits up to 1 s for each; shielded processes block
    SIGTERM (`_sigterm_blocked`), so that wait was ~5 s of dead time at the end of every run
    and of every stop (measured: 5.07 s of an 8.2 s exit after SIGTERM, whose checkpoint was on
    disk 0.06 s after the signal). When the shield is on they get SIGKILL at once; the run's
    files are all written by then. Falls back to the plain call if Ray's node object changed.
    """
    import ray

    node = getattr(getattr(ray, "_private", None), "worker", None)
    node = getattr(node, "_global_node", None)
    kill = getattr(node, "kill_all_processes", None)
    if os.environ.get(SHIELD_ENV, "1") != "0" and callable(kill):

        def kill_at_once(
            check_alive: bool = False, allow_graceful: bool = True, wait: bool = False
        ):
            return kill(check_alive=check_alive, allow_graceful=False, wait=wait)

        node.kill_all_processes = kill_at_once
    ray.shutdown()


@contextlib.contextmanager
def _sigterm_blocked() -> Iterator[None]:
    """Start a local Ray's processes with SIGTERM blocked (they inherit the signal mask).

    `timeout`, Slurm's scancel or `kill -TERM -<pgid>` signal every process of the job, not just
    the driver. Ray blocks SIGINT in its processes but not SIGTERM, so without this the GCS, the
    raylet and the actors die while the driver is still writing its final checkpoint, and the
    checkpoint is lost. Ray's graceful stop would then wait ~1 s per process for nothing:
    `shutdown_ray` kills them at once. LDMPC_SHIELD_RAY=0 leaves the mask alone (the test suite
    does, except in the drill that checks this).
    """
    import signal

    if os.environ.get(SHIELD_ENV, "1") == "0":
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
