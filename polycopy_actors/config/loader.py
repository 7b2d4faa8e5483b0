"""Layered, validated configuration.

Order (later wins): ``config/default.yaml``, ``config/<env>.yaml``, ``--config FILE``, environment
variables (DESIGN.md §3). The merged tree is checked against the frozen dataclasses of
:mod:`polycopy_actors.config.schema`: an unknown key, a wrong type or an out-of-range value raises
:class:`ConfigError` naming the file (or variable) and the dotted key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
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


#: Largest configuration file read (bytes): a config file is a few kilobytes.
MAX_CONFIG_BYTES = 1024 * 1024
#: Most values (mappings, lists and scalars, each alias counted again) one file may hold.
MAX_CONFIG_NODES = 20_000
#: Deepest nesting one file may hold.
MAX_CONFIG_DEPTH = 32
#: An environment name: ``config/<env>.yaml``.
_ENV_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: A key that may be named in a message: anything else in a file is shown as "(not shown)".
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: A problem kind per YAML error class: a message never quotes the file (its "problem" text can).
_YAML_PROBLEMS: tuple[tuple[type[Exception], str], ...] = (
    (yaml.reader.ReaderError, "a character YAML does not allow"),
    (yaml.scanner.ScannerError, "a token YAML cannot read"),
    (yaml.parser.ParserError, "a structure YAML cannot parse"),
    (yaml.composer.ComposerError, "a bad anchor or alias"),
    (yaml.constructor.ConstructorError, "a value or tag that cannot be loaded"),
)


def shown(value: object, limit: int = 60) -> str:
    """``value`` as a message may show it: escaped (``ascii()``, so one line and no control
    characters) and cut to about ``limit`` characters."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown_path(path: object) -> str:
    """A file name for a message: as given when it is plain printable ASCII, else :func:`shown`."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)
    if isinstance(text, str) and text.isascii() and text.isprintable() and 0 < len(text) <= 200:
        return text
    return shown(text)


def _read_text(path: Path) -> str:
    """The text of a regular file of at most :data:`MAX_CONFIG_BYTES`, never reading more than that."""
    name = shown_path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # stat first: opening a FIFO would block
            raise ConfigError(f"{name}: not a regular file")
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ConfigError(f"{name}: not a regular file")
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{name}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except ValueError:  # an embedded NUL in the name
        raise ConfigError(f"{name}: not a valid file name") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{name}: larger than 1 MiB (a configuration file is a few kilobytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text (byte {exc.start + 1})") from None


def _check_bounds(data: Any, name: str) -> None:
    """Refuse a tree too big or too deep (aliases can make a small file expand enormously)."""
    budget = MAX_CONFIG_NODES
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise ConfigError(f"{name}: more than {MAX_CONFIG_NODES} values (aliases counted each time)")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{name}: nested deeper than {MAX_CONFIG_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _read_yaml(path: Path) -> dict[str, Any]:
    name = shown_path(path)
    text = _read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        if isinstance(exc, yaml.reader.ReaderError):
            where = f" character {exc.position + 1}"
        kind = next((k for cls, k in _YAML_PROBLEMS if isinstance(exc, cls)), "a syntax error")
        raise ConfigError(f"{name}{where}: invalid YAML ({kind})") from None
    except RecursionError:
        raise ConfigError(f"{name}: invalid YAML (nested too deeply)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: the top level must be a mapping of keys, not {type(data).__name__}")
    _check_bounds(data, name)
    return data


def _merge(base: dict[str, Any], overlay: Mapping[str, Any], source: str, sources: dict[str, str],
           prefix: str = "") -> None:
    for key, value in overlay.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: {prefix or 'top level'}: a key of type {type(key).__name__} "
                              "(keys must be strings)")
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
            raise fail(f"must be one of {', '.join(map(str, allowed))} (got {shown(value)})")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"must be a mapping (got {type(value).__name__})")
        return _build(tp, value, path + ".", sources)
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(f"must be true or false (got {shown(value)})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"must be an integer (got {shown(value)})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"must be a number (got {shown(value)})")
        if value != value or value in (float("inf"), float("-inf")):
            raise fail(f"must be a finite number (got {shown(value)})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail(f"must be a string (got {shown(value)})")
        return value
    raise fail(f"unsupported type {tp!r}")  # pragma: no cover - a schema bug


def _build(cls: type, data: dict[str, Any], prefix: str, sources: dict[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "database_url"}
    for key in data:
        if key not in fields:
            path = prefix + str(key)
            known = ", ".join(sorted(fields))
            source = _source_of(path, sources)
            if _KEY_RE.fullmatch(str(key)):
                raise ConfigError(f"{source}: {path}: unknown key (known here: {known})")
            where = f" under {prefix[:-1]}" if prefix else ""
            raise ConfigError(f"{source}: an unknown key (not shown){where} (known here: {known})")
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
        raise ConfigError(f"{_source_of(path, sources)}: {path}: must be a ws(s) URL or empty (got {shown(obj.url)})")
    if isinstance(obj, ApiSettings):
        for key in ("data_api_url", "gamma_api_url"):
            url = getattr(obj, key)
            if not url.startswith(("http://", "https://")):
                path = prefix + key
                raise ConfigError(f"{_source_of(path, sources)}: {path}: must be an http(s) URL (got {shown(url)})")


def _env_value(var: str, raw: str, path: str) -> Any:
    if path == "metrics.port":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"environment variable {var}: must be an integer (got {shown(raw)})") from None
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
    if not _ENV_RE.fullmatch(env):
        raise ConfigError(f"--env: invalid environment name {shown(env)} (letters, digits, - and _, at most "
                          "64 characters)")
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
        _merge(merged, _read_yaml(Path(config_file)), shown_path(config_file), sources)
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
