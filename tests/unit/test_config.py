"""Config files: decoding, structural errors with their paths, includes, the
shipped default mapping, overrides, redaction, and the two CLI commands that
read configs without brokers (check-config, try-mapping)."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.config_loader import ConfigError, apply_overrides, load_config, redacted
from bridge.core.settings import Config, KafkaSettings, Mapping, MqttSettings
from tests.unit.core_fixtures import MAPPINGS, REPO

WriteConfig = Callable[..., Path]


def config_errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.errors


# --------------------------------------------------------------------------- defaults
def test_the_shipped_telemetry_mapping_is_exactly_the_built_in_default() -> None:
    loaded = load_config(MAPPINGS / "telemetry.toml")
    assert loaded.config.mappings == [Mapping()]
    assert load_config(None).config.mappings == [Mapping()]


def test_no_config_means_the_defaults() -> None:
    loaded = load_config(None)
    assert loaded.config == Config(mappings=[Mapping()])
    assert loaded.mapping_path(0) == "built-in defaults: mappings[0]"


def test_a_config_without_mappings_gets_the_default_one(tmp_config: WriteConfig) -> None:
    loaded = load_config(tmp_config('listen = "0.0.0.0:9000"\n'))
    assert loaded.config.listen == "0.0.0.0:9000"
    assert loaded.config.mappings == [Mapping()]


def test_includes_are_relative_to_the_main_file_and_keep_their_origin(
    tmp_config: WriteConfig,
) -> None:
    tmp_config('[[mappings]]\nname = "extra"\nmqtt = { topic = "x/{device}" }\n', "maps/x.toml")
    path = tmp_config(
        """
        include = ["maps/x.toml"]
        [[mappings]]
        name = "inline"
        """
    )
    loaded = load_config(path)
    assert [m.name for m in loaded.config.mappings] == ["inline", "extra"]
    assert loaded.mapping_path(0) == f"{path}: mappings[0]"
    assert loaded.mapping_path(1) == "maps/x.toml: mappings[0]"


# --------------------------------------------------------------------------- structural errors
@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[mqtt]\nqos = 1\n", "mqtt: Object contains unknown field `qos`"),
        ("bogus = 1\n", "Object contains unknown field `bogus`"),
        ("[mqtt]\nkeepalive_s = '30'\n", "mqtt.keepalive_s: Expected `int`, got `str`"),
        ("[[mappings]]\nmqtt = { qos = 2 }\n", "mappings[0].mqtt.qos: Invalid enum value 2"),
        (
            "[[mappings]]\n[[mappings]]\n[mappings.kafka]\nkee = '{tenant}'\n",
            "mappings[1].kafka: Object contains unknown field `kee`",
        ),
        # msgspec writes a table key as [...]; the loader puts the key back.
        (
            "[metrics.humidity]\n[metrics.temperature]\ntype = 'float'\n",
            "metrics.temperature.type: Invalid enum value 'float'",
        ),
        (
            "[devices.t1.DEV-001]\n[devices.t1.DEV-002]\nactiv = true\n",
            "devices.t1.DEV-002: Object contains unknown field `activ`",
        ),
        (
            "[[mappings]]\n[mappings.payload.fields.speed]\nfield = 'x'\ntype = 'number'\n",
            "mappings[0].payload.fields.speed.type: Invalid enum value 'number'",
        ),
        (
            "[[metrics.t.alarms]]\nkind = 'above'\n[[metrics.t.alarms]]\nkind = 'rising'\n",
            "metrics.t.alarms[1].kind: Invalid enum value 'rising'",
        ),
        (
            "[kafka.properties]\n'linger.ms' = 5\n",
            "kafka.properties.linger.ms: Expected `str`, got `int`",
        ),
    ],
)
def test_structural_errors_name_the_file_and_the_path(
    tmp_config: WriteConfig, text: str, error: str
) -> None:
    path = tmp_config(text)
    assert config_errors(path) == [f"{path}: {error}"]


def test_not_toml_and_missing_files(tmp_config: WriteConfig, tmp_path: Path) -> None:
    path = tmp_config("[mqtt\n")
    (error,) = config_errors(path)
    assert error.startswith(f"{path}: not valid TOML: ")
    assert config_errors(tmp_path / "nope.toml") == [f"{tmp_path / 'nope.toml'}: file not found"]


def test_toml_nested_deeper_than_the_parser_follows_is_named(tmp_config: WriteConfig) -> None:
    path = tmp_config("x = " + "[" * 3000 + "]" * 3000 + "\n")
    assert config_errors(path) == [
        f"{path}: not usable TOML: arrays or tables nested too deep"
    ]


def test_errors_in_several_included_files_are_all_reported_with_their_file(
    tmp_config: WriteConfig, tmp_path: Path
) -> None:
    tmp_config("[[mappings]]\nmqtt = { topic = 5 }\n", "a.toml")
    tmp_config("[[mappings]]\n[[mappings]]\npayload = { metrics = 'x' }\n", "b.toml")
    tmp_config("[metrics.t]\n", "c.toml")  # a catalog does not belong in a mapping file
    path = tmp_config('include = ["a.toml", "b.toml", "c.toml", "missing.toml"]\n')
    assert config_errors(path) == [
        "a.toml: mappings[0].mqtt.topic: Expected `str`, got `int`",
        "b.toml: mappings[1].payload: Object contains unknown field `metrics`",
        "c.toml: Object contains unknown field `metrics`",
        f"{tmp_path / 'missing.toml'}: file not found",
    ]


# --------------------------------------------------------------------------- overrides
def test_flag_beats_environment_beats_file() -> None:
    base = Config(
        mqtt=MqttSettings(url="mqtt://file:1883"),
        kafka=KafkaSettings(bootstrap="file:9092"),
        listen="file:8080",
    )
    env = {
        "EDGE_BRIDGE_MQTT_URL": "mqtt://env:1883",
        "EDGE_BRIDGE_KAFKA_BOOTSTRAP": "env:9092",
        "EDGE_BRIDGE_JWT_SECRET": "env-secret",
    }
    flags: dict[str, str | None] = {"mqtt_url": "mqtt://flag:1883", "kafka_bootstrap": None}
    config = apply_overrides(base, flags, env)
    assert config.mqtt.url == "mqtt://flag:1883"  # flag over env
    assert config.kafka.bootstrap == "env:9092"  # env over file
    assert config.listen == "file:8080"  # neither: the file
    assert config.auth.jwt_secret == "env-secret"
    assert base.mqtt.url == "mqtt://file:1883"  # the input is not modified
    assert config.mqtt.client_id == base.mqtt.client_id  # the rest is kept


def test_empty_overrides_do_not_blank_the_file_value() -> None:
    base = Config(listen="file:8080")
    config = apply_overrides(base, {"listen": ""}, {"EDGE_BRIDGE_LISTEN": ""})
    assert config.listen == "file:8080"


# --------------------------------------------------------------------------- redaction
def test_redacted_hides_secrets_and_keeps_the_rest(tmp_config: WriteConfig) -> None:
    path = tmp_config(
        """
        [mqtt]
        username = "bridge"
        password = "mqtt-pass"
        tls = { ca_file = "/etc/ca.pem", key_file = "/etc/key.pem" }

        [kafka.properties]
        "sasl.username" = "svc"
        "sasl.password" = "kafka-pass"
        "ssl.key.location" = "/etc/kafka.key"
        "ssl.key.password" = "key-pass"

        [auth]
        jwt_secret = "jwt-secret"

        [[mappings]]
        name = "m1"
        """
    )
    plain = redacted(load_config(path).config)
    text = json.dumps(plain)
    for secret in ("mqtt-pass", "kafka-pass", "key-pass", "jwt-secret"):
        assert secret not in text
    mqtt = plain["mqtt"]
    assert isinstance(mqtt, dict)
    assert mqtt["username"] == "bridge"
    assert mqtt["password"] == "***"
    assert mqtt["tls"]["key_file"] == "/etc/key.pem"  # a path, not a secret
    kafka = plain["kafka"]
    assert isinstance(kafka, dict)
    assert kafka["properties"] == {
        "sasl.username": "svc",
        "sasl.password": "***",
        "ssl.key.location": "/etc/kafka.key",
        "ssl.key.password": "***",
    }
    assert plain["mappings"] == ["m1"]
    auth = plain["auth"]
    assert isinstance(auth, dict)
    assert auth["jwt_secret"] == "***"
    assert auth["public_key_file"] is None


# --------------------------------------------------------------------------- check-config
def test_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(MAPPINGS / "telemetry.toml")]) == 0
    out, err = capsys.readouterr()
    assert out == (
        f"{MAPPINGS / 'telemetry.toml'}: ok: 1 mapping(s): "
        "telemetry (tenant/+/device/+/telemetry)\n"
    )
    # Not an error: without a key the stream refuses every client.
    assert err.splitlines() == [
        f"warning: {MAPPINGS / 'telemetry.toml'}: auth: every stream connection is refused "
        "until auth.jwt_secret, EDGE_BRIDGE_JWT_SECRET or auth.public_key_file is set "
        "(auth.no_key)"
    ]


def test_check_config_passes_on_every_shipped_config(capsys: pytest.CaptureFixture[str]) -> None:
    shipped = [REPO / "edge-bridge.toml", REPO / "examples" / "all-shapes.toml"]
    shipped += sorted(MAPPINGS.glob("*.toml"))
    for path in shipped:
        assert main(["check-config", str(path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert (
        f"{REPO / 'examples' / 'all-shapes.toml'}: ok: 4 mapping(s): "
        "telemetry (tenant/+/device/+/telemetry), single_reading (telemetry/+/+/+), "
        "gps_tracker (gps/+/tracker), site_meter (site/+/meter/+/reading)\n"
    ) in out


def test_check_config_prints_every_error_and_exits_2(
    tmp_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp_config(
        """
        [[mappings]]
        name = "site"
        mqtt = { topic = "site/{site}/meter/{meter}/reading" }
        kafka = { key = "{site}:{meter}:{phase}" }
        payload = { tenant = { segment = "tenant" }, device = { segment = "meter" } }
        """,
        "mappings/site.toml",
    )
    path = tmp_config(
        """
        include = ["mappings/site.toml"]
        [[mappings]]
        kafka = { headers = { zone = "{zone}" } }
        [metrics.temperature]
        min = 10
        max = 0
        """
    )
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"error: {path}: mappings[0].kafka.headers.zone: "
        "unknown placeholder {zone} (known: tenant, device, mqtt_qos, mqtt_retain)",
        "error: mappings/site.toml: mappings[0].kafka.key: "
        "unknown placeholder {phase} (known: tenant, device, site, meter)",
        "error: mappings/site.toml: mappings[0].payload.tenant.segment: "
        "segment {tenant} is not in the topic filter (it has: site, meter)",
        f"error: {path}: metrics.temperature: min 10.0 is greater than max 0.0",
        f"{path}: 4 error(s)",
    ]


def test_check_config_reports_structural_errors(
    tmp_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_config("[[mappings]]\n[mappings.mqtt]\ntopik = 'a/b'\n")
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {path}: mappings[0].mqtt: Object contains unknown field `topik`",
        f"{path}: 1 error(s)",
    ]


# --------------------------------------------------------------------------- try-mapping
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")
TELEMETRY = "tenant/t1/device/DEV-001/telemetry"
GOOD = (
    '{"schema_version": 1, "device": "DEV-001", "metrics": {"temperature": 23.5}, '
    '"ts": "2026-02-25T14:00:00Z"}'
)


def try_mapping(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(["try-mapping", str(MAPPINGS / "telemetry.toml"), *args])
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert isinstance(shown, dict)
    return code, shown


def without_received_at(shown: dict[str, object]) -> dict[str, object]:
    """The output with the wall-clock receive time checked and taken out."""
    records = shown["records"]
    assert isinstance(records, list)
    for record in records:
        for where in (record["value"], record["headers"]):
            if isinstance(where, dict) and "received_at" in where:
                assert ISO_MS.match(where.pop("received_at"))
    return shown


def test_try_mapping_prints_the_records_a_message_makes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, shown = try_mapping(capsys, "--topic", TELEMETRY, "--payload", GOOD)
    assert code == 0
    headers = {
        "tenant": "t1",
        "device": "DEV-001",
        "mqtt_topic": TELEMETRY,
        "schema_version": "1",
    }
    assert without_received_at(shown) == {
        "mapping": "telemetry",
        "duplicate": False,
        "records": [
            {
                "topic": "telemetry.clean",
                "key": "t1:DEV-001",
                "headers": headers,
                "value": {
                    "tenant": "t1",
                    "device_serial_id": "DEV-001",
                    "metric": "temperature",
                    "metric_type": "numeric",
                    "value": 23.5,
                    "ts": "2026-02-25T14:00:00Z",
                    "schema_version": 1,
                },
            },
            {
                "topic": "telemetry.raw",
                "key": "t1:DEV-001",
                "headers": headers,
                "value": json.loads(GOOD),
            },
        ],
    }


def test_try_mapping_shows_the_dead_letter_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, shown = try_mapping(capsys, "--topic", TELEMETRY, "--payload", '{"schema_version": 2}')
    assert code == 1
    assert without_received_at(shown) == {
        "mapping": "telemetry",
        "duplicate": False,
        "records": [
            {
                "topic": "telemetry.dlq",
                "key": TELEMETRY,
                "headers": {"reason": "schema_version_unsupported", "mqtt_topic": TELEMETRY},
                "value": {
                    "reason": "schema_version_unsupported",
                    "detail": "schema_version 2 is not supported (supported: 1)",
                    "mqtt_topic": TELEMETRY,
                    "mapping": "telemetry",
                    "payload": '{"schema_version": 2}',
                },
            }
        ],
    }


def test_try_mapping_reads_the_payload_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(GOOD.encode())))
    code, shown = try_mapping(capsys, "--topic", TELEMETRY)
    assert code == 0
    records = shown["records"]
    assert isinstance(records, list)
    assert [r["topic"] for r in records] == ["telemetry.clean", "telemetry.raw"]
    assert records[0]["value"]["value"] == 23.5


def test_try_mapping_with_no_matching_mapping(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["try-mapping", str(MAPPINGS / "telemetry.toml"), "--topic", "a/b", "--payload", "{}"]
    )
    assert code == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", "no mapping matches topic 'a/b'\n")


def test_try_mapping_with_a_bad_config(
    tmp_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_config("[[mappings]]\nkafka = { key = '{site}' }\n")
    assert main(["try-mapping", str(path), "--topic", TELEMETRY, "--payload", GOOD]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"error: {path}: mappings[0].kafka.key: unknown placeholder {{site}} "
        "(known: tenant, device)\n"
    )
