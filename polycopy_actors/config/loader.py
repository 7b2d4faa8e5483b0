"""Layered, validated configuration.

Order (later wins): ``config/default.yaml``, ``config/<env>.yaml``, ``--config FILE``, environment
variables (DESIGN.md §3). The merged tree is checked against the frozen dataclasses of
:mod:`polycopy_actors.config.schema`: an unknown key, a wrong type or an out-of-range value raises
:class:`ConfigError` naming the file (or variable) and the dotted key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from polycopy_actors import PROJECT_ROOT
from polycopy_actors.config.schema import ApiSettings, ConfigError, DbSettings, Interval, Settings, StreamSettings

CONFIG_DIR = PROJECT_ROOT / "config"


#: Environment variables that override keys (DESIGN.md §3).
ENV_OVERRIDES: dict[str, str] = {
    "POLYCOPY_DATA_API_URL": "api.data_api_url",
    "POLYCOPY_DATA_API_VERSION": "api.data_api_version",
    "POLYCOPY_GAMMA_API_URL": "api.gamma_api_url",
    "POLYCOPY_METRICS_PORT": "metrics.port",
    "POLYCOPY_LOG_LEVEL": "logging.level",
    "POLYCOPY_LOG_FORMAT": "logging.format",
    "POLYCOPY_RTDS_URL": "stream.url",
}
#: Variables whose empty value means something (an empty RTDS URL turns the stream off).
EMPTY_MEANS_OFF = {"POLYCOPY_RTDS_URL"}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], overlay: Mapping[str, Any], source: str, sources: dict[str, str],
           prefix: str = "") -> None:
    for key, value in overlay.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: {prefix}{key!r}: keys must be strings")
        path = prefix + key
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, source, sources, path + ".")
        else:
            base[key] = value
            sources[path] = source
            if isinstance(value, dict):
                for sub in _leaf_paths(value, path + "."):
                    sources[sub] = source


def _leaf_paths(data: Mapping[str, Any], prefix: str) -> list[str]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out.extend(_leaf_paths(value, f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}")
    return out


def _source_of(path: str, sources: dict[str, str]) -> str:
    probe = path
    while True:
        if probe in sources:
            return sources[probe]
        if not probe:
            return str(CONFIG_DIR / "default.yaml")
        probe = probe.rpartition(".")[0]


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, path: str, sources: dict[str, str]) -> Any:
    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{_source_of(path, sources)}: {path}: {msg}")

    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], path, sources)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise fail(f"must be one of {', '.join(map(str, allowed))} (got {value!r})")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"must be a mapping (got {type(value).__name__})")
        return _build(tp, value, path + ".", sources)
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(f"must be true or false (got {value!r})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"must be an integer (got {value!r})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"must be a number (got {value!r})")
        if value != value or value in (float("inf"), float("-inf")):
            raise fail(f"must be a finite number (got {value!r})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail(f"must be a string (got {value!r})")
        return value
    raise fail(f"unsupported type {tp!r}")  # pragma: no cover - a schema bug


def _build(cls: type, data: dict[str, Any], prefix: str, sources: dict[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "database_url"}
    for key in data:
        if key not in fields:
            path = prefix + str(key)
            known = ", ".join(sorted(fields))
            shown = path if key and path.isprintable() else repr(path)
            raise ConfigError(f"{_source_of(path, sources)}: {shown}: unknown key (known here: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        path = prefix + name
        if name not in data:
            raise ConfigError(f"{CONFIG_DIR / 'default.yaml'}: {path}: missing key")
        value = _coerce(data[name], hints[name], path, sources)
        lim = f.metadata
        if lim and isinstance(value, (int, float)):
            src = _source_of(path, sources)
            if lim.get("gt") is not None and not value > lim["gt"]:
                raise ConfigError(f"{src}: {path}: must be greater than {lim['gt']} (got {value})")
            if lim.get("ge") is not None and not value >= lim["ge"]:
                raise ConfigError(f"{src}: {path}: must be at least {lim['ge']} (got {value})")
            if lim.get("le") is not None and not value <= lim["le"]:
                raise ConfigError(f"{src}: {path}: must be at most {lim['le']} (got {value})")
        kwargs[name] = value
    obj = cls(**kwargs)
    _check_cross_fields(obj, prefix, sources)
    return obj


def _check_cross_fields(obj: Any, prefix: str, sources: dict[str, str]) -> None:
    if isinstance(obj, Interval) and obj.min > obj.max:
        path = prefix + "min"
        raise ConfigError(
            f"{_source_of(path, sources)}: {prefix}min: must not exceed {prefix}max ({obj.min} > {obj.max})"
        )
    if isinstance(obj, DbSettings) and obj.pool_min_size > obj.pool_max_size:
        path = prefix + "pool_min_size"
        raise ConfigError(f"{_source_of(path, sources)}: {path}: must not exceed {prefix}pool_max_size")
    if isinstance(obj, StreamSettings) and obj.url and not obj.url.startswith(("ws://", "wss://")):
        path = prefix + "url"
        raise ConfigError(f"{_source_of(path, sources)}: {path}: must be a ws(s) URL or empty (got {obj.url!r})")
    if isinstance(obj, ApiSettings):
        for key in ("data_api_url", "gamma_api_url"):
            url = getattr(obj, key)
            if not url.startswith(("http://", "https://")):
                path = prefix + key
                raise ConfigError(f"{_source_of(path, sources)}: {path}: must be an http(s) URL (got {url!r})")


def _env_value(var: str, raw: str, path: str) -> Any:
    if path == "metrics.port":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"environment variable {var}: must be an integer (got {raw!r})") from None
    return raw


def load_settings(
    env: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load and validate the configuration.

    ``overrides`` (a nested mapping, applied last) serves programmatic callers such as tests
    and the demo; it is validated like any file.
    """
    environ = os.environ if environ is None else environ
    env = env or environ.get("POLYCOPY_ENV") or "development"
    if not env.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"--env: invalid environment name {env!r}")
    sources: dict[str, str] = {}
    merged: dict[str, Any] = {}
    default_path = CONFIG_DIR / "default.yaml"
    _merge(merged, _read_yaml(default_path), str(default_path), sources)
    env_path = CONFIG_DIR / f"{env}.yaml"
    if not env_path.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "default"))
        raise ConfigError(f"--env {env}: no file {env_path} (known environments: {known})")
    _merge(merged, _read_yaml(env_path), str(env_path), sources)
    if config_file is not None:
        _merge(merged, _read_yaml(Path(config_file)), str(config_file), sources)
    for var, path in ENV_OVERRIDES.items():
        raw = environ.get(var)
        if raw is None or (raw == "" and var not in EMPTY_MEANS_OFF):
            continue
        node = merged
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _env_value(var, raw, path)
        sources[path] = f"environment variable {var}"
    if overrides:
        _merge(merged, overrides, "overrides", sources)
    merged["env"] = env
    sources["env"] = "--env"
    settings: Settings = _build(Settings, merged, "", sources)
    database_url = environ.get("DATABASE_URL") or None
    return dataclasses.replace(settings, database_url=database_url)
