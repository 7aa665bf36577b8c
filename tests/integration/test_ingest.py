"""MQTT in, Kafka out, through the real ``edge-bridge run`` process.

Each test starts its own mosquitto and daemon, shares the session's Tansu, and
reads the Kafka topics back from the beginning, checking exact counts (fewer is
loss, more is duplication), keys, headers and payloads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, kafka_read, publish_many, wait_until

EXAMPLE = {
    "schema_version": 1,
    "device": "DEV-001",
    "metrics": {"temperature": 23.5, "humidity": 60, "door_open": False, "mode": "eco"},
    "ts": "2026-02-25T14:00:00Z",
}


def _payload(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def _start(setup: BridgeSetup, config_extra: str = "") -> BridgeProcess:
    bridge = BridgeProcess(setup.config(config_extra))
    bridge.wait_for_event("bridge.ready", timeout=30)
    return bridge


def test_valid_message_becomes_one_clean_record_per_metric_and_one_raw(
    setup: BridgeSetup,
) -> None:
    payload = json.dumps(EXAMPLE).encode()
    topic = "tenant/t1/device/DEV-001/telemetry"
    with _start(setup) as bridge:
        publish_many(setup.mosquitto.url, [(topic, payload, 1)])
        clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=4)
        raw = kafka_read(setup.tansu.bootstrap, setup.raw, expected=1)
        assert bridge.stop() == 0

    assert len(clean) == 4
    by_metric = {r.json()["metric"]: r for r in clean}
    assert set(by_metric) == {"temperature", "humidity", "door_open", "mode"}
    temperature = by_metric["temperature"].json()
    received_at = temperature.pop("received_at")
    assert received_at.endswith("Z")
    assert temperature == {
        "tenant": "t1",
        "device_serial_id": "DEV-001",
        "metric": "temperature",
        "metric_type": "numeric",
        "value": 23.5,
        "ts": "2026-02-25T14:00:00Z",
        "schema_version": 1,
    }
    assert by_metric["door_open"].json()["metric_type"] == "bool"
    assert by_metric["door_open"].json()["value"] is False
    assert by_metric["mode"].json()["metric_type"] == "str"
    assert by_metric["humidity"].json()["value"] == 60
    for record in clean:
        assert record.key == b"t1:DEV-001"
        assert record.headers == {
            "tenant": b"t1",
            "device": b"DEV-001",
            "mqtt_topic": topic.encode(),
            "schema_version": b"1",
        }
    (raw_record,) = raw
    assert raw_record.value == payload
    assert raw_record.key == b"t1:DEV-001"
    assert raw_record.headers["received_at"] == received_at.encode()
    assert raw_record.headers["mqtt_topic"] == topic.encode()


def test_mosquitto_pub_message_arrives(setup: BridgeSetup) -> None:
    mosquitto_pub = shutil.which("mosquitto_pub")
    assert mosquitto_pub, "mosquitto_pub is missing: scripts/test.sh installs mosquitto-clients"
    payload = _payload(schema_version=1, metrics={"temperature": 21.0}, ts=1772028000000)
    with _start(setup) as bridge:
        subprocess.run(
            [
                mosquitto_pub,
                "-h", setup.mosquitto.host,
                "-p", str(setup.mosquitto.port),
                "-q", "1",
                "-t", "tenant/acme/device/M-7/telemetry",
                "-m", payload.decode(),
            ],
            check=True,
            timeout=10,
        )  # fmt: skip
        (record,) = kafka_read(setup.tansu.bootstrap, setup.clean, expected=1)
        assert bridge.stop() == 0
    assert record.key == b"acme:M-7"
    assert record.json()["ts"] == "2026-02-25T14:00:00Z"
    assert record.json()["value"] == 21.0


def test_thousand_valid_and_hundred_invalid_across_fifty_devices(setup: BridgeSetup) -> None:
    """Nothing missing, nothing duplicated, every bad one with its reason."""
    messages = []
    expected_reasons: Counter[str] = Counter()
    bad_kinds = [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (_payload(schema_version=9, metrics={"a": 1}), "schema_version_unsupported"),
        (_payload(schema_version=1, metrics={}), "missing_metrics"),
        (_payload(schema_version=1, device="OTHER", metrics={"a": 1}), "device_mismatch"),
    ]
    for seq in range(1100):
        device = f"DEV-{seq % 50:03d}"
        topic = f"tenant/t{seq % 3}/device/{device}/telemetry"
        if seq % 11 == 10:
            payload, reason = bad_kinds[(seq // 11) % len(bad_kinds)]
            expected_reasons[reason] += 1
        else:
            payload = _payload(
                schema_version=1, metrics={"seq": seq, "temperature": 20.5}, ts=1772028000000
            )
        messages.append((topic, payload, 1))
    assert sum(expected_reasons.values()) == 100
    with _start(setup) as bridge:
        publish_many(setup.mosquitto.url, messages)
        clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=2000, timeout=60)
        dlq = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=100)
        raw = kafka_read(setup.tansu.bootstrap, setup.raw, expected=1000)
        assert bridge.stop() == 0
    seqs = Counter(r.json()["value"] for r in clean if r.json()["metric"] == "seq")
    assert len(clean) == 2000
    assert len(seqs) == 1000 and set(seqs.values()) == {1}
    assert len(raw) == 1000
    assert len(dlq) == 100
    assert Counter(r.json()["reason"] for r in dlq) == expected_reasons
    for record in dlq:
        letter = record.json()
        assert letter["detail"] and letter["mqtt_topic"].startswith("tenant/")
        assert letter["received_at"].endswith("Z")


def test_flood_of_malformed_messages_does_not_stop_valid_traffic(setup: BridgeSetup) -> None:
    messages = []
    for seq in range(3000):
        topic = f"tenant/t1/device/D{seq % 10}/telemetry"
        if seq % 10:
            messages.append((topic, b"\xff\xfe garbage " + str(seq).encode(), 0))
        else:
            messages.append((topic, _payload(schema_version=1, metrics={"seq": seq}), 1))
    with _start(setup) as bridge:
        publish_many(setup.mosquitto.url, messages)
        clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=300, timeout=60)
        dlq = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=2700, timeout=60)
        assert bridge.stop() == 0
    assert sorted(r.json()["value"] for r in clean) == list(range(0, 3000, 10))
    assert len(dlq) == 2700
    letter = dlq[0].json()
    assert letter["reason"] == "invalid_json"
    assert letter["payload_encoding"] == "base64"


def test_partly_valid_message_is_split(setup: BridgeSetup) -> None:
    payload = _payload(schema_version=1, metrics={"ok": 1.5, "bad": None, "nested": {"x": 1}})
    with _start(setup) as bridge:
        publish_many(setup.mosquitto.url, [("tenant/t1/device/D1/telemetry", payload, 1)])
        clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=1)
        dlq = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=2)
        raw = kafka_read(setup.tansu.bootstrap, setup.raw, expected=1)
        assert bridge.stop() == 0
    assert [r.json()["metric"] for r in clean] == ["ok"]
    assert sorted((r.json()["metric"], r.json()["reason"]) for r in dlq) == [
        ("bad", "metric_type_invalid"),
        ("nested", "metric_type_invalid"),
    ]
    assert raw[0].value == payload


def test_qos1_is_acknowledged_only_after_kafka_holds_it(setup: BridgeSetup) -> None:
    """With Kafka frozen, the bridge cannot acknowledge; killed and restarted, it
    gets the messages again from its persistent session, and all reach Kafka."""
    messages = [
        ("tenant/t1/device/D1/telemetry", _payload(schema_version=1, metrics={"seq": n}), 1)
        for n in range(200)
    ]
    bridge = _start(setup)
    try:
        setup.tansu.pause()
        try:
            publish_many(setup.mosquitto.url, messages)
            bridge.kill()
        finally:
            setup.tansu.resume()
    finally:
        bridge.kill()
    with _start(setup) as again:
        clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=200, timeout=60)
        assert again.stop() == 0
    seqs = Counter(r.json()["value"] for r in clean)
    assert set(seqs) == set(range(200)), f"missing: {set(range(200)) - set(seqs)}"


def test_bad_config_exits_non_zero_naming_the_field(setup: BridgeSetup) -> None:
    config = setup.config(
        mappings="""
[[mappings]]
name = "meters"
[mappings.mqtt]
topic = "site/{site}/meter/{meter}/reading"
[mappings.kafka]
key = "{site}:{building}"
[mappings.payload]
tenant = { segment = "site" }
device = { segment = "meter" }
"""
    )
    bridge = BridgeProcess(config)
    code = wait_until(lambda: bridge.returncode is not None and bridge.returncode, 20, "exit")
    assert code == 2
    text = bridge.output_tail(50)
    assert "mappings[0].kafka.key: unknown placeholder {building}" in text


def test_mqtt5_user_properties_become_kafka_headers(setup: BridgeSetup) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("site", "north-3"), ("tenant", "spoofed"), ("firmware", "1.4.2")]
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    payload = _payload(schema_version=1, metrics={"t": 1.0})
    with _start(setup) as bridge:
        client.connect(setup.mosquitto.host, setup.mosquitto.port)
        client.loop_start()
        try:
            info = client.publish("tenant/t1/device/D1/telemetry", payload, qos=1, properties=props)
            info.wait_for_publish(10)
        finally:
            client.disconnect()
            client.loop_stop()
        (clean,) = kafka_read(setup.tansu.bootstrap, setup.clean, expected=1)
        (raw,) = kafka_read(setup.tansu.bootstrap, setup.raw, expected=1)
        assert bridge.stop() == 0
    for record in (clean, raw):
        assert record.headers["site"] == b"north-3"
        assert record.headers["firmware"] == b"1.4.2"
        assert record.headers["tenant"] == b"t1"  # the bridge's own header wins
