"""PUBACKs leave in the order the messages arrived, whatever order Kafka
confirms their records in (MQTT 5.0 [MQTT-4.6.0-2]; bridge/core/puback_order.py).

Kafka is librdkafka's mock cluster with two brokers: every topic's partition 0
is led by broker 1, partition 1 by broker 2, which answers each request
``RTT_MS`` late.  A broker of the test's own (tests/support/scripted_broker.py)
sends the daemon numbered QoS 1 messages from devices chosen so that they
alternate between the partitions, the first on the slow one: Kafka holds the
even-numbered messages' records a second and a half before the odd-numbered
ones.  The daemon must still send PUBACK 1, 2, 3, ... in that order.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess, wait_until
from tests.support.mock_cluster import MockCluster
from tests.support.scripted_broker import ScriptedBroker, publish_qos1
from tests.support.sequenced import sequence_payload, set_kafka

PARTITIONS = 2
SLOW_BROKER = 2
RTT_MS = 1500
MESSAGES = 12


def _partition(key: str) -> int:
    """librdkafka's default partitioner for a keyed record (consistent_random:
    CRC-32 of the key).  The test reads the partitions back to check it."""
    return zlib.crc32(key.encode()) % PARTITIONS


def _devices() -> list[str]:
    """One device per message, alternating slow (partition 1) and fast,
    starting with slow; the record key is ``t1:<device>``."""
    by_partition: dict[int, list[str]] = {0: [], 1: []}
    for n in range(1000):
        device = f"D{n}"
        by_partition[_partition(f"t1:{device}")].append(device)
    slow, fast = by_partition[1], by_partition[0]
    return [slow[i // 2] if i % 2 == 0 else fast[i // 2] for i in range(MESSAGES)]


@pytest.fixture
def cluster(setup: BridgeSetup) -> Iterator[MockCluster]:
    with MockCluster([setup.clean, setup.raw, setup.dlq], brokers=2, partitions=PARTITIONS) as mock:
        for topic in (setup.clean, setup.raw, setup.dlq):
            for partition in range(PARTITIONS):
                mock.move_leader(topic, partition, partition + 1)
        mock.set_rtt(SLOW_BROKER, RTT_MS)
        yield mock


def _partitions_of_seqs(bootstrap: str, topic: str) -> dict[int, int]:
    """seq -> partition of the clean records, read back from the cluster."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "puback-order", "enable.auto.commit": False}
    )
    found: dict[int, int] = {}
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + 30
        while len(found) < MESSAGES and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            record = json.loads(message.value() or b"{}")
            partition = message.partition()
            assert partition is not None
            found[int(record["value"])] = partition
    finally:
        consumer.close()
    return found


def test_pubacks_follow_arrival_not_kafka(setup: BridgeSetup, cluster: MockCluster) -> None:
    devices = _devices()
    script = b"".join(
        publish_qos1(f"tenant/t1/device/{device}/telemetry".encode(), seq, sequence_payload(seq))
        for seq, device in enumerate(devices, start=1)
    )
    with ScriptedBroker([script]).running() as broker:
        config = set_kafka(setup.config(mqtt_url=broker.url), bootstrap=cluster.bootstrap)
        with BridgeProcess(config) as bridge:
            wait_until(lambda: len(broker.pubacks) == MESSAGES, 60, "every PUBACK")
            assert broker.pubacks == list(range(1, MESSAGES + 1))
            assert bridge.stop() == 0
    # The premise: the messages' records did go to alternate partitions, the
    # first message's to the slow broker's.
    placed = _partitions_of_seqs(cluster.bootstrap, setup.clean)
    assert placed == {seq: 1 - (seq - 1) % 2 for seq in range(1, MESSAGES + 1)}
