"""When the daemon gives an MQTT connection up, through a real mosquitto: a
broker that stopped answering; and when it does not: a message too large to
buffer.  A connection kept while a late SUBACK and late PINGRESPs queue
behind a backlog is in test_backlog_drain.py; a refused SUBACK (which
mosquitto 2.0 never sends for an ACL) in test_mqtt_session.py."""

from __future__ import annotations

import json
import signal

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, kafka_read, publish_many


def test_a_frozen_broker_is_given_up_after_an_unanswered_ping(setup: BridgeSetup) -> None:
    config = setup.config(mqtt_extra="keepalive_s = 1")
    with BridgeProcess(config) as bridge:
        bridge.wait_for_event("bridge.ready")
        mark = bridge.mark()
        setup.mosquitto.send_signal(signal.SIGSTOP)
        try:
            # One interval of silence, a PINGREQ, one more interval unanswered.
            lost = bridge.wait_for_event("mqtt.disconnected", timeout=10, since=mark)
        finally:
            setup.mosquitto.send_signal(signal.SIGCONT)
        assert lost["reason"].startswith("keepalive timed out: nothing received for")
        bridge.wait_for_event("mqtt.subscribed", timeout=20, since=mark)
        assert bridge.stop() == 0


def test_a_message_larger_than_any_packet_accepted_is_a_dead_letter(setup: BridgeSetup) -> None:
    """Over limits.max_payload_bytes plus the header room, the fast lane does not
    buffer a PUBLISH whole: it is cut, refused as payload_too_large and
    acknowledged, on the same connection (closing it would make the broker
    deliver the message again at every reconnect)."""
    huge = b'{"schema_version": 1, "metrics": {"t": 1}, "pad": "' + b"x" * 600_000 + b'"}'
    small = json.dumps({"schema_version": 1, "metrics": {"t": 2}}).encode()
    with BridgeProcess(setup.config()) as bridge:
        bridge.wait_for_event("bridge.ready")
        topic = "tenant/t1/device/D1/telemetry"
        publish_many(setup.mosquitto.url, [(topic, huge, 1), (topic, small, 1)])
        (letter,) = kafka_read(setup.tansu.bootstrap, setup.dlq, expected=1)
        (clean,) = kafka_read(setup.tansu.bootstrap, setup.clean, expected=1)
        assert bridge.stop() == 0
        assert not bridge.events("mqtt.disconnected")
    assert letter.json()["reason"] == "payload_too_large"
    assert clean.json()["value"] == 2
