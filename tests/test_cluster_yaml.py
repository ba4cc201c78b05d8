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


def test_only_ssh_is_open_and_dashboard_is_local() -> None:
    cfg = _load()
    perms = cfg["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in perms] == [(22, 22)]
    head_cmds = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmds
    assert any("make setup" in c for c in cfg["setup_commands"])
