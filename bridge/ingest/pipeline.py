"""MQTT messages -> core -> Kafka, and the acknowledgement bookkeeping between.

The rule this module keeps: a QoS 1 message is acknowledged to the broker only
when Kafka has acknowledged every record made from it (clean, raw, dead letter,
alarm).  Each message gets a :class:`PendingMessage` counting its records; each
delivery report decrements it; at zero the MQTT acknowledgement is queued, and
all acknowledgements of one batch of reports go out in one write.

When Kafka cannot take a record (delivery failed after the delivery timeout,
or librdkafka's queue is full), the record goes to the disk spool
(:mod:`bridge.ingest.store_forward`) and counts as delivered once the spool has synced
it.  With the spool disabled, a failed record is produced again (an outage
longer than the timeout costs duplicates, never loss) and QoS 0 messages that
find the queue full are dropped and counted rather than stalling MQTT.  QoS 0
records are dropped and counted the same way while a full or unavailable spool
refuses records: only QoS 1 messages can be held back at the broker.  A spool
whose disk failed and that holds nothing more to drain is out of the way
(``StoreAndForward.usable`` is false): records are handled as with the spool
disabled until it can be written again.

No message can stop this loop: :meth:`Normalizer.process` never raises (its
crash barrier turns an exception into an ``internal_error`` dead letter), so
the message is acknowledged like any other dead letter once that record is
held, and the exception is counted and logged here with its traceback, sampled.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from bridge.core.mqtt_codec import InboundMessage
from bridge.core.normalize import Normalizer, Now
from bridge.core.records import Outgoing
from bridge.core.sparkplug_mapping import SparkplugMapper
from bridge.ingest.stats import IngestStats
from bridge.ingest.store_forward import StoreAndForward, Waiter
from bridge.io.kafka_producer import KafkaProducer
from bridge.io.mqtt import MqttClient
from bridge.ops.logs import SampledLog

log = structlog.get_logger(__name__)


class PendingMessage:
    """One MQTT message waiting for its Kafka deliveries."""

    __slots__ = ("generation", "ingest", "mid", "remaining", "started")

    def __init__(
        self, ingest: Ingest, generation: int, mid: int | None, remaining: int, started: float
    ) -> None:
        self.ingest = ingest
        self.generation = generation
        self.mid = mid  # None for QoS 0: nothing to acknowledge
        self.remaining = remaining
        self.started = started  # when its batch was received (time.monotonic)

    def delivered(self, error: Any, message: Any) -> None:
        """One delivery report.  The usual one, a success, is handled here
        without further calls: this runs for every record."""
        ingest = self.ingest
        if error is not None:
            ingest.on_delivery(self, error, message)
            return
        ingest.stats.produced[message.topic()] += 1
        self.remaining -= 1
        if not self.remaining:
            ingest.finished(self)

    def stored(self) -> None:
        """One of its records is durably in the spool."""
        self.ingest.finish_one(self)


class Ingest:
    """The ingest path; ``handle_batch`` is the MQTT client's batch handler."""

    def __init__(self, normalizer: Normalizer, producer: KafkaProducer, stats: IngestStats) -> None:
        self.normalizer = normalizer
        self.producer = producer
        self.stats = stats
        self.mqtt: MqttClient | None = None
        self.spool: StoreAndForward | None = None
        # Edge-local mode: clean records of these topics also go straight to the
        # stream hub, which shows them while Kafka does not feed the stream.
        self.local_feed: Callable[[bytes], None] | None = None
        self.local_topics: frozenset[str] = frozenset()
        # The console's dead-letter feed: the records of each message that made
        # a dead letter (rare, so it costs nothing on the clean path).
        self.dead_letter_feed: Callable[[list[Outgoing]], None] | None = None
        self._overflow: deque[tuple[Outgoing, PendingMessage]] = deque()
        self._unmatched_log = SampledLog("ingest.unmatched_topic", level="info")
        self._failure_log = SampledLog("kafka.delivery_failed", level="error")
        self._dropped_log = SampledLog("ingest.qos0_dropped", level="error")
        self._truncated_log = SampledLog("ingest.user_properties_truncated")
        self._internal_log = SampledLog("ingest.internal_error", level="error")
        # Told when a batch changed the Sparkplug state (births, deaths): saves it.
        self.sparkplug_changed: Callable[[], None] | None = None
        self._gap_log = SampledLog("sparkplug.seq_gap")
        self._rebirth_log = SampledLog("sparkplug.rebirth_requested", level="info")

    # ------------------------------------------------------------------ MQTT side
    def handle_batch(self, messages: list[InboundMessage], generation: int) -> None:
        """Normalize and produce one wake-up's messages (runs on the trio thread)."""
        now = Now(time.time_ns() // 1_000_000)
        started = time.monotonic()
        process = self.normalizer.process
        produce = self.producer.produce
        stats = self.stats
        acks = []
        for message in messages:
            topic = message.topic
            outcome = process(
                topic, message.payload, now, message.user_properties, message.qos, message.retain
            )
            if outcome.properties_truncated:
                self._truncated_log(topic=topic, bound=self.normalizer.max_user_property_bytes)
            mapping = outcome.mapping
            if mapping is None:
                if outcome.error is not None:
                    self._internal_error(outcome.error, topic)
                else:
                    stats.unmatched += 1
                    self._unmatched_log(topic=topic)
            else:
                stats.received[mapping] += 1
                if outcome.duplicate:
                    stats.duplicates[mapping] += 1
                dead = outcome.dead
                if dead:
                    for reason in dead:
                        stats.dead_letters[reason] += 1
                    if self.dead_letter_feed is not None:
                        self.dead_letter_feed(outcome.records)
                    if outcome.error is not None:
                        self._internal_error(outcome.error, topic, mapping)
            records = outcome.records
            qos1 = message.qos > 0
            if not records:
                if qos1:
                    acks.append(message.mid)
                continue
            mid = message.mid if qos1 else None
            pending = PendingMessage(self, generation, mid, len(records), started)
            stats.pending_messages += 1
            spool = self.spool
            feed = self.local_feed
            for record in records:
                if feed is not None and record.topic in self.local_topics:
                    feed(record.value)
                if spool is not None and spool.active:
                    self._spool(record, pending)
                elif self._overflow or not produce(record, pending):
                    self._not_taken(record, pending)
        if acks and self.mqtt is not None:
            for mid in acks:
                self.mqtt.ack(generation, mid)
            stats.acked += len(acks)
        sparkplug = self.normalizer.sparkplug
        if sparkplug is not None:
            self._sparkplug_after_batch(sparkplug)

    def _sparkplug_after_batch(self, sparkplug: SparkplugMapper) -> None:
        """Publish the rebirth requests the batch asked for, log its seq gaps
        (sampled), and have a changed state saved."""
        for topic, payload in sparkplug.take_commands():
            error = None
            if self.mqtt is not None and self.mqtt.connected:
                try:
                    self.mqtt.publish(topic, payload, qos=0)
                except (ValueError, OSError, RuntimeError) as exc:  # never ends the batch
                    error = f"{type(exc).__name__}: {exc}"
            self._rebirth_log(topic=topic, error=error)
        for topic, expected, received in sparkplug.take_gaps():
            self._gap_log(topic=topic, expected=expected, received=received)
        if sparkplug.state.dirty and self.sparkplug_changed is not None:
            self.sparkplug_changed()

    def _internal_error(self, error: Exception, topic: str, mapping: str | None = None) -> None:
        """The core failed on a message (a bug): count it, log it with its
        traceback (sampled: a flood of one poison message logs once per interval)."""
        self.stats.internal_errors += 1
        self._internal_log(
            topic=topic,
            mapping=mapping,
            error=f"{type(error).__name__}: {str(error)[:200]}",
            exc_info=error,
        )

    def _not_taken(self, record: Outgoing, pending: PendingMessage) -> None:
        """librdkafka's queue is full: spool, hold (QoS 1) or drop (QoS 0)."""
        if self.spool is not None and self.spool.usable:
            self.spool.activate("the Kafka producer queue is full")
            self._spool(record, pending)
        elif pending.mid is not None:
            self._overflow.append((record, pending))
        else:
            self._drop_qos0(pending, "Kafka is slower than the QoS 0 inflow or down; use QoS 1")

    def _spool(self, record: Outgoing, pending: PendingMessage) -> None:
        """Queue a record for the spool.  While a full or unavailable spool
        refuses records, a QoS 0 record is dropped and counted instead: no
        acknowledgement holds QoS 0 messages back at the broker, so they would
        pile up in memory."""
        assert self.spool is not None
        if pending.mid is None and self.spool.refusing:
            self._drop_qos0(
                pending, "the spool is full or unavailable; use QoS 1 to have the broker hold them"
            )
            return
        self.spool.put(record, pending)
        self.stats.spooled += 1

    def take_back(self, record: Outgoing, waiter: Waiter) -> None:
        """A record held for a spool that became unavailable: to Kafka, as if it
        had never been queued for the spool (see :mod:`bridge.ingest.store_forward`)."""
        assert isinstance(waiter, PendingMessage)
        if self._overflow or not self.producer.produce(record, waiter):
            self._not_taken(record, waiter)

    def _drop_qos0(self, pending: PendingMessage, hint: str) -> None:
        self.stats.dropped_qos0 += 1
        self._dropped_log(hint=hint)
        self.finish_one(pending)

    # ------------------------------------------------------------------ Kafka side
    def on_delivery(self, pending: PendingMessage, error: Any, message: Any) -> None:
        """One delivery report, on the trio thread (see KafkaProducer)."""
        if error is not None:
            self.stats.delivery_failures += 1
            self._failure_log(topic=message.topic(), error=str(error))
            record = Outgoing(
                message.topic(), message.key(), message.value(), message.headers() or []
            )
            if self.spool is not None and self.spool.usable:
                self.spool.activate(f"Kafka delivery failed: {error}")
                self._spool(record, pending)
            elif not self.producer.produce(record, pending):
                self._overflow.append((record, pending))
            return
        self.stats.produced[message.topic()] += 1
        self.finish_one(pending)

    def finish_one(self, pending: PendingMessage) -> None:
        """One record of ``pending`` is safe (in Kafka, or synced to the spool)."""
        pending.remaining -= 1
        if not pending.remaining:
            self.finished(pending)

    def finished(self, pending: PendingMessage) -> None:
        """Every record of ``pending`` is safe: acknowledge it."""
        stats = self.stats
        stats.pending_messages -= 1
        stats.observe_latency(time.monotonic() - pending.started)
        if pending.mid is not None and self.mqtt is not None:
            self.mqtt.ack(pending.generation, pending.mid)
            stats.acked += 1

    def after_reports(self) -> None:
        """After a batch of delivery reports: retry the overflow, send the acks."""
        overflow = self._overflow
        produce = self.producer.produce
        while overflow:
            record, pending = overflow[0]
            if not produce(record, pending):
                break
            overflow.popleft()
        if self.mqtt is not None:
            self.mqtt.flush_writes()

    @property
    def in_flight(self) -> int:
        """Messages whose records are not all delivered yet."""
        return self.stats.pending_messages
