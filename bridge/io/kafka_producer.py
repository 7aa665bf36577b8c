"""The Kafka producer beside trio.

confluent-kafka's ``produce()`` only appends to librdkafka's queue and never
blocks, so it is called straight from the trio loop.  Delivery reports arrive
only from ``poll()``, which runs one Python callback per record; the callbacks
do nothing but append to a list, and the task hands the whole list back to the
trio side in one go.

Where ``poll`` runs depends on whether records are outstanding.  While they
are, ``poll(0)`` (which never waits) runs on the trio thread every
``REPORT_INTERVAL_S``: a poll in a worker thread would need the GIL back from
the busy trio thread for every single callback, and under load that handover
(up to the interpreter's 5 ms switch interval each) held the delivery reports,
and with them the MQTT acknowledgements, back so far that throughput fell by
more than half (docs/benchmarks.md).  With nothing outstanding, ``poll(timeout)``
waits in a worker thread, so an idle bridge does not wake up every few
milliseconds; the event loop never waits on librdkafka either way.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import confluent_kafka
import structlog
import trio

from bridge.core.records import Outgoing
from bridge.core.settings import KafkaSettings
from bridge.io.kafka_config import producer_config
from bridge.io.kafka_logs import librdkafka_logger

log = structlog.get_logger(__name__)

PROBE_INTERVAL_S = 5.0
#: How often outstanding delivery reports are served on the trio thread: short
#: against linger.ms and the broker round trip, long enough to batch reports.
REPORT_INTERVAL_S = 0.002
PROBE_TIMEOUT_S = 2.0

# Delivery errors after which a handle never delivers again, whatever is
# retried: Kafka fenced the idempotent producer (seen with brokers that do not
# bump the producer epoch after a delivery timeout), or librdkafka raised a
# fatal error.  A new handle gets a new producer id and works.
_PERMANENT = frozenset(
    {
        confluent_kafka.KafkaError.PRODUCER_FENCED,
        confluent_kafka.KafkaError.INVALID_PRODUCER_EPOCH,
        confluent_kafka.KafkaError._FATAL,
    }
)


class DeliveryWaiter(Protocol):
    """Whoever waits for a record: told once per record, on the trio side."""

    def delivered(self, error: confluent_kafka.KafkaError | None, message: Any) -> None: ...


class ProducerListener(Protocol):
    """Whoever follows the producer as a whole (the ingest path), on the trio side."""

    def after_reports(self) -> None:
        """A batch of delivery reports was handed to the waiters (the ingest
        path sends its MQTT acknowledgements now, in one write)."""

    def kafka_state(self, state: str) -> None:
        """Kafka is now ``up`` or ``down`` (the spool takes over or drains)."""


class KafkaProducer:
    """Produces :class:`Outgoing` records and reports each delivery to its waiter."""

    def __init__(
        self,
        settings: KafkaSettings,
        client_id: str = "edge-bridge",
        *,
        listener: ProducerListener | None = None,
    ) -> None:
        self._reports: list[tuple[DeliveryWaiter, Any, Any]] = []
        self._last_waiter: DeliveryWaiter | None = None
        self._last_callback: Callable[[Any, Any], None] | None = None
        self._state = "connecting"
        # None where nothing follows the producer as a whole (tests, bench tools).
        self._listener = listener
        self._conf = producer_config(settings, client_id)
        self._conf["error_cb"] = self._on_error
        self._conf["logger"] = librdkafka_logger("producer")
        self._producer = confluent_kafka.Producer(self._conf)
        # Why the librdkafka handle must be replaced, once it can no longer
        # deliver anything (see _PERMANENT); None while it is healthy.
        self._broken: str | None = None
        self.bootstrap = settings.bootstrap

    @property
    def state(self) -> str:
        """``connecting``, ``up`` or ``down`` as last seen from librdkafka."""
        return self._state

    def produce(self, record: Outgoing, waiter: DeliveryWaiter | None) -> bool:
        """Queue one record; False when librdkafka's queue is full (the caller
        decides: wait, spool, or drop with a count)."""
        callback = None
        if waiter is not None:
            # The records of one message come one after the other with the
            # same waiter: they share one callback rather than each making one.
            if waiter is self._last_waiter:
                callback = self._last_callback
            else:
                callback = self._last_callback = partial(_report, self._reports, waiter)
                self._last_waiter = waiter

        try:
            # Positional on purpose: confluent-kafka parses keywords with
            # PyArg_ParseTupleAndKeywords, which builds a str per keyword per
            # call: about 6,000 instructions, a third of the call's cost
            # (docs/benchmarks.md).  Its C signature's order is topic, value,
            # key, partition, callback, on_delivery (an alias), timestamp,
            # headers; -1 is "any partition", 0 "now".
            self._producer.produce(
                record.topic, record.value, record.key, -1, callback, None, 0,
                record.headers,  # type: ignore[arg-type]  # the stub is too narrow
            )  # fmt: skip
        except BufferError:
            return False
        except confluent_kafka.KafkaException as exc:
            # After a fatal error every produce() raises until the handle is
            # replaced: the caller treats it like a full queue (spool or hold).
            error = exc.args[0] if exc.args else None
            if not isinstance(error, confluent_kafka.KafkaError) or not error.fatal():
                raise
            self._broken = str(error)
            return False
        return True

    def __len__(self) -> int:
        """Records queued in librdkafka and not yet acknowledged."""
        return len(self._producer)

    def _on_error(self, error: confluent_kafka.KafkaError) -> None:
        # May run in the poll thread: only record the state; it is logged on the trio side.
        if error.code() in (
            confluent_kafka.KafkaError._ALL_BROKERS_DOWN,
            confluent_kafka.KafkaError._TRANSPORT,
            confluent_kafka.KafkaError._RESOLVE,
        ):
            self._state = "down"
        if error.fatal():
            self._broken = str(error)
        self._last_error = error

    def _probe(self) -> bool:
        """Worker thread: whether a broker answers a metadata request."""
        try:
            self._producer.list_topics(timeout=PROBE_TIMEOUT_S)
        except confluent_kafka.KafkaException:
            return False
        return True

    def _take_reports(self) -> list[tuple[DeliveryWaiter, Any, Any]]:
        # The list object must stay the same: every queued record's callback
        # holds it and appends to it when its report comes, possibly several
        # polls later.  Replacing it would orphan those reports (and their MQTT
        # acknowledgements).  Deleting only what was copied keeps a report that
        # a poll thread appends in between.
        reports = self._reports
        taken = reports[:]
        del reports[: len(taken)]
        return taken

    def _settle(self) -> None:
        """Hand every delivery report gathered so far to its waiter (trio side)."""
        reports = self._take_reports()
        # Only a delivered record shows Kafka is up: failures (timeouts while
        # it is unreachable) are reports too.
        if self._state != "up" and any(error is None for _, error, _ in reports):
            self._set_state("up")
        for waiter, error, message in reports:
            if error is not None and error.code() in _PERMANENT:
                self._broken = str(error)
            waiter.delivered(error, message)
        if self._listener is not None:
            self._listener.after_reports()

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            log.info("kafka.state", state=state, bootstrap=self.bootstrap)
            if self._listener is not None:
                self._listener.kafka_state(state)

    async def run(self, *, poll_timeout_s: float = 0.05) -> None:
        """Serve delivery reports until cancelled; while Kafka is not known to
        be up, ask it for metadata every few seconds, so that the state (and
        readiness) recovers even when no record is being produced."""
        last_seen = self._state
        next_probe = 0.0
        while True:
            if len(self._producer):
                await trio.sleep(REPORT_INTERVAL_S)
                self._producer.poll(0)
            else:
                await trio.to_thread.run_sync(self._producer.poll, poll_timeout_s)
            if self._state != "up" and trio.current_time() >= next_probe:
                next_probe = trio.current_time() + PROBE_INTERVAL_S
                if await trio.to_thread.run_sync(self._probe):
                    self._set_state("up")
            if self._broken is not None:
                await self._replace()
            if self._state != last_seen:
                if self._state == "down":
                    log.warning(
                        "kafka.unreachable",
                        bootstrap=self.bootstrap,
                        error=str(getattr(self, "_last_error", "")),
                        hint="records go to the disk spool meanwhile; check the broker address",
                    )
                    if self._listener is not None:
                        self._listener.kafka_state("down")  # the spool takes over now
                last_seen = self._state
            self._settle()

    async def _replace(self) -> None:
        """Swap in a new librdkafka handle for one that cannot deliver any more.

        The old handle's records are purged: each gets an error report, so its
        waiter spools it or produces it again, on the new handle.  The old
        handle is closed in a worker thread (closing joins librdkafka's threads).
        """
        reason, self._broken = self._broken, None
        retired = [self._producer]
        self._producer = confluent_kafka.Producer(self._conf)
        log.warning(
            "kafka.producer_replaced",
            reason=reason,
            requeued=len(retired[0]),
            hint="its records are spooled or produced again; duplicates are possible",
        )
        retired[0].purge(in_queue=True, in_flight=True)
        retired[0].poll(0)
        self._settle()
        await trio.to_thread.run_sync(_close_all, retired)

    def purge(self) -> None:
        """Give up on every queued record (shutdown, after the flush deadline):
        each gets a delivery report with an error, so its waiter can spool it."""
        self._producer.purge(in_queue=True, in_flight=True)
        self._producer.poll(0)
        self._settle()

    async def flush(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for every queued record; returns how many are
        still undelivered.  Runs in a thread: flush blocks."""
        remaining: int = await trio.to_thread.run_sync(self._producer.flush, timeout_s)
        self._settle()
        return remaining


def _report(
    reports: list[tuple[DeliveryWaiter, Any, Any]],
    waiter: DeliveryWaiter,
    error: Any,
    message: Any,
) -> None:
    """The delivery callback of ``waiter``'s records, bound to them with
    ``functools.partial`` (made in C: no Python call and no closure per
    message).  librdkafka runs it inside ``poll`` or ``flush``, possibly in a
    worker thread: it only appends."""
    reports.append((waiter, error, message))


def _close_all(producers: list[confluent_kafka.Producer]) -> None:
    """Worker thread: close and drop retired handles (the list holds the last
    reference, so the handle is also freed here, not on the trio thread)."""
    while producers:
        producers.pop().close()
