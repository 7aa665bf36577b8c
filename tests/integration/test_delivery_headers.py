"""MQTT delivery metadata as Kafka headers, through the real daemon: a header
template with ``{mqtt_qos}`` and ``{mqtt_retain}`` shows how each message
came, including the retained state a device left at the broker before the
bridge subscribed."""

from __future__ import annotations

import json
import shutil
import subprocess

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, kafka_read, publish_many


def _mosquitto_pub(setup: BridgeSetup, *args: str) -> None:
    mosquitto_pub = shutil.which("mosquitto_pub")
    assert mosquitto_pub, "mosquitto_pub is missing: scripts/test.sh installs mosquitto-clients"
    address = ["-h", setup.mosquitto.host, "-p", str(setup.mosquitto.port)]
    subprocess.run([mosquitto_pub, *address, *args], check=True, timeout=10)


def test_qos_and_retain_reach_kafka_headers(setup: BridgeSetup) -> None:
    # A topic filter of its own, so that no other test's bridge gets the
    # retained message; it is cleared at the end all the same.
    retained_topic = f"state/{setup.unique}/DEV-R"
    mapping = f"""
[[mappings]]
name = "state"
[mappings.mqtt]
topic = "state/{setup.unique}/{{device}}"
qos = 1
[mappings.kafka]
clean_topic = "{setup.clean}"
raw_enabled = false
dead_letter_topic = "{setup.dlq}"
headers = {{ delivery = "qos {{mqtt_qos}} retain {{mqtt_retain}}" }}
[mappings.payload]
tenant = {{ const = "t1" }}
"""
    payload = json.dumps({"schema_version": 1, "metrics": {"level": 3}})
    _mosquitto_pub(setup, "-r", "-q", "1", "-t", retained_topic, "-m", payload)
    try:
        with BridgeProcess(setup.config(mappings=mapping)) as bridge:
            bridge.wait_for_event("bridge.ready", timeout=30)
            (retained,) = kafka_read(setup.tansu.bootstrap, setup.clean, expected=1)
            publish_many(
                setup.mosquitto.url, [(f"state/{setup.unique}/DEV-L", payload.encode(), 0)]
            )
            records = kafka_read(setup.tansu.bootstrap, setup.clean, expected=2)
            assert bridge.stop() == 0
    finally:
        _mosquitto_pub(setup, "-r", "-q", "1", "-t", retained_topic, "-n")
    assert retained.headers["device"] == b"DEV-R"
    assert retained.headers["delivery"] == b"qos 1 retain true"
    (live,) = [r for r in records if r.headers["device"] == b"DEV-L"]
    assert live.headers["delivery"] == b"qos 0 retain false"
