"""The ingest path as the delivery machine's adapter, without brokers: the
reports of a message's records are counted in its waiter and the machine's
decision is carried out (acknowledged once every record is in, never on
another session), and the rare paths (a failed delivery, a full producer
queue) reach the machine and come back as library calls.  The rules
themselves are tested in test_delivery.py."""

from __future__ import annotations

from typing import Any

from bridge.core.mqtt_codec import InboundMessage
from bridge.core.normalize import Normalizer
from bridge.core.records import Outgoing
from bridge.ingest.pipeline import Ingest
from bridge.ingest.stats import IngestStats
from bridge.io.kafka_producer import DeliveryWaiter
from tests.unit.core_fixtures import MAPPINGS, plan_from
from tests.unit.test_store_forward import Session

TOPIC = "tenant/t1/device/DEV-001/telemetry"
VALID = b'{"schema_version":1,"metrics":{"t":1}}'


class Report:
    """A delivery report's message, as confluent-kafka hands it over."""

    def __init__(self, record: Outgoing) -> None:
        self.record = record

    def topic(self) -> str:
        return self.record.topic

    def key(self) -> bytes | None:
        return self.record.key

    def value(self) -> bytes:
        return self.record.value

    def headers(self) -> Any:
        return self.record.headers


class Producer:
    """Queues records with their waiters; refuses while ``full``."""

    def __init__(self) -> None:
        self.queued: list[tuple[Outgoing, DeliveryWaiter]] = []
        self.full = False

    def produce(self, record: Outgoing, waiter: DeliveryWaiter | None) -> bool:
        if self.full:
            return False
        assert waiter is not None
        self.queued.append((record, waiter))
        return True

    def report(self, error: Any = None) -> None:
        """The oldest queued record's report."""
        record, waiter = self.queued.pop(0)
        waiter.delivered(error, Report(record))


def ingest_with(producer: Producer) -> tuple[Ingest, Session]:
    session = Session()
    normalizer = Normalizer(plan_from(MAPPINGS / "telemetry.toml"))
    return Ingest(normalizer, producer, IngestStats(), session), session


def message(mid: int, qos: int = 1) -> InboundMessage:
    return InboundMessage(TOPIC, VALID, qos, False, mid, None)


def test_a_message_is_acknowledged_once_kafka_has_each_of_its_records() -> None:
    producer = Producer()
    ingest, session = ingest_with(producer)
    ingest.handle_batch([message(7)], generation=1)
    records = len(producer.queued)
    assert records > 1  # clean and raw
    assert ingest.in_flight == 1
    for _ in range(records - 1):
        producer.report()
    assert session.acked == []
    producer.report()
    assert session.acked == [7]
    assert ingest.stats.acked == 1 and ingest.in_flight == 0
    assert sum(ingest.stats.produced.values()) == records


def test_a_message_of_a_lost_session_is_not_acknowledged() -> None:
    producer = Producer()
    ingest, session = ingest_with(producer)
    ingest.handle_batch([message(7)], generation=1)
    ingest.session_lost(2)
    while producer.queued:
        producer.report()
    assert session.acked == []
    assert ingest.in_flight == 0


def test_a_failed_record_without_a_spool_is_produced_again_then_acknowledged() -> None:
    producer = Producer()
    ingest, session = ingest_with(producer)
    ingest.handle_batch([message(7)], generation=1)
    first, _ = producer.queued[0]
    producer.report(error="timed out")
    assert producer.queued[-1][0] == first, "the same record, produced again"
    assert ingest.stats.delivery_failures == 1
    while producer.queued:
        producer.report()
    assert session.acked == [7]


def test_a_full_queue_holds_qos1_in_order_and_retries_it_after_the_reports() -> None:
    producer = Producer()
    ingest, session = ingest_with(producer)
    producer.full = True
    ingest.handle_batch([message(1), message(2, qos=0)], generation=1)
    assert producer.queued == []
    producer.full = False
    ingest.after_reports()
    # The QoS 1 message's records, retried; the QoS 0 one's (as many) dropped.
    assert len(producer.queued) > 1
    assert ingest.stats.dropped_qos0 == len(producer.queued)
    while producer.queued:
        producer.report()
    assert session.acked == [1]
