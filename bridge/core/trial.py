"""What the mappings make of one message, without brokers: the records it
would become, for ``edge-bridge try-mapping`` and the console's "try a
payload" form.  Both call :func:`try_message`, so the page shows exactly what
the command prints.

A fresh :class:`Normalizer` per trial: a trial must neither see nor change the
running daemon's state (duplicate detection, raised alarms), and nothing is
produced.
"""

from __future__ import annotations

from typing import Any

import msgspec

from bridge.core.normalize import Normalizer, Now
from bridge.core.plan import Plan
from bridge.core.records import Outgoing


class Trial(msgspec.Struct):
    """The outcome of one trial.  ``mapping`` None: no mapping matches the
    topic.  ``dead_letters``: the reasons of the dead-letter records among
    ``records``."""

    mapping: str | None
    duplicate: bool
    records: list[dict[str, Any]]
    dead_letters: list[str]


def describe_record(record: Outgoing) -> dict[str, Any]:
    """A record as JSON data: the value decoded when it is JSON, else as text."""
    try:
        value: object = msgspec.json.decode(record.value)
    except msgspec.DecodeError:
        value = record.value.decode("utf-8", "replace")
    return {
        "topic": record.topic,
        "key": record.key.decode("utf-8", "replace") if record.key else None,
        "headers": {k: v.decode("utf-8", "replace") for k, v in record.headers},
        "value": value,
    }


def try_message(plan: Plan, topic: str, payload: bytes, now_ms: int) -> Trial:
    """Run one message through ``plan`` as ingest would at ``now_ms``."""
    outcome = Normalizer(plan).process(topic, payload, Now(now_ms))
    return Trial(
        mapping=outcome.mapping,
        duplicate=outcome.duplicate,
        records=[describe_record(r) for r in outcome.records],
        dead_letters=list(outcome.dead),
    )
