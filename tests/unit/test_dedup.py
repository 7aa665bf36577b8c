"""The event-id window and its memory cap."""

from __future__ import annotations

from bridge.core.dedup import Deduplicator


def test_a_repeat_within_the_window_is_seen_and_after_it_is_new() -> None:
    dedup = Deduplicator(window_ms=60_000, max_entries=100)
    assert dedup.seen("evt-1", 1_000) is False
    assert dedup.seen("evt-1", 1_001) is True
    assert dedup.seen("evt-1", 60_999) is True  # 59.999 s after the first sighting
    assert dedup.seen("evt-1", 61_000) is False  # exactly the window later: new again
    assert dedup.seen("evt-1", 61_500) is True  # ... and remembered from then on


def test_a_repeat_does_not_extend_the_window() -> None:
    dedup = Deduplicator(window_ms=10, max_entries=100)
    assert not dedup.seen("a", 0)
    assert dedup.seen("a", 9)
    assert not dedup.seen("a", 10)


def test_different_ids_are_independent() -> None:
    dedup = Deduplicator(window_ms=60_000, max_entries=100)
    assert [dedup.seen(i, 0) for i in ("a", "b", "c")] == [False, False, False]
    assert [dedup.seen(i, 1) for i in ("a", "b", "c", "d")] == [True, True, True, False]


def test_expired_ids_are_forgotten() -> None:
    dedup = Deduplicator(window_ms=100, max_entries=100)
    for n in range(10):
        dedup.seen(f"e{n}", n)
    assert len(dedup) == 10
    dedup.seen("late", 105)  # e0..e5 are 100 ms old or more
    assert len(dedup) == 5  # e6..e9 and late
    assert dedup.evicted == 0  # expiry is not eviction


def test_the_cap_evicts_the_oldest_first() -> None:
    dedup = Deduplicator(window_ms=60_000, max_entries=3)
    for event_id in ("a", "b", "c", "d"):
        assert not dedup.seen(event_id, 0)
    assert len(dedup) == 3
    assert dedup.evicted == 1
    # "a" was pushed out, so a repeat of it within the window gets through
    # (and pushes out "b"); the newer ids are still recognised.
    assert dedup.seen("a", 1) is False
    assert dedup.seen("d", 1) is True
    assert dedup.seen("c", 1) is True
    assert dedup.seen("b", 1) is False
    assert len(dedup) == 3
    assert dedup.evicted == 3


def test_a_flood_of_unique_ids_stays_within_the_cap() -> None:
    dedup = Deduplicator(window_ms=60_000, max_entries=1000)
    for n in range(10_000):
        dedup.seen(str(n), n // 100)
    assert len(dedup) == 1000
    assert dedup.evicted == 9000
