"""The shipped example mappings (mappings/*.toml, examples/all-shapes.toml) run
through the normalizer with the payloads of the issue and malformed variants:
every dead letter names the field and the rule that refused it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.core.normalize import Normalizer, Now
from tests.support.examples import GPS_FIX, READING
from tests.unit.core_fixtures import MAPPINGS, NOW, REPO, normalizer_for, records, values

RECEIVED = NOW.iso


def payload(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def changed(doc: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A deep copy of ``doc`` with ``path`` (``data.SPEED``) set, or removed when
    ``value`` is ``...``."""
    copy: dict[str, Any] = json.loads(json.dumps(doc))
    *parents, last = path.split(".")
    where = copy
    for key in parents:
        where = where[key]
    if value is ...:
        del where[last]
    else:
        where[last] = value
    return copy


def dead_letters(outcome: Any) -> list[tuple[str, str | None, str]]:
    return [(v["reason"], v.get("metric"), v["detail"]) for v in values(outcome, "telemetry.dlq")]


def topics(outcome: Any) -> list[str]:
    return [topic for topic, _, _, _ in records(outcome)]


# --------------------------------------------------------------------------- one reading
SINGLE_TOPIC = "telemetry/site-001/asset-001/TEMPERATURE"


@pytest.fixture
def single() -> Normalizer:
    return normalizer_for(MAPPINGS / "single_reading.toml")


def test_single_reading_exactly(single: Normalizer) -> None:
    body = payload(READING)
    outcome = single.process(SINGLE_TOPIC, body, NOW)
    headers = [
        ("tenant", "site-001"),
        ("device", "asset-001"),
        ("mqtt_topic", SINGLE_TOPIC),
        ("schema_version", "1"),
        ("sensor_type", "TEMPERATURE"),
    ]
    (clean, raw) = records(outcome)
    assert clean[:3] == ("telemetry.clean", "site-001:asset-001", headers)
    assert clean[3] == (
        b'{"tenant":"site-001","device_serial_id":"asset-001","metric":"temperature",'
        b'"metric_type":"numeric","value":72.5,"unit":"celsius","ts":"2021-12-01T12:00:00Z",'
        b'"received_at":"' + RECEIVED.encode() + b'","schema_version":1,"event_id":"evt-001",'
        b'"quality":"GOOD"}'
    )
    assert raw == (
        "telemetry.raw",
        "site-001:asset-001",
        [*headers, ("received_at", RECEIVED)],
        body,
    )


def test_single_reading_metric_name_is_lower_cased_and_numeric_strings_accepted(
    single: Normalizer,
) -> None:
    doc = changed(READING, "value", "41.0")
    outcome = single.process("telemetry/site-001/asset-001/Humidity", payload(doc), NOW)
    (record,) = values(outcome, "telemetry.clean")
    assert (record["metric"], record["value"]) == ("humidity", 41.0)


def test_single_reading_repeat_within_60_s_is_dropped(single: Normalizer) -> None:
    body = payload(READING)
    assert single.process(SINGLE_TOPIC, body, NOW).clean == 1
    repeat = single.process(SINGLE_TOPIC, body, Now(NOW.epoch_ms + 59_000))
    assert (repeat.duplicate, repeat.records) == (True, [])
    # A new event id, or the same id after the window, is published.
    fresh = payload(changed(READING, "event_id", "evt-002"))
    assert single.process(SINGLE_TOPIC, fresh, Now(NOW.epoch_ms + 59_500)).clean == 1
    assert single.process(SINGLE_TOPIC, body, Now(NOW.epoch_ms + 60_000)).clean == 1


@pytest.mark.parametrize(
    ("topic", "doc", "letter", "raw_too"),
    [
        (
            SINGLE_TOPIC,
            changed(READING, "value", "warm"),
            ("coercion_failed", "temperature", "value: 'warm' is not a number, rule numeric"),
            True,
        ),
        (
            SINGLE_TOPIC,
            changed(READING, "value", True),
            ("coercion_failed", "temperature", "value: True is a bool, rule numeric"),
            True,
        ),
        (
            SINGLE_TOPIC,
            changed(READING, "value", ...),
            ("missing_metrics", None, "value is missing"),
            False,
        ),
        (
            SINGLE_TOPIC,
            changed(READING, "timestamp", ...),
            ("invalid_ts", None, "the event time is missing and the mapping requires it"),
            False,
        ),
        (
            SINGLE_TOPIC,
            changed(READING, "timestamp", 1638360000),  # seconds, not milliseconds
            ("invalid_ts", None, "timestamp: 1638360000 is outside 2000-01-01..2100-01-01"),
            False,
        ),
        (
            SINGLE_TOPIC,
            changed(READING, "timestamp", "2021-12-01T12:00:00Z"),
            (
                "invalid_ts",
                None,
                "timestamp: expected epoch milliseconds as a number, got '2021-12-01T12:00:00Z'",
            ),
            False,
        ),
        (
            SINGLE_TOPIC,
            changed(READING, "asset_id", "asset-002"),
            (
                "device_mismatch",
                None,
                "payload device 'asset-002' does not match the topic's device 'asset-001'",
            ),
            False,
        ),
        (
            SINGLE_TOPIC,
            changed(READING, "unit", {"si": "K"}),
            ("invalid_field", None, "unit {'si': 'K'} is not a string"),
            False,
        ),
        (
            SINGLE_TOPIC,
            changed(READING, "event_id", ["evt-001"]),
            ("invalid_field", None, "event_id ['evt-001'] is not a string"),
            False,
        ),
        (
            "telemetry/site-001/asset-001/",
            READING,
            ("invalid_topic", None, "topic segment {sensor_type} is empty"),
            False,
        ),
    ],
)
def test_single_reading_malformed(
    single: Normalizer,
    topic: str,
    doc: dict[str, Any],
    letter: tuple[str, str | None, str],
    raw_too: bool,
) -> None:
    outcome = single.process(topic, payload(doc), NOW)
    assert dead_letters(outcome) == [letter]
    assert outcome.clean == 0
    # A value its rule refuses is a metric-level refusal: the message was readable,
    # so it still goes to the raw topic; anything else refuses the whole message.
    expected = ["telemetry.dlq", "telemetry.raw"] if raw_too else ["telemetry.dlq"]
    assert topics(outcome) == expected


# --------------------------------------------------------------------------- GPS tracker
GPS_TOPIC = "gps/fleet1/tracker"
FIX = GPS_FIX


@pytest.fixture
def gps() -> Normalizer:
    return normalizer_for(MAPPINGS / "gps_tracker.toml")


def test_gps_fix_exactly(gps: Normalizer) -> None:
    body = payload(FIX)
    outcome = gps.process(GPS_TOPIC, body, NOW)
    assert (outcome.clean, outcome.dead) == (5, [])
    common = {
        "tenant": "fleet1",
        "device_serial_id": "0848086072",
        "ts": "2025-10-18T06:51:16Z",  # 00:51:16 in Mexico City (UTC-6)
        "received_at": RECEIVED,
        "schema_version": 1,
        "event_id": "6f1c2a0e-8d1b-4c3e-9f57-2b9e4f0a1c77",
    }
    expected = [
        ("latitude", "numeric", 20.652472, "deg"),
        ("longitude", "numeric", -100.391423, "deg"),
        ("speed", "numeric", 0.0, "km/h"),
        ("satellites", "numeric", 9, None),
        ("engine_on", "bool", False, None),
    ]
    clean = values(outcome, "telemetry.clean")
    assert clean == [
        {
            "tenant": "fleet1",
            "device_serial_id": "0848086072",
            "metric": metric,
            "metric_type": metric_type,
            "value": value,
            **({"unit": unit} if unit else {}),
            **{k: v for k, v in common.items() if k not in ("tenant", "device_serial_id")},
        }
        for metric, metric_type, value, unit in expected
    ]
    assert type(clean[3]["value"]) is int  # "9" satellites, not 9.0
    headers = [
        ("tenant", "fleet1"),
        ("device", "0848086072"),
        ("mqtt_topic", GPS_TOPIC),
        ("schema_version", "1"),
    ]
    assert {(topic, key, tuple(h)) for topic, key, h, _ in records(outcome)[:5]} == {
        ("telemetry.clean", "fleet1:0848086072", tuple(headers))
    }
    assert records(outcome)[5] == (
        "telemetry.raw",
        "fleet1:0848086072",
        [*headers, ("received_at", RECEIVED)],
        body,
    )


def test_gps_engine_on(gps: Normalizer) -> None:
    outcome = gps.process(GPS_TOPIC, payload(changed(FIX, "data.ENGINE_STATUS", "ON")), NOW)
    assert values(outcome, "telemetry.clean")[4]["value"] is True


@pytest.mark.parametrize(
    ("path", "value", "letter"),
    [
        (
            "data.SPEED",
            "fast",
            ("coercion_failed", "speed", "data.SPEED: 'fast' is not a number, rule numeric"),
        ),
        (
            "data.LATITUD",
            "N20.65",
            ("coercion_failed", "latitude", "data.LATITUD: 'N20.65' is not a number, rule numeric"),
        ),
        (
            "data.SATELLITES",
            "nan",
            (
                "coercion_failed",
                "satellites",
                "data.SATELLITES: 'nan' is not a number, rule numeric",
            ),
        ),
        (
            "data.ENGINE_STATUS",
            "IDLE",
            (
                "coercion_failed",
                "engine_on",
                "data.ENGINE_STATUS: 'IDLE' is not one of ON/OFF, rule bool",
            ),
        ),
        ("data.LONGITUD", ..., ("missing_field", "longitude", "data.LONGITUD is missing")),
    ],
)
def test_gps_one_bad_field_is_one_dead_letter_and_the_rest_goes_through(
    gps: Normalizer, path: str, value: object, letter: tuple[str, str, str]
) -> None:
    outcome = gps.process(GPS_TOPIC, payload(changed(FIX, path, value)), NOW)
    assert dead_letters(outcome) == [letter]
    assert outcome.clean == 4
    assert letter[1] not in [v["metric"] for v in values(outcome, "telemetry.clean")]
    assert topics(outcome).count("telemetry.raw") == 1


@pytest.mark.parametrize(
    ("path", "value", "letter"),
    [
        (
            "data.GPS_DATETIME",
            "18/10/2025 00:51:16",
            (
                "invalid_ts",
                None,
                "data.GPS_DATETIME: '18/10/2025 00:51:16' does not match format "
                "'%Y-%m-%d %H:%M:%S'",
            ),
        ),
        (
            "data.GPS_DATETIME",
            "2025-10-18T00:51:16-06:00",
            (
                "invalid_ts",
                None,
                "data.GPS_DATETIME: '2025-10-18T00:51:16-06:00' does not match format "
                "'%Y-%m-%d %H:%M:%S'",
            ),
        ),
        (
            "data.GPS_DATETIME",
            ...,
            ("invalid_ts", None, "the event time is missing and the mapping requires it"),
        ),
        ("data.DEVICE_ID", ..., ("missing_field", None, "device is missing from the message")),
        ("data.DEVICE_ID", "", ("invalid_field", None, "device '' is empty")),
        ("data", ..., ("missing_field", None, "device is missing from the message")),
        ("uuid", {"v": 4}, ("invalid_field", None, "event_id {'v': 4} is not a string")),
    ],
)
def test_gps_envelope_problems_refuse_the_whole_message(
    gps: Normalizer, path: str, value: object, letter: tuple[str, None, str]
) -> None:
    outcome = gps.process(GPS_TOPIC, payload(changed(FIX, path, value)), NOW)
    assert dead_letters(outcome) == [letter]
    assert topics(outcome) == ["telemetry.dlq"]


def test_gps_without_any_declared_field_is_missing_metrics(gps: Normalizer) -> None:
    doc = {"data": {"DEVICE_ID": "0848086072", "GPS_DATETIME": "2025-10-18 00:51:16"}}
    outcome = gps.process(GPS_TOPIC, payload(doc), NOW)
    assert dead_letters(outcome) == [
        (
            "missing_metrics",
            None,
            "none of the declared fields is present (data.LATITUD, data.LONGITUD, data.SPEED, "
            "data.SATELLITES, data.ENGINE_STATUS)",
        )
    ]


def test_gps_not_json(gps: Normalizer) -> None:
    outcome = gps.process(GPS_TOPIC, b"$GPRMC,005116,A,2039.148,N", NOW)
    assert [(r, m) for r, m, _ in dead_letters(outcome)] == [("invalid_json", None)]


# --------------------------------------------------------------------------- site meter
METER_TOPIC = "site/plant-7/meter/M-17/reading"
METER = {
    "schema_version": 1,
    "meter": "M-17",
    "readings": {"energy_kwh": 10234.5, "power_kw": 3.2, "breaker_closed": True},
    "ts": "2026-02-25T15:00:00+01:00",
}


@pytest.fixture
def meter() -> Normalizer:
    return normalizer_for(MAPPINGS / "site_meter.toml")


def test_site_meter_exactly(meter: Normalizer) -> None:
    outcome = meter.process(METER_TOPIC, payload(METER), NOW)
    headers = [
        ("tenant", "utility"),
        ("device", "M-17"),
        ("mqtt_topic", METER_TOPIC),
        ("schema_version", "1"),
        ("site", "plant-7"),
    ]
    assert [(t, k, h) for t, k, h, _ in records(outcome)] == [
        ("telemetry.clean", "plant-7:M-17", headers),
        ("telemetry.clean", "plant-7:M-17", headers),
        ("telemetry.clean", "plant-7:M-17", headers),
        ("telemetry.raw", "plant-7:M-17", [*headers, ("received_at", RECEIVED)]),
    ]
    assert values(outcome, "telemetry.clean")[0] == {
        "tenant": "utility",
        "device_serial_id": "M-17",
        "metric": "energy_kwh",
        "metric_type": "numeric",
        "value": 10234.5,
        "ts": "2026-02-25T14:00:00Z",
        "received_at": RECEIVED,
        "schema_version": 1,
    }
    assert [(v["metric"], v["value"]) for v in values(outcome, "telemetry.clean")[1:]] == [
        ("power_kw", 3.2),
        ("breaker_closed", True),
    ]


@pytest.mark.parametrize(
    ("path", "value", "letter", "clean"),
    [
        (
            "meter",
            "M-18",
            (
                "device_mismatch",
                None,
                "payload device 'M-18' does not match the topic's device 'M-17'",
            ),
            0,
        ),
        ("readings", ..., ("missing_metrics", None, "readings must be a non-empty object"), 0),
        ("readings", {}, ("missing_metrics", None, "readings must be a non-empty object"), 0),
        (
            "schema_version",
            ...,
            ("schema_version_unsupported", None, "schema_version is missing"),
            0,
        ),
        (
            "readings.power_kw",
            None,
            (
                "metric_type_invalid",
                "power_kw",
                "readings.power_kw: a null is not a number, bool or string",
            ),
            2,
        ),
    ],
)
def test_site_meter_malformed(
    meter: Normalizer, path: str, value: object, letter: tuple[str, str | None, str], clean: int
) -> None:
    outcome = meter.process(METER_TOPIC, payload(changed(METER, path, value)), NOW)
    assert dead_letters(outcome) == [letter]
    assert outcome.clean == clean


# --------------------------------------------------------------------------- all side by side
def test_all_shapes_route_each_topic_to_its_mapping() -> None:
    normalizer = normalizer_for(REPO / "examples" / "all-shapes.toml")
    telemetry = {
        "schema_version": 1,
        "device": "DEV-001",
        "metrics": {"temperature": 23.5},
        "ts": "2026-02-25T14:00:00Z",
    }
    messages: list[tuple[str, dict[str, Any], str, int]] = [
        ("tenant/t1/device/DEV-001/telemetry", telemetry, "telemetry", 1),
        (SINGLE_TOPIC, READING, "single_reading", 1),
        (GPS_TOPIC, FIX, "gps_tracker", 5),
        (METER_TOPIC, METER, "site_meter", 3),
    ]
    for topic, doc, mapping, clean in messages:
        outcome = normalizer.process(topic, payload(doc), NOW)
        assert (outcome.mapping, outcome.clean, outcome.dead) == (mapping, clean, []), topic
    assert normalizer.process("gps/fleet1/other", payload(FIX), NOW).mapping is None
