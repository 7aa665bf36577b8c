"""One bad message must never stop the bridge (issue 10, items 1 and 2), through
the real daemon: the messages that used to kill every bridge instance, and kill
it again after each restart because they were never acknowledged, are
published before valid ones.  The valid ones reach Kafka, the poison ones are
dead letters with their reasons, every message is acknowledged, and the daemon
is the same process throughout.
"""

from __future__ import annotations

import json

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, kafka_read, publish_many, wait_until
from tests.support.sequenced import ACKED, daemon_metric

VALID = 5


def test_poison_messages_are_dead_letters_and_the_daemon_goes_on(setup: BridgeSetup) -> None:
    mappings = setup.telemetry_mapping + f"""
[[mappings]]
name = "epoch_seconds"
mqtt = {{ topic = "epoch/{{tenant}}/{{device}}" }}
payload = {{ ts = {{ field = "ts", format = "epoch_s" }} }}
[mappings.kafka]
clean_topic = "{setup.clean}"
raw_topic = "{setup.raw}"
dead_letter_topic = "{setup.dlq}"
"""
    deep = ('{"schema_version":1,"metrics":{"t":1},"x":' + "[" * 3000 + "]" * 3000 + "}").encode()
    huge_ts = ('{"schema_version":1,"metrics":{"t":1},"ts":1' + "0" * 309 + "}").encode()
    poison = [
        ("tenant/t6/device/DEEP/telemetry", deep, 1),
        ("tenant/t6/device/HUGE/telemetry", huge_ts, 1),
        ("epoch/t6/E1", b'{"schema_version":1,"metrics":{"t":1},"ts":1e306}', 1),
        ("tenant/t6/device/C27:x y/telemetry", b'{"schema_version":1,"metrics":{"t":1}}', 1),
    ]
    valid = [
        (
            f"tenant/t6/device/D{n}/telemetry",
            json.dumps({"schema_version": 1, "metrics": {"seq": n}}).encode(),
            1,
        )
        for n in range(VALID)
    ]
    with BridgeProcess(setup.config(mappings=mappings)) as bridge:
        bridge.wait_for_event("bridge.ready", timeout=30)
        pid = bridge.pid
        publish_many(setup.mosquitto.url, poison + valid)
        clean = kafka_read(setup.tansu.bootstrap, setup.clean, expected=VALID)
        dead = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=len(poison))
        wait_until(
            lambda: daemon_metric(setup.listen_port, ACKED) >= len(poison) + VALID,
            30,
            "every message, poison included, to be acknowledged",
        )
        assert bridge.returncode is None
        assert bridge.pid == pid
        assert len(bridge.events("bridge.starting")) == 1
        assert not bridge.events("ingest.internal_error")
        assert bridge.stop() == 0
    assert sorted(r.json()["value"] for r in clean) == list(range(VALID))
    letters = {r.json()["mqtt_topic"]: r.json() for r in dead}
    assert {topic: letter["reason"] for topic, letter in letters.items()} == {
        "tenant/t6/device/DEEP/telemetry": "too_deep",
        "tenant/t6/device/HUGE/telemetry": "invalid_ts",
        "epoch/t6/E1": "invalid_ts",
        "tenant/t6/device/C27:x y/telemetry": "invalid_topic",
    }
    assert letters["tenant/t6/device/DEEP/telemetry"]["payload"] == deep.decode()
    assert letters["tenant/t6/device/HUGE/telemetry"]["detail"] == (
        "ts: an integer of about 309 digits is outside 2000-01-01..2100-01-01"
    )
    assert letters["epoch/t6/E1"]["detail"] == "ts: 1e+306 is outside 2000-01-01..2100-01-01"
