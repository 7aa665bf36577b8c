"""Drop repeats of an event id seen within a time window, in bounded memory.

Devices that retry (QoS 1 redelivery, a gateway resending its buffer) send the
same event twice.  A mapping with ``dedup`` keeps the ids it has seen for
``window_ms``; memory is capped at ``max_entries`` ids, the oldest evicted first,
so a flood of unique ids costs at most that many entries (about 100 bytes each
in CPython: 100,000 ids are about 10 MiB).
"""

from __future__ import annotations

from collections import OrderedDict


class Deduplicator:
    """Remembers event ids with the time they were first seen (epoch ms)."""

    def __init__(self, window_ms: int, max_entries: int) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: OrderedDict[str, int] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, event_id: str, now_ms: int) -> bool:
        """True when ``event_id`` was seen within the window; otherwise remember it."""
        self._expire(now_ms)
        first = self._seen.get(event_id)
        if first is not None:
            return True
        self._seen[event_id] = now_ms
        if len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
            self.evicted += 1
        return False

    def _expire(self, now_ms: int) -> None:
        """Ids are inserted in time order, so expired ones sit at the front."""
        horizon = now_ms - self.window_ms
        seen = self._seen
        while seen:
            oldest_id, first = next(iter(seen.items()))
            if first > horizon:
                return
            del seen[oldest_id]
