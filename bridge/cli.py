"""The ``edge-bridge`` command: ``run``, ``check-config``, ``try-mapping``,
``sign-in-link`` and ``version``.

Errors a user can fix (a bad config, a taken port) are printed as sentences
with the path of what is wrong and exit non-zero; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import trio

from bridge import __version__, native
from bridge.config_loader import ConfigError, load_config
from bridge.config_watch import DEFAULT_INTERVAL_S, Watch
from bridge.console import first_run
from bridge.core.plan import Plan, PlanError, compile_config
from bridge.core.settings import LoadedConfig
from bridge.core.trial import try_message
from bridge.io.http import parse_listen
from bridge.io.logs import configure
from bridge.runtime import Runtime, build_runtime, host_problems

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-bridge",
        description="MQTT telemetry to validated Kafka records, and a live stream back out.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("--config", help="main config file (env EDGE_BRIDGE_CONFIG)")
    run.add_argument("--mqtt-url", help="mqtt://HOST:PORT (env EDGE_BRIDGE_MQTT_URL)")
    run.add_argument("--kafka-bootstrap", help="HOST:PORT[,...] (env EDGE_BRIDGE_KAFKA_BOOTSTRAP)")
    run.add_argument("--listen", help="stream server HOST:PORT (env EDGE_BRIDGE_LISTEN)")
    run.add_argument("--log-format", choices=["json", "console"])
    run.add_argument("--log-level", help="debug, info, warning or error")
    run.add_argument(
        "--watch-config", nargs="?", type=float, const=DEFAULT_INTERVAL_S, metavar="SECONDS",
        help="reload when a config file changes, looking every SECONDS "
        f"(default {DEFAULT_INTERVAL_S:g}); SIGHUP reloads either way",
    )  # fmt: skip
    check = commands.add_parser("check-config", help="validate a config and its mapping files")
    check.add_argument("file")
    try_mapping = commands.add_parser(
        "try-mapping", help="show what the mappings make of one message, without brokers"
    )
    try_mapping.add_argument("file", help="a main config or a mapping file")
    try_mapping.add_argument("--topic", required=True)
    try_mapping.add_argument("--payload", help="the payload (default: read stdin)")
    try_mapping.add_argument(
        "--payload-file", help="read the payload from this file (binary, e.g. Sparkplug B)"
    )
    try_mapping.add_argument(
        "--birth-file",
        help="Sparkplug B: an NBIRTH/DBIRTH payload for the same node/device, applied first",
    )
    link = commands.add_parser(
        "sign-in-link",
        help="print a new console sign-in link (a first run's own secret; loopback only)",
    )
    link.add_argument("--config", help="main config file (env EDGE_BRIDGE_CONFIG)")
    link.add_argument("--listen", help="the daemon's HOST:PORT (env EDGE_BRIDGE_LISTEN)")
    commands.add_parser(
        "version", help="print the version, and whether the hot path runs compiled (mypyc)"
    )
    return parser


def _sign_in_link(args: argparse.Namespace) -> int:
    """The first-run link again, with a fresh one-hour token: for when the
    printed one expired.  Reads the secret ``run`` made; never makes one."""
    path = args.config or os.environ.get("EDGE_BRIDGE_CONFIG")
    environ = dict(os.environ)
    try:
        config = build_runtime(path, {"listen": args.listen}, environ).config
    except ConfigError as exc:
        _print_errors(exc.errors)
        return EXIT_CONFIG
    if not first_run.eligible(config, environ):
        print(
            "error: this bridge has a key configured (or listens beyond loopback): "
            "sign in with a token made with that key (docs/streaming.md#tokens)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    directory = first_run.state_directory(config, environ)
    try:
        secret = first_run.read_secret(directory)
    except first_run.FirstRunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if secret is None:
        print(
            f"error: no first-run secret in {directory}: start `edge-bridge run` once",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    host, port = parse_listen(config.listen)
    print(f"Open the console: {first_run.sign_in_link(host, port, secret, time.time())}")
    return 0


def version_line() -> str:
    python = ".".join(map(str, sys.version_info[:3]))
    return f"edge-bridge {__version__} · Python {python} · hot path {native.describe()}"


def _load(path: str | None) -> tuple[LoadedConfig, Plan]:
    loaded = load_config(path)
    return loaded, compile_config(loaded)


def _print_errors(errors: list[str]) -> None:
    for line in errors:
        print(f"error: {line}", file=sys.stderr)


def _check_config(path: str) -> int:
    """Every check ``run`` makes short of connecting (bridge.runtime), with
    the environment's overrides, as ``run`` would see them."""
    environ = dict(os.environ)
    try:
        runtime = build_runtime(path, {}, environ)
    except ConfigError as exc:
        _print_errors(exc.errors)
        print(f"{path}: {len(exc.errors)} error(s)", file=sys.stderr)
        return EXIT_CONFIG
    found = host_problems(runtime, environ)
    for line in found.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if found.errors:
        _print_errors(found.errors)
        print(f"{path}: {len(found.errors)} error(s)", file=sys.stderr)
        return EXIT_CONFIG
    plan = runtime.plan
    names = ", ".join(f"{m.name} ({m.subscription})" for m in plan.mappings)
    print(f"{path}: ok: {len(plan.mappings)} mapping(s): {names}")
    for endpoint in plan.streams:
        stream = endpoint.settings
        print(
            f"{path}: stream {stream.name!r} on {', '.join(endpoint.paths)}: "
            f"{stream.envelope.kind} events, read {stream.source.read} from "
            f"{', '.join(stream.source.topics)}, auth {stream.auth}"
        )
    return 0


def _read_payload(args: argparse.Namespace) -> bytes:
    if args.payload_file is not None:
        return Path(args.payload_file).read_bytes()
    if args.payload is not None:
        return str(args.payload).encode()
    return sys.stdin.buffer.read()


def _try_mapping(args: argparse.Namespace) -> int:
    topic = args.topic
    try:
        _, plan = _load(args.file)
        payload = _read_payload(args)
        birth = Path(args.birth_file).read_bytes() if args.birth_file else None
    except (ConfigError, PlanError) as exc:
        _print_errors(exc.errors)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"error: cannot read the payload: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    trial = try_message(plan, topic, payload, time.time_ns() // 1_000_000, birth=birth)
    if trial.mapping is None:
        print(f"no mapping matches topic {topic!r}", file=sys.stderr)
        return 1
    result: dict[str, object] = {
        "mapping": trial.mapping,
        "duplicate": trial.duplicate,
        "records": trial.records,
    }
    if trial.sparkplug is not None:
        result["sparkplug"] = trial.sparkplug
    print(msgspec.json.format(msgspec.json.encode(result), indent=2).decode())
    return 0 if not trial.dead_letters else 1


def _run(args: argparse.Namespace) -> int:
    path = args.config or os.environ.get("EDGE_BRIDGE_CONFIG")
    flags = {
        "mqtt_url": args.mqtt_url,
        "kafka_bootstrap": args.kafka_bootstrap,
        "listen": args.listen,
    }

    def load() -> Runtime:
        """The effective config (file, then environment, then flags) and all
        that is built from it.  Called again on every reload, so a reload sees
        the same overrides as the start and is checked as completely."""
        return build_runtime(path, flags, dict(os.environ))

    watch = None
    if args.watch_config is not None:
        if path is None or args.watch_config <= 0:
            print(
                "error: --watch-config needs a config file (--config or EDGE_BRIDGE_CONFIG)"
                " and a positive interval",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        watch = Watch(Path(path), args.watch_config)
    try:
        runtime = load()
        config = runtime.config
        configure(args.log_format or config.log.format, args.log_level or config.log.level)
    except ConfigError as exc:
        _print_errors(exc.errors)
        return EXIT_CONFIG
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from bridge.daemon import StartupError, run_daemon

    try:
        trio.run(run_daemon, runtime, load, watch)
    except BaseExceptionGroup as group:
        startup, rest = group.split(StartupError)
        if rest is not None or startup is None:
            raise
        for leaf in _leaves(startup):
            print(f"error: {leaf}", file=sys.stderr)
        return EXIT_RUNTIME
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside a (possibly nested) exception group."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            return _check_config(args.file)
        if args.command == "try-mapping":
            return _try_mapping(args)
        if args.command == "sign-in-link":
            return _sign_in_link(args)
        if args.command == "version":
            print(version_line())
            return 0
    except BrokenPipeError:
        # The reader went away (``| head``): not an error of ours.  Point stdout
        # at /dev/null so that flushing it at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return _run(args)
