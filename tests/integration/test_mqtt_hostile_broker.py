"""A broker that sends the daemon bytes that are not MQTT, or MQTT it refuses.

The daemon's MQTT codec (bridge/core/mqtt_codec.py) is tested with hypothesis
on its own; this shows what the running daemon does with such bytes: the
connection is given up with a reason that names what was wrong, the daemon
reconnects and goes on, and a well-formed QoS 1 message whose payload is hostile
(1,000-deep nesting, a 300-digit number, not JSON at all) becomes a dead letter
and is acknowledged once that record is in Kafka.

The broker is a plain socket server of the test's
(tests/support/scripted_broker.py): one scripted connection after another.
"""

from __future__ import annotations

import urllib.request

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, wait_until
from tests.support.scripted_broker import ScriptedBroker, publish_qos1

TOPIC = b"tenant/t1/device/D1/telemetry"

#: What each connection gets after its CONNACK and SUBACK, in turn.
SCRIPTS = [
    # A remaining length of five continuation bytes: not MQTT.
    b"\xff\xff\xff\xff\xff\xff",
    # A well-formed MQTT 5 PUBLISH with a Topic Alias (property 0x23), which the
    # daemon's CONNECT did not allow.
    publish_qos1(TOPIC, 7, b'{"n": 1}', b"\x23\x00\x01"),
    # Well-formed packets with hostile payloads: each must become a dead letter.
    publish_qos1(TOPIC, 1, b"[" * 1000 + b"]" * 1000)
    + publish_qos1(TOPIC, 2, b'{"schema_version": 1, "metrics": {"t": ' + b"9" * 300 + b"}}")
    + publish_qos1(TOPIC, 3, b"\x00\xff garbage")
    # Two valid messages under one packet id, the second sent while the first
    # is unacknowledged (against the protocol): each is taken, each gets its PUBACK.
    + publish_qos1(TOPIC, 4, b'{"schema_version": 1, "metrics": {"t": 1}}')
    + publish_qos1(TOPIC, 4, b'{"schema_version": 1, "metrics": {"t": 2}}'),
]


def _dead_letters(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    prefix = 'edge_bridge_dead_letters_total{reason="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def test_a_hostile_broker_costs_a_connection_never_the_daemon(setup: BridgeSetup) -> None:
    with ScriptedBroker(SCRIPTS).running() as broker:
        config = setup.config(mqtt_url=broker.url, mqtt_extra="reconnect_min_s = 0.1")
        with BridgeProcess(config) as bridge:
            wait_until(lambda: len(bridge.events("mqtt.disconnected")) >= 2, 30, "two drops")
            garbage, alias = bridge.events("mqtt.disconnected")[:2]
            assert "malformed packet from the broker" in garbage["reason"], garbage
            assert "topic alias" in alias["reason"], alias
            # The third connection: three dead letters, each acknowledged once
            # its record is in Kafka, and the two messages under one id; the
            # daemon is still the same process.
            wait_until(lambda: len(broker.pubacks) == 5, 60, "five PUBACKs")
            assert broker.pubacks == [1, 2, 3, 4, 4], "in the order the messages arrived"
            assert 7 not in broker.pubacks, "a refused packet is never acknowledged"
            assert broker.connections == 3
            assert _dead_letters(setup.listen_port) == {
                "too_deep": 1,
                "value_out_of_range": 1,
                "invalid_json": 1,
            }
            assert bridge.stop() == 0


def test_a_publish_cut_inside_its_length_is_taken_whole_when_the_rest_comes(
    setup: BridgeSetup,
) -> None:
    """A half-written PUBLISH: the connection's bytes stop after the first of
    its two remaining-length bytes, and the rest comes only once the message
    before it is acknowledged (so after the daemon has read the half on its
    own).  It waits in the framer, then goes through whole, as do hostile
    payloads around it."""
    cut = publish_qos1(
        TOPIC, 2, b'{"schema_version": 1, "metrics": {"t": 2}, "pad": "' + b"x" * 200 + b'"}'
    )
    assert cut[1] & 0x80 and not cut[2] & 0x80, "a two-byte remaining length"
    first = publish_qos1(TOPIC, 1, b"[" * 1000 + b"]" * 1000) + cut[:2]
    rest = cut[2:] + publish_qos1(
        TOPIC, 3, b'{"schema_version": 1, "metrics": {"t": ' + b"9" * 300 + b"}}"
    )
    with ScriptedBroker([(first, 1, rest)]).running() as broker:
        config = setup.config(mqtt_url=broker.url)
        with BridgeProcess(config) as bridge:
            wait_until(lambda: len(broker.pubacks) == 3, 60, "three PUBACKs")
            assert broker.pubacks == [1, 2, 3]
            assert broker.connections == 1, "the half-written packet cost no connection"
            assert _dead_letters(setup.listen_port) == {"too_deep": 1, "value_out_of_range": 1}
            assert bridge.stop() == 0
