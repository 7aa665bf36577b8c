"""Threshold alarms from the metric catalog, raised and cleared as edges.

A rule (``above``, ``below`` or ``outside`` a band, optionally sustained for
``for_s``) watches each (tenant, device, metric).  It emits one record when the
condition starts to hold (after the sustain time) and one when it stops, never
one per sample.  State lives in memory per series; time is the sample's event
time, passed in, so the evaluation is deterministic and testable.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.config import AlarmRule, MetricSpec
from bridge.core.records import AlarmRecord


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

    def __init__(self, catalog: dict[str, MetricSpec]) -> None:
        self.rules = {name: spec.alarms for name, spec in catalog.items() if spec.alarms}
        self._state: dict[tuple[str, str, str, int], _SeriesState] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def observe(
        self, tenant: str, device: str, metric: str, value: float, ts_ms: int, ts: str
    ) -> list[AlarmRecord]:
        """The alarm records this sample causes (usually none)."""
        rules = self.rules.get(metric)
        if not rules:
            return []
        out = []
        for index, rule in enumerate(rules):
            state = self._state.setdefault((tenant, device, metric, index), _SeriesState())
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
