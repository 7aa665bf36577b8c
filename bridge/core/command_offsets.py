"""When a command record's Kafka offset may be committed: a sans-IO state machine.

The Kafka-to-MQTT path (:mod:`bridge.commands.relay`) promises at-least-once: a
record's offset is committed only once the MQTT broker acknowledged its
publish (PUBACK for QoS 1), or its dead-letter record was delivered to Kafka.
Offsets are committed per partition for the longest prefix of records that
are done, so a crash re-publishes at most what was in flight.

This module owns that rule and nothing else; it never touches a socket, a
thread or a clock (the style of h11: events in, actions out).  The adapter
feeds it what happened:

- :meth:`CommandOffsets.consumed`: a record was consumed; the answer is the
  action to take for it, :class:`Publish` or :class:`ProduceDeadLetter` (decided by
  the pure :class:`bridge.core.command_plan.CommandPlan`);
- :meth:`CommandOffsets.acknowledged`: the broker acknowledged a publish, or
  Kafka a dead letter (in any order: PUBACKs of QoS 1 publishes may come
  back out of order across partitions and reconnects);
- :meth:`CommandOffsets.dead_letter_failed` /
  :meth:`CommandOffsets.dead_letter_not_taken`: a dead letter was not
  delivered, or the producer's queue was full: it is made again (at once, or
  with :meth:`CommandOffsets.retries` before the next batch), its offset stays
  uncommitted meanwhile;
- :meth:`CommandOffsets.revoked`: a rebalance took partitions away: another
  consumer owns them now and consumes their unacknowledged records again,
  so their bookkeeping is forgotten and late acknowledgements are ignored;
- :meth:`CommandOffsets.commits`: the :class:`Commit` actions due now;
- :meth:`CommandOffsets.shutdown`: the last commits; nothing is tracked after.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from bridge.core.coerce import InputRejected
from bridge.core.command_plan import CommandMessage, CommandPlan
from bridge.core.normalize import INTERNAL_ERROR


class InFlight:
    """One consumed record until its publish or dead letter is acknowledged:
    the token the adapter hands back with each event."""

    __slots__ = ("done", "offset", "partition", "topic")

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.done = False


@dataclass(frozen=True, slots=True)
class Publish:
    """Action: publish ``message`` to MQTT, then report :meth:`CommandOffsets.acknowledged`."""

    record: InFlight
    message: CommandMessage


@dataclass(frozen=True, slots=True)
class ProduceDeadLetter:
    """Action: produce a dead letter for ``record`` to Kafka, then report how it went."""

    record: InFlight
    refusal: InputRejected


@dataclass(frozen=True, slots=True)
class Commit:
    """Action: commit ``offset`` (the next one to read) on ``topic``/``partition``."""

    topic: str
    partition: int
    offset: int


class CommandOffsets:
    """The commit bookkeeping of one ``[[commands]]`` mapping."""

    def __init__(self, plan: CommandPlan) -> None:
        self.plan = plan
        self._pending: dict[tuple[str, int], deque[InFlight]] = {}
        self._unsent: list[ProduceDeadLetter] = []
        self._closed = False

    def consumed(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> Publish | ProduceDeadLetter | None:
        """A record arrived: what to do with it (None after shutdown: it is
        consumed again by the next run)."""
        if self._closed:
            return None
        record = InFlight(topic, partition, offset)
        self._pending.setdefault((topic, partition), deque()).append(record)
        try:
            return Publish(record, self.plan.resolve(value, headers))
        except InputRejected as refusal:
            return ProduceDeadLetter(record, refusal)
        except Exception as exc:
            # The crash barrier: a record the bridge fails on (a bug) is set
            # aside like any refused one, so its offset can be committed; ended
            # here, the daemon would fail on it again after every restart.
            detail = f"{type(exc).__name__}: the bridge failed on this record ({str(exc)[:200]!r})"
            return ProduceDeadLetter(record, InputRejected(INTERNAL_ERROR, detail))

    def acknowledged(self, record: InFlight) -> None:
        """Its publish was acknowledged by the broker, or its dead letter by Kafka."""
        record.done = True

    def dead_letter_failed(self, action: ProduceDeadLetter) -> ProduceDeadLetter | None:
        """Kafka gave up on the dead letter: make it again (its offset waits)."""
        if self._closed or not self._tracked(action.record):
            return None
        return action

    def dead_letter_not_taken(self, action: ProduceDeadLetter) -> None:
        """The producer's queue was full: try again with :meth:`retries`."""
        if not self._closed and self._tracked(action.record):
            self._unsent.append(action)

    def retries(self) -> list[ProduceDeadLetter]:
        """Dead letters to produce again now (before each consume batch)."""
        unsent, self._unsent = self._unsent, []
        return [action for action in unsent if self._tracked(action.record)]

    def revoked(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Another consumer owns these partitions now: forget their records."""
        for key in partitions:
            self._pending.pop(key, None)

    def commits(self) -> list[Commit]:
        """Per partition, the offset after its longest acknowledged prefix
        (each prefix is committed once: it leaves the bookkeeping)."""
        commits = []
        for (topic, partition), queue in self._pending.items():
            last = None
            while queue and queue[0].done:
                last = queue.popleft().offset
            if last is not None:
                commits.append(Commit(topic, partition, last + 1))
        return commits

    def shutdown(self) -> list[Commit]:
        """The last commits; records still in flight are consumed again later."""
        commits = self.commits()
        self._closed = True
        self._pending.clear()
        self._unsent.clear()
        return commits

    @property
    def in_flight(self) -> int:
        """Records consumed and not committed yet."""
        return sum(len(queue) for queue in self._pending.values())

    def _tracked(self, record: InFlight) -> bool:
        queue = self._pending.get((record.topic, record.partition))
        return queue is not None and any(r is record for r in queue)
