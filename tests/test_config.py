"""Configuration: defaults from the seed, layering, and errors that name their file and key."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from polycopy_actors.config import ConfigError, load_settings


def test_defaults_follow_the_seed():
    s = load_settings(env="development", environ={})
    hot, cold = s.tiers.hot, s.tiers.cold
    assert (hot.rate_limit.requests_per_second, hot.rate_limit.burst, hot.wallet_cooldown_seconds) == (10, 20, 1)
    assert (hot.poll_interval_seconds.min, hot.poll_interval_seconds.max) == (1, 3)
    assert (cold.rate_limit.requests_per_second, cold.rate_limit.burst, cold.wallet_cooldown_seconds) == (5, 10, 5)
    assert cold.sweep_interval_seconds == 3600 and cold.jitter_seconds > 0
    assert s.api.data_api_version == "v2" and s.database_url is None
    assert pickle.loads(pickle.dumps(s)) == s


@pytest.mark.parametrize("env", ["development", "staging", "production", "demo"])
def test_every_environment_loads(env):
    assert load_settings(env=env, environ={}).env == env


def test_environment_variables_win(tmp_path):
    extra = tmp_path / "x.yaml"
    extra.write_text("api:\n  data_api_version: v1\n")
    s = load_settings(env="development", config_file=extra, environ={
        "POLYCOPY_DATA_API_VERSION": "v2", "POLYCOPY_METRICS_PORT": "0", "DATABASE_URL": "postgresql://u:pw@h/db"})
    assert s.api.data_api_version == "v2" and s.metrics.port == 0
    assert s.database_url == "postgresql://u:pw@h/db" and "pw" not in repr(s)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("tiers:\n  hot:\n    rate_limit:\n      burst: 0\n", "tiers.hot.rate_limit.burst: must be at least 1"),
        ("tiers:\n  cold:\n    rate_limit:\n      requests_per_second: -1\n",
         "tiers.cold.rate_limit.requests_per_second: must be greater than 0"),
        ("tiers:\n  hot:\n    poll_interval_seconds:\n      min: 5\n",
         "tiers.hot.poll_interval_seconds.min: must not exceed"),
        ("writer:\n  batch_max_rows: lots\n", "writer.batch_max_rows: must be an integer"),
        ("pollers:\n  pool_sise: 3\n", "pollers.pool_sise: unknown key"),
        ("api:\n  data_api_version: v3\n", "api.data_api_version: must be one of v1, v2"),
        ("db:\n  prepared_statements: 'no'\n", "db.prepared_statements: must be true or false"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, yaml_text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(env="development", config_file=path, environ={})
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_broken_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("tiers:\n  hot:\n    burst: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env="development", config_file=path, environ={})
    assert f"{path} line 4" in str(info.value) or f"{path} line 3" in str(info.value)


def test_bad_env_variable_is_named():
    with pytest.raises(ConfigError, match="POLYCOPY_METRICS_PORT"):
        load_settings(env="development", environ={"POLYCOPY_METRICS_PORT": "nine"})


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tiers:\n  hot:\n    rate_limit:\n      burst: 0\n")
    proc = subprocess.run([sys.executable, "-m", "polycopy_actors", "--tier", "hot", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent)
    assert proc.returncode == 2
    assert "tiers.hot.rate_limit.burst" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_env_is_exit_2():
    proc = subprocess.run([sys.executable, "-m", "polycopy_actors", "--tier", "hot", "--env", "nowhere"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "nowhere" in proc.stderr
