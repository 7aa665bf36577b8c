"""Progress-based health: rates, the wait for a Kafka acknowledgement and the
oldest spooled record's age, from made-up counter samples."""

from __future__ import annotations

import dataclasses

from bridge.console.progress import Counters, ProgressTracker, stalled_reasons
from bridge.ops.health import HealthState, not_ready_reasons

IDLE = Counters(received=0, acked=0, dead_letters=0, waiting=0, spool_appended=0, spool_pending=0)


def step(counters: Counters, **changes: int | None) -> Counters:
    return dataclasses.replace(counters, **changes)


def test_nothing_waiting_means_no_ages_and_no_stall() -> None:
    tracker = ProgressTracker()
    for second in range(10):
        tracker.observe(float(second), IDLE)
    assert tracker.ack_wait_s(9.0) is None
    assert tracker.oldest_spooled_s(9.0) is None
    assert stalled_reasons(None, None, 60) == []


def test_rates_are_per_second_over_the_window() -> None:
    tracker = ProgressTracker()
    for second in range(6):
        tracker.observe(
            float(second),
            step(IDLE, received=100 * second, acked=300 * second, dead_letters=second),
        )
    rates = tracker.rates()
    assert rates.messages_in == 100
    assert rates.records_out == 300
    assert rates.dead_letters == 1


def test_ack_wait_counts_from_when_records_began_to_wait_not_from_an_old_ack() -> None:
    tracker = ProgressTracker()
    tracker.observe(0.0, step(IDLE, acked=5))
    # Idle for a long time, then a record waits: no false stall at once.
    tracker.observe(1000.0, step(IDLE, acked=5, waiting=1))
    assert tracker.ack_wait_s(1000.5) == 0.5
    tracker.observe(1070.0, step(IDLE, acked=5, waiting=3))
    assert tracker.ack_wait_s(1070.0) == 70
    # An acknowledgement resets the wait even while others still wait.
    tracker.observe(1071.0, step(IDLE, acked=6, waiting=2))
    assert tracker.ack_wait_s(1072.0) == 1
    tracker.observe(1073.0, step(IDLE, acked=8, waiting=0))
    assert tracker.ack_wait_s(1073.0) is None


def test_oldest_spooled_record_age_follows_the_drain_in_append_order() -> None:
    tracker = ProgressTracker()
    tracker.observe(0.0, IDLE)
    tracker.observe(10.0, step(IDLE, spool_appended=5, spool_pending=5, waiting=5))
    tracker.observe(20.0, step(IDLE, spool_appended=8, spool_pending=8, waiting=8))
    assert tracker.oldest_spooled_s(25.0) == 15
    # The first five are drained: the oldest left was appended by t=20.
    tracker.observe(30.0, step(IDLE, spool_appended=8, spool_pending=3, waiting=3, acked=5))
    assert tracker.oldest_spooled_s(31.0) == 11
    tracker.observe(40.0, step(IDLE, spool_appended=8, spool_pending=0, acked=8))
    assert tracker.oldest_spooled_s(40.0) is None


def test_records_found_in_the_spool_at_start_count_from_the_first_sample() -> None:
    tracker = ProgressTracker()
    tracker.observe(100.0, step(IDLE, spool_pending=7, waiting=7))
    tracker.observe(101.0, step(IDLE, spool_appended=2, spool_pending=9, waiting=9))
    assert tracker.oldest_spooled_s(130.0) == 30


def test_marks_stay_bounded_and_ages_err_on_the_old_side() -> None:
    tracker = ProgressTracker()
    for second in range(10_000):
        tracker.observe(
            float(second),
            step(IDLE, spool_appended=second + 1, spool_pending=second + 1, waiting=1),
        )
    assert len(tracker._marks) <= 4096
    assert tracker.oldest_spooled_s(10_000.0) == 10_000


def test_stalled_reasons_past_the_bound_only_and_never_with_bound_zero() -> None:
    assert stalled_reasons(59.0, 59.0, 60) == []
    reasons = stalled_reasons(61.0, 90.0, 60)
    assert len(reasons) == 2 and all(r.startswith("stalled:") for r in reasons)
    assert stalled_reasons(1e6, 1e6, 0) == []


def test_a_stalled_bridge_is_not_ready_even_when_everything_is_connected() -> None:
    state = HealthState(
        started=True,
        stopping=False,
        mqtt_connected=True,
        kafka_state="up",
        spool="accepting",
        stalled=("stalled: records wait and Kafka acknowledged none for 400 s",),
    )
    assert not_ready_reasons(state) == list(state.stalled)
