"""cluster.yaml validates against Ray's cluster-launcher schema and keeps the safety promises."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def _load() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_matches_ray_schema() -> None:
    # `ray up` fills the provider defaults first, then validates: do the same.
    validate_config(prepare_config(_load()))


def test_only_ssh_is_open_from_outside() -> None:
    # `ray up` gives the group Ray's default rules, port 22 and traffic between the cluster's
    # own nodes, plus any IpPermissions listed: none may be (a second port-22 rule in the same
    # request makes AWS reject it as a duplicate).
    group = _load()["provider"]["security_group"]
    assert group["GroupName"] and "IpPermissions" not in group


def test_dashboard_is_local_and_the_cluster_uses_token_auth() -> None:
    cfg = _load()
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert "export RAY_AUTH_MODE=token" in cmds[-1]
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_nodes_run_make_setup_with_cuda_torch() -> None:
    cfg = _load()
    (setup,) = [c for c in cfg["setup_commands"] if "make setup" in c]
    # scripts/setup.sh installs the CPU wheel unless told another index
    assert "TORCH_INDEX_URL=https://pypi.org/simple" in setup
    assert "gpu" in cfg["docker"]["image"]
    assert ".venv" in cfg["rsync_exclude"] and ".gitignore" in cfg["rsync_filter"]
