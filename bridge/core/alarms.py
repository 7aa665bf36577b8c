"""Threshold alarms from the metric catalog, raised and cleared as edges.

A rule (``above``, ``below`` or ``outside`` a band, optionally sustained for
``for_s``) watches each (tenant, device, metric).  It emits one record when the
condition starts to hold (after the sustain time) and one when it stops, never
one per sample.  State lives in memory per series; time is the sample's event
time, passed in, so the evaluation is deterministic and testable.

The states are bounded like the other caches of the core: at most
``limits.max_alarm_series`` (default 100,000) series, about 250 bytes each
(measured with tracemalloc: 100,000 series of 50,000 devices, 24 MiB), the
least recently seen forgotten first and counted.  A forgotten series starts again from "not
breached": a raised alarm whose series was forgotten is not cleared, and one
still breached is raised again when its device reports next.  Size the bound
above the number of (device, rule) pairs of the fleet.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from bridge.core.records import AlarmRecord
from bridge.core.settings import AlarmRule, MetricSpec


@dataclass(slots=True)
class _SeriesState:
    since_ms: int | None = None  # when the condition started to hold
    raised: bool = False


def _breached(rule: AlarmRule, value: float) -> bool:
    if rule.kind == "above":
        return rule.threshold is not None and value > rule.threshold
    if rule.kind == "below":
        return rule.threshold is not None and value < rule.threshold
    assert rule.low is not None and rule.high is not None
    return value < rule.low or value > rule.high


def _threshold(rule: AlarmRule) -> float | list[float]:
    if rule.kind == "outside":
        assert rule.low is not None and rule.high is not None
        return [rule.low, rule.high]
    assert rule.threshold is not None
    return rule.threshold


class AlarmEvaluator:
    """Feeds numeric samples through the catalog's alarm rules."""

    def __init__(self, catalog: dict[str, MetricSpec], max_series: int = 100_000) -> None:
        self.rules = {name: spec.alarms for name, spec in catalog.items() if spec.alarms}
        self.max_series = max_series
        self.evicted = 0  # series forgotten to stay within max_series
        self._state: OrderedDict[tuple[str, str, str, int], _SeriesState] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __len__(self) -> int:
        """The series whose state is kept."""
        return len(self._state)

    def resize(self, max_series: int) -> None:
        """A new bound (a reload); the least recently seen series beyond it go."""
        self.max_series = max_series
        while len(self._state) > max_series:
            self._state.popitem(last=False)
            self.evicted += 1

    def _series(self, key: tuple[str, str, str, int]) -> _SeriesState:
        """The state of a series, now the most recently seen."""
        states = self._state
        state = states.get(key)
        if state is not None:
            states.move_to_end(key)
            return state
        state = states[key] = _SeriesState()
        if len(states) > self.max_series:
            states.popitem(last=False)
            self.evicted += 1
        return state

    def observe(
        self, tenant: str, device: str, metric: str, value: float, ts_ms: int, ts: str
    ) -> list[AlarmRecord]:
        """The alarm records this sample causes (usually none)."""
        rules = self.rules.get(metric)
        if not rules:
            return []
        out = []
        for index, rule in enumerate(rules):
            state = self._series((tenant, device, metric, index))
            if _breached(rule, value):
                if state.since_ms is None:
                    state.since_ms = ts_ms
                sustained = ts_ms - state.since_ms >= rule.for_s * 1000
                if not state.raised and sustained:
                    state.raised = True
                    out.append(self._record(rule, tenant, device, metric, value, ts, "raised"))
            else:
                state.since_ms = None
                if state.raised:
                    state.raised = False
                    out.append(self._record(rule, tenant, device, metric, value, ts, "cleared"))
        return out

    @staticmethod
    def _record(
        rule: AlarmRule, tenant: str, device: str, metric: str, value: float, ts: str, state: str
    ) -> AlarmRecord:
        return AlarmRecord(
            tenant=tenant,
            device_serial_id=device,
            metric=metric,
            value=value,
            threshold=_threshold(rule),
            kind=rule.kind,
            ts=ts,
            state="raised" if state == "raised" else "cleared",
        )
