"""Alarm rules from the catalog: one record when a condition starts, one when it
clears, never one per sample."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from bridge.core.alarms import AlarmEvaluator
from bridge.core.settings import AlarmRule, MetricSpec
from bridge.core.timestamps import format_ms

T0 = 1_772_028_000_000


def evaluator(*rules: AlarmRule, metric: str = "temperature") -> AlarmEvaluator:
    return AlarmEvaluator({metric: MetricSpec(alarms=list(rules)), "humidity": MetricSpec()})


def feed(
    alarms: AlarmEvaluator,
    samples: Sequence[tuple[int, float]],
    device: str = "DEV-001",
    metric: str = "temperature",
) -> list[tuple[int, str, object]]:
    """(seconds after T0, value) samples -> (seconds, state, value) of each alarm."""
    out: list[tuple[int, str, object]] = []
    for seconds, value in samples:
        ts_ms = T0 + seconds * 1000
        for record in alarms.observe("t1", device, metric, value, ts_ms, format_ms(ts_ms)):
            out.append((seconds, record.state, record.value))
    return out


def test_above_raises_once_and_clears_once() -> None:
    alarms = evaluator(AlarmRule(kind="above", threshold=30))
    samples = [(0, 25), (1, 30), (2, 31), (3, 35), (4, 32), (5, 29), (6, 28), (7, 31)]
    # 30 itself is not above 30; 31..32 keep it raised without new records.
    assert feed(alarms, samples) == [(2, "raised", 31), (5, "cleared", 29), (7, "raised", 31)]


def test_below() -> None:
    alarms = evaluator(AlarmRule(kind="below", threshold=5))
    assert feed(alarms, [(0, 6), (1, 4.5), (2, 3), (3, 5), (4, 6)]) == [
        (1, "raised", 4.5),
        (3, "cleared", 5),
    ]


def test_outside_a_band_on_either_side() -> None:
    alarms = evaluator(AlarmRule(kind="outside", low=10, high=20))
    samples = [(0, 15), (1, 9), (2, 25), (3, 10), (4, 20), (5, 21), (6, 15)]
    # Crossing from below the band to above it without passing through is one alarm.
    assert feed(alarms, samples) == [
        (1, "raised", 9),
        (3, "cleared", 10),
        (5, "raised", 21),
        (6, "cleared", 15),
    ]


def test_sustained_condition_raises_only_after_for_s() -> None:
    alarms = evaluator(AlarmRule(kind="above", threshold=30, for_s=60))
    samples = [
        (0, 31),  # breach starts
        (30, 33),
        (59, 34),  # 59 s: not yet
        (60, 32),  # 60 s of breach: raised
        (90, 35),
        (120, 20),  # cleared
    ]
    assert feed(alarms, samples) == [(60, "raised", 32), (120, "cleared", 20)]


def test_an_interrupted_breach_starts_the_sustain_time_again() -> None:
    alarms = evaluator(AlarmRule(kind="above", threshold=30, for_s=60))
    samples = [(0, 31), (50, 29), (55, 31), (100, 31), (114, 31), (115, 31)]
    # The dip at 50 s resets the clock: the breach holds from 55 s, so 115 s.
    # A dip before the alarm was raised clears nothing (nothing was raised).
    assert feed(alarms, samples) == [(115, "raised", 31)]


def test_series_are_independent_per_device_and_metric() -> None:
    alarms = evaluator(AlarmRule(kind="above", threshold=30))
    assert feed(alarms, [(0, 40)], device="A") == [(0, "raised", 40)]
    assert feed(alarms, [(0, 40)], device="B") == [(0, "raised", 40)]
    assert feed(alarms, [(1, 40)], device="A") == []
    assert feed(alarms, [(2, 20)], device="B") == [(2, "cleared", 20)]
    assert feed(alarms, [(3, 99)], metric="humidity") == []  # no rule for humidity


def test_several_rules_on_one_metric_each_have_their_own_state() -> None:
    alarms = evaluator(AlarmRule(kind="above", threshold=30), AlarmRule(kind="above", threshold=40))
    states = []
    for seconds, value in [(0, 35), (1, 45), (2, 35), (3, 20)]:
        ts_ms = T0 + seconds * 1000
        for r in alarms.observe("t1", "D", "temperature", value, ts_ms, format_ms(ts_ms)):
            states.append((seconds, r.threshold, r.state))
    assert states == [(0, 30, "raised"), (1, 40, "raised"), (2, 40, "cleared"), (3, 30, "cleared")]


def test_alarm_record_fields() -> None:
    alarms = evaluator(AlarmRule(kind="outside", low=10, high=20))
    (record,) = alarms.observe("t1", "DEV-001", "temperature", 25.5, T0, format_ms(T0))
    encoded: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(record))
    assert encoded == {
        "tenant": "t1",
        "device_serial_id": "DEV-001",
        "metric": "temperature",
        "value": 25.5,
        "threshold": [10.0, 20.0],
        "kind": "outside",
        "ts": "2026-02-25T14:00:00Z",
        "state": "raised",
    }
    # The order on the wire, which dict equality does not check.
    assert list(encoded) == [
        "tenant",
        "device_serial_id",
        "metric",
        "value",
        "threshold",
        "kind",
        "ts",
        "state",
    ]


def test_no_rules_means_a_false_evaluator() -> None:
    assert not AlarmEvaluator({"temperature": MetricSpec()})
    assert evaluator(AlarmRule(kind="above", threshold=1))
