"""A configured endpoint's filters, actions, envelopes and readers
(bridge.core.stream_filters, stream_envelope, stream_read), without I/O."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from bridge.core.claims import Identity
from bridge.core.events import FilterError, Filters, MalformedRecord, TenantForbidden
from bridge.core.extract import make_getter
from bridge.core.json_template import compile_template
from bridge.core.settings import Source, StreamActions, StreamFilters
from bridge.core.stream_envelope import (
    DEFAULT_MESSAGE_TEMPLATE,
    ENVELOPE_NAMES,
    WELCOME_NAMES,
    EnvelopeRules,
    render_event,
    render_welcome,
)
from bridge.core.stream_filters import ActionRules, QueryRules, query_filters
from bridge.core.stream_read import JsonReader, StreamItem, read_clean

PORTAL_QUERY = QueryRules.from_settings(
    StreamFilters(device=["device_id", "device_ids"], metric=["metric"], group=["group"])
)
ECHO = ActionRules(StreamActions(device_fields=["device_id", "device_ids"], replies="echo"))
CLIENT = Identity("client", "t1", None)
EVERYONE = Identity("client", None, None)


def reply(data: bytes) -> Any:
    return json.loads(data)


def test_aliases_and_comma_lists_build_one_filter() -> None:
    query = {"device_ids": ["A,B"], "device_id": ["C"], "metric": ["m1, m2"]}
    filters = query_filters(PORTAL_QUERY, CLIENT, query)
    assert filters == Filters("t1", frozenset("ABC"), frozenset({"m1", "m2"}))
    assert query_filters(PORTAL_QUERY, CLIENT, {}) == Filters("t1")
    assert query_filters(PORTAL_QUERY, CLIENT, {"group": ["pumps"]}).groups == {"pumps"}


def test_tenant_scope() -> None:
    with pytest.raises(TenantForbidden):
        query_filters(PORTAL_QUERY, CLIENT, {"tenant": ["t2"]})
    assert query_filters(PORTAL_QUERY, EVERYONE, {"tenant": ["t2"]}).tenant == "t2"
    assert query_filters(PORTAL_QUERY, EVERYONE, {}).tenant is None
    with pytest.raises(FilterError):
        query_filters(PORTAL_QUERY, EVERYONE, {"tenant": ["a,b"]})


def test_echo_actions_reply_with_what_the_client_sent() -> None:
    filters = Filters("t1")
    filters, out = ECHO.apply(filters, b'{"action": "subscribe", "device_id": "A"}')
    assert reply(out) == {"type": "subscribed", "device_id": "A"}
    filters, out = ECHO.apply(filters, b'{"action": "subscribe", "device_ids": ["B", "C"]}')
    assert reply(out) == {"type": "subscribed", "device_ids": ["B", "C"]}
    assert filters.devices == frozenset("ABC")
    filters, out = ECHO.apply(filters, b'{"action": "unsubscribe", "device_id": "A"}')
    assert reply(out) == {"type": "unsubscribed", "device_id": "A"}
    assert filters.devices == frozenset("BC")
    filters, out = ECHO.apply(filters, b'{"action": "set_metrics", "metrics": ["m1"]}')
    assert reply(out) == {"type": "metrics_updated", "metrics": ["m1"]}
    assert filters.metrics == {"m1"}
    filters, out = ECHO.apply(filters, b'{"action": "clear_filters"}')
    assert reply(out) == {"type": "filters_cleared"}
    assert filters == Filters("t1")
    same, out = ECHO.apply(filters, b'{"action": "dance"}')
    assert same is filters
    assert reply(out) == {"type": "error", "message": "Unknown action: dance"}


@pytest.mark.parametrize(
    "message",
    [b"not json", b"[1]", b'{"action": "subscribe"}', b'{"action": "subscribe", "device_id": 5}'],
)
def test_bad_actions_are_errors_and_change_nothing(message: bytes) -> None:
    filters = Filters("t1", frozenset("A"))
    same, out = ECHO.apply(filters, message)
    assert same is filters
    assert reply(out)["type"] == "error"


def test_renamed_actions_and_bridge_replies() -> None:
    rules = ActionRules(StreamActions(field="op", subscribe="watch", subscribed="watching"))
    filters, out = rules.apply(Filters(None), b'{"op": "watch", "group": "pumps"}')
    assert reply(out)["type"] == "watching"
    assert reply(out)["filters"]["groups"] == ["pumps"]
    assert filters.selects("t", "D1", ["m"], ["pumps"])
    assert not filters.selects("t", "D2", ["m"], ["fans"])


def test_selects_any_requested_metric_and_devices_or_groups() -> None:
    filters = Filters("t1", frozenset({"A"}), frozenset({"m1"}), frozenset({"g"}))
    assert filters.selects("t1", "A", ["m0", "m1"])
    assert filters.selects("t1", "B", ["m1"], ["g"])
    assert not filters.selects("t1", "B", ["m1"], ["h"])
    assert not filters.selects("t1", "A", ["m2"])
    assert not filters.selects("t2", "A", ["m1"])


ITEM = StreamItem("t1", "D1", {"m1": 1.5, "m2": True}, "2026-01-01T00:00:00.000Z", "a/b", b"{}")


def test_message_envelope_carries_only_requested_metrics() -> None:
    template, errors = compile_template(DEFAULT_MESSAGE_TEMPLATE, ENVELOPE_NAMES, "t")
    assert not errors
    rules = EnvelopeRules("message", template)
    whole = json.loads(render_event(rules, ITEM, None, "e", "s") or b"")
    assert whole == {
        "type": "telemetry",
        "device_id": "D1",
        "tenant_id": "t1",
        "metrics": {"m1": 1.5, "m2": True},
        "timestamp": "2026-01-01T00:00:00.000Z",
        "topic": "a/b",
    }
    assert json.loads(render_event(rules, ITEM, frozenset({"m2"}), "e", "s") or b"")["metrics"] == {
        "m2": True
    }
    assert render_event(rules, ITEM, frozenset({"m9"}), "e", "s") is None


def test_update_and_passthrough_envelopes() -> None:
    item = StreamItem("t", "d", {}, None, None, b'{"x":1}')
    assert render_event(EnvelopeRules("passthrough", None), item, None, "e", "s") == b'{"x":1}'
    update = json.loads(render_event(EnvelopeRules("update", None), item, None, "e1", "s1") or b"")
    assert update == {
        "event_id": "e1",
        "type": "telemetry.update",
        "schema_version": 1,
        "sent_at": "s1",
        "data": {"x": 1},
    }


def test_welcome_template_and_unknown_placeholders() -> None:
    raw = {"type": "connected", "tenant_id": "{tenant}", "filters": {"device_ids": "{devices}"}}
    template, errors = compile_template(raw, WELCOME_NAMES, "streams[0].welcome")
    assert not errors
    out = json.loads(render_welcome(template, Filters("t1", frozenset({"B", "A"})), "client"))
    assert out == {"type": "connected", "tenant_id": "t1", "filters": {"device_ids": ["A", "B"]}}
    _, errors = compile_template({"a": ["{nope}"]}, WELCOME_NAMES, "streams[0].welcome")
    assert errors == [
        "streams[0].welcome.a[0]: unknown placeholder {nope} (known: devices, filters, groups, "
        "metrics, role, tenant)"
    ]


GPS = JsonReader(
    make_getter(Source(const="default")),
    make_getter(Source(field="data.DEVICE_ID")),
    None,
    None,
    None,
    (),
    256,
)


def test_json_reader_takes_any_record_with_a_device() -> None:
    value = b'{"data": {"DEVICE_ID": 848086072, "LATITUD": "+20.65"},\n "uuid": "u"}'
    item = GPS(value, None, 0)
    assert (item.tenant, item.device) == ("default", "848086072")
    assert b"\n" not in item.json
    assert json.loads(item.json) == json.loads(value)
    for bad in (b"", b"nope", b"[]", b'{"data": {}}', b'{"data": {"DEVICE_ID": ""}}'):
        with pytest.raises(MalformedRecord):
            GPS(bad, None, 0)


def test_clean_reader() -> None:
    record = {
        "tenant": "t1",
        "device_serial_id": "D",
        "metric": "m",
        "metric_type": "numeric",
        "value": 2,
        "ts": "x",
        "received_at": "y",
        "schema_version": 1,
    }
    item = read_clean(msgspec.json.encode(record))
    assert (item.tenant, item.device, item.metrics, item.topic) == ("t1", "D", {"m": 2}, None)
    with pytest.raises(MalformedRecord):
        read_clean(b'{"tenant": 1}')
