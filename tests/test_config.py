"""Configuration: defaults from the seed, layering, and errors that name their file and key."""

from __future__ import annotations

import os
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


# --- Hostile config files: bounded reads, nothing of the file echoed -----------------------------

SHADOW = ("root:$y$j9T$secrethash:19000:0:99999:7:::\n"
          "daemon:*:19000:0:99999:7:::\n"
          "svc:$6$saltsalt$otherhash:19000:0:99999:7:::\n")


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m polycopy_actors ARGS`` with at most 2 GiB of address space (an unbounded read fails)."""
    import resource  # noqa: PLC0415 - POSIX only

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYCOPY_")}
    env["DATABASE_URL"] = "postgresql://postgres@127.0.0.1:1/none"  # never reached: the config fails first
    return subprocess.run([sys.executable, "-m", "polycopy_actors", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, preexec_fn=limit)


def _one_config_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr.strip()


@pytest.mark.timeout(60)
def test_config_must_be_a_regular_file(tmp_path):
    line = _one_config_error(_cli("--tier", "hot", "--config", "/dev/zero", timeout=30))
    assert "/dev/zero: not a regular file" in line
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it would block until a writer came
    with pytest.raises(ConfigError, match="not a regular file"):
        load_settings(env="development", config_file=fifo, environ={})
    with pytest.raises(ConfigError, match="not a regular file"):
        load_settings(env="development", config_file=tmp_path, environ={})


@pytest.mark.timeout(60)
def test_config_files_are_at_most_1_mib(tmp_path):
    from polycopy_actors.config.loader import MAX_CONFIG_BYTES

    line = "# " + "x" * 61 + "\n"  # 64 bytes
    exact = tmp_path / "exact.yaml"
    exact.write_text(line * (MAX_CONFIG_BYTES // len(line)))
    assert exact.stat().st_size == MAX_CONFIG_BYTES == 1024 * 1024
    assert load_settings(env="development", config_file=exact, environ={}).env == "development"
    big = tmp_path / "big.yaml"
    big.write_text(line * (MAX_CONFIG_BYTES // len(line)) + "#")
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_settings(env="development", config_file=big, environ={})


@pytest.mark.timeout(60)
def test_no_config_error_echoes_the_file(tmp_path):
    shadow = tmp_path / "shadow"
    shadow.write_text(SHADOW)
    line = _one_config_error(_cli("--tier", "hot", "--config", str(shadow)))
    assert str(shadow) in line and "an unknown key (not shown)" in line
    rest = line.replace(str(shadow), "")
    assert not any(piece in rest for piece in ("root", "secrethash", "daemon", "$y$", "19000")), line
    cases = {
        "a: !secret-tag-xyz value\n": "line 1 column 4",                     # an unknown tag
        "a: *secret_alias_xyz\n": "line 1 column 4",                         # an undefined alias
        "a: 'secret-token-xyz\n": "line 2 column 1",                         # an unterminated quote
        'a: "secret\\qtoken-xyz"\n': "line 1 column 12",                     # a bad escape
        "pollers:\n  secret-token-xyz: 1\n": "an unknown key (not shown) under pollers",
        "secret token xyz: 1\n": "an unknown key (not shown)",
        "? [secret, token-xyz]\n: 1\n": "line 1 column 3",                    # an unhashable key
        "1234: secret-token-xyz\n": "keys must be strings",
        "- secret-token-xyz\n": "top level must be a mapping",
        "a: \x01secret-token-xyz\n": "invalid YAML",                          # a control character
    }
    for text, expected in cases.items():
        path = tmp_path / "case.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_settings(env="development", config_file=path, environ={})
        message = str(info.value)
        assert expected in message and "secret" not in message.replace(str(path), ""), (text, message)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"a: \xff\xfesecret-token-xyz\n")
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_settings(env="development", config_file=binary, environ={})
    assert "secret" not in str(info.value).replace(str(binary), "")


@pytest.mark.timeout(60)
def test_a_small_file_cannot_expand_into_a_huge_tree(tmp_path):
    bomb = tmp_path / "bomb.yaml"  # 800 bytes, 2**26 values once its aliases are followed
    lines = ["a0: &a0 {x: 1, y: 1}"] + [f"a{i}: &a{i} {{x: *a{i - 1}, y: *a{i - 1}}}" for i in range(1, 25)]
    bomb.write_text("\n".join(lines) + "\n")
    line = _one_config_error(_cli("--tier", "hot", "--config", str(bomb), timeout=40))  # in a child: bounded memory
    assert "more than 20000 values" in line
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested"):
        load_settings(env="development", config_file=deep, environ={})
