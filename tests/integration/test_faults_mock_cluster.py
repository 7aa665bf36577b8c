"""Fault test against librdkafka's mock cluster: faults of a multi-broker
cluster that a single Tansu cannot show.

The daemon produces to a three-broker mock cluster while numbered QoS 1
messages flow in; all brokers go down for 5 s, partition leaders move, and
Produce requests fail with injected errors, retriable ones and ones that fail
the delivery.  Every number mosquitto
acknowledged must reach the clean topic; duplicates are counted and bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import BridgeSetup
from tests.support import BridgeProcess
from tests.support.mock_cluster import MockCluster
from tests.support.sequenced import SequencePublisher, check_delivered, set_kafka, settle

RATE = 100
DELIVERY_TIMEOUT_MS = 3000
BROKERS = (1, 2, 3)
PARTITIONS = 4

RETRIABLE_PRODUCE_ERRORS = (
    6,  # NOT_LEADER_OR_FOLLOWER
    7,  # REQUEST_TIMED_OUT
    19,  # NOT_ENOUGH_REPLICAS
    20,  # NOT_ENOUGH_REPLICAS_AFTER_APPEND (written, but not acknowledged)
    5,  # LEADER_NOT_AVAILABLE
    56,  # KAFKA_STORAGE_ERROR
)
"""Errors a broker answers a Produce request with during a failover; the
producer retries them itself, the idempotent producer without duplicating."""

FAILING_PRODUCE_ERRORS = (
    87,  # INVALID_RECORD
    10,  # MESSAGE_TOO_LARGE
    87,
)
"""Errors the producer does not retry: the records' deliveries fail, and the
bridge must spool them and send them again (here the second try succeeds)."""


@pytest.fixture
def cluster(setup: BridgeSetup) -> Iterator[MockCluster]:
    with MockCluster(
        [setup.clean, setup.raw, setup.dlq], brokers=len(BROKERS), partitions=PARTITIONS
    ) as mock:
        yield mock


def test_brokers_down_leaders_moved_produce_errors(
    setup: BridgeSetup, cluster: MockCluster, request: pytest.FixtureRequest
) -> None:
    config = set_kafka(
        setup.config(), bootstrap=cluster.bootstrap, delivery_timeout_ms=DELIVERY_TIMEOUT_MS
    )
    bridge = BridgeProcess(config)
    try:
        bridge.wait_for_event("bridge.ready", timeout=30)
        client_id = f"pub-{setup.unique}"
        with SequencePublisher(setup.mosquitto.url, rate=RATE, client_id=client_id) as pub:
            pub.wait_published(2 * RATE)
            mark = bridge.mark()
            down_at = pub.published
            for broker in BROKERS:
                cluster.set_down(broker)
            try:
                bridge.wait_for_event("spool.active", timeout=20, since=mark)
                pub.wait_published(down_at + 5 * RATE)  # all down for 5 s
            finally:
                for broker in BROKERS:
                    cluster.set_up(broker)
            pub.wait_published(pub.published + RATE)
            for topic in (setup.clean, setup.raw):
                for partition in range(PARTITIONS):
                    cluster.move_leader(topic, partition, BROKERS[(partition + 1) % len(BROKERS)])
            pub.wait_published(pub.published + RATE)
            cluster.fail_produce(RETRIABLE_PRODUCE_ERRORS * 2 + FAILING_PRODUCE_ERRORS)
            for topic in (setup.clean, setup.raw):  # and move them again
                for partition in range(PARTITIONS):
                    cluster.move_leader(topic, partition, BROKERS[partition % len(BROKERS)])
            pub.wait_published(pub.published + 2 * RATE)
            sent = pub.stop()
        bridge.wait_for_event("spool.drained", timeout=60, since=mark)
        result = settle(bridge, cluster.bootstrap, setup.clean, sent)
    finally:
        bridge.kill()
    check_delivered(
        request,
        result,
        "mock cluster: brokers down 5 s, leaders moved, produce errors",
        duplicate_bound=RATE * DELIVERY_TIMEOUT_MS // 1000,
    )
