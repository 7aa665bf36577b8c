"""The stream's wire format: cursors, envelopes, filters and filter-changing
messages (bridge.core.events), without sockets."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from bridge.core.events import (
    MAX_FILTER_ITEMS,
    CursorError,
    FilterError,
    Filters,
    MalformedRecord,
    ReplayRange,
    TenantForbidden,
    apply_action,
    connected_message,
    decode_cursor,
    encode_cursor,
    encode_event,
    initial_filters,
    iso_utc,
    kafka_event_id,
    lagged_message,
    parse_record,
    ping_message,
    replay_ranges,
    sse_comment,
    sse_frame,
)

RECORD = {
    "tenant": "t1",
    "device_serial_id": "DEV-001",
    "metric": "temperature",
    "metric_type": "numeric",
    "value": 23.5,
    "unit": "°C",
    "ts": "2026-02-25T14:00:00Z",
    "received_at": "2026-02-25T14:00:00.120Z",
    "schema_version": 1,
}


def decoded(data: bytes | str) -> Any:
    return json.loads(data)


# --------------------------------------------------------------------------- cursor
def test_cursor_round_trip_covers_every_partition_of_every_topic() -> None:
    positions = {"telemetry.clean": {3: 5, 0: 17, 1: 9, 2: 42}, "site-2_clean": {0: 0}}
    text = encode_cursor(positions)
    assert text == "site-2_clean@0:0;telemetry.clean@0:17,1:9,2:42,3:5"
    assert decode_cursor(text) == positions


def test_cursor_leaves_out_topics_without_partitions() -> None:
    assert encode_cursor({"a": {}, "b": {0: 1}}) == "b@0:1"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "telemetry.clean",
        "@0:1",
        "t@",
        "t@0",
        "t@0:x",
        "t@-1:3",
        "t@0:1,0:2",
        "t@0:1;t@1:2",
        "local:17",
        "t@0:1;" + "x" * 9000,
    ],
)
def test_cursor_rejects_what_it_did_not_write(text: str) -> None:
    with pytest.raises(CursorError):
        decode_cursor(text)


def test_kafka_event_id_names_topic_partition_offset() -> None:
    assert kafka_event_id("telemetry.clean", 2, 41) == "telemetry.clean:2:41"


# --------------------------------------------------------------------------- records and envelope
def test_parse_record_keeps_the_original_bytes_and_routing_keys() -> None:
    value = json.dumps(RECORD, ensure_ascii=False).encode()
    parsed = parse_record(value)
    assert (parsed.tenant, parsed.device, parsed.metric) == ("t1", "DEV-001", "temperature")
    assert parsed.json == value


def test_parse_record_passes_fields_a_newer_ingest_adds() -> None:
    value = json.dumps({**RECORD, "site": "north"}).encode()
    assert decoded(parse_record(value).json)["site"] == "north"


def test_parse_record_strips_line_breaks_an_sse_data_line_cannot_hold() -> None:
    value = json.dumps(RECORD, indent=2).encode()
    parsed = parse_record(value)
    assert b"\n" not in parsed.json
    assert decoded(parsed.json) == RECORD


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"not json", "malformed"),
        (b"[1, 2]", "Expected `object`"),
        (json.dumps({k: v for k, v in RECORD.items() if k != "metric"}).encode(), "metric"),
        (json.dumps({**RECORD, "value": [1]}).encode(), "value"),
        (json.dumps({**RECORD, "metric_type": "float"}).encode(), "metric_type"),
        (json.dumps({**RECORD, "tenant": 7}).encode(), "tenant"),
    ],
)
def test_parse_record_refuses_what_is_not_a_clean_record(value: bytes | None, reason: str) -> None:
    with pytest.raises(MalformedRecord, match=reason):
        parse_record(value)


def test_envelope_is_exact_and_carries_the_record_verbatim() -> None:
    record_json = json.dumps(RECORD, ensure_ascii=False).encode()
    data = encode_event("telemetry.clean:2:41", "2026-02-25T14:00:01.000Z", record_json)
    assert decoded(data) == {
        "event_id": "telemetry.clean:2:41",
        "type": "telemetry.update",
        "schema_version": 1,
        "sent_at": "2026-02-25T14:00:01.000Z",
        "data": RECORD,
    }
    assert record_json in data


def test_iso_utc_has_milliseconds_and_z() -> None:
    assert iso_utc(1_772_028_000_123_456_789) == "2026-02-25T14:00:00.123Z"
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"


def test_sse_frames() -> None:
    assert sse_frame(b'{"a":1}', "t@0:1") == b'id: t@0:1\ndata: {"a":1}\n\n'
    assert sse_frame(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert sse_comment("ping") == b": ping\n\n"


def test_control_messages() -> None:
    filters = Filters("t1", frozenset({"DEV-2", "DEV-1"}), None)
    assert decoded(connected_message(filters, "client")) == {
        "type": "connected",
        "tenant": "t1",
        "role": "client",
        "filters": {"tenant": "t1", "devices": ["DEV-1", "DEV-2"], "metrics": None},
    }
    assert decoded(lagged_message(12)) == {"type": "lagged", "dropped": 12}
    assert decoded(ping_message(1_772_028_000_000_000_000)) == {
        "type": "ping",
        "ts": "2026-02-25T14:00:00.000Z",
    }


# --------------------------------------------------------------------------- filters
def test_filters_match_tenant_devices_and_metrics() -> None:
    everything = Filters(None)
    assert everything.matches("t2", "X", "y")
    narrow = Filters("t1", frozenset({"DEV-1"}), frozenset({"temperature"}))
    assert narrow.matches("t1", "DEV-1", "temperature")
    assert not narrow.matches("t2", "DEV-1", "temperature")
    assert not narrow.matches("t1", "DEV-2", "temperature")
    assert not narrow.matches("t1", "DEV-1", "humidity")
    assert not Filters("t1", frozenset()).matches("t1", "DEV-1", "temperature")


def test_client_filters_come_from_the_token_tenant_and_comma_lists() -> None:
    filters = initial_filters(
        is_admin=False,
        own_tenant="t1",
        query={"device": ["DEV-1, DEV-2", "DEV-3"], "metric": ["temperature"]},
    )
    assert filters == Filters(
        "t1", frozenset({"DEV-1", "DEV-2", "DEV-3"}), frozenset({"temperature"})
    )


def test_empty_lists_mean_everything() -> None:
    filters = initial_filters(is_admin=False, own_tenant="t1", query={"device": [""], "metric": []})
    assert filters == Filters("t1", None, None)


def test_client_may_name_its_own_tenant_only() -> None:
    assert initial_filters(is_admin=False, own_tenant="t1", query={"tenant": ["t1"]}).tenant == "t1"
    with pytest.raises(TenantForbidden):
        initial_filters(is_admin=False, own_tenant="t1", query={"tenant": ["t2"]})


def test_admin_sees_every_tenant_or_the_one_chosen() -> None:
    assert initial_filters(is_admin=True, own_tenant=None, query={}).tenant is None
    assert initial_filters(is_admin=True, own_tenant="ops", query={"tenant": ["t2"]}).tenant == "t2"
    with pytest.raises(FilterError):
        initial_filters(is_admin=True, own_tenant=None, query={"tenant": ["t1", "t2"]})


def test_filter_lists_are_bounded() -> None:
    many = ",".join(f"D{i}" for i in range(MAX_FILTER_ITEMS + 1))
    with pytest.raises(FilterError, match="too many"):
        initial_filters(is_admin=False, own_tenant="t1", query={"device": [many]})
    with pytest.raises(FilterError, match="longer"):
        initial_filters(is_admin=False, own_tenant="t1", query={"metric": ["m" * 300]})


# --------------------------------------------------------------------------- actions
START = Filters("t1", None, None)


def act(filters: Filters, message: object) -> tuple[Filters, dict[str, Any]]:
    text = message if isinstance(message, str) else json.dumps(message)
    new, reply = apply_action(filters, text)
    return new, decoded(reply)


def test_subscribe_one_device_then_a_list() -> None:
    filters, reply = act(START, {"action": "subscribe", "device": "DEV-1"})
    assert filters.devices == frozenset({"DEV-1"})
    assert reply == {
        "type": "subscribed",
        "devices": ["DEV-1"],
        "filters": {"tenant": "t1", "devices": ["DEV-1"], "metrics": None},
    }
    filters, reply = act(filters, {"action": "subscribe", "devices": ["DEV-3", "DEV-2"]})
    assert filters.devices == frozenset({"DEV-1", "DEV-2", "DEV-3"})
    assert reply["devices"] == ["DEV-2", "DEV-3"]


def test_unsubscribe_removes_devices_down_to_nothing() -> None:
    filters = Filters("t1", frozenset({"DEV-1", "DEV-2"}))
    filters, reply = act(filters, {"action": "unsubscribe", "device": "DEV-1"})
    assert filters.devices == frozenset({"DEV-2"})
    assert reply["type"] == "unsubscribed"
    assert reply["devices"] == ["DEV-1"]
    filters, _ = act(filters, {"action": "unsubscribe", "devices": ["DEV-2"]})
    assert filters.devices == frozenset()
    assert not filters.matches("t1", "DEV-2", "temperature")


def test_unsubscribe_while_watching_every_device_is_an_error() -> None:
    filters, reply = act(START, {"action": "unsubscribe", "device": "DEV-1"})
    assert filters == START
    assert reply["type"] == "error"
    assert "every device" in reply["message"]


def test_set_metrics_replaces_and_empty_means_all() -> None:
    filters, reply = act(START, {"action": "set_metrics", "metrics": ["humidity", "temperature"]})
    assert filters.metrics == frozenset({"humidity", "temperature"})
    assert reply == {
        "type": "metrics_updated",
        "filters": {"tenant": "t1", "devices": None, "metrics": ["humidity", "temperature"]},
    }
    filters, _ = act(filters, {"action": "set_metrics", "metrics": []})
    assert filters.metrics is None


def test_clear_filters_keeps_the_tenant() -> None:
    filters = Filters("t1", frozenset({"DEV-1"}), frozenset({"temperature"}))
    filters, reply = act(filters, {"action": "clear_filters"})
    assert filters == Filters("t1", None, None)
    assert reply == {
        "type": "filters_cleared",
        "filters": {"tenant": "t1", "devices": None, "metrics": None},
    }


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"device": "DEV-1"}, "unknown action None"),
        ({"action": "dance"}, "unknown action 'dance'"),
        ({"action": "subscribe"}, "give a device"),
        ({"action": "subscribe", "devices": []}, "give a device"),
        ({"action": "subscribe", "device": 7}, "Expected `str | null`, got `int`"),
        ({"action": "subscribe", "device": "D", "tenant": "t2"}, "unknown field `tenant`"),
        ({"action": "set_metrics"}, "missing required field `metrics`"),
        ({"action": "set_metrics", "metrics": "temperature"}, "Expected `array`"),
    ],
)
def test_bad_messages_get_an_error_and_change_nothing(message: object, expected: str) -> None:
    filters, reply = act(START, message)
    assert filters == START
    assert reply["type"] == "error"
    assert expected in reply["message"]


def test_a_subscription_cannot_grow_past_the_bound() -> None:
    full = Filters("t1", frozenset(f"D{i}" for i in range(MAX_FILTER_ITEMS)))
    filters, reply = act(full, {"action": "subscribe", "device": "one-more"})
    assert filters == full
    assert reply["type"] == "error"
    assert "too many devices" in reply["message"]


def test_replies_are_compact_json() -> None:
    _, reply = apply_action(START, '{"action": "clear_filters"}')
    assert reply == msgspec.json.encode(decoded(reply))


# --------------------------------------------------------------------------- resume
def test_replay_reads_from_the_cursor_up_to_the_live_position() -> None:
    cursor = {"c": {0: 5, 1: 9, 2: 4}}
    seam = {"c": {0: 8, 1: 9, 2: 4, 3: 2}}
    assert replay_ranges(cursor, seam, ["c"]) == [
        ReplayRange("c", 0, 5, 8),
        # partition 3 is not in the cursor: it appeared later, all of it is new
        ReplayRange("c", 3, None, 2),
    ]


def test_replay_reads_to_the_end_where_the_live_stream_has_no_position() -> None:
    assert replay_ranges({"c": {0: 5}}, {}, ["c"]) == [ReplayRange("c", 0, 5, None)]


def test_replay_ignores_topics_no_longer_streamed_and_cursors_ahead() -> None:
    cursor = {"old": {0: 1}, "c": {0: 12}}
    assert replay_ranges(cursor, {"c": {0: 10}}, ["c"]) == []
