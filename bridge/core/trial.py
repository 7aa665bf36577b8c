"""What the mappings make of one message, without brokers: the records it
would become, for ``edge-bridge try-mapping`` and the console's "try a
payload" form.  Both call :func:`try_message`, so the page shows exactly what
the command prints.

A fresh :class:`Normalizer` per trial: a trial must neither see nor change the
running daemon's state (duplicate detection, raised alarms), and nothing is
produced.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from bridge.core.normalize import Normalizer, Now, payload_text
from bridge.core.plan import Plan
from bridge.core.records import Outgoing
from bridge.core.sparkplug_state import birth_topic, explain


class Trial(msgspec.Struct):
    """The outcome of one trial.  ``mapping`` None: no mapping matches the
    topic.  ``dead_letters``: the reasons of the dead-letter records among
    ``records``."""

    mapping: str | None
    duplicate: bool
    records: list[dict[str, Any]]
    dead_letters: list[str]
    # Sparkplug B mappings: the alias tables and what DATA aliases resolve to.
    sparkplug: dict[str, object] | None = None


def describe_record(record: Outgoing, binary: bool = False) -> dict[str, Any]:
    """A record as JSON data: the value decoded when it is JSON, else as text,
    or as ``{"base64": ...}`` when it is ``binary`` (Sparkplug's protobuf) or
    not UTF-8."""
    try:
        value: object = msgspec.json.decode(record.value)
    except msgspec.DecodeError:
        text, encoding = payload_text(record.value)
        if binary or encoding == "base64":
            value = {"base64": base64.b64encode(record.value).decode("ascii")}
        else:
            value = text
    return {
        "topic": record.topic,
        "key": record.key.decode("utf-8", "replace") if record.key else None,
        "headers": {k: v.decode("utf-8", "replace") for k, v in record.headers},
        "value": value,
    }


def try_message(
    plan: Plan, topic: str, payload: bytes, now_ms: int, birth: bytes | None = None
) -> Trial:
    """Run one message through ``plan`` as ingest would at ``now_ms``.  For a
    Sparkplug B mapping, ``birth`` (an NBIRTH or DBIRTH payload of the same
    node or device) is applied first, so the message's aliases resolve."""
    normalizer = Normalizer(plan)
    now = Now(now_ms)
    if birth is not None:
        normalizer.process(birth_topic(topic), birth, now)
    outcome = normalizer.process(topic, payload, now)
    # A Sparkplug payload is binary even when its bytes happen to be UTF-8.
    binary = any(m.name == outcome.mapping and m.sparkplug for m in plan.mappings)
    sparkplug = normalizer.sparkplug
    return Trial(
        mapping=outcome.mapping,
        duplicate=outcome.duplicate,
        records=[describe_record(r, binary) for r in outcome.records],
        dead_letters=list(outcome.dead),
        sparkplug=explain(sparkplug.state) if sparkplug is not None else None,
    )
