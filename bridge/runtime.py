"""Everything the daemon builds from its config files, built and checked in one
place: by ``run`` before anything starts, by a reload before anything changes,
and by ``check-config``, so the three cannot disagree.

:func:`build_runtime` reads the main config and its includes, applies the
environment and flag overrides, compiles the plans, and then builds what
would otherwise fail only later, in the middle of a start or a reload: the
stream's authenticator with its key file, the MQTT TLS context with its
certificate files, and librdkafka's configuration objects (a producer and,
when the stream reads Kafka, a consumer, created without a bootstrap server so
that nothing connects, and closed at once: librdkafka checks every property
name and value, and loads its TLS files, when the handle is created).  Every
problem, of every kind, comes back together in one :class:`ConfigError`, one
line each, naming the file and the field.

:func:`host_problems` adds the checks that depend on this machine rather than
on the files, which only ``check-config`` needs before ``run`` meets them for
real: the spool directory and the listen address.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import confluent_kafka

from bridge.auth import NO_KEY, AuthConfigError, Authenticator, keys_needed
from bridge.config_loader import ConfigError, apply_overrides, load_config
from bridge.core.plan import Plan, PlanError, compile_config
from bridge.core.settings import Config, LoadedConfig
from bridge.io.files import spool_path
from bridge.io.http import ListenError, parse_listen
from bridge.io.kafka_config import producer_config, refusal, stream_consumer_config
from bridge.io.logs import level_number
from bridge.io.mqtt import parse_mqtt_url
from bridge.io.tls import TlsConfigError, client_context
from bridge.stream.service import StreamSettingsError, check_settings


@dataclass(frozen=True)
class Runtime:
    """A config with everything built from it that can fail: what ``run``
    starts with and what a reload swaps in."""

    config: Config
    plan: Plan
    auth: Authenticator
    #: The MQTT connection's TLS context; None for plain ``mqtt://``.
    mqtt_tls: ssl.SSLContext | None
    #: The main config file (or "built-in defaults"), for messages.
    main: str


def build_runtime(
    path: str | Path | None,
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
) -> Runtime:
    """Read, override, compile and build; :class:`ConfigError` listing every
    problem found, each line starting with its file."""
    loaded = load_config(path)
    config = apply_overrides(loaded.config, dict(flags), dict(environ))
    loaded = LoadedConfig(config, loaded.origins, loaded.main)
    errors: list[str] = []
    plan: Plan | None = None
    try:
        plan = compile_config(loaded)
    except PlanError as exc:
        errors.extend(exc.errors)
    own = settings_problems(config)
    auth: Authenticator | None = None
    try:
        auth = Authenticator(config.auth, environ)
    except AuthConfigError as exc:
        own.append(str(exc))
    tls: ssl.SSLContext | None = None
    try:
        tls = mqtt_tls(config)
    except TlsConfigError as exc:
        own.append(str(exc))
    own.extend(librdkafka_problems(config))
    errors.extend(f"{loaded.main}: {line}" for line in own)
    if errors or plan is None or auth is None:
        raise ConfigError(errors)
    return Runtime(config, plan, auth, tls, loaded.main)


def settings_problems(config: Config) -> list[str]:
    """Settings whose checks live with the code that uses them."""
    checks: list[tuple[str, Callable[[], object]]] = [
        ("mqtt.url: ", lambda: parse_mqtt_url(config.mqtt.url)),
        ("listen: ", lambda: parse_listen(config.listen)),
        ("log.level: ", lambda: level_number(config.log.level)),
        # Its message names both settings.
        ("", lambda: check_settings(config.stream)),
    ]
    problems = []
    for where, check in checks:
        try:
            check()
        except (ValueError, ListenError, StreamSettingsError) as exc:
            problems.append(f"{where}{exc}")
    return problems


def mqtt_tls(config: Config) -> ssl.SSLContext | None:
    """The TLS context the MQTT client will use, or None for plain TCP (or
    a URL that :func:`settings_problems` already refuses)."""
    try:
        tls_url = parse_mqtt_url(config.mqtt.url).tls
    except ValueError:
        return None
    if not tls_url and config.mqtt.tls is None:
        return None
    return client_context(config.mqtt.tls)


# --------------------------------------------------------------------------- librdkafka
#: The settings of [kafka] that reach librdkafka under its own names (and
#: the aliases librdkafka reports them by).
_KAFKA_FIELDS = {
    "compression.type": "kafka.compression",
    "compression.codec": "kafka.compression",
    "linger.ms": "kafka.linger_ms",
    "queue.buffering.max.ms": "kafka.linger_ms",
    "queue.buffering.max.messages": "kafka.queue_max_messages",
    "message.timeout.ms": "kafka.delivery_timeout_ms",
}
_PROPERTY = re.compile(r'property:? "([^"]+)"')


def _kafka_field(message: str, sections: Sequence[tuple[str, Mapping[str, str]]]) -> str:
    """The setting a librdkafka complaint is about: the property it quotes,
    found in the user's properties tables, or one of [kafka]'s own keys."""
    match = _PROPERTY.search(message)
    name = match.group(1) if match else None
    for where, properties in sections:
        if name in properties:
            return f'{where}."{name}"'
    if name in _KAFKA_FIELDS:  # one of ours, unless a property overrides it
        field = _KAFKA_FIELDS[name]
        for where, properties in sections:
            for key in properties:
                if _KAFKA_FIELDS.get(key) == field:
                    return f'{where}."{key}"'
        return field
    for where, properties in sections:
        for key in properties:
            if key in message:
                return f'{where}."{key}"'
    return sections[0][0]


def _missing_files(sections: Sequence[tuple[str, Mapping[str, str]]]) -> list[str]:
    """librdkafka reports a missing TLS file as ``BIO lib``: name it first."""
    problems = []
    for where, properties in sections:
        for key, value in properties.items():
            if key.endswith(".location") and value != "probe" and not os.path.exists(value):
                problems.append(f'{where}."{key}": {value}: file not found')
    return problems


def librdkafka_problems(config: Config) -> list[str]:
    """``kafka.properties``, ``kafka.compression`` and the stream's
    ``consumer_properties`` as librdkafka judges them, without connecting."""
    kafka, stream = config.kafka, config.stream
    producer_sections = [("kafka.properties", kafka.properties)]
    sections = [("stream.consumer_properties", stream.consumer_properties), *producer_sections]
    problems = _missing_files(sections)
    if problems:
        return problems
    refused = refusal(confluent_kafka.Producer, producer_config(kafka, "edge-bridge-check"))
    if refused:
        problems.append(f"{_kafka_field(refused, producer_sections)}: {refused}")
    elif stream.source != "local":
        conf = stream_consumer_config(kafka, stream, "edge-bridge-check")
        refused = refusal(confluent_kafka.Consumer, conf)
        if refused:
            problems.append(f"{_kafka_field(refused, sections)}: {refused}")
    return problems


# --------------------------------------------------------------------------- this machine
def spool_problem(path: str) -> str | None:
    """Why the spool directory could not be opened (or created), or None.
    Nothing is created: the nearest existing parent must be writable."""
    target = Path(path)
    if target.exists():
        if not target.is_dir():
            return f"{path} is not a directory"
        if not os.access(target, os.W_OK | os.X_OK):
            return f"{path}: permission denied (the daemon's user must be able to write it)"
        return None
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{path}: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path}: cannot be created: {parent} is not writable"
    return None


def listen_problem(address: str) -> tuple[str, bool] | None:
    """Why the listen address cannot be bound now: (reason, fatal).  A port
    in use, or one that needs privileges this shell may lack, is not fatal:
    the daemon may be the one holding it, or run with more rights."""
    host, port = parse_listen(address)
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"{address}: unknown host: {exc.strerror}", True
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return f"{address}: port {port} is in use now", False
                if exc.errno == errno.EACCES:
                    return f"{address}: binding needs privileges this user lacks", False
                return f"{address}: {exc.strerror or exc}", True
    return None


@dataclass(frozen=True)
class HostProblems:
    """What ``check-config`` found on this machine: errors fail the check."""

    errors: list[str]
    warnings: list[str]


def host_problems(runtime: Runtime, environ: Mapping[str, str]) -> HostProblems:
    config, where = runtime.config, runtime.main
    errors: list[str] = []
    warnings: list[str] = []
    if config.spool.enabled:
        problem = spool_problem(spool_path(config.spool.path, environ))
        if problem:
            hint = "set spool.path to a writable directory"
            errors.append(f"{where}: spool.path: {problem} ({hint})")
    listen = listen_problem(config.listen)
    if listen is not None:
        reason, fatal = listen
        (errors if fatal else warnings).append(f"{where}: listen: {reason}")
    needed = keys_needed(config)
    for event, hint in runtime.auth.warnings:
        if needed or event != NO_KEY:
            warnings.append(f"{where}: auth: {hint} ({event})")
    for index, stream in enumerate(config.streams):
        if stream.auth == "none":
            warnings.append(
                f"{where}: streams[{index}].auth: none: anyone who reaches {config.listen} "
                "can watch this endpoint; serve it only behind an authenticating proxy"
            )
    return HostProblems(errors, warnings)
