"""Health judged by progress: rates, the age of the last Kafka acknowledgement
while records wait, and the age of the oldest spooled record.

A bridge that says "connected" while nothing moves is the failure users of
other bridges complain about most, so connection states are not enough.  Pure:
the daemon samples its counters about once a second and hands them here with
the time; nothing in this module reads a clock or a socket, so every answer is
unit-tested with made-up samples.

How the oldest spooled record's age is known without a timestamp in the spool:
the spool delivers in append order, so with ``appended`` records written so far
and ``pending`` still waiting, the oldest waiting one is number
``appended - pending``.  Each sample remembers when the appended count first
reached its value; the oldest waiting record was appended no later than the
first sample whose count passed its number.  Records found in the spool at
start count as appended at the first sample (their age is "at least" that).
The precision is the sampling interval.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: Rates are averaged over this many seconds of samples.
RATE_WINDOW_S = 5.0
#: Bound on the remembered append marks (one per sample with new appends).
MAX_MARKS = 4096


@dataclass(frozen=True, slots=True)
class Counters:
    """One sample of the daemon's counters.

    ``acked``: records Kafka acknowledged (straight or drained from the spool);
    ``waiting``: what Kafka has not acknowledged yet (MQTT messages whose
    records are not held, and spooled records);
    ``spool_appended``: records written to the spool since start;
    ``spool_pending``: records in the spool now, None without a spool.
    """

    received: int
    acked: int
    dead_letters: int
    waiting: int
    spool_appended: int
    spool_pending: int | None


@dataclass(frozen=True, slots=True)
class Rates:
    messages_in: float
    records_out: float
    dead_letters: float


class ProgressTracker:
    """Fed one :class:`Counters` per sample; answers ages and rates."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, Counters]] = deque()
        # Since when records have waited without an acknowledgement (None: nothing waits).
        self._waiting_since: float | None = None
        # (appended count reached, when first seen), oldest first.
        self._marks: deque[tuple[int, float]] = deque()
        self._base = 0  # spool records found at the first sample
        self._last: Counters | None = None

    def observe(self, now: float, counters: Counters) -> None:
        last = self._last
        if last is None:
            self._base = counters.spool_pending or 0
            if self._base:
                self._marks.append((self._base, now))
        self._track_acks(now, counters, last)
        self._track_spool(now, counters)
        self._samples.append((now, counters))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()
        self._last = counters

    def _track_acks(self, now: float, counters: Counters, last: Counters | None) -> None:
        if counters.waiting <= 0:
            self._waiting_since = None
        elif self._waiting_since is None or (last is not None and counters.acked > last.acked):
            self._waiting_since = now

    def _track_spool(self, now: float, counters: Counters) -> None:
        pending = counters.spool_pending
        if not pending:
            self._marks.clear()
            return
        appended = self._base + counters.spool_appended
        marks = self._marks
        if not marks or marks[-1][0] < appended:
            marks.append((appended, now))
        # Records up to number ``gone`` have left the spool.  The newest mark
        # (count = appended) always stays while something is pending.
        gone = appended - pending
        while len(marks) > 1 and marks[0][0] <= gone:
            marks.popleft()
        if len(marks) > MAX_MARKS:
            # Merging two neighbours keeps the older time: ages err on the old side.
            first = marks.popleft()
            marks[0] = (marks[0][0], first[1])

    def ack_wait_s(self, now: float) -> float | None:
        """Seconds since the last Kafka acknowledgement (or since records began
        to wait, if later), while records wait; None when none do."""
        return None if self._waiting_since is None else max(0.0, now - self._waiting_since)

    def oldest_spooled_s(self, now: float) -> float | None:
        """Age of the oldest record in the spool; None when it is empty."""
        last = self._last
        if last is None or not last.spool_pending or not self._marks:
            return None
        return max(0.0, now - self._marks[0][1])

    def rates(self) -> Rates:
        """Per second over the last few seconds of samples."""
        if len(self._samples) < 2:
            return Rates(0.0, 0.0, 0.0)
        (t0, a), (t1, b) = self._samples[0], self._samples[-1]
        span = t1 - t0
        if span <= 0:
            return Rates(0.0, 0.0, 0.0)
        return Rates(
            messages_in=(b.received - a.received) / span,
            records_out=(b.acked - a.acked) / span,
            dead_letters=(b.dead_letters - a.dead_letters) / span,
        )


def stalled_reasons(
    ack_wait_s: float | None, oldest_spooled_s: float | None, bound_s: float
) -> list[str]:
    """The ``stalled`` reasons of ``/readyz``: nothing acknowledged, or a
    spooled record waiting, for longer than ``bound_s`` (0: never stalled)."""
    if bound_s <= 0:
        return []
    reasons = []
    if ack_wait_s is not None and ack_wait_s > bound_s:
        reasons.append(f"stalled: records wait and Kafka acknowledged none for {ack_wait_s:.0f} s")
    if oldest_spooled_s is not None and oldest_spooled_s > bound_s:
        reasons.append(f"stalled: the oldest spooled record waits for {oldest_spooled_s:.0f} s")
    return reasons
