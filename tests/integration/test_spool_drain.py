"""The spool's drain against a Kafka cluster whose brokers fail part of a
batch: only the records that failed are produced again, so the ones Kafka
took are not written twice.

Real parts: a spool directory, the bridge's KafkaProducer (librdkafka) and
librdkafka's mock cluster with two brokers, so one drain batch goes out as
two Produce requests and an injected error fails just one of them.
"""

from __future__ import annotations

from pathlib import Path

import trio
from structlog.testing import capture_logs

from bridge.core.records import Outgoing
from bridge.core.settings import KafkaSettings
from bridge.ingest.stats import IngestStats
from bridge.ingest.store_forward import SpoolIntake, StoreAndForward
from bridge.io.kafka_producer import KafkaProducer
from bridge.io.spool import Spool
from tests.support import async_wait_until, kafka_read
from tests.support.mock_cluster import MockCluster

TOPIC = "drained"
RECORDS = 40
INVALID_RECORD = 87  # not retried by the producer: those deliveries fail


class Unheard:
    """What the spool reports (to ingest's delivery machine, which decides what
    goes to the spool and acknowledges MQTT): not what this test is about."""

    def synced(self, tokens: object) -> None:
        pass

    def spool_full(self) -> None:
        pass

    def spool_accepting(self) -> None:
        pass

    def spool_unavailable(self) -> None:
        pass

    def spool_available(self) -> None:
        pass

    def spool_backlog(self) -> None:
        pass

    def drained(self) -> None:
        pass


async def test_a_partly_failed_drain_batch_sends_only_the_failed_records_again(
    tmp_path: Path,
) -> None:
    with MockCluster([TOPIC], brokers=2, partitions=4) as cluster:
        producer = KafkaProducer(KafkaSettings(bootstrap=cluster.bootstrap))
        spool = Spool(
            tmp_path / "spool", max_bytes=1 << 20, segment_bytes=1 << 18, when_full="backpressure"
        )
        intake: SpoolIntake[None] = SpoolIntake()
        forwarder = StoreAndForward(
            spool, producer, IngestStats(), intake, Unheard(), fsync_interval_s=0
        )
        for n in range(RECORDS):
            intake.put(Outgoing(TOPIC, f"k{n}".encode(), f"v{n}".encode(), []), None)
        cluster.fail_produce([INVALID_RECORD])
        with capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer.run)
                nursery.start_soon(forwarder.run)
                await async_wait_until(
                    lambda: forwarder.stats.spool_drained == RECORDS, 60, "the spool drained"
                )
                nursery.cancel_scope.cancel()
        records = await trio.to_thread.run_sync(kafka_read, cluster.bootstrap, TOPIC, RECORDS)
    failed = [e for e in logs if e["event"] == "spool.drain_failed"]
    assert failed, "the injected error should have failed part of the batch"
    assert 0 < failed[0]["failed"] < RECORDS, "only part of the batch should have failed"
    assert sorted(r.value for r in records) == sorted(f"v{n}".encode() for n in range(RECORDS))
