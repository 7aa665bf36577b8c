"""MQTT messages -> core -> Kafka, carrying out the delivery machine's decisions.

Every rule of the guarantee (docs/operations.md) is decided by
:class:`bridge.core.delivery.Delivery`: when a QoS 1 message is acknowledged
and on which session, whether a record goes to Kafka, to the spool, waits in
memory or is dropped, when the spool takes over and hands back, what shutdown
abandons.  This module only translates: MQTT batches, Kafka delivery reports,
the spool's events (:class:`bridge.ingest.store_forward.SpoolEvents`), the producer's
state and the session's loss into the machine's events, and its actions into
library calls (produce, the spool's intake, MQTT acknowledgements, counters,
logs).

The hot path costs what it cost before the machine: a message whose records
all go straight to Kafka is one :class:`PendingMessage`, the delivery waiter
of all its records, which counts their reports down itself; the machine is
called once per message, when the count reaches zero.  A record that fails,
is refused or goes to the spool leaves that path: the machine tracks it
(:class:`bridge.core.delivery.Tracked`) and its report goes to the machine.
All acknowledgements of one batch of reports go out in one write.

No message can stop this loop: :meth:`Normalizer.process` never raises (its
crash barrier turns an exception into an ``internal_error`` dead letter), so
the message is acknowledged like any other dead letter once that record is
held, and the exception is counted and logged here with its traceback, sampled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog

from bridge.core.delivery import (
    Action,
    Delivery,
    Dropped,
    Message,
    Produce,
    Settled,
    SpoolActive,
    SpoolBypassed,
    SpoolDrained,
    ToSpool,
    Tracked,
)
from bridge.core.mqtt_codec import InboundMessage
from bridge.core.normalize import Normalizer, Now
from bridge.core.records import Outgoing
from bridge.core.sparkplug_mapping import SparkplugMapper
from bridge.ingest.stats import IngestStats
from bridge.ingest.store_forward import SpoolIntake
from bridge.io.kafka_producer import DeliveryWaiter
from bridge.io.logs import SampledLog

log = structlog.get_logger(__name__)


class Producer(Protocol):
    """What ingest needs of the Kafka producer."""

    def produce(self, record: Outgoing, waiter: DeliveryWaiter | None) -> bool: ...


class MqttSession(Protocol):
    """What ingest needs of the MQTT client."""

    connected: bool

    def ack(self, generation: int, mid: int) -> None: ...

    def flush_writes(self) -> None: ...

    def publish(self, topic: str, payload: bytes, *, qos: int) -> object: ...


class LocalFeed(Protocol):
    """The stream's edge-local mode: told the clean records of its topics,
    which it shows while Kafka does not feed it."""

    @property
    def takes_local(self) -> bool:
        """Whether it would show a record now (asked once per batch: most of
        the time nobody is connected or Kafka feeds the stream)."""

    def feed_local(self, value: bytes) -> None: ...


class PendingMessage(Message):
    """One MQTT message until its records are held, and the delivery waiter of
    those of its records that go straight to Kafka."""

    __slots__ = ("ingest", "started")

    def __init__(
        self, ingest: Ingest, generation: int, mid: int | None, started: float | None
    ) -> None:
        super().__init__(generation, mid)
        self.ingest = ingest
        # When its batch was received (time.monotonic); None: it made no
        # record, so there is no delivery time to observe.
        self.started = started

    def delivered(self, error: Any, message: Any) -> None:
        """One delivery report.  The usual one, a success, is counted here
        without further calls (this runs for every record); the machine hears
        of the message when its last record is in."""
        ingest = self.ingest
        if error is not None:
            ingest.failed_direct(self, error, message)
            return
        ingest.stats.count_produced(message.topic())
        self.remaining -= 1
        if not self.remaining:
            ingest.settle(self, ingest.delivery.delivered_direct(self))


class _Report:
    """The delivery waiter of a record the machine tracks (one that left the
    direct path): its report goes to the machine."""

    __slots__ = ("ingest", "item")

    def __init__(self, ingest: Ingest, item: Tracked[Outgoing]) -> None:
        self.ingest = ingest
        self.item = item

    def delivered(self, error: Any, message: Any) -> None:
        ingest = self.ingest
        if error is not None:
            ingest.count_failure(error, message)
            ingest.carry_out(ingest.delivery.failed(self.item))
            return
        ingest.stats.count_produced(message.topic())
        ingest.carry_out(ingest.delivery.delivered(self.item))


class Ingest:
    """The ingest path; ``handle_batch`` is the MQTT client's batch handler.

    ``spool``: the spool's intake (None: no spool); ``local_feed`` (edge-local
    mode): told the clean records of ``local_topics`` while it takes them; ``dead_letter_feed`` (the
    console): told the records of each message that made a dead letter (rare,
    so it costs nothing on the clean path); ``sparkplug_changed``: told when a
    batch changed the Sparkplug state (births, deaths), to save it.
    """

    def __init__(
        self,
        normalizer: Normalizer,
        producer: Producer,
        stats: IngestStats,
        session: MqttSession,
        *,
        spool: SpoolIntake[Tracked[Outgoing]] | None = None,
        local_feed: LocalFeed | None = None,
        local_topics: frozenset[str] = frozenset(),
        dead_letter_feed: Callable[[list[Outgoing]], None] | None = None,
        sparkplug_changed: Callable[[], None] | None = None,
    ) -> None:
        self.normalizer = normalizer
        self.producer = producer
        self.stats = stats
        self.session = session
        self.spool = spool
        self.local_feed = local_feed
        self.local_topics = local_topics
        self.dead_letter_feed = dead_letter_feed
        self.sparkplug_changed = sparkplug_changed
        self.delivery: Delivery[Outgoing] = Delivery(spool=spool is not None)
        self._unmatched_log = SampledLog("ingest.unmatched_topic", level="info")
        self._failure_log = SampledLog("kafka.delivery_failed", level="error")
        self._dropped_log = SampledLog("ingest.qos0_dropped", level="error")
        self._truncated_log = SampledLog("ingest.user_properties_truncated")
        self._internal_log = SampledLog("ingest.internal_error", level="error")
        self._gap_log = SampledLog("sparkplug.seq_gap")
        self._rebirth_log = SampledLog("sparkplug.rebirth_requested", level="info")

    # ------------------------------------------------------------------ MQTT side
    def handle_batch(self, messages: list[InboundMessage], generation: int) -> None:
        """Normalize one wake-up's messages and hand their records on as the
        machine says (runs on the trio thread)."""
        now = Now(time.time_ns() // 1_000_000)
        started = time.monotonic()
        process = self.normalizer.process
        produce = self.producer.produce
        delivery = self.delivery
        arrive = delivery.arrive
        stats = self.stats
        local = self.local_feed
        feed = local.feed_local if local is not None and local.takes_local else None
        local_topics = self.local_topics
        received = stats.received
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
                received[mapping] = received.get(mapping, 0) + 1
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
            if feed is not None:
                for record in records:
                    if record.topic in local_topics:
                        feed(record.value)
            pending = PendingMessage(
                self, generation, message.mid if message.qos else None, started if records else None
            )
            actions = arrive(pending, records)
            if actions is None:  # the direct path: every record to Kafka
                for index, record in enumerate(records):
                    if not produce(record, pending):
                        self.carry_out(delivery.not_taken_direct(pending, records[index:]))
                        break
            elif actions:
                self.carry_out(actions)
        sparkplug = self.normalizer.sparkplug
        if sparkplug is not None:
            self._sparkplug_after_batch(sparkplug)

    def _sparkplug_after_batch(self, sparkplug: SparkplugMapper) -> None:
        """Publish the rebirth requests the batch asked for, log its seq gaps
        (sampled), and have a changed state saved."""
        for topic, payload in sparkplug.take_commands():
            error = None
            if self.session.connected:
                try:
                    self.session.publish(topic, payload, qos=0)
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

    def session_lost(self, generation: int) -> None:
        """The MQTT connection is gone; ``generation`` is the next one."""
        self.delivery.session_lost(generation)

    # ------------------------------------------------------------------ the machine's actions
    def carry_out(self, actions: list[Action[Outgoing]]) -> None:
        """Carry out the machine's actions, in order."""
        delivery = self.delivery
        for action in actions:
            if isinstance(action, Produce):
                item = action.item
                if self.producer.produce(item.record, _Report(self, item)):
                    continue
                if action.retry:  # the rest of the retry stays in the overflow
                    delivery.retry_refused(item)
                    return
                self.carry_out(delivery.not_taken(item))
            elif isinstance(action, ToSpool):
                assert self.spool is not None, "the machine spools only with a spool"
                self.spool.put(action.item.record, action.item)
                self.stats.spooled += 1
            elif isinstance(action, Settled):
                message = action.message
                assert isinstance(message, PendingMessage)
                self.settle(message, action.ack)
            elif isinstance(action, Dropped):
                self.stats.dropped_qos0 += 1
                self._dropped_log(hint=action.hint)
            elif isinstance(action, SpoolActive):
                log.warning("spool.active", reason=action.reason)
            elif isinstance(action, SpoolDrained):
                log.info("spool.drained", hint="records go straight to Kafka again")
            elif isinstance(action, SpoolBypassed):
                assert self.spool is not None
                self.spool.clear()
                log.warning(
                    "spool.bypassed",
                    records=action.records,
                    hint="records go straight to Kafka until the spool is writable again",
                )

    def settle(self, message: PendingMessage, ack: bool) -> None:
        """Every record of ``message`` is held (or dropped): acknowledge it if
        the machine says so."""
        stats = self.stats
        if message.started is not None:
            stats.observe_latency(time.monotonic() - message.started)
        if ack:
            assert message.mid is not None
            self.session.ack(message.generation, message.mid)
            stats.acked += 1

    # ------------------------------------------------------------------ Kafka side
    def failed_direct(self, message: PendingMessage, error: Any, report: Any) -> None:
        """Kafka gave up on a record of a direct message."""
        self.count_failure(error, report)
        record = Outgoing(report.topic(), report.key(), report.value(), report.headers() or [])
        self.carry_out(self.delivery.failed_direct(message, record))

    def count_failure(self, error: Any, report: Any) -> None:
        self.stats.delivery_failures += 1
        self._failure_log(topic=report.topic(), error=str(error))

    def after_reports(self) -> None:
        """After a batch of delivery reports: what the machine retries, then
        the acknowledgements, in one write."""
        self.carry_out(self.delivery.reports_done())
        self.session.flush_writes()

    def kafka_state(self, state: str) -> None:
        """The producer's view of Kafka changed (``down``, ``up``)."""
        if state == "down":
            self.carry_out(self.delivery.kafka_unreachable())
        elif state == "up":
            self.delivery.kafka_back()

    # ------------------------------------------------------------------ spool side (SpoolEvents)
    def synced(self, tokens: Sequence[Tracked[Outgoing]]) -> None:
        self.carry_out(self.delivery.synced(tokens))
        self.session.flush_writes()

    def spool_full(self) -> None:
        self.delivery.spool_full()

    def spool_accepting(self) -> None:
        self.delivery.spool_accepting()

    def spool_unavailable(self) -> None:
        self.delivery.spool_unavailable()

    def spool_available(self) -> None:
        self.carry_out(self.delivery.spool_available())

    def spool_backlog(self) -> None:
        self.delivery.spool_backlog()

    def drained(self) -> None:
        self.carry_out(self.delivery.drained())

    # ------------------------------------------------------------------ lifetime
    def shutdown(self) -> None:
        """Shutdown: nothing new is taken or produced (the machine decides what
        is still spooled and what is left unacknowledged)."""
        self.carry_out(self.delivery.shutdown())

    @property
    def in_flight(self) -> int:
        """Messages whose records are not all held yet."""
        return self.delivery.pending
