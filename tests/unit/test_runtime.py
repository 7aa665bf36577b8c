"""bridge.runtime: everything run, a reload and check-config build from the
files, each refusal one line naming the file and the field; every numeric
setting's range; the checks check-config adds for this machine; and a reload
that is refused, whatever goes wrong, without ending the daemon."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import msgspec.inspect as mi
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from structlog.testing import capture_logs

from bridge.cli import main
from bridge.config_loader import ConfigError
from bridge.core import settings as cfg
from bridge.daemon import Daemon
from bridge.io.files import read_problem
from bridge.runtime import Runtime, build_runtime
from tests.support.certs import issue, write_pem

WriteConfig = Callable[..., Path]


def refusals(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_runtime(path, {}, environ or {})
    return caught.value.errors


def one_refusal(tmp_config: WriteConfig, toml: str) -> tuple[Path, str]:
    """The config file written from ``toml`` and the one line refusing it."""
    path = tmp_config(toml)
    (line,) = refusals(path)
    return path, line


def built(path: Path) -> Runtime:
    return build_runtime(path, {}, {})


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


# --------------------------------------------------------------------------- numeric ranges
@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("[mqtt]\nreconnect_min_s = -1\n", "mqtt.reconnect_min_s"),
        ("[mqtt]\nreconnect_max_s = 0\n", "mqtt.reconnect_max_s"),
        ("[mqtt]\nkeepalive_s = 0\n", "mqtt.keepalive_s"),
        ("[mqtt]\nkeepalive_s = 70000\n", "mqtt.keepalive_s"),
        ("[mqtt]\nreceive_maximum = 0\n", "mqtt.receive_maximum"),
        ("[mqtt]\nsession_expiry_s = -1\n", "mqtt.session_expiry_s"),
        ("[kafka]\nlinger_ms = -1\n", "kafka.linger_ms"),
        ("[kafka]\nqueue_max_messages = 0\n", "kafka.queue_max_messages"),
        ("[kafka]\ndelivery_timeout_ms = 0\n", "kafka.delivery_timeout_ms"),
        ("[kafka]\nshutdown_flush_s = 0\n", "kafka.shutdown_flush_s"),
        ("[kafka]\nshutdown_flush_s = 601\n", "kafka.shutdown_flush_s"),
        ("[limits]\nmax_payload_bytes = -5\n", "limits.max_payload_bytes"),
        ("[limits]\nmax_string_length = 0\n", "limits.max_string_length"),
        ("[limits]\nmax_segment_length = 0\n", "limits.max_segment_length"),
        ("[limits]\nmax_metrics = 0\n", "limits.max_metrics"),
        ("[limits]\nmax_user_property_bytes = -1\n", "limits.max_user_property_bytes"),
        ("[stream]\nping_interval_s = 0\n", "stream.ping_interval_s"),
        ("[stream]\nping_interval_s = inf\n", "stream.ping_interval_s"),
        ("[stream]\nmax_per_tenant = -1\n", "stream.max_per_tenant"),
        ("[stream]\nsession_timeout_ms = 0\n", "stream.session_timeout_ms"),
        ("[stream]\nconsume_batch = 0\n", "stream.consume_batch"),
        ("[stream]\nclient_queue = 0\n", "stream.client_queue"),
        ("[stream]\nmax_lag_drops = -1\n", "stream.max_lag_drops"),
        ("[stream]\nslow_client_grace_s = -1\n", "stream.slow_client_grace_s"),
        ("[stream]\nreplay_timeout_s = 0\n", "stream.replay_timeout_s"),
        ("[stream]\nreplay_max_events = 0\n", "stream.replay_max_events"),
        ("[stream]\nreplay_concurrency = 0\n", "stream.replay_concurrency"),
        ("[auth]\nleeway_s = -1\n", "auth.leeway_s"),
        ("[spool]\nmax_bytes = 0\n", "spool.max_bytes"),
        ("[[commands]]\nsession_timeout_ms = 0\n", "commands[0].session_timeout_ms"),
    ],
)
def test_a_number_out_of_range_is_refused_with_its_path(
    tmp_config: WriteConfig, toml: str, field: str
) -> None:
    path, line = one_refusal(tmp_config, toml)
    assert line.startswith(f"{path}: {field}: Expected "), line


#: Numbers whose range is checked in bridge.core.plan, with every other
#: problem of the file at once (or that have no range: a metric's bounds).
CHECKED_BY_THE_PLAN = {
    ("DedupSettings", "window_s"),
    ("DedupSettings", "max_entries"),
    ("AlarmRule", "threshold"),
    ("AlarmRule", "low"),
    ("AlarmRule", "high"),
    ("AlarmRule", "for_s"),
    ("MetricSpec", "min"),
    ("MetricSpec", "max"),
    ("SpoolSettings", "fsync_interval_ms"),
    ("SparkplugSettings", "rebirth_interval_s"),
    ("LimitSettings", "max_json_depth"),
    ("LimitSettings", "max_alarm_series"),
    # bridge.core.stream_plan
    ("StreamEndpoint", "max_per_tenant"),
    *((codes, kind) for codes in ("RefusalCodes", "RefusalStatuses")
      for kind in ("token", "role", "tenant", "limit", "request")),
}  # fmt: skip


def _numbers(info: mi.Type, seen: set[type]) -> list[tuple[str, str, mi.Type]]:
    """Every int or float field reachable from ``info``: (struct, field, type)."""
    out: list[tuple[str, str, mi.Type]] = []
    if isinstance(info, mi.UnionType):
        for part in info.types:
            out += _numbers(part, seen)
    elif isinstance(info, mi.ListType):
        out += _numbers(info.item_type, seen)
    elif isinstance(info, mi.DictType):
        out += _numbers(info.value_type, seen)
    elif isinstance(info, mi.StructType) and info.cls not in seen:
        seen.add(info.cls)
        for field in info.fields:
            kinds = field.type.types if isinstance(field.type, mi.UnionType) else (field.type,)
            out += [
                (info.cls.__name__, field.name, kind)
                for kind in kinds
                if isinstance(kind, mi.IntType | mi.FloatType)
            ]
            out += _numbers(field.type, seen)
    return out


def test_every_numeric_setting_has_a_range() -> None:
    numbers = _numbers(mi.type_info(cfg.Config), set())
    assert len(numbers) > 30
    unbounded = [
        (owner, name)
        for owner, name, kind in numbers
        if (owner, name) not in CHECKED_BY_THE_PLAN
        and (owner, name) != ("PayloadRules", "schema_versions")
        and ((kind.ge is None and kind.gt is None) or (kind.le is None and kind.lt is None))
    ]
    assert unbounded == [], (
        "give these a range (msgspec.Meta in bridge/core/settings.py), or check them in the "
        "plan and list them in CHECKED_BY_THE_PLAN"
    )


def test_a_back_off_ceiling_below_its_floor_is_refused(tmp_config: WriteConfig) -> None:
    path = tmp_config("[mqtt]\nreconnect_min_s = 5\nreconnect_max_s = 1\n")
    assert refusals(path) == [
        f"{path}: mqtt.reconnect_max_s: 1.0 is less than mqtt.reconnect_min_s (5.0)"
    ]


# --------------------------------------------------------------------------- files
def test_config_files_that_cannot_be_read_are_named(tmp_config: WriteConfig) -> None:
    directory = tmp_config("", "conf.d/x.toml").parent
    (directory.parent / "latin1.toml").write_bytes(b"listen = '\xe9'\n")
    path = tmp_config('include = ["conf.d", "latin1.toml", "missing.toml"]\n')
    assert refusals(path) == [
        f"{directory}: is a directory, not a file",
        f"{directory.parent / 'latin1.toml'}: not UTF-8 text (invalid byte at offset 10)",
        f"{directory.parent / 'missing.toml'}: file not found",
    ]
    assert refusals(directory) == [f"{directory}: is a directory, not a file"]


def test_read_problems_say_what_to_check() -> None:
    """Every way a file cannot be read, in a few words (root reads any file,
    so a permission problem is shown with the error the OS would raise)."""
    assert read_problem(PermissionError(13, "Permission denied")) == (
        "permission denied (check the file's owner and mode)"
    )
    assert read_problem(OSError(5, "Input/output error")) == "cannot read: Input/output error"


# --------------------------------------------------------------------------- auth
@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x00garbage", "not a PEM public key"),
        (b"", "empty file"),
        (
            b"-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n",
            "not a PEM",
        ),
        (b"\xff\xfe-----BEGIN PUBLIC KEY-----", "not a PEM public key"),
    ],
)
def test_a_key_file_that_is_not_a_key_is_refused(
    tmp_config: WriteConfig, tmp_path: Path, content: bytes, reason: str
) -> None:
    key = tmp_path / "jwt.pem"
    key.write_bytes(content)
    path, line = one_refusal(
        tmp_config, f'[auth]\npublic_key_file = "{key}"\nalgorithms = ["RS256"]\n'
    )
    assert line.startswith(f"{path}: auth.public_key_file: {key}: {reason}"), line


def test_a_key_file_that_is_missing_or_a_directory_is_refused(
    tmp_config: WriteConfig, tmp_path: Path
) -> None:
    missing = tmp_config(f'[auth]\npublic_key_file = "{tmp_path / "nope.pem"}"\n')
    assert refusals(missing) == [
        f"{missing}: auth.public_key_file: {tmp_path / 'nope.pem'}: file not found"
    ]
    directory = tmp_config(f'[auth]\npublic_key_file = "{tmp_path}"\n')
    assert refusals(directory) == [
        f"{directory}: auth.public_key_file: {tmp_path}: is a directory, not a file"
    ]


@pytest.mark.parametrize("algorithms", ['["HS999"]', '["none"]', "[]"])
def test_unknown_none_or_no_algorithms_are_refused(
    tmp_config: WriteConfig, algorithms: str
) -> None:
    path, line = one_refusal(tmp_config, f"[auth]\nalgorithms = {algorithms}\n")
    assert line.startswith(f"{path}: auth.algorithms: "), line


def test_an_algorithm_the_key_cannot_serve_is_refused(
    tmp_config: WriteConfig, tmp_path: Path
) -> None:
    key = tmp_path / "jwt.pem"
    key.write_bytes(public_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    ok = tmp_config(f'[auth]\npublic_key_file = "{key}"\nalgorithms = ["RS256", "PS256"]\n')
    assert built(ok).auth.configured
    path = tmp_config(f'[auth]\npublic_key_file = "{key}"\nalgorithms = ["RS256", "ES256"]\n')
    assert refusals(path) == [
        f"{path}: auth.algorithms: ES256 cannot use the RSAPublicKey in {key}: "
        "list only the algorithms of the key's type"
    ]


# --------------------------------------------------------------------------- stream, log
def test_a_client_queue_smaller_than_a_batch_is_refused(tmp_config: WriteConfig) -> None:
    path = tmp_config("[stream]\nclient_queue = 10\nconsume_batch = 500\n")
    assert refusals(path) == [
        f"{path}: stream.client_queue (10) must be at least stream.consume_batch (500)"
    ]


def test_an_unknown_log_level_is_refused(tmp_config: WriteConfig) -> None:
    path = tmp_config('[log]\nlevel = "loud"\n')
    assert refusals(path) == [
        f"{path}: log.level: unknown log level 'loud': use debug, info, warning or error"
    ]


# --------------------------------------------------------------------------- MQTT
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://broker:1883", "MQTT URL 'http://broker:1883': scheme must be mqtt:// or mqtts://"),
        ("mqtt://broker:99999", "MQTT URL 'mqtt://broker:99999' has an invalid port"),
        ("mqtt://:1883", "MQTT URL 'mqtt://:1883' has no host"),
    ],
)
def test_an_mqtt_url_that_cannot_work_is_refused(
    tmp_config: WriteConfig, url: str, problem: str
) -> None:
    path = tmp_config(f'[mqtt]\nurl = "{url}"\n')
    assert refusals(path) == [f"{path}: mqtt.url: {problem}"]


def test_tls_files_are_loaded_and_every_mistake_named(
    tmp_config: WriteConfig, tmp_path: Path
) -> None:
    ca_key, ca_cert = issue("test CA", None, None, ca=True)
    key, cert = issue("edge-bridge", ca_key, ca_cert.subject)
    _, ca_path = write_pem(tmp_path, "ca", ca_key, ca_cert)
    key_path, cert_path = write_pem(tmp_path, "client", key, cert)
    other_key_path, _ = write_pem(tmp_path, "other", *issue("other", None, None))

    def tls(**files: Path) -> Path:
        lines = "".join(f'{name} = "{value}"\n' for name, value in files.items())
        return tmp_config(f'[mqtt]\nurl = "mqtts://127.0.0.1:8883"\n[mqtt.tls]\n{lines}')

    good = built(tls(ca_file=ca_path, cert_file=cert_path, key_file=key_path))
    assert good.mqtt_tls is not None
    assert built(tmp_config('[mqtt]\nurl = "mqtt://127.0.0.1"\n')).mqtt_tls is None

    (line,) = refusals(path := tls(cert_file=cert_path))
    assert line.startswith(f"{path}: mqtt.tls.cert_file: {cert_path} with key (none): "), line
    (line,) = refusals(path := tls(cert_file=cert_path, key_file=other_key_path))
    assert line.startswith(f"{path}: mqtt.tls.key_file: {cert_path} with key {other_key_path}")
    assert refusals(path := tls(key_file=key_path)) == [
        f"{path}: mqtt.tls.key_file: set mqtt.tls.cert_file too (mutual TLS)"
    ]
    assert refusals(path := tls(ca_file=tmp_path / "none.pem")) == [
        f"{path}: mqtt.tls.ca_file: {tmp_path / 'none.pem'}: file not found"
    ]
    (line,) = refusals(path := tls(ca_file=key_path))
    assert line.startswith(f"{path}: mqtt.tls.ca_file: {key_path}: not a PEM CA certificate")


# --------------------------------------------------------------------------- librdkafka
@pytest.mark.parametrize(
    ("toml", "line"),
    [
        (
            '[kafka]\ncompression = "zzz"\n',
            'kafka.compression: Invalid value "zzz" for configuration property "compression.codec"',
        ),
        (
            '[kafka.properties]\n"no.such.thing" = "1"\n',
            'kafka.properties."no.such.thing": No such configuration property: "no.such.thing"',
        ),
        (
            '[kafka.properties]\n"acks" = "1"\n',
            'kafka.properties."acks": '
            "`acks` must be set to `all` when `enable.idempotence` is true",
        ),
        (
            '[kafka.properties]\n"security.protocol" = "ssl"\n"ssl.ca.location" = "/nope.pem"\n',
            'kafka.properties."ssl.ca.location": /nope.pem: file not found',
        ),
        (
            '[stream.consumer_properties]\n"session.timeout.ms" = "0"\n',
            'stream.consumer_properties."session.timeout.ms": Configuration property '
            '"session.timeout.ms" value 0 is outside allowed range 1..3600000',
        ),
    ],
)
def test_librdkafka_judges_the_kafka_settings_without_connecting(
    tmp_config: WriteConfig, toml: str, line: str
) -> None:
    path = tmp_config(toml)
    assert refusals(path) == [f"{path}: {line}"]


def test_every_problem_is_reported_at_once(tmp_config: WriteConfig) -> None:
    path = tmp_config(
        '[log]\nlevel = "loud"\n[auth]\nalgorithms = []\n'
        '[kafka]\ncompression = "zzz"\n[metrics.t]\nmin = 2\nmax = 1\n'
    )
    assert [line.split(": ")[1] for line in refusals(path)] == [
        "metrics.t",
        "log.level",
        "auth.algorithms",
        "kafka.compression",
    ]


# --------------------------------------------------------------------------- check-config
def test_check_config_refuses_a_spool_path_that_cannot_be_a_directory(
    tmp_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_config("", "file")
    path = tmp_config(f'[spool]\npath = "{blocker}/spool"\n')
    assert main(["check-config", str(path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == [
        f"error: {path}: spool.path: {blocker}/spool: {blocker} is not a directory "
        "(set spool.path to a writable directory)"
    ]


def test_check_config_warns_about_a_port_in_use_and_refuses_an_unknown_host(
    tmp_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = tmp_config(f'listen = "127.0.0.1:{port}"\n[spool]\nenabled = false\n')
        assert main(["check-config", str(busy)]) == 0
    assert f"warning: {busy}: listen: 127.0.0.1:{port}: port {port} is in use now" in (
        capsys.readouterr().err.splitlines()
    )
    unknown = tmp_config('listen = "no-such-host.invalid:8080"\n[spool]\nenabled = false\n')
    assert main(["check-config", str(unknown)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1
    assert errors[0].startswith(
        f"error: {unknown}: listen: no-such-host.invalid:8080: unknown host"
    )


def test_check_config_prints_no_traceback_for_any_refusal(
    tmp_config: WriteConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "key.pem").mkdir()
    path = tmp_config(
        f'[auth]\npublic_key_file = "{tmp_path / "key.pem"}"\nalgorithms = ["RS256"]\n'
        f'[mqtt]\nurl = "mqtts://h"\n[mqtt.tls]\ncert_file = "{tmp_path}"\n'
        '[kafka.properties]\n"compression.type" = "zzz"\n'
    )
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line.split(": ")[2] for line in err.splitlines()[:-1]] == [
        "auth.public_key_file",
        "mqtt.tls.cert_file",
        'kafka.properties."compression.type"',
    ]


# --------------------------------------------------------------------------- reload
def test_a_reload_keeps_the_running_config_whatever_goes_wrong() -> None:
    """Refused reloads are logged and counted, even a failure no check foresaw;
    a good one is applied and counted.  (Through the real daemon, with each
    file broken in turn: tests/integration/test_reload.py.)"""
    running = build_runtime(None, {}, {"EDGE_BRIDGE_KAFKA_BOOTSTRAP": "127.0.0.1:9"})
    outcomes: list[Callable[[], Runtime]] = []

    def loader() -> Runtime:
        return outcomes.pop(0)()

    def config_error() -> Runtime:
        raise ConfigError(["bridge.toml: auth.algorithms: ['HS999']: use some of ..."])

    def bug() -> Runtime:
        raise RecursionError("a check that was not foreseen")

    daemon = Daemon(running, loader)
    outcomes += [config_error, bug, lambda: running]
    with capture_logs() as logs:
        daemon.reload()
        daemon.reload()
        assert daemon.plan is running.plan
        daemon.reload()
    assert daemon.reloads == {"refused": 2, "applied": 1}
    refused = [e for e in logs if e["event"] == "bridge.reload_refused" and "error" in e]
    assert [e["error"] for e in refused] == [
        "bridge.toml: auth.algorithms: ['HS999']: use some of ...",
        "RecursionError: a check that was not foreseen",
    ]
    assert [e["event"] for e in logs][-1] == "bridge.reloaded"


def test_a_step_of_applying_a_reload_that_fails_is_logged_and_counted() -> None:
    """Once a reload passed every check, applying it cannot end the daemon
    either: a step that fails (here a hook with a bug) is logged with its
    traceback and counted, and the steps after it are still applied."""
    running = build_runtime(None, {}, {"EDGE_BRIDGE_KAFKA_BOOTSTRAP": "127.0.0.1:9"})
    daemon = Daemon(running, lambda: running)
    applied: list[Runtime] = []

    def bug(_runtime: Runtime) -> None:
        raise RecursionError("a step that was not foreseen")

    daemon.reload_hooks += [bug, applied.append]
    with capture_logs() as logs:
        daemon.reload()
    assert daemon.reloads == {"incomplete": 1}
    assert applied == [running]
    (failed,) = [e for e in logs if e["event"] == "bridge.reload_step_failed"]
    assert failed["error"] == "RecursionError: a step that was not foreseen"
    assert failed["exc_info"] is True
    (reloaded,) = [e for e in logs if e["event"] == "bridge.reloaded"]
    assert reloaded["needs_restart"] == ["stream"]
