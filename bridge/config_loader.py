"""Reading the configuration: TOML files into :mod:`bridge.core.settings`.

Only the application (:mod:`bridge.runtime`, :mod:`bridge.cli`,
:mod:`bridge.daemon`, :mod:`bridge.config_watch`) reads files: the main
config and the mapping files it includes, with every problem named by file and
field path (:class:`ConfigError`); the ``EDGE_BRIDGE_*`` environment overrides;
the redacted copy for the start-up log.  The core gets the decoded settings
and never imports this module (tests/unit/test_layout.py checks it).

Precedence, lowest to highest: the defaults of the schema, the config file and
the mapping files it includes, the ``EDGE_BRIDGE_*`` environment variables,
command-line flags.  The merge of the last two lives in :mod:`bridge.cli`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from types import UnionType
from typing import TypeVar, Union, get_args, get_origin, get_type_hints

import msgspec

from bridge.core.settings import Config, LoadedConfig, Mapping, MappingFile
from bridge.io.files import read_problem


def _default_mappings() -> list[Mapping]:
    return [Mapping()]


class ConfigError(Exception):
    """A config that cannot be used.  ``errors`` holds one line per problem, each
    starting with the file and the path of the bad field."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _decode_error_line(source: str, exc: msgspec.ValidationError, raw: object, kind: type) -> str:
    """Turn msgspec's ``Expected int, got str - at `$.mqtt.qos``` into
    ``file: mqtt.qos: Expected int, got str``."""
    text = str(exc)
    message, sep, where = text.rpartition(" - at `")
    if not sep:
        return f"{source}: {text}"
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    if "[...]" in path:
        path = _name_table_keys(path, raw, kind)
    return f"{source}: {path}: {message}"


_PATH_STEP = re.compile(r"\.?([^.\[\]]+)|\[([^\]]+)\]")


def _container(kind: object) -> object:
    """``X | None`` -> ``X``: the part of an optional type that has fields or items."""
    if get_origin(kind) in (Union, UnionType):
        return next(arg for arg in get_args(kind) if arg is not type(None))
    return kind


def _name_table_keys(path: str, raw: object, kind: object) -> str:
    """msgspec writes a table key as ``[...]`` (``metrics[...].type``); find which
    key it was by walking the decoded TOML next to the types, and validating each
    entry of the table until one fails, so the path says ``metrics.temp.type``."""
    out = []
    try:
        for name, index in _PATH_STEP.findall(path):
            kind = _container(kind)
            if name:
                assert isinstance(raw, dict) and isinstance(kind, type)
                kind, raw = get_type_hints(kind)[name], raw.get(name)
                out.append(f".{name}")
            elif index != "...":
                assert isinstance(raw, list)
                kind, raw = get_args(kind)[0], raw[int(index)]
                out.append(f"[{index}]")
            else:
                assert isinstance(raw, dict)
                kind = get_args(kind)[1]
                key = next(k for k, v in raw.items() if not _valid(v, kind))
                raw = raw[key]
                out.append(f".{key}")
    except (AssertionError, KeyError, IndexError, StopIteration, TypeError, ValueError):
        return path
    return "".join(out).removeprefix(".")


def _valid(value: object, kind: object) -> bool:
    try:
        msgspec.convert(value, kind, strict=True)
    except msgspec.ValidationError:
        return False
    return True


def _read_toml(path: Path) -> object:
    """A TOML file as plain data; any way the file can be unusable (missing,
    a directory, unreadable, not UTF-8, not TOML, nested deeper than the
    recursive TOML parser can follow) is a ConfigError naming it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: {read_problem(exc)}"]) from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{path}: not UTF-8 text (invalid byte at offset {exc.start})"]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except RecursionError:
        # tomllib descends once per nested array or inline table.
        raise ConfigError([f"{path}: not usable TOML: arrays or tables nested too deep"]) from None


_T = TypeVar("_T")


def _convert(raw: object, kind: type[_T], source: str) -> _T:
    try:
        return msgspec.convert(raw, kind, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError([_decode_error_line(source, exc, raw, kind)]) from None


def load_config(path: str | Path | None) -> LoadedConfig:
    """Read a main config and the mapping files it includes (paths relative to it).

    With no path, the built-in defaults: one mapping, the telemetry shape, the
    same as ``mappings/telemetry.toml``.  Only structure is checked here; call
    :func:`bridge.core.plan.compile_config` for the semantic checks.
    """
    if path is None:
        return LoadedConfig(Config(mappings=_default_mappings()), [("built-in defaults", 0)])
    main_path = Path(path)
    config = _convert(_read_toml(main_path), Config, str(main_path))
    mappings = list(config.mappings)
    origins = [(str(main_path), i) for i in range(len(mappings))]
    errors: list[str] = []
    for name in config.include:
        try:
            extra = _convert(_read_toml(main_path.parent / name), MappingFile, name).mappings
        except ConfigError as exc:
            errors.extend(exc.errors)
            continue
        mappings.extend(extra)
        origins.extend((name, i) for i in range(len(extra)))
    if errors:
        raise ConfigError(errors)
    if not mappings:
        mappings = _default_mappings()
        origins = [("built-in defaults", 0)]
    return LoadedConfig(msgspec.structs.replace(config, mappings=mappings), origins, str(main_path))


ENV_OVERRIDES = {
    "EDGE_BRIDGE_MQTT_URL": "mqtt_url",
    "EDGE_BRIDGE_KAFKA_BOOTSTRAP": "kafka_bootstrap",
    "EDGE_BRIDGE_LISTEN": "listen",
    "EDGE_BRIDGE_JWT_SECRET": "jwt_secret",
    "EDGE_BRIDGE_MQTT_PASSWORD": "mqtt_password",
}


def apply_overrides(
    config: Config, flags: dict[str, str | None], environ: dict[str, str]
) -> Config:
    """Deployment overrides: a flag beats its ``EDGE_BRIDGE_*`` variable, which
    beats the file.  ``flags`` uses the names of ENV_OVERRIDES' values."""
    chosen: dict[str, str] = {}
    for variable, name in ENV_OVERRIDES.items():
        value = flags.get(name) or environ.get(variable)
        if value:
            chosen[name] = value
    replace = msgspec.structs.replace
    if "mqtt_url" in chosen:
        config = replace(config, mqtt=replace(config.mqtt, url=chosen["mqtt_url"]))
    if "kafka_bootstrap" in chosen:
        config = replace(config, kafka=replace(config.kafka, bootstrap=chosen["kafka_bootstrap"]))
    if "mqtt_password" in chosen:
        config = replace(config, mqtt=replace(config.mqtt, password=chosen["mqtt_password"]))
    if "listen" in chosen:
        config = replace(config, listen=chosen["listen"])
    if "jwt_secret" in chosen:
        config = replace(config, auth=replace(config.auth, jwt_secret=chosen["jwt_secret"]))
    return config


_SECRET_WORDS = ("password", "secret", "key")


def redacted(config: Config) -> dict[str, object]:
    """The effective config as plain data, secrets replaced by ``***``, for the
    start-up log line."""

    def scrub(value: object, key: str = "") -> object:
        if isinstance(value, dict):
            return {k: scrub(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        secret = any(word in key.lower() for word in _SECRET_WORDS)
        if value is not None and secret and not key.endswith(("_file", ".location")):
            return "***"
        return value

    plain = msgspec.to_builtins(config)
    plain.pop("mappings", None)
    plain["mappings"] = [m.name for m in config.mappings]
    result = scrub(plain)
    assert isinstance(result, dict)
    return result
