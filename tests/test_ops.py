"""Deployment files agree with the configuration and the documented commands."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
import yaml

from polycopy_actors import PROJECT_ROOT
from polycopy_actors.config import load_settings
from polycopy_actors.observe import metrics


@pytest.mark.timeout(30)
@pytest.mark.parametrize("tier", ["hot", "cold"])
def test_fly_toml_matches_the_production_config(tier):
    fly = tomllib.loads((PROJECT_ROOT / f"fly.worker-{tier}.toml").read_text())
    settings = load_settings(env=fly["env"]["POLYCOPY_ENV"], environ=fly["env"])
    assert fly["env"]["POLYCOPY_ENV"] == "production"
    assert "DATABASE_URL" not in fly["env"]  # a secret, set with `fly secrets set`
    assert fly["processes"]["worker"] == f"python -m polycopy_actors --tier {tier}"
    assert fly["deploy"]["release_command"] == "python -m polycopy_actors migrate"
    assert fly["kill_signal"] in ("SIGTERM", "SIGINT")
    assert fly["kill_timeout"] > settings.shutdown_timeout_seconds + 2  # room for the flush
    check = fly["checks"]["healthz"]
    assert (check["type"], check["path"], check["port"]) == ("http", "/healthz", settings.metrics.port)
    assert (fly["metrics"]["port"], fly["metrics"]["path"]) == (settings.metrics.port, "/metrics")
    assert settings.metrics.port == 9464 and settings.metrics.host == "0.0.0.0"
    assert fly["build"]["dockerfile"] == "Dockerfile"


@pytest.mark.timeout(30)
def test_dockerfile_is_slim_non_root_and_runs_the_documented_command():
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")
                    and not line.startswith(" ")]
    by = {}
    for parts in instructions:
        if len(parts) == 2:
            by.setdefault(parts[0], []).append(parts[1])
    assert re.fullmatch(r"python:3\.\d+-slim", by["FROM"][0])
    assert by["USER"][-1] not in ("root", "0")
    cmd = " ".join(json.loads(by["CMD"][-1]))
    assert cmd == "python -m polycopy_actors --tier hot"
    assert cmd in (PROJECT_ROOT / "README.md").read_text()
    assert not re.search(r"apt-get install|build-essential|gcc", text)


def _leaves(data: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        out += _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]
    return out


@pytest.mark.timeout(30)
def test_readme_documents_every_config_key_and_metric():
    readme = (PROJECT_ROOT / "README.md").read_text()
    defaults = yaml.safe_load((PROJECT_ROOT / "config" / "default.yaml").read_text())
    missing = [k for k in _leaves(defaults) if f"| `{k}` |" not in readme]
    assert missing == []
    names = {m._name for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")}
    assert names and all(f"`{n}" in readme for n in names), sorted(n for n in names if f"`{n}" not in readme)
