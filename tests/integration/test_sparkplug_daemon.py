"""Sparkplug B edge nodes through the real daemon, mosquitto and Tansu, with
traffic from the tests' own encoder (tests/support/sparkplug_encoder.py):
births and aliased data become exact clean records, the alias tables survive a
restart, an unknown alias and a seq gap bring a rebirth NCMD to the broker, a
malformed payload is a dead letter, and NDEATH an offline event."""

from __future__ import annotations

import base64
import json
import urllib.request

from websockets.sync.client import connect

from tests.integration.conftest import BridgeSetup
from tests.integration.test_stream_examples import ensure_topic, receive
from tests.support import (
    BridgeProcess,
    KafkaRecord,
    MqttSubscriber,
    kafka_read,
    publish_many,
    wait_until,
)
from tests.support import sparkplug_encoder as enc

TS = 1_772_028_000_000
GROUP = "plant1"
NODE = "gw1"
DEVICE = "pump7"
METRICS = [("rpm", 10, enc.UINT16), ("temp", 11, enc.FLOAT), ("state", 12, enc.STRING)]


def mapping(setup: BridgeSetup, rebirth: bool = True) -> str:
    return f"""
[[mappings]]
name = "sparkplug"
mqtt = {{ topic = "spBv1.0/#", qos = 1 }}
[mappings.kafka]
clean_topic = "{setup.clean}"
raw_topic = "{setup.raw}"
dead_letter_topic = "{setup.dlq}"
[mappings.payload]
format = "sparkplug_b"
[mappings.sparkplug]
events_topic = "events.{setup.unique}"
rebirth = {"true" if rebirth else "false"}
rebirth_interval_s = 0.001
"""


def start(setup: BridgeSetup) -> BridgeProcess:
    bridge = BridgeProcess(setup.config(mappings=mapping(setup)))
    bridge.wait_for_event("bridge.ready", timeout=30)
    return bridge


def topic(kind: str, device: str | None = None) -> str:
    return f"spBv1.0/{GROUP}/{kind}/{NODE}" + (f"/{device}" if device else "")


def value_of(name: str, n: int) -> object:
    return {"rpm": 1000 + n, "temp": 20.0 + n / 4, "state": f"s{n}"}[name]


def births() -> list[tuple[str, bytes, int]]:
    nbirth = enc.node_birth(
        [enc.metric("uptime", alias=1, datatype=enc.INT64, value=5)], seq=0, bd_seq=4, timestamp=TS
    )
    dbirth = enc.payload(
        [
            enc.metric(name, alias=a, datatype=dt, value=value_of(name, 0))
            for name, a, dt in METRICS
        ],
        seq=1,
        timestamp=TS,
    )
    return [(topic("NBIRTH"), nbirth, 1), (topic("DBIRTH", DEVICE), dbirth, 1)]


def ddata(count: int, first_seq: int) -> list[tuple[str, bytes, int]]:
    """DDATA naming every metric by alias only, seq continuing from the births."""
    out = []
    for n in range(1, count + 1):
        metrics = [
            enc.metric(alias=a, datatype=dt, value=value_of(name, n)) for name, a, dt in METRICS
        ]
        data = enc.payload(metrics, seq=(first_seq + n - 1) % 256, timestamp=TS + n)
        out.append((topic("DDATA", DEVICE), data, 1))
    return out


def expected_data(count: int) -> set[tuple[str, str, object, str]]:
    return {
        (f"{NODE}/{DEVICE}", name, value_of(name, n), f"2026-02-25T14:00:00.{n:03d}Z")
        for n in range(1, count + 1)
        for name, _, _ in METRICS
    }


def seen(records: list[KafkaRecord]) -> set[tuple[str, str, object, str]]:
    values = [r.json() for r in records]
    return {(v["device_serial_id"], v["metric"], v["value"], v["ts"]) for v in values}


def seen_events(records: list[KafkaRecord]) -> set[tuple[str, str]]:
    return {(r.json()["device_serial_id"], r.json()["event"]) for r in records}


def test_births_and_a_hundred_aliased_ddata_become_exact_records_and_ndeath_an_event(
    setup: BridgeSetup,
) -> None:
    events_topic = f"events.{setup.unique}"
    with start(setup) as bridge:
        publish_many(setup.mosquitto.url, [*births(), *ddata(100, first_seq=2)])
        clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=1 + 3 + 300)
        publish_many(setup.mosquitto.url, [(topic("NDEATH"), enc.node_death(4, TS + 500), 1)])
        events = kafka_read(setup.tansu.bootstrap, events_topic, expected=4)
        raw = kafka_read(setup.tansu.bootstrap, setup.raw, expected=103)
        dlq = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=0, timeout=1)
        assert bridge.stop() == 0
    assert len(clean) == 304
    assert seen(clean) == expected_data(100) | {
        (NODE, "uptime", 5, "2026-02-25T14:00:00Z"),
        *{
            (f"{NODE}/{DEVICE}", name, value_of(name, 0), "2026-02-25T14:00:00Z")
            for name, _, _ in METRICS
        },
    }
    sample = next(r for r in clean if r.json()["metric"] == "temp" and r.json()["value"] == 20.25)
    assert sample.key == f"{GROUP}:{NODE}/{DEVICE}".encode()
    assert sample.json()["tenant"] == GROUP
    assert sample.json()["metric_type"] == "numeric"
    assert seen_events(events) == {
        (NODE, "online"),
        (f"{NODE}/{DEVICE}", "online"),
        (NODE, "offline"),
        (f"{NODE}/{DEVICE}", "offline"),
    }
    offline = [e.json() for e in events if e.json()["event"] == "offline"]
    assert {e["ts"] for e in offline} == {"2026-02-25T14:00:00.500Z"}
    assert sorted(r.value for r in raw) == sorted(
        [p for _, p, _ in births()]
        + [p for _, p, _ in ddata(100, 2)]
        + [enc.node_death(4, TS + 500)]
    )
    assert dlq == []


def test_alias_tables_survive_a_restart_between_birth_and_data(setup: BridgeSetup) -> None:
    with start(setup) as bridge:
        publish_many(setup.mosquitto.url, births())
        kafka_read(setup.tansu.bootstrap, setup.clean, expected=4)
        assert bridge.stop() == 0
    state = json.loads((setup.workdir / "sparkplug-state.json").read_bytes())
    assert [d["device"] for d in state["devices"]] == [DEVICE]
    with start(setup) as bridge:
        bridge.wait_for_event("sparkplug.state_loaded", timeout=1)
        publish_many(setup.mosquitto.url, ddata(10, first_seq=2))
        clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=4 + 30)
        dlq = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=0, timeout=1)
        metrics = scrape(setup)
        assert bridge.stop() == 0
    assert expected_data(10) <= seen(clean)
    assert len(clean) == 34
    assert dlq == []
    assert 'edge_bridge_sparkplug_events_total{kind="seq_gaps"} 0.0' in metrics
    assert 'edge_bridge_sparkplug_events_total{kind="rebirths_requested"} 0.0' in metrics


def scraped(setup: BridgeSetup, needle: str) -> str | None:
    """/metrics when it contains ``needle``, else None."""
    text = scrape(setup)
    return text if needle in text else None


def scrape(setup: BridgeSetup) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{setup.listen_port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_unknown_alias_and_seq_gap_ask_for_rebirth_malformed_is_a_dead_letter(
    setup: BridgeSetup,
) -> None:
    ncmd = f"spBv1.0/{GROUP}/NCMD/{NODE}"
    with (
        start(setup) as bridge,
        MqttSubscriber(setup.mosquitto.url, f"watch-{setup.unique}") as watch,
    ):
        watch.subscribe(ncmd)
        publish_many(setup.mosquitto.url, births()[:1])  # NBIRTH only: the device was never born
        unknown = enc.payload([enc.metric(alias=10, datatype=enc.UINT16, value=1)], seq=1)
        publish_many(setup.mosquitto.url, [(topic("DDATA", DEVICE), unknown, 1)])
        first = watch.wait_for(1)
        # A gap: seq 1 came last, 9 is next.
        gap = enc.payload([enc.metric(alias=1, datatype=enc.INT64, value=77)], seq=9)
        publish_many(
            setup.mosquitto.url, [(topic("NDATA"), gap, 1), (topic("NDATA"), b"\x12\x05ab", 1)]
        )
        second = watch.wait_for(2)
        dlq = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=2)
        clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=2)
        metrics = wait_until(lambda: scraped(setup, 'kind="seq_gaps"} 1.0'), 10, "gap counted")
        bridge.wait_for_event("sparkplug.seq_gap", timeout=5, expected=2, received=9)
        assert bridge.stop() == 0
    for message in second:
        assert message.topic == ncmd
        (metric,) = enc.read_metrics(message.payload)
        assert (metric[1], metric[4], metric[14]) == (b"Node Control/Rebirth", enc.BOOLEAN, 1)
    assert len(first) == 1
    assert len(second) == 2
    letters = {d.json()["reason"]: d.json() for d in dlq}
    assert set(letters) == {"unknown_alias", "invalid_protobuf"}
    assert letters["unknown_alias"]["metric"] == "alias 10"
    assert base64.b64decode(letters["unknown_alias"]["payload"]) == unknown
    assert letters["invalid_protobuf"]["payload_encoding"] == "base64"
    # The gap message itself was still used.
    assert {(r.json()["metric"], r.json()["value"]) for r in clean} == {
        ("uptime", 5),
        ("uptime", 77),
    }
    assert 'edge_bridge_sparkplug_events_total{kind="rebirths_requested"} 2.0' in metrics
    assert 'edge_bridge_dead_letters_total{reason="invalid_protobuf"} 1.0' in metrics


def test_names_and_strings_that_are_not_utf8_are_dead_letters_of_their_metric(
    setup: BridgeSetup,
) -> None:
    """proto2 hands a string field with invalid UTF-8 back as bytes: the metric
    is refused, its neighbours become records and nothing fails as a bug."""
    nbirth = enc.node_birth(
        [
            enc.metric(b"up\xfftime", alias=1, datatype=enc.INT64, value=5),
            enc.metric("flow", alias=2, datatype=enc.DOUBLE, value=1.5),
        ],
        seq=0,
        bd_seq=4,
        timestamp=TS,
    )
    ndata = enc.payload(
        [
            enc.metric("mode", datatype=enc.STRING, value=b"ec\xc3o"),
            enc.metric(alias=2, datatype=enc.DOUBLE, value=2.5),
        ],
        seq=1,
        timestamp=TS + 1,
    )
    with start(setup) as bridge:
        publish_many(
            setup.mosquitto.url, [(topic("NBIRTH"), nbirth, 1), (topic("NDATA"), ndata, 1)]
        )
        dlq = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=2)
        clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=2)
        metrics = scrape(setup)
        assert bridge.stop() == 0
    assert sorted((d.json()["reason"], d.json().get("metric")) for d in dlq) == [
        ("invalid_metric_name", None),
        ("metric_type_invalid", "mode"),
    ]
    assert sorted((r.json()["metric"], r.json()["value"]) for r in clean) == [
        ("flow", 1.5),
        ("flow", 2.5),
    ]
    assert "edge_bridge_internal_errors_total 0.0" in metrics
    assert not bridge.events("ingest.internal_error")


def nested_templates(depth: int) -> bytes:
    """An NDATA whose one metric is a Template holding a Template ... ``depth``
    levels down (Metric.template_value = 18, Template.metrics = 2)."""
    metric = enc.metric("leaf", datatype=enc.INT32, value=1)
    for _ in range(depth):
        metric = enc.metric("t", datatype=enc.TEMPLATE) + enc._len(18, enc._len(2, metric))
    return enc.payload([metric], seq=1)


def test_garbage_deep_nesting_and_an_overlong_number_are_dead_letters(setup: BridgeSetup) -> None:
    """Random bytes, templates nested 1,000 deep and a 300-bit varint (protobuf's
    300-digit number) are each an ``invalid_protobuf`` dead letter; the node's
    next message is still read."""
    nbirth = enc.node_birth(
        [enc.metric("flow", alias=2, datatype=enc.DOUBLE, value=1.5)], seq=0, bd_seq=4
    )
    overlong = enc.payload(
        [enc.metric("n", datatype=enc.UINT64) + b"\x58" + b"\xff" * 43 + b"\x01"], seq=1
    )
    garbage = bytes(range(256)) * 4
    after = enc.payload([enc.metric(alias=2, datatype=enc.DOUBLE, value=2.5)], seq=2)
    hostile = [garbage, nested_templates(1000), overlong]
    with start(setup) as bridge:
        publish_many(
            setup.mosquitto.url,
            [(topic("NBIRTH"), nbirth, 1)]
            + [(topic("NDATA"), payload, 1) for payload in hostile]
            + [(topic("NDATA"), after, 1)],
        )
        dlq = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=3)
        clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=2)
        metrics = scrape(setup)
        assert bridge.stop() == 0
    assert [d.json()["reason"] for d in dlq] == ["invalid_protobuf"] * 3
    assert sorted(base64.b64decode(d.json()["payload"]) for d in dlq) == sorted(hostile)
    assert sorted(r.json()["value"] for r in clean) == [1.5, 2.5]
    assert "edge_bridge_internal_errors_total 0.0" in metrics


def status_endpoint(setup: BridgeSetup) -> str:
    """A ``[[streams]]`` endpoint showing the events topic as its own event type."""
    return f"""
[[streams]]
name = "device-status"
auth = "none"
websocket_path = "/status"
filters = {{ metric = [] }}
[streams.source]
topics = ["events.{setup.unique}"]
read = "json"
start = "earliest"
tenant = {{ field = "tenant" }}
device = {{ field = "device_serial_id" }}
ts = {{ field = "ts" }}
fields.event = {{ field = "event", type = "str" }}
[streams.envelope]
kind = "message"
[streams.envelope.template]
type = "device.status"
tenant_id = "{{tenant}}"
device_id = "{{device}}"
status = "{{metrics}}"
timestamp = "{{ts}}"
"""


def test_births_and_deaths_are_shown_live_as_device_status_events(setup: BridgeSetup) -> None:
    events_topic = f"events.{setup.unique}"
    ensure_topic(setup.tansu.bootstrap, events_topic)
    config = setup.config(status_endpoint(setup), mappings=mapping(setup))
    with BridgeProcess(config) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        url = f"ws://127.0.0.1:{setup.listen_port}/status"
        with connect(url) as ws:
            receive(ws)  # the welcome
            publish_many(setup.mosquitto.url, births()[:1])
            publish_many(setup.mosquitto.url, [(topic("NDEATH"), enc.node_death(4, TS + 9), 1)])
            shown = [receive(ws, 30), receive(ws, 30)]
        assert bridge.stop() == 0
    assert shown == [
        {
            "type": "device.status",
            "tenant_id": GROUP,
            "device_id": NODE,
            "status": {"event": event},
            "timestamp": ts,
        }
        for event, ts in (
            ("online", "2026-02-25T14:00:00Z"),
            ("offline", "2026-02-25T14:00:00.009Z"),
        )
    ]
