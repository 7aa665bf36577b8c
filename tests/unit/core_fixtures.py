"""Helpers for the unit tests of the pure core: compile a config, run one message,
and read the outgoing records back as plain data to compare exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bridge.config_loader import load_config
from bridge.core.normalize import Normalizer, Now, Outcome
from bridge.core.plan import Plan, compile_config

REPO = Path(__file__).resolve().parents[2]
MAPPINGS = REPO / "mappings"

# The receive time every test passes in: 2026-02-25T14:01:01.123Z.
NOW = Now(1_772_028_061_123)


def plan_from(path: Path) -> Plan:
    """Load and compile a config file the way the daemon does."""
    return compile_config(load_config(path))


def normalizer_for(path: Path) -> Normalizer:
    return Normalizer(plan_from(path))


def records(outcome: Outcome) -> list[tuple[str, str | None, list[tuple[str, str]], bytes]]:
    """Each outgoing record as (topic, key, headers, value bytes), text decoded."""
    return [
        (r.topic, r.key.decode() if r.key is not None else None, _text(r.headers), r.value)
        for r in outcome.records
    ]


def _text(headers: list[tuple[str, bytes]]) -> list[tuple[str, str]]:
    return [(name, value.decode()) for name, value in headers]


def values(outcome: Outcome, topic: str) -> list[dict[str, Any]]:
    """The JSON values of the records for one topic, decoded, in order."""
    return [json.loads(r.value) for r in outcome.records if r.topic == topic]


def reasons(outcome: Outcome) -> list[tuple[str, str | None]]:
    """(reason, metric) of each dead letter, in order."""
    return [(v["reason"], v.get("metric")) for v in values(outcome, "telemetry.dlq")]
