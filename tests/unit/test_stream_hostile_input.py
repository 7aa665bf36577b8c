"""What stream clients send, at its worst: the WebSocket action parser and the
SSE cursor decoder take any text and answer with their documented refusals
(an ``error`` reply, :class:`CursorError`), never an exception; a bug behind
them is an ``error`` reply too; failures a client can repeat are logged
sampled."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from confluent_kafka import KafkaError, Message
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from bridge.core.events import (
    MAX_OFFSET,
    MAX_PARTITION,
    CursorError,
    Filters,
    ReplayRange,
    apply_action,
    decode_cursor,
    encode_cursor,
    sse_retry,
)
from bridge.core.settings import KafkaSettings, StreamSettings
from bridge.io.http import Request
from bridge.stream import replay, sse, websocket
from bridge.stream.consumer import KafkaSource
from bridge.stream.hub import Client, ClientQueue, Hub, Transport
from tests.unit.test_hub import record, taken

START = Filters("t1", None, None)
REPLIES = {"error", "subscribed", "unsubscribed", "metrics_updated", "filters_cleared"}


def reply_of(message: str | bytes) -> dict[str, Any]:
    filters, reply = apply_action(START, message)
    body = msgspec.json.decode(reply)
    assert isinstance(body, dict) and body["type"] in REPLIES, body
    if body["type"] == "error":
        assert filters is START
        assert isinstance(body["message"], str) and body["message"]
    assert filters.tenant == "t1"
    return body


@pytest.mark.parametrize(
    "message",
    [
        "[" * 2000 + "]" * 2000,
        '{"action": "subscribe", "devices": ' + "[" * 2000 + "]" * 2000 + "}",
        '{"action": "subscribe", "x": ' + '{"a":' * 2000 + "1" + "}" * 2000 + "}",
        '{"action": ' + "[" * 100_000,
        b"\xff\xfe\x00",
        '{"action": "' + "a" * 60_000 + '"}',
    ],
)
def test_deep_or_garbage_actions_get_an_error_reply(message: str | bytes) -> None:
    body = reply_of(message)
    assert body["type"] == "error"
    assert len(body["message"]) < 500


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["action", "device", "devices", "metrics", "x"]), children
        )
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        _json.map(lambda v: json.dumps(v, allow_nan=True)),
        st.fixed_dictionaries(
            {"action": st.sampled_from(["subscribe", "unsubscribe", "set_metrics", "x"])},
            optional={"device": _json, "devices": _json, "metrics": _json},
        ).map(json.dumps),
        st.integers(min_value=1, max_value=5000).map(lambda n: "[" * n + "]" * n),
    )
)
def test_any_action_text_gets_a_documented_reply(message: str | bytes) -> None:
    reply_of(message)


@pytest.mark.parametrize(
    "text",
    [
        "t@²:0",
        "t@0:²",
        "t@٣:1",
        "t@0:" + "1" * 5000,
        "t@" + "9" * 5000 + ":0",
        f"t@{MAX_PARTITION + 1}:0",
        f"t@0:{MAX_OFFSET + 1}",
        "t@+1:0",
        "t@ 1:0",
        "t@1:0 ",
        "t@0:1,",
        "t@0:1;;u@0:1",
    ],
)
def test_cursors_beyond_what_kafka_can_hold_are_refused(text: str) -> None:
    with pytest.raises(CursorError):
        decode_cursor(text)


def test_the_largest_positions_kafka_can_hold_are_accepted() -> None:
    positions = {"telemetry.clean": {MAX_PARTITION: MAX_OFFSET, 0: 0}}
    assert decode_cursor(encode_cursor(positions)) == positions


def _checked(text: str) -> None:
    try:
        positions = decode_cursor(text)
    except CursorError:
        return
    for topic, parts in positions.items():
        assert topic and parts
        for partition, offset in parts.items():
            assert 0 <= partition <= MAX_PARTITION and 0 <= offset <= MAX_OFFSET


_cursor_chars = st.sampled_from(list("0123456789@:,;.t²٣-+ \x00é"))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=300), st.text(_cursor_chars, max_size=300)))
def test_any_cursor_text_decodes_within_bounds_or_is_refused(text: str) -> None:
    _checked(text)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z.]{1,12}", fullmatch=True),
        st.dictionaries(st.integers(0, 2**40), st.integers(0, 2**70), min_size=1, max_size=5),
        min_size=1,
        max_size=3,
    )
)
def test_cursors_with_numbers_of_any_size_decode_within_bounds_or_are_refused(
    positions: dict[str, dict[int, int]],
) -> None:
    _checked(encode_cursor(positions))


# --------------------------------------------------------------------------- barriers
class _BuggyGate:
    """An endpoint whose action handler has a bug."""

    def apply_action(self, filters: Filters, message: str | bytes) -> tuple[Filters, bytes]:
        raise KeyError("a bug in the action handler")


def test_a_bug_in_the_action_handler_is_an_error_reply_with_the_filters_kept() -> None:
    client = Client(Transport.WEBSOCKET, START, "viewer", ClientQueue(10, 10))
    gate: Any = _BuggyGate()
    before = websocket._action_failures.total
    with capture_logs() as logs:
        replies = [
            websocket._handle(gate, client, '{"action": "subscribe"}', "127.0.0.1:1")
            for _ in range(20)
        ]
    assert {msgspec.json.decode(r)["type"] for r in replies} == {"error"}
    assert client.filters is START
    assert websocket._action_failures.total - before == 20
    assert [e["event"] for e in logs].count("stream.websocket_action_failed") <= 1  # sampled


def test_kafka_errors_during_a_replay_are_logged_sampled() -> None:
    reader = replay._GapReader([ReplayRange("t", 0, 0, 100)], {}, START)
    failing = [Message(topic="t", partition=0, offset=5, error=KafkaError(KafkaError._TRANSPORT))]
    failing.append(Message(error=KafkaError(KafkaError._ALL_BROKERS_DOWN)))
    before = replay._kafka_errors.total
    with capture_logs() as logs:
        for _ in range(50):
            assert reader.frames(failing, "2026-01-01T00:00:00Z") == []
    assert replay._kafka_errors.total - before == 100
    assert [e["event"] for e in logs].count("stream.replay_kafka_error") <= 1


class _BuggyResume:
    """An endpoint that fails while resuming (a bug, not a bad cursor)."""

    @property
    def source(self) -> None:
        raise KeyError("a bug while resuming")


class _Body:
    def __init__(self) -> None:
        self.sent = b""

    async def write(self, data: bytes) -> None:
        self.sent += data


async def test_a_bug_while_resuming_ends_the_response_with_a_retry() -> None:
    """The SSE cursor's barrier: the client is told to come back (``retry:``
    and an error event) and its response ends; nothing else notices."""
    client = Client(Transport.SSE, START, "viewer", ClientQueue(10, 10))
    cursor = encode_cursor({"telemetry.clean": {0: 5}})
    request = Request("GET", "/sse", "/sse", {}, {"last-event-id": cursor}, "127.0.0.1:1")
    body = _Body()
    writer: Any = body
    endpoint: Any = _BuggyResume()
    before = sse._resume_failures.total
    sink = sse._SseSink(writer, client, "json")
    assert await sse._resume_guarded(endpoint, request, client, {}, sink) is False
    assert body.sent.startswith(sse_retry(sse.RETRY_MS))
    assert b"internal error while resuming" in body.sent
    assert sse._resume_failures.total - before == 1


@pytest.mark.parametrize("shared", [False, True])
def test_a_kafka_record_the_stream_fails_on_is_skipped_not_the_end_of_the_daemon(
    shared: bool,
) -> None:
    """A record in the stream's topic nested deep enough to exhaust the JSON
    decoder's recursion (not written by a bridge: its records are bounded)
    raised RecursionError out of the consumer, which ended the daemon."""
    hub = Hub(max_per_tenant=10)
    admin = Client(Transport.WEBSOCKET, Filters(None), "admin", ClientQueue(10, 10))
    hub.register(admin)
    kafka = KafkaSettings(bootstrap="127.0.0.1:9")
    source = KafkaSource(kafka, StreamSettings(topics=["c"]), hub, shared=[hub] * shared)
    deep = b'{"tenant": "t1", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    values = [deep, record()]
    with capture_logs() as logs:
        source._publish(
            [Message(topic="c", partition=0, offset=n, value=v) for n, v in enumerate(values)]
        )
    assert [e.offset for e in taken(admin)] == [1]
    assert hub.positions == {"c": {0: 2}}
    (failed,) = [e for e in logs if e["event"] == "stream.record_failed"]
    assert failed["error"].startswith("RecursionError")
