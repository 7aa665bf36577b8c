"""Normalization: the exact records a message becomes, every dead-letter reason
the core can give, the partly-valid policy, catalog and registry checks, and
dedup and alarms as seen through the normalizer."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.core.normalize import Normalizer, Now
from bridge.core.stream_read import MappingReader
from tests.unit.core_fixtures import (
    NOW,
    REPO,
    normalizer_for,
    plan_from,
    reasons,
    records,
    values,
)

WriteConfig = Callable[..., Path]
TOPIC = "tenant/t1/device/DEV-001/telemetry"
RECEIVED = "2026-02-25T14:01:01.123Z"
HEADERS = [
    ("tenant", "t1"),
    ("device", "DEV-001"),
    ("mqtt_topic", TOPIC),
    ("schema_version", "1"),
]
ISSUE_PAYLOAD = (
    b'{"schema_version": 1, "device": "DEV-001", "metrics": {"temperature": 23.5, '
    b'"humidity": 60, "door_open": false, "mode": "eco"}, "ts": "2026-02-25T14:00:00Z"}'
)

# A catalog, a registry and tight limits.
STRICT = """
[limits]
max_payload_bytes = 256
max_string_length = 16
max_segment_length = 12
max_metrics = 3

[metrics.temperature]
unit = "°C"
min = -50
max = 150
[metrics.humidity]
unit = "%"
[metrics.door_open]
type = "bool"
[metrics.mode]
type = "str"

[devices.t1.DEV-001]
metrics = ["temperature", "humidity", "door_open"]
[devices.t1.DEV-002]
[devices.t1.OLD-9]
active = false
"""

# Declared fields with coercions, an event id.
FIELDS = """
[[mappings]]
name = "fields"
mqtt = { topic = "f/{tenant}/{device}" }

[mappings.payload]
schema_version_field = ""
event_id = { field = "id" }

[mappings.payload.fields.speed]
field = "d.speed"
unit = "km/h"

[mappings.payload.fields.mode]
field = "d.mode"
type = "str"
enum = ["eco", "boost"]

[mappings.payload.fields.note]
field = "d.note"
type = "str"
required = false
"""

# One reading per message, the device and the metric's name from fields.
SINGLE = """
[[mappings]]
name = "single"
mqtt = { topic = "s/{tenant}/{sensor}" }

[mappings.payload]
device = { field = "dev" }
schema_version_field = ""
single = { name = { field = "name" }, type = "numeric", unit = { const = "bar" } }
"""

CONFIGS = {"default": "", "strict": STRICT, "fields": FIELDS, "single": SINGLE}


@pytest.fixture
def make(tmp_config: WriteConfig) -> Callable[[str], Normalizer]:
    """A normalizer for one of CONFIGS, or for the given TOML text."""

    def build(name_or_text: str) -> Normalizer:
        return normalizer_for(tmp_config(CONFIGS.get(name_or_text, name_or_text)))

    return build


def clean_json(metric: str, metric_type: str, value: str, unit: str | None = None) -> bytes:
    """The exact bytes of a clean record of the default mapping, field by field."""
    unit_part = f'"unit":"{unit}",' if unit else ""
    return (
        f'{{"tenant":"t1","device_serial_id":"DEV-001","metric":"{metric}",'
        f'"metric_type":"{metric_type}","value":{value},{unit_part}'
        f'"ts":"2026-02-25T14:00:00Z","received_at":"{RECEIVED}","schema_version":1}}'
    ).encode()


# --------------------------------------------------------------------------- valid messages
def test_a_valid_message_becomes_one_record_per_metric_and_one_raw(
    make: Callable[[str], Normalizer],
) -> None:
    outcome = make("default").process(TOPIC, ISSUE_PAYLOAD, NOW)
    assert (outcome.mapping, outcome.clean, outcome.dead, outcome.duplicate) == (
        "telemetry",
        4,
        [],
        False,
    )
    clean = "telemetry.clean"
    assert records(outcome) == [
        (clean, "t1:DEV-001", HEADERS, clean_json("temperature", "numeric", "23.5")),
        (clean, "t1:DEV-001", HEADERS, clean_json("humidity", "numeric", "60")),
        (clean, "t1:DEV-001", HEADERS, clean_json("door_open", "bool", "false")),
        (clean, "t1:DEV-001", HEADERS, clean_json("mode", "str", '"eco"')),
        ("telemetry.raw", "t1:DEV-001", [*HEADERS, ("received_at", RECEIVED)], ISSUE_PAYLOAD),
    ]


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ('"2026-02-25T16:00:00.5+02:00"', "2026-02-25T14:00:00.500Z"),
        ("1772028000000", "2026-02-25T14:00:00Z"),
        ("null", RECEIVED),  # a null time is an absent time
    ],
)
def test_event_time_is_written_as_utc(
    make: Callable[[str], Normalizer], ts: str, expected: str
) -> None:
    payload = f'{{"schema_version": 1, "metrics": {{"t": 1}}, "ts": {ts}}}'.encode()
    (record,) = values(make("default").process(TOPIC, payload, NOW), "telemetry.clean")
    assert record["ts"] == expected


def test_without_ts_or_device_the_received_time_and_topic_device_are_used(
    make: Callable[[str], Normalizer],
) -> None:
    outcome = make("default").process(TOPIC, b'{"schema_version":1,"metrics":{"t":1}}', NOW)
    (record,) = values(outcome, "telemetry.clean")
    assert (record["ts"], record["received_at"], record["device_serial_id"]) == (
        RECEIVED,
        RECEIVED,
        "DEV-001",
    )


def test_no_matching_mapping_makes_nothing(make: Callable[[str], Normalizer]) -> None:
    outcome = make("default").process("tenant/t1/device/DEV-001/status", ISSUE_PAYLOAD, NOW)
    assert (outcome.mapping, outcome.records, outcome.clean, outcome.dead) == (None, [], 0, [])


def test_the_first_matching_mapping_wins_and_raw_can_be_off(
    make: Callable[[str], Normalizer],
) -> None:
    normalizer = make(
        """
        [[mappings]]
        name = "first"
        mqtt = { topic = "tenant/{tenant}/device/{device}/telemetry" }
        kafka = { clean_topic = "first.clean", raw_enabled = false, key = "{device}" }
        [[mappings]]
        name = "second"
        mqtt = { topic = "tenant/+/device/+/#" }
        payload = { tenant = { const = "x" }, device = { const = "y" } }
        """
    )
    outcome = normalizer.process(TOPIC, b'{"schema_version":1,"metrics":{"t":1}}', NOW)
    assert outcome.mapping == "first"
    assert [(topic, key) for topic, key, _, _ in records(outcome)] == [("first.clean", "DEV-001")]
    other = normalizer.process(
        "tenant/t1/device/D/x/y", b'{"schema_version":1,"metrics":{"t":1}}', NOW
    )
    assert other.mapping == "second"
    assert [(topic, key) for topic, key, _, _ in records(other)] == [
        ("telemetry.clean", "x:y"),
        ("telemetry.raw", "x:y"),
    ]


def test_key_and_extra_headers_from_segments(make: Callable[[str], Normalizer]) -> None:
    normalizer = make(
        """
        [[mappings]]
        mqtt = { topic = "site/{site}/meter/{meter}" }
        kafka = { key = "{site}:{meter}", headers = { site = "{site}", origin = "meter {device}" } }
        payload = { tenant = { const = "utility" }, device = { segment = "meter", case = "upper" } }
        """
    )
    outcome = normalizer.process(
        "site/s1/meter/m7", b'{"schema_version":1,"metrics":{"kwh":5}}', NOW
    )
    (topic, key, headers, _), _raw = records(outcome)
    assert (topic, key) == ("telemetry.clean", "s1:m7")
    assert headers == [
        ("tenant", "utility"),
        ("device", "M7"),
        ("mqtt_topic", "site/s1/meter/m7"),
        ("schema_version", "1"),
        ("site", "s1"),
        ("origin", "meter M7"),
    ]


# --------------------------------------------------------------------------- every reason
LONG = "x" * 129
REASONS: list[tuple[str, str, bytes, str, str, str | None]] = [
    # (config, topic, payload, reason, detail, metric)
    (
        "default",
        TOPIC,
        b'{"metrics": ',
        "invalid_json",
        "payload is not valid JSON: Input data was truncated",
        None,
    ),
    ("default", TOPIC, b"[1, 2]", "not_an_object", "payload is a JSON list, not an object", None),
    ("default", TOPIC, b'"text"', "not_an_object", "payload is a JSON str, not an object", None),
    (
        "default",
        TOPIC,
        b'{"metrics": {"t": 1}}',
        "schema_version_unsupported",
        "schema_version is missing",
        None,
    ),
    (
        "default",
        TOPIC,
        b'{"schema_version": "1", "metrics": {"t": 1}}',
        "schema_version_unsupported",
        "schema_version '1' is not an integer",
        None,
    ),
    (
        "default",
        TOPIC,
        b'{"schema_version": true, "metrics": {"t": 1}}',
        "schema_version_unsupported",
        "schema_version True is not an integer",
        None,
    ),
    (
        "default",
        TOPIC,
        b'{"schema_version": 2, "metrics": {"t": 1}}',
        "schema_version_unsupported",
        "schema_version 2 is not supported (supported: 1)",
        None,
    ),
    (
        "default",
        TOPIC,
        b'{"schema_version": 1}',
        "missing_metrics",
        "metrics must be a non-empty object",
        None,
    ),
    (
        "default",
        TOPIC,
        b'{"schema_version": 1, "metrics": {}}',
        "missing_metrics",
        "metrics must be a non-empty object",
        None,
    ),
    (
        "default",
        TOPIC,
        b'{"schema_version": 1, "metrics": [1]}',
        "missing_metrics",
        "metrics must be a non-empty object",
        None,
    ),
    (
        "default",
        TOPIC,
        b'{"schema_version": 1, "metrics": {"t": null}}',
        "metric_type_invalid",
        "metrics.t: a null is not a number, bool or string",
        "t",
    ),
    (
        "default",
        TOPIC,
        b'{"schema_version": 1, "metrics": {"t": {"v": 1}}}',
        "metric_type_invalid",
        "metrics.t: a dict is not a number, bool or string",
        "t",
    ),
    (
        "default",
        TOPIC,
        b'{"schema_version": 1, "metrics": {"": 1}}',
        "invalid_metric_name",
        "metric name '' is empty or too long",
        "",
    ),
    (
        "default",
        TOPIC,
        b'{"schema_version": 1, "device": "DEV-002", "metrics": {"t": 1}}',
        "device_mismatch",
        "payload device 'DEV-002' does not match the topic's device 'DEV-001'",
        None,
    ),
    (
        "default",
        TOPIC,
        b'{"schema_version": 1, "metrics": {"t": 1}, "ts": "2026-02-25T14:00:00"}',
        "invalid_ts",
        "ts: '2026-02-25T14:00:00' has no UTC offset",
        None,
    ),
    (
        "default",
        TOPIC,
        b'{"schema_version": 1, "metrics": {"t": 1}, "ts": 1772028000}',
        "invalid_ts",
        "ts: 1772028000 is outside 2000-01-01..2100-01-01",
        None,
    ),
    (
        "default",
        TOPIC,
        b'{"schema_version": 1, "metrics": {"t": 1}, "ts": [1]}',
        "invalid_ts",
        "ts: expected epoch milliseconds as a number, got [1]",
        None,
    ),
    (
        "default",
        "tenant//device/x/telemetry",
        b'{"schema_version": 1, "metrics": {"t": 1}}',
        "invalid_topic",
        "topic segment {tenant} is empty",
        None,
    ),
    (
        "default",
        "tenant/t1/device//telemetry",
        b'{"schema_version": 1, "metrics": {"t": 1}}',
        "invalid_topic",
        "topic segment {device} is empty",
        None,
    ),
    (
        "default",
        "tenant/t1/device/a+b/telemetry",
        b"{}",
        "invalid_topic",
        "topic segment {device} contains '+'",
        None,
    ),
    (
        "default",
        f"tenant/{LONG}/device/x/telemetry",
        b"{}",
        "invalid_topic",
        "topic segment {tenant} is longer than 128 characters",
        None,
    ),
    (
        "strict",
        TOPIC,
        b'{"schema_version":1,"metrics":{"a":1,"b":2,"c":3,"d":4}}',
        "too_many_metrics",
        "metrics has 4 metrics, the limit is 3",
        None,
    ),
    (
        "strict",
        TOPIC,
        b'{"schema_version":1,"metrics":{"temperature":1},"pad":"' + b"x" * 200 + b'"}',
        "payload_too_large",
        "payload is 257 bytes, the limit is 256",
        None,
    ),
    (
        "strict",
        "tenant/t1/device/DEV-404/telemetry",
        b'{"schema_version":1,"metrics":{"t":1}}',
        "unknown_device",
        "device 'DEV-404' is not registered for tenant 't1'",
        None,
    ),
    (
        "strict",
        "tenant/t2/device/DEV-001/telemetry",
        b'{"schema_version":1,"metrics":{"t":1}}',
        "device_tenant_mismatch",
        "device 'DEV-001' is registered for tenant 't1', not for 't2'",
        None,
    ),
    (
        "default",
        TOPIC,
        b'{"schema_version":1,"metrics":{"t":1},"x":' + b"[" * 65 + b"]" * 65 + b"}",
        "too_deep",
        "payload nests at least 65 levels deep, the limit is limits.max_json_depth = 64",
        None,
    ),
    (
        "default",
        "tenant/t1/device/C27:x y/telemetry",
        b'{"schema_version":1,"metrics":{"t":1}}',
        "invalid_topic",
        "topic segment {device} does not match limits.identifier_pattern '[A-Za-z0-9._-]+'",
        None,
    ),
    (
        "default",
        TOPIC,
        b'{"schema_version":1,"metrics":{"t":1' + b"0" * 300 + b"}}",
        "value_out_of_range",
        "metrics.t: an integer of about 300 digits does not fit in a 64-bit integer",
        "t",
    ),
    (
        "strict",
        "tenant/t1/device/OLD-9/telemetry",
        b'{"schema_version":1,"metrics":{"t":1}}',
        "inactive_device",
        "device 'OLD-9' of tenant 't1' is inactive",
        None,
    ),
    (
        "strict",
        "tenant/t1/device/DEV-002/telemetry",
        b'{"schema_version":1,"metrics":{"pressure":1}}',
        "unknown_metric",
        "metric 'pressure' is not in the metric catalog",
        "pressure",
    ),
    (
        "strict",
        TOPIC,
        b'{"schema_version":1,"metrics":{"mode":"eco"}}',
        "unknown_metric",
        "metric 'mode' is not allowed for this device",
        "mode",
    ),
    (
        "strict",
        TOPIC,
        b'{"schema_version":1,"metrics":{"temperature":"hot"}}',
        "metric_type_mismatch",
        "metric 'temperature' is str, the catalog says numeric",
        "temperature",
    ),
    (
        "strict",
        TOPIC,
        b'{"schema_version":1,"metrics":{"door_open":1}}',
        "metric_type_mismatch",
        "metric 'door_open' is numeric, the catalog says bool",
        "door_open",
    ),
    (
        "strict",
        TOPIC,
        b'{"schema_version":1,"metrics":{"temperature":150.5}}',
        "value_out_of_range",
        "metric 'temperature' = 150.5 is above max 150.0",
        "temperature",
    ),
    (
        "strict",
        TOPIC,
        b'{"schema_version":1,"metrics":{"temperature":-51}}',
        "value_out_of_range",
        "metric 'temperature' = -51 is below min -50.0",
        "temperature",
    ),
    (
        "strict",
        TOPIC,
        b'{"schema_version":1,"metrics":{"humidity":"' + b"x" * 17 + b'"}}',
        "metric_type_invalid",
        "metrics.humidity: string longer than 16 characters",
        "humidity",
    ),
    (
        "strict",
        TOPIC,
        b'{"schema_version":1,"metrics":{"thirteen_char":1}}',
        "invalid_metric_name",
        "metric name 'thirteen_char' is empty or too long",
        "thirteen_char",
    ),
    (
        "fields",
        "f/t1/D",
        b'{"d": {"speed": "fast", "mode": "eco"}}',
        "coercion_failed",
        "d.speed: 'fast' is not a number, rule numeric",
        "speed",
    ),
    (
        "fields",
        "f/t1/D",
        b'{"d": {"speed": 1, "mode": "turbo"}}',
        "value_not_allowed",
        "d.mode: 'turbo' is not one of ['boost', 'eco']",
        "mode",
    ),
    ("fields", "f/t1/D", b'{"d": {"mode": "eco"}}', "missing_field", "d.speed is missing", "speed"),
    (
        "fields",
        "f/t1/D",
        b'{"d": {"speed": null, "mode": "eco"}}',
        "missing_field",
        "d.speed is missing",
        "speed",
    ),
    (
        "fields",
        "f/t1/D",
        b'{"d": {}}',
        "missing_metrics",
        "none of the declared fields is present (d.speed, d.mode, d.note)",
        None,
    ),
    (
        "fields",
        "f/t1/D",
        b'{"id": {"n": 1}, "d": {"speed": 1, "mode": "eco"}}',
        "invalid_field",
        "event_id {'n': 1} is not a string",
        None,
    ),
    (
        "single",
        "s/t1/p",
        b'{"name": "p", "value": 1}',
        "missing_field",
        "device is missing from the message",
        None,
    ),
    (
        "single",
        "s/t1/p",
        b'{"dev": ["D"], "name": "p", "value": 1}',
        "invalid_field",
        "device ['D'] is not a string",
        None,
    ),
    (
        "single",
        "s/t1/p",
        b'{"dev": "' + LONG.encode() + b'", "name": "p", "value": 1}',
        "invalid_field",
        f"device '{LONG[:60]}... is longer than 128 characters",
        None,
    ),
    ("single", "s/t1/p", b'{"dev": "D", "name": "p"}', "missing_metrics", "value is missing", None),
    (
        "single",
        "s/t1/p",
        b'{"dev": "D", "value": 1}',
        "invalid_metric_name",
        "metric name MISSING is missing, empty or too long",
        None,
    ),
    (
        "single",
        "s/t1/p",
        b'{"dev": "D", "name": "p", "value": "high"}',
        "coercion_failed",
        "value: 'high' is not a number, rule numeric",
        "p",
    ),
]


@pytest.mark.parametrize(
    ("config", "topic", "payload", "reason", "detail", "metric"),
    REASONS,
    ids=[f"{row[3]}-{n}" for n, row in enumerate(REASONS)],
)
def test_dead_letter_reason_and_detail(
    make: Callable[[str], Normalizer],
    config: str,
    topic: str,
    payload: bytes,
    reason: str,
    detail: str,
    metric: str | None,
) -> None:
    outcome = make(config).process(topic, payload, NOW)
    letters = [v for v in values(outcome, "telemetry.dlq")]
    assert [(v["reason"], v["detail"], v.get("metric")) for v in letters] == [
        (reason, detail, metric)
    ]
    assert outcome.dead == [reason]
    (letter,) = letters
    assert letter["mqtt_topic"] == topic
    assert letter["received_at"] == RECEIVED
    if reason == "payload_too_large":
        assert letter["payload"] == ""  # not copied: it is what was too large
    else:
        assert letter["payload"] == payload.decode()


def test_the_table_covers_every_reason_the_core_can_give() -> None:
    # Sparkplug's reasons have their table in test_sparkplug_mapping.py.
    paths = [p for p in (REPO / "bridge" / "core").glob("*.py") if "sparkplug" not in p.name]
    source = "\n".join(p.read_text() for p in paths)
    emitted = set(re.findall(r'InputRejected\(\s*"([a-z_]+)"', source))
    assert len(emitted) >= 20
    assert emitted == {row[3] for row in REASONS}


def test_a_payload_of_exactly_the_limit_is_accepted(make: Callable[[str], Normalizer]) -> None:
    head = b'{"schema_version":1,"metrics":{"temperature":1},"pad":"'
    payload = head + b"x" * (256 - len(head) - 2) + b'"}'
    assert len(payload) == 256
    outcome = make("strict").process(TOPIC, payload, NOW)
    assert (outcome.clean, outcome.dead) == (1, [])


def test_a_message_level_dead_letter_exactly(make: Callable[[str], Normalizer]) -> None:
    payload = b'{"schema_version": 1, "device": "DEV-9", "metrics": {"t": 1}}'
    outcome = make("default").process(TOPIC, payload, NOW)
    # No clean and no raw record: the message as a whole is refused.
    assert (
        records(outcome)
        == [
            (
                "telemetry.dlq",
                "t1:DEV-001",  # the key of the records the message would have made
                [("reason", "device_mismatch"), ("mqtt_topic", TOPIC)],
                b'{"reason":"device_mismatch","detail":"payload device \'DEV-9\' does not match '
                b'the topic\'s device \'DEV-001\'","mqtt_topic":"' + TOPIC.encode() + b'",'
                b'"mapping":"telemetry","payload":' + json.dumps(payload.decode()).encode() + b","
                b'"received_at":"' + RECEIVED.encode() + b'"}',
            )
        ]
    )


def test_before_the_identity_is_known_the_dead_letter_is_keyed_by_topic(
    make: Callable[[str], Normalizer],
) -> None:
    outcome = make("default").process(TOPIC, b"not json", NOW)
    ((topic, key, _, _),) = records(outcome)
    assert (topic, key) == ("telemetry.dlq", TOPIC)


def test_a_payload_that_is_not_utf8_is_carried_as_base64(
    make: Callable[[str], Normalizer],
) -> None:
    payload = b'\xff\xfe{"metrics": 1}'
    outcome = make("default").process(TOPIC, payload, NOW)
    (letter,) = values(outcome, "telemetry.dlq")
    assert letter == {
        "reason": "invalid_json",
        "detail": "payload is not valid JSON: JSON is malformed: invalid character (byte 0)",
        "mqtt_topic": TOPIC,
        "mapping": "telemetry",
        "payload": base64.b64encode(payload).decode(),
        "payload_encoding": "base64",
        "received_at": RECEIVED,
    }
    assert base64.b64decode(letter["payload"]) == payload


def test_a_utf8_payload_is_carried_as_text_without_an_encoding_field(
    make: Callable[[str], Normalizer],
) -> None:
    payload = '{"metrics": "température"'.encode()
    (letter,) = values(make("default").process(TOPIC, payload, NOW), "telemetry.dlq")
    assert letter["payload"] == '{"metrics": "température"'
    assert "payload_encoding" not in letter


# --------------------------------------------------------------------------- partly valid
def test_a_partly_valid_message_is_split_and_its_raw_sent_once(
    make: Callable[[str], Normalizer],
) -> None:
    payload = (
        b'{"schema_version": 1, "metrics": {"temperature": 23.5, "bad": null, '
        b'"mode": "eco", "worse": [1], "ok": true}, "ts": "2026-02-25T14:00:00Z"}'
    )
    outcome = make("default").process(TOPIC, payload, NOW)
    assert [(topic, json.loads(v).get("metric")) for topic, _, _, v in records(outcome)[:-1]] == [
        ("telemetry.clean", "temperature"),
        ("telemetry.dlq", "bad"),
        ("telemetry.clean", "mode"),
        ("telemetry.dlq", "worse"),
        ("telemetry.clean", "ok"),
    ]
    raw = [r for r in records(outcome) if r[0] == "telemetry.raw"]
    assert raw == [("telemetry.raw", "t1:DEV-001", [*HEADERS, ("received_at", RECEIVED)], payload)]
    assert outcome.clean == 3
    assert outcome.dead == ["metric_type_invalid", "metric_type_invalid"]
    # Every dead letter names its metric and carries the whole original payload.
    for letter in values(outcome, "telemetry.dlq"):
        assert letter["payload"] == payload.decode()
        assert letter["detail"].startswith(f"metrics.{letter['metric']}: ")


def test_every_metric_bad_still_sends_the_readable_message_to_raw(
    make: Callable[[str], Normalizer],
) -> None:
    payload = b'{"schema_version":1,"metrics":{"temperature":999,"pressure":1}}'
    outcome = make("strict").process("tenant/t1/device/DEV-002/telemetry", payload, NOW)
    assert reasons(outcome) == [
        ("value_out_of_range", "temperature"),
        ("unknown_metric", "pressure"),
    ]
    assert outcome.clean == 0
    assert [r[0] for r in records(outcome)] == ["telemetry.dlq", "telemetry.dlq", "telemetry.raw"]


def test_a_single_reading_with_a_bad_value_is_a_metric_dead_letter_plus_raw(
    make: Callable[[str], Normalizer],
) -> None:
    outcome = make("single").process("s/t1/p", b'{"dev":"D","name":"p","value":"x"}', NOW)
    assert [r[0] for r in records(outcome)] == ["telemetry.dlq", "telemetry.raw"]


# --------------------------------------------------------------------------- catalog
def test_catalog_units_and_registry_allowed_metrics(make: Callable[[str], Normalizer]) -> None:
    payload = b'{"schema_version":1,"metrics":{"temperature":20,"humidity":50,"door_open":true}}'
    outcome = make("strict").process(TOPIC, payload, NOW)
    assert [(v["metric"], v.get("unit")) for v in values(outcome, "telemetry.clean")] == [
        ("temperature", "°C"),
        ("humidity", "%"),
        ("door_open", None),
    ]
    # A device registered without a metric list may send any catalog metric.
    other = make("strict").process(
        "tenant/t1/device/DEV-002/telemetry", b'{"schema_version":1,"metrics":{"mode":"eco"}}', NOW
    )
    assert [v["metric"] for v in values(other, "telemetry.clean")] == ["mode"]


def test_declared_fields_carry_their_unit_and_the_event_id(
    make: Callable[[str], Normalizer],
) -> None:
    payload = b'{"id": 42, "d": {"speed": "12.5", "mode": "boost", "note": "ok"}}'
    outcome = make("fields").process("f/t1/D", payload, NOW)
    assert [
        (v["metric"], v["metric_type"], v["value"], v.get("unit"), v["event_id"])
        for v in values(outcome, "telemetry.clean")
    ] == [
        ("speed", "numeric", 12.5, "km/h", "42"),
        ("mode", "str", "boost", None, "42"),
        ("note", "str", "ok", None, "42"),
    ]


# --------------------------------------------------------------------------- dedup
def test_dedup_drops_a_repeat_within_the_window_per_device(
    make: Callable[[str], Normalizer],
) -> None:
    normalizer = make(FIELDS + "\n[mappings.dedup]\nwindow_s = 60\n")
    payload = b'{"id": "evt-1", "d": {"speed": 1, "mode": "eco"}}'
    first = normalizer.process("f/t1/D", payload, NOW)
    assert (first.clean, first.duplicate) == (2, False)
    again = normalizer.process("f/t1/D", payload, Now(NOW.epoch_ms + 59_999))
    assert (again.records, again.clean, again.dead, again.duplicate) == ([], 0, [], True)
    other_device = normalizer.process("f/t1/E", payload, Now(NOW.epoch_ms + 1))
    assert (other_device.clean, other_device.duplicate) == (2, False)
    later = normalizer.process("f/t1/D", payload, Now(NOW.epoch_ms + 60_000))
    assert (later.clean, later.duplicate) == (2, False)
    no_id = normalizer.process("f/t1/D", b'{"d": {"speed": 1, "mode": "eco"}}', NOW)
    assert (no_id.clean, no_id.duplicate) == (2, False)  # nothing to deduplicate on


# --------------------------------------------------------------------------- alarms
def test_alarms_go_to_the_alarms_topic_on_edges_only(make: Callable[[str], Normalizer]) -> None:
    normalizer = make(
        """
        alarms_topic = "site.alarms"
        [metrics.temperature]
        alarms = [{ kind = "above", threshold = 30 }]
        [metrics.humidity]
        """
    )
    seen = []
    for second, value in enumerate([25, 31, 35, 29]):
        ts = 1_772_028_000_000 + second * 1000
        payload = f'{{"schema_version":1,"metrics":{{"temperature":{value}}},"ts":{ts}}}'
        outcome = normalizer.process(TOPIC, payload.encode(), NOW)
        seen += [
            (key, headers, json.loads(v))
            for t, key, headers, v in records(outcome)
            if t == "site.alarms"
        ]
    assert seen == [
        (
            "t1:DEV-001",
            HEADERS,
            {
                "tenant": "t1",
                "device_serial_id": "DEV-001",
                "metric": "temperature",
                "value": 31,
                "threshold": 30.0,
                "kind": "above",
                "ts": "2026-02-25T14:00:01Z",
                "state": "raised",
            },
        ),
        (
            "t1:DEV-001",
            HEADERS,
            {
                "tenant": "t1",
                "device_serial_id": "DEV-001",
                "metric": "temperature",
                "value": 29,
                "threshold": 30.0,
                "kind": "above",
                "ts": "2026-02-25T14:00:03Z",
                "state": "cleared",
            },
        ),
    ]


RAW_ONLY = """
[limits]
max_payload_bytes = 64
[[mappings]]
name = "moved"
kafka = { clean_enabled = false, headers = { site = "{tenant}" } }
"""


def test_a_raw_only_mapping_moves_each_message_unread(make: Callable[[str], Normalizer]) -> None:
    normalizer = make(RAW_ONLY)
    base = [("tenant", "t1"), ("device", "DEV-001"), ("mqtt_topic", TOPIC), ("site", "t1")]
    for payload in (b"not JSON at all", ISSUE_PAYLOAD[:60], b'{"schema_version": 7}'):
        outcome = normalizer.process(TOPIC, payload, NOW, [("trace", "abc")])
        assert (outcome.mapping, outcome.clean, outcome.dead) == ("moved", 0, [])
        assert records(outcome) == [
            (
                "telemetry.raw",
                "t1:DEV-001",
                [*base, ("trace", "abc"), ("received_at", RECEIVED)],
                payload,
            )
        ]
    # What the topic and the size decide is still judged: no payload is read for it.
    assert reasons(normalizer.process(TOPIC, b"x" * 65, NOW)) == [("payload_too_large", None)]
    bad_device = "tenant/t1/device/DEV 1/telemetry"
    assert reasons(normalizer.process(bad_device, b"{}", NOW)) == [("invalid_topic", None)]


def test_a_raw_only_mapping_is_judged_by_a_stream_reading_it(tmp_config: WriteConfig) -> None:
    plan = plan_from(tmp_config(RAW_ONLY))
    reader = MappingReader(plan, plan.mappings[0])
    payload = b'{"schema_version": 1, "metrics": {"t": 1.5}}'
    item = reader(payload, [("mqtt_topic", TOPIC.encode())], NOW.epoch_ms)
    assert (item.tenant, item.device, item.metrics) == ("t1", "DEV-001", {"t": 1.5})
