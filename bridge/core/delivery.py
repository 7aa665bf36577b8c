"""When an MQTT message may be acknowledged: the ingest path's at-least-once
rules as a sans-IO state machine.

Events in, actions out, no I/O (the style of h11 and wsproto): the adapters
feed :class:`Delivery` what happened (a message arrived, Kafka delivered or
failed a record, the producer's queue was full, the spool synced records, the
spool or Kafka changed state, the MQTT session was lost, shutdown began) and
carry out the actions it returns (:class:`Produce`, :class:`ToSpool`,
:class:`Settled` with or without an acknowledgement, :class:`Dropped`,
:class:`SpoolActive`, :class:`SpoolDrained`, :class:`SpoolBypassed`).

The rules it encodes are those of docs/operations.md, and only here: the
adapters translate.  :mod:`bridge.ingest.pipeline` feeds it MQTT messages, Kafka's
delivery reports, the producer's state, the session's loss and shutdown, and
carries out its actions; :mod:`bridge.ingest.store_forward` reports what the spool
did (synced, full, accepting, unavailable, available, a backlog, drained):

1. A QoS 1 message is acknowledged only once every record made from it is
   held: delivered by Kafka, or in the spool with the ``fsync`` covering it
   returned.  A message that made no record is acknowledged at once.
2. The acknowledgement carries the session (generation) the message came
   in: a message of a lost session is never acknowledged on a new one (the
   broker delivers it again; its records are not taken back, so Kafka may
   get them twice, which at-least-once allows).
3. While the spool is *active* every new record goes to it, behind the ones
   already there.  It becomes active when Kafka is unreachable, a delivery
   failed, or the producer's queue was full, and stays active until the
   drain finds it empty, even when Kafka came back meanwhile (order).
4. A record the producer's queue refuses goes to the spool when the spool is
   usable (active, or able to take records); otherwise a QoS 1 record waits
   in memory (the *overflow*, retried in order after each batch of delivery
   reports, and new records queue behind it) and a QoS 0 record is dropped
   and counted.
5. A record whose delivery failed goes to the spool when it is usable;
   otherwise it is produced again (duplicates, not loss), and waits in the
   overflow if the queue refuses it, whatever its QoS.
6. While the spool refuses records (full under ``backpressure``, or its disk
   unavailable) a QoS 0 record meant for it is dropped and counted; a QoS 1
   record waits for it, unacknowledged.
7. When the spool is unavailable and has nothing readable left, the records
   waiting for it go to Kafka in their order and the spool stops being
   active (``spool.bypassed``); once its disk recovers it is activated again
   at once if Kafka is unreachable.
8. Once shutdown gives up on Kafka (the daemon stopped reading MQTT, then
   gave Kafka ``kafka.shutdown_flush_s`` to take what was in flight) nothing
   new is taken and nothing is produced: a failed record (the daemon purges
   the producer, so every record Kafka did not confirm fails) still goes to
   the spool if it can, anything else is abandoned unacknowledged (the
   broker delivers it again to the next run).

Each record is in exactly one state at a time; an event that does not fit a
record's state (a sync or report that lost a race with another one) is
ignored and counted in :attr:`Delivery.stale`, so a record never counts twice
towards its message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeAlias, TypeVar

from mypy_extensions import mypyc_attr

R = TypeVar("R")


class State:
    """Where a record is.  Plain constants, not an Enum: reading an Enum member
    costs about ten times as much, and this runs for every record."""

    PRODUCING: Final = "producing"  # handed to the producer, its report outstanding
    OVERFLOW: Final = "overflow"  # refused by a full producer queue, waiting in memory
    SPOOLING: Final = "spooling"  # handed to the spool, its sync outstanding
    HELD: Final = "held"  # delivered by Kafka or synced in the spool
    DROPPED: Final = "dropped"  # QoS 0, nowhere to put it
    ABANDONED: Final = "abandoned"  # shutdown: left unacknowledged


PRODUCING: Final = State.PRODUCING
OVERFLOW: Final = State.OVERFLOW
SPOOLING: Final = State.SPOOLING
HELD: Final = State.HELD


class Message:
    """One MQTT message until every record made from it is held.  The adapter
    makes it (and may subclass it, to be the producer's delivery waiter of
    the message's records on the direct path, see :meth:`Delivery.arrive`)."""

    __slots__ = ("context", "generation", "mid", "remaining")

    def __init__(self, generation: int, mid: int | None, context: object = None) -> None:
        self.generation = generation
        self.mid = mid  # None for QoS 0: nothing to acknowledge
        self.remaining = 0  # records not held yet
        self.context = context  # the adapter's, if it does not subclass


class Tracked(Generic[R]):
    """One record of a message, and where it is."""

    __slots__ = ("failed", "message", "record", "state")

    def __init__(self, record: R, message: Message) -> None:
        self.record = record
        self.message = message
        self.state = PRODUCING
        self.failed = False  # a delivery of it failed: held in memory if refused


# The generic actions stay interpreted classes when this module is compiled
# (mypyc builds no generic dataclass): three objects per message at most, and
# only off the direct path.
@mypyc_attr(native_class=False)
@dataclass(slots=True)
class Produce(Generic[R]):
    """Hand the record to the producer.  If its queue refuses it, report
    :meth:`Delivery.not_taken` before carrying out the next action; for a
    ``retry`` (the overflow), report :meth:`Delivery.retry_refused` instead and
    stop there: the ones after it stay in the overflow."""

    item: Tracked[R]
    retry: bool = False


@mypyc_attr(native_class=False)
@dataclass(slots=True)
class ToSpool(Generic[R]):
    """Queue the record for the spool's next grouped append and sync."""

    item: Tracked[R]


@mypyc_attr(native_class=False)
@dataclass(slots=True)
class Dropped(Generic[R]):
    """A QoS 0 record was dropped: count it, log ``hint`` (sampled)."""

    item: Tracked[R]
    hint: str


@dataclass(slots=True)
class Settled:
    """Every record of ``message`` is held (or dropped); acknowledge it when
    ``ack`` (QoS 1, and its session is the current one)."""

    message: Message
    ack: bool


@dataclass(slots=True)
class SpoolActive:
    """New records go to the spool from now on, because of ``reason``."""

    reason: str


@dataclass(slots=True)
class SpoolDrained:
    """The spool is empty: records go straight to Kafka again."""


@dataclass(slots=True)
class SpoolBypassed:
    """The unavailable spool has nothing left: the ``records`` waiting for it
    were handed back (as the :class:`Produce` actions that follow)."""

    records: int


# A string: the interpreted generic classes of a compiled module cannot be
# subscripted at run time (only type checkers read this).
Action: TypeAlias = (
    "Produce[R] | ToSpool[R] | Dropped[R] | Settled | SpoolActive | SpoolDrained | SpoolBypassed"
)

QUEUE_FULL_HINT = "Kafka is slower than the QoS 0 inflow or down; use QoS 1"
SPOOL_REFUSING_HINT = "the spool is full or unavailable; use QoS 1 to have the broker hold them"


class Delivery(Generic[R]):
    """The acknowledgement and routing rules of the ingest path.

    ``spool``: whether a spool is configured; ``backlog``: it holds records
    at start (it is active until drained); ``spool_unavailable``: it could not
    be opened, or its disk refuses writes.
    """

    def __init__(
        self,
        *,
        spool: bool,
        backlog: bool = False,
        spool_unavailable: bool = False,
        generation: int = 0,
    ) -> None:
        self.spool_enabled = spool
        self.active = spool and backlog
        self.unavailable = spool and spool_unavailable
        self.full = False
        self.kafka_down = False
        self.closing = False
        self.generation = generation
        self.pending = 0  # messages with records not held yet
        self.stale = 0  # events that lost a race (see the module docstring)
        self._overflow: deque[Tracked[R]] = deque()
        self._spooling: dict[Tracked[R], None] = {}  # in the order handed over
        self._retrying: list[Tracked[R]] = []  # the last reports_done() retry

    # ------------------------------------------------------------------ views
    @property
    def usable(self) -> bool:
        """Records Kafka cannot take go to the spool: it can take them, or
        records are queued behind a backlog that must drain first."""
        return self.spool_enabled and (self.active or not self.unavailable)

    @property
    def refusing(self) -> bool:
        """The spool does not take records now (full, or unavailable)."""
        return self.full or self.unavailable

    @property
    def overflow(self) -> int:
        """Records waiting in memory for room in the producer's queue."""
        return len(self._overflow)

    # ------------------------------------------------------------------ MQTT side
    def arrive(self, message: Message, records: Sequence[R]) -> list[Action[R]] | None:
        """``message`` made ``records``.

        None is the hot path, *direct*: hand every record to the producer, in
        order, with the message as their delivery waiter; count each success
        down in ``message.remaining`` and report the last with
        :meth:`delivered_direct`, a failure with :meth:`failed_direct`; if the
        queue refuses one, report it and the records after it (not tried) with
        :meth:`not_taken_direct`.  Otherwise the actions to carry out.  This
        split keeps the common case at one object per message and one call
        into the machine per message (a :class:`Tracked` is made only for a
        record that leaves the direct path)."""
        if self.closing:
            return []  # not taken: the broker delivers it again
        if message.generation > self.generation:
            self.generation = message.generation
        message.remaining = len(records)
        if not records:
            return [Settled(message, message.mid is not None)]
        self.pending += 1
        if self.active or self._overflow:
            out: list[Action[R]] = []
            for record in records:
                self._route(Tracked(record, message), out)
            return out
        return None

    def arrived(
        self,
        generation: int,
        mid: int | None,
        qos: int,
        records: Sequence[R],
        context: object = None,
    ) -> list[Action[R]]:
        """:meth:`arrive` with the direct path spelled out as one
        :class:`Produce` per record (reported with :meth:`delivered`)."""
        message = Message(generation, mid if qos > 0 else None, context)
        out = self.arrive(message, records)
        if out is None:
            out = [Produce(Tracked(record, message)) for record in records]
        return out

    def session_lost(self, generation: int) -> None:
        """The MQTT connection is gone; ``generation`` is the next one.  Its
        messages still pending are never acknowledged (the broker redelivers)."""
        self.generation = max(self.generation, generation)

    # ------------------------------------------------------------------ producer side
    def not_taken(self, item: Tracked[R]) -> list[Action[R]]:
        """The producer's queue refused a :class:`Produce` (it is full)."""
        out: list[Action[R]] = []
        if not self._expected(item, PRODUCING):
            pass
        elif self.closing:
            self._abandon(item)
        elif item.failed:
            item.state = OVERFLOW
            self._overflow.append(item)
        else:
            self._refused(item, out)
        return out

    def delivered(self, item: Tracked[R]) -> list[Action[R]]:
        """Kafka acknowledged the record."""
        out: list[Action[R]] = []
        if item.state is not PRODUCING:
            self.stale += 1
            return out
        item.state = HELD
        message = item.message
        message.remaining -= 1
        if not message.remaining:  # _finish, inlined: this runs for every record
            self.pending -= 1
            ack = message.mid is not None and message.generation == self.generation
            out.append(Settled(message, ack))
        return out

    def failed(self, item: Tracked[R]) -> list[Action[R]]:
        """Kafka gave up on the record (delivery timeout, purge, fatal error)."""
        out: list[Action[R]] = []
        if not self._expected(item, PRODUCING):
            return out
        item.failed = True
        if self.usable:
            self._activate("Kafka delivery failed", out)
            self._to_spool(item, out)
        elif self.closing:
            self._abandon(item)
        else:
            out.append(Produce(item))
        return out

    def delivered_direct(self, message: Message) -> bool:
        """Kafka acknowledged the last outstanding record of a direct message;
        returns whether to acknowledge the message.

        The adapter counts a direct message's successful reports itself, one
        decrement of ``message.remaining`` each and no call (this runs for
        every record), and calls this when the count reaches zero: the
        message is settled.  (A direct record has one report and no other
        place to be, so it has no race to lose; records of the message that
        left the direct path count down through :meth:`synced` and
        :meth:`delivered`, and whichever brings the count to zero settles.)"""
        self.pending -= 1
        return message.mid is not None and message.generation == self.generation

    def failed_direct(self, message: Message, record: R) -> list[Action[R]]:
        """Kafka gave up on a record of a direct message."""
        return self.failed(Tracked(record, message))

    def not_taken_direct(self, message: Message, records: Sequence[R]) -> list[Action[R]]:
        """The producer's queue refused ``records[0]`` of a direct message;
        the ones after it were not tried and follow the rules from here."""
        first = Tracked(records[0], message)
        out = self.not_taken(first)
        for record in records[1:]:
            self._route(Tracked(record, message), out)
        return out

    def reports_done(self) -> list[Action[R]]:
        """After a batch of delivery reports: the overflow, in order, to retry
        (stop at the first refusal, report it with :meth:`retry_refused`)."""
        out: list[Action[R]] = []
        if self.closing or not self._overflow:
            return out
        for item in self._overflow:
            item.state = PRODUCING
            out.append(Produce(item, retry=True))
        self._retrying = list(self._overflow)
        self._overflow.clear()
        return out

    def retry_refused(self, item: Tracked[R]) -> None:
        """The producer refused ``item`` of a :meth:`reports_done` retry: it and
        those after it (not attempted) wait in the overflow again, in order."""
        retrying = self._retrying
        if item.state is not PRODUCING or item not in retrying:
            self.stale += 1
            return
        back = retrying[retrying.index(item) :]
        for waiting in back:
            waiting.state = OVERFLOW
        self._overflow.extendleft(reversed(back))
        self._retrying = []

    def kafka_unreachable(self) -> list[Action[R]]:
        """No broker answers: the spool takes over (if it can take records)."""
        out: list[Action[R]] = []
        self.kafka_down = True
        self._activate("Kafka is unreachable", out)
        return out

    def kafka_back(self) -> None:
        """A broker answers again.  The spool stays active until drained."""
        self.kafka_down = False

    # ------------------------------------------------------------------ spool side
    def synced(self, items: Iterable[Tracked[R]]) -> list[Action[R]]:
        """The spool appended and synced these records."""
        out: list[Action[R]] = []
        for item in items:
            if not self._expected(item, SPOOLING):
                continue
            del self._spooling[item]
            self._hold(item, out)
        return out

    def spool_full(self) -> None:
        """An append was refused for want of room (``backpressure``)."""
        self.full = True

    def spool_accepting(self) -> None:
        """An append went through: the spool has room again."""
        self.full = False

    def spool_unavailable(self) -> None:
        """The spool's disk refused it; records waiting for it keep waiting.
        Whether it is full is known again after its next append."""
        if self.spool_enabled:
            self.unavailable = True
            self.full = False

    def spool_available(self) -> list[Action[R]]:
        """The spool's disk takes writes again."""
        out: list[Action[R]] = []
        self.unavailable = False
        if self.kafka_down:
            self._activate("Kafka is unreachable", out)
        return out

    def spool_backlog(self) -> None:
        """The spool (opened again) holds records: it is active until drained."""
        if self.spool_enabled:
            self.active = True

    def drained(self) -> list[Action[R]]:
        """The drain found nothing readable in the spool, and no append is in
        progress: records go straight to Kafka again, or, when the spool is
        unavailable, the records waiting for it are handed back to Kafka."""
        out: list[Action[R]] = []
        waiting = list(self._spooling)
        if self.unavailable and waiting:
            self._spooling.clear()
            self.active = False
            out.append(SpoolBypassed(len(waiting)))
            for item in waiting:
                self._route(item, out)
        elif not waiting and self.active:
            self.active = False
            out.append(SpoolDrained())
        return out

    # ------------------------------------------------------------------ lifetime
    def shutdown(self) -> list[Action[R]]:
        """Shutdown gives up on Kafka: nothing new is taken or produced; the
        overflow is abandoned (unacknowledged: the broker delivers it again)."""
        self.closing = True
        for item in self._overflow:
            self._abandon(item)
        self._overflow.clear()
        return []

    # ------------------------------------------------------------------ rules
    def _expected(self, item: Tracked[R], state: str) -> bool:
        """Whether ``item`` is where the event says; if not, the event lost a
        race and is counted as stale."""
        if item.state is state:
            return True
        self.stale += 1
        return False

    def _route(self, item: Tracked[R], out: list[Action[R]]) -> None:
        """A new record, or one handed back by the spool."""
        if self.active:
            self._to_spool(item, out)
        elif self.closing:
            self._abandon(item)
        elif self._overflow:
            item.state = PRODUCING
            self._refused(item, out)
        else:
            item.state = PRODUCING
            out.append(Produce(item))

    def _refused(self, item: Tracked[R], out: list[Action[R]]) -> None:
        """The producer cannot take it (queue full, or others wait before it)."""
        if self.usable:
            self._activate("the Kafka producer queue is full", out)
            self._to_spool(item, out)
        elif item.message.mid is not None:
            item.state = OVERFLOW
            self._overflow.append(item)
        else:
            self._drop(item, QUEUE_FULL_HINT, out)

    def _to_spool(self, item: Tracked[R], out: list[Action[R]]) -> None:
        if item.message.mid is None and self.refusing:
            self._drop(item, SPOOL_REFUSING_HINT, out)
            return
        item.state = SPOOLING
        self._spooling[item] = None
        out.append(ToSpool(item))

    def _activate(self, reason: str, out: list[Action[R]]) -> None:
        if self.spool_enabled and not self.active and not self.unavailable:
            self.active = True
            out.append(SpoolActive(reason))

    def _drop(self, item: Tracked[R], hint: str, out: list[Action[R]]) -> None:
        item.state = State.DROPPED
        out.append(Dropped(item, hint))
        self._finish(item.message, out)

    def _hold(self, item: Tracked[R], out: list[Action[R]]) -> None:
        item.state = State.HELD
        self._finish(item.message, out)

    def _abandon(self, item: Tracked[R]) -> None:
        item.state = State.ABANDONED

    def _finish(self, message: Message, out: list[Action[R]]) -> None:
        message.remaining -= 1
        if message.remaining:
            return
        self.pending -= 1
        ack = message.mid is not None and message.generation == self.generation
        out.append(Settled(message, ack))
