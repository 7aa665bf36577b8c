"""Every shipped example mapping end to end through the real daemon: the three
device shapes of mappings/ (metrics object, one reading per message, GPS
tracker envelope) and a second device family, with valid and malformed
payloads, MQTT in and Kafka out.  The mapping files are used as shipped; only
their Kafka topics are renamed to this test's own."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, kafka_read, publish_many
from tests.support.examples import GPS_DATA, GPS_FIX, READING

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
EXAMPLES = ["telemetry.toml", "single_reading.toml", "gps_tracker.toml", "site_meter.toml"]

GPS = GPS_FIX


def _mappings_with_topics(setup: BridgeSetup) -> str:
    """The example files, concatenated, each pointed at this test's topics."""
    topics = (
        f'clean_topic = "{setup.clean}"\n'
        f'raw_topic = "{setup.raw}"\n'
        f'dead_letter_topic = "{setup.dlq}"\n'
    )
    texts = []
    for name in EXAMPLES:
        text = (MAPPINGS / name).read_text()
        for line in ("clean_topic", "raw_topic", "dead_letter_topic"):
            text = "\n".join(t for t in text.splitlines() if not t.startswith(line)) + "\n"
        texts.append(text.replace("[mappings.kafka]\n", "[mappings.kafka]\n" + topics, 1))
    return "\n".join(texts)


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def test_every_example_shape_end_to_end(setup: BridgeSetup) -> None:
    bad_reading = {**READING, "event_id": "evt-002", "value": "hot"}
    repeat_reading = dict(READING)  # same event id: dropped by the mapping's dedup
    bad_gps = {**GPS, "uuid": "u-2", "data": {**GPS_DATA, "SPEED": "fast"}}
    bad_gps_time = {**GPS, "uuid": "u-3", "data": {**GPS_DATA, "GPS_DATETIME": "yesterday"}}
    messages = [
        (
            "tenant/t1/device/DEV-001/telemetry",
            _json({"schema_version": 1, "metrics": {"temperature": 23.5}}),
        ),
        ("telemetry/site-001/asset-001/TEMPERATURE", _json(READING)),
        ("telemetry/site-001/asset-001/TEMPERATURE", _json(repeat_reading)),
        ("telemetry/site-001/asset-001/TEMPERATURE", _json(bad_reading)),
        ("gps/fleet1/tracker", _json(GPS)),
        ("gps/fleet1/tracker", _json(bad_gps)),
        ("gps/fleet1/tracker", _json(bad_gps_time)),
        ("gps/fleet1/tracker", b"not json"),
        (
            "site/plant-7/meter/M-17/reading",
            _json({"schema_version": 1, "readings": {"energy_kwh": 12.5}}),
        ),
    ]
    config = setup.config(mappings=_mappings_with_topics(setup))
    with BridgeProcess(config) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        publish_many(setup.mosquitto.url, [(t, p, 1) for t, p in messages])
        # clean: 1 telemetry + 1 reading + 5 gps + 4 gps (speed refused) + 1 meter
        clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=12)
        dead = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=4)
        assert bridge.stop() == 0

    by_device = Counter(r.json()["device_serial_id"] for r in clean)
    assert by_device == {"DEV-001": 1, "asset-001": 1, "0848086072": 9, "M-17": 1}

    (reading,) = [r.json() for r in clean if r.json()["device_serial_id"] == "asset-001"]
    reading.pop("received_at")
    assert reading == {
        "tenant": "site-001",
        "device_serial_id": "asset-001",
        "metric": "temperature",
        "metric_type": "numeric",
        "value": 72.5,
        "unit": "celsius",
        "ts": "2021-12-01T12:00:00Z",
        "schema_version": 1,
        "event_id": "evt-001",
        "quality": "GOOD",
    }

    gps = [r.json() for r in clean if r.json()["device_serial_id"] == "0848086072"]
    first = {g["metric"]: g for g in gps if g["event_id"] == GPS["uuid"]}
    assert {m: (g["value"], g["metric_type"]) for m, g in first.items()} == {
        "latitude": (20.652472, "numeric"),
        "longitude": (-100.391423, "numeric"),
        "speed": (0.0, "numeric"),
        "satellites": (9, "numeric"),
        "engine_on": (False, "bool"),
    }
    assert {g["ts"] for g in first.values()} == {"2025-10-18T06:51:16Z"}
    assert all(r.key == b"fleet1:0848086072" for r in clean if r.json()["tenant"] == "fleet1")

    reasons = sorted((d.json()["reason"], d.json().get("metric")) for d in dead)
    assert reasons == [
        ("coercion_failed", "speed"),
        ("coercion_failed", "temperature"),
        ("invalid_json", None),
        ("invalid_ts", None),
    ]
    details = {d.json().get("metric"): d.json()["detail"] for d in dead}
    assert "data.SPEED" in details["speed"] and "numeric" in details["speed"]


def test_a_raw_only_mapping_moves_hostile_payloads_unread(setup: BridgeSetup) -> None:
    """`clean_enabled = false`: every payload, JSON or not, 1,000 levels deep
    or holding a 300-digit number, is one raw record, byte for byte; no clean
    record, no dead letter (the payload is never parsed)."""
    mappings = f"""
[[mappings]]
name = "archive"
mqtt = {{ topic = "tenant/{{tenant}}/device/{{device}}/telemetry" }}
kafka = {{ clean_enabled = false, raw_topic = "{setup.raw}", dead_letter_topic = "{setup.dlq}" }}
"""
    payloads = [
        b"[" * 1000 + b"]" * 1000,
        b'{"schema_version": 1, "metrics": {"t": ' + b"9" * 300 + b"}}",
        b"\x00\xff not json",
        _json({"schema_version": 1, "metrics": {"temperature": 23.5}}),
    ]
    with BridgeProcess(setup.config(mappings=mappings)) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        publish_many(
            setup.mosquitto.url, [("tenant/t1/device/D1/telemetry", p, 1) for p in payloads]
        )
        raw = kafka_read(setup.tansu.bootstrap, setup.raw, expected=len(payloads))
        assert bridge.stop() == 0
    assert [r.value for r in raw] == payloads
    assert {(r.headers["tenant"], r.headers["device"]) for r in raw} == {(b"t1", b"D1")}
    assert "schema_version" not in raw[0].headers
    for topic in (setup.clean, setup.dlq):
        assert kafka_read(setup.tansu.bootstrap, topic, expected=0, timeout=1) == []
    assert bridge.events("ingest.internal_error") == []
