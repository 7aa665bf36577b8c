"""Kafka records of a configured endpoint, at their worst: each reader
(clean, mapping, JSON rules) answers with a :class:`StreamItem` or
:class:`MalformedRecord`, the envelope renders every item it returns, and the
action rules answer anything with a reply; never another exception."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config_loader import load_config
from bridge.core.events import Filters, MalformedRecord
from bridge.core.plan import compile_config
from bridge.core.stream_envelope import EnvelopeRules, render_event
from bridge.core.stream_read import Reader
from tests.unit.test_stream_plan import REPO

_json: Any = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)

_shaped = st.fixed_dictionaries(
    {},
    optional={
        "data": st.dictionaries(st.sampled_from(["DEVICE_ID", "LATITUD", "x"]), _json, max_size=3),
        "metrics": st.dictionaries(st.text(max_size=6), _json, max_size=3),
        "schema_version": _json,
        "device": _json,
        "ts": _json,
        "tenant": _json,
        "device_serial_id": _json,
        "metric": _json,
        "value": _json,
    },
)


def _endpoints(name: str) -> tuple[Reader, EnvelopeRules, Any]:
    (plan,) = compile_config(load_config(REPO / "examples" / "streams" / f"{name}.toml")).streams
    return plan.reader, plan.envelope, plan.actions


READERS = [_endpoints(n) for n in ("channels", "gps-passthrough", "customer-portal")]
TOPICS = [b"tenant/t1/device/D1/telemetry", b"tenant/t1/device/", b"\xff", b"#"]


def _check(value: bytes, headers: list[tuple[str, bytes]]) -> None:
    for reader, envelope, _ in READERS:
        try:
            item = reader(value, headers, 1_700_000_000_000)
        except MalformedRecord:
            continue
        for wanted in (None, frozenset({"temperature"})):
            body = render_event(envelope, item, wanted, "e", "s")
            if body is not None:
                msgspec.json.decode(body)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(TOPICS))
def test_random_bytes(value: bytes, topic: bytes) -> None:
    _check(value, [("mqtt_topic", topic)])


@settings(max_examples=80, deadline=None)
@given(st.one_of(_shaped, _json), st.sampled_from(TOPICS))
def test_random_json(doc: Any, topic: bytes) -> None:
    _check(json.dumps(doc).encode(), [("mqtt_topic", topic)])


@settings(max_examples=60, deadline=None)
@given(st.one_of(_shaped, _json, st.text(max_size=50)))
def test_random_actions(doc: Any) -> None:
    message = doc if isinstance(doc, str) else json.dumps(doc)
    for _, _, actions in READERS:
        if actions is None:
            continue
        filters, reply = actions.apply(Filters("t1"), message)
        assert isinstance(msgspec.json.decode(reply), dict)
        assert filters.tenant == "t1"


def test_no_header_and_huge_numbers() -> None:
    _check(b'{"schema_version": 1, "metrics": {"t": 1}}', [])
    _check(json.dumps({"data": {"DEVICE_ID": 10**300}, "ts": 10**300}).encode(), [])
