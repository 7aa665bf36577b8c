"""Draining the backlog a persistent session kept while the daemon was down.

This is the situation store-and-forward exists for: the bridge was stopped
(an upgrade, a crash, a reboot), mosquitto kept every QoS 1 message for its
session, and the bridge comes back to a few hundred thousand of them.  With a
backlog that large the broker's PINGRESP and SUBACK arrive seconds late,
behind the flood.  The bridge used to take that for a dead connection: it
disconnected ("keepalive timed out", then "did not grant the subscriptions"),
backed off, and the broker delivered its whole in-flight window again at
every reconnect (issue 10, item 12a).  A short keepalive makes the problem
show within seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, Mosquitto, Tansu, free_port, kafka_count
from tests.support.flood import queue_qos1
from tests.support.sequenced import (
    Tally,
    check_delivered,
    daemon_metric,
    sequence_payload,
    sequence_topic,
)

BACKLOG = 300_000
KEEPALIVE_S = 5

RECONNECTS = "edge_bridge_mqtt_reconnects_total"


@pytest.fixture
def deep_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto of the test's own for the backlog (the test config queues
    up to 1,000,000 messages or 256 MiB per session: the whole of it)."""
    with Mosquitto(tmp_path / "deep-broker") as broker:
        yield broker


def _seq(value: bytes) -> int:
    record = json.loads(value)
    assert record["metric"] == "seq", record
    return int(record["value"])


@pytest.mark.timeout(240)
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_backlog_of_300000_drains_on_one_connection_each_message_once(
    deep_broker: Mosquitto,
    tansu: Tansu,
    unique: str,
    tmp_path: Path,
    protocol: str,
    request: pytest.FixtureRequest,
) -> None:
    setup = BridgeSetup(deep_broker, tansu, unique, free_port(), tmp_path)
    config = setup.config(mqtt_extra=f'keepalive_s = {KEEPALIVE_S}\nprotocol = "{protocol}"')
    # The first run makes the persistent session and its subscription.
    with BridgeProcess(config) as bridge:
        bridge.wait_for_event("bridge.ready")
        assert bridge.stop() == 0, bridge.output_tail()

    queue_qos1(
        deep_broker.host,
        deep_broker.port,
        BACKLOG,
        lambda seq: (sequence_topic(seq), sequence_payload(seq)),
    )

    started = time.monotonic()
    with BridgeProcess(config) as bridge:
        connected = bridge.wait_for_event("mqtt.connected")
        assert connected["session_present"] is True
        # Ready while the backlog drains, not once the SUBACK behind it came.
        bridge.wait_for_event("bridge.ready", timeout=10)
        counts = kafka_count(tansu.bootstrap, setup.clean, BACKLOG, _seq, timeout=150)
        drained_s = time.monotonic() - started
        subscribed = bridge.wait_for_event("mqtt.subscribed")
        reconnects = daemon_metric(setup.listen_port, RECONNECTS)
        disconnects = bridge.events("mqtt.disconnected")
        assert bridge.stop() == 0, bridge.output_tail()

    sent = set(range(BACKLOG))
    result = Tally(setup.clean, BACKLOG, counts.total(), counts, sorted(sent - counts.keys()))
    label = (
        f"backlog drain, MQTT {protocol}, keepalive {KEEPALIVE_S} s: "
        f"SUBACK after {subscribed['after_s']} s behind {subscribed['messages_before']} messages, "
        f"disconnects={len(disconnects)}, on Kafka within {drained_s:.1f} s of the start"
    )
    # No disconnect means no redelivery, so not one duplicate either.
    check_delivered(request, result, label, duplicate_bound=0)
    assert not disconnects, disconnects
    assert reconnects == 0
