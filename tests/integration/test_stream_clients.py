"""Helpers for the live-stream tests (this module holds no tests): tokens,
clean records produced straight to Kafka (the stream's input contract is the
topic), the stream run in-process on real sockets, and an SSE client built on
h11 over a trio socket.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import h11
import jwt
import trio
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bridge.core.settings import AuthSettings, Config, KafkaSettings, StreamSettings
from bridge.stream.service import SSE_PATH, WEBSOCKET_PATH, StreamService, run_stream
from tests.support import async_wait_until

SECRET = "integration-test-secret-0123456789abcdef"
ISO_MS = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


#: Tokens made for ``parametrize`` exist from collection on, and the whole
#: suite can take longer than ten minutes on a busy machine: a day, so that
#: only the tests about expiry see an expired token.
TOKEN_LIFETIME_S = 86_400


def token(exp_in: float = TOKEN_LIFETIME_S, secret: str = SECRET, **claims: Any) -> str:
    return jwt.encode({"exp": int(time.time() + exp_in), **claims}, secret, algorithm="HS256")


def client_token(tenant: str) -> str:
    return token(role="client", tenant=tenant)


def clean_record(
    tenant: str, device: str, metric: str = "temperature", value: float = 1.0
) -> bytes:
    """A clean record as the ingest writes it to the clean topic."""
    return json.dumps(
        {
            "tenant": tenant,
            "device_serial_id": device,
            "metric": metric,
            "metric_type": "numeric",
            "value": value,
            "unit": "°C",
            "ts": "2026-02-25T14:00:00Z",
            "received_at": "2026-02-25T14:00:00.050Z",
            "schema_version": 1,
        },
        ensure_ascii=False,
    ).encode()


def create_topic(bootstrap: str, topic: str, partitions: int = 4) -> None:
    """An empty topic made before the stream starts, so that the stream's
    consumer is assigned at once and starts at offset 0 (Tansu's answer to
    "latest" can be stale on a topic that already holds records)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions)]).values():
        future.result(20)


def produce(bootstrap: str, topic: str, values: Sequence[bytes]) -> None:
    """Produce values keyed like the ingest does ("tenant:device" when the
    value is a record), in order, and wait for every acknowledgement."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    for value in values:
        try:
            body = json.loads(value)
            key = f"{body['tenant']}:{body['device_serial_id']}".encode()
        except (ValueError, KeyError, TypeError):
            key = None
        producer.produce(topic, value=value, key=key)
    assert producer.flush(20) == 0, "records still undelivered after 20 s"


def stream_config(bootstrap: str, topic: str, **stream: Any) -> Config:
    """A config for an in-process stream on a port the kernel picks."""
    settings: dict[str, Any] = {"topics": [topic], "session_timeout_ms": 1500, **stream}
    return Config(
        listen="127.0.0.1:0",
        kafka=KafkaSettings(bootstrap=bootstrap),
        stream=StreamSettings(**settings),
        auth=AuthSettings(jwt_secret=SECRET),
    )


async def _run_in_scope(
    config: Config,
    scope: trio.CancelScope,
    task_status: trio.TaskStatus[StreamService] = trio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        await run_stream(config, task_status=task_status)


@asynccontextmanager
async def running_stream(config: Config, *, wait_for_kafka: bool = True) -> AsyncIterator[Stream]:
    """run_stream in a nursery of the test, in a cancel scope of its own so a
    test can shut it down (as the daemon's nursery does) and go on."""
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()
        service: StreamService = await nursery.start(_run_in_scope, config, scope)
        stream = Stream(service, scope)
        if wait_for_kafka:
            await async_wait_until(
                lambda: service.kafka_state == "ok", 20, "the stream consumer's assignment"
            )
        try:
            yield stream
        finally:
            scope.cancel()


@dataclass
class Stream:
    service: StreamService
    _scope: trio.CancelScope

    def shutdown(self) -> None:
        self._scope.cancel()

    @property
    def port(self) -> int:
        return self.service.addresses[0][1]

    def ws_url(self, **query: str) -> str:
        suffix = f"?{urlencode(query)}" if query else ""
        return f"ws://127.0.0.1:{self.port}{WEBSOCKET_PATH}{suffix}"

    def sse_target(self, **query: str) -> str:
        return f"{SSE_PATH}?{urlencode(query)}" if query else SSE_PATH

    async def consumed(self, topic: str, count: int) -> None:
        """Wait until the stream has read `count` records of `topic`."""

        def done() -> bool:
            return sum(self.service.hub.positions.get(topic, {}).values()) >= count

        await async_wait_until(done, 20, f"the stream to read {count} records of {topic}")

    async def paused(self) -> None:
        """Wait until the stream's consumer has paused: no client is connected,
        so it reads nothing (bridge/stream/consumer.py)."""
        source = self.service.source
        assert source is not None
        await async_wait_until(lambda: source.paused, 20, "the stream to pause")


async def next_json(ws: Any, timeout: float = 10.0) -> Any:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def telemetry(ws: Any, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The next `count` telemetry events; keepalive pings in between are skipped,
    any other message fails the test."""
    events: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        while len(events) < count:
            message = json.loads(await ws.get_message())
            if message["type"] == "ping":
                continue
            assert message["type"] == "telemetry.update", message
            events.append(message)
    return events


# --------------------------------------------------------------------------- SSE
@dataclass
class SseMessage:
    """One dispatched SSE block: its fields and the comments before it."""

    data: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)


class SseClient:
    """GET an SSE endpoint with h11 and read its blocks (comments included)."""

    def __init__(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        self._stream = stream
        self._conn = conn
        self._text = ""
        self.ended = False
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def open(
        cls, port: int, target: str, headers: Sequence[tuple[str, str]] = ()
    ) -> SseClient:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET",
            target=target,
            headers=[("host", f"127.0.0.1:{port}"), ("accept", "text/event-stream"), *headers],
        )
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        client = cls(stream, conn)
        with trio.fail_after(10):
            response = await client._event()
        assert isinstance(response, h11.Response), response
        client.status = response.status_code
        client.headers = {k.decode(): v.decode() for k, v in response.headers}
        return client

    async def _event(self) -> Any:
        while True:
            event = self._conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self._conn.receive_data(await self._stream.receive_some(65536))

    async def _more(self) -> None:
        event = await self._event()
        if isinstance(event, h11.Data):
            self._text += bytes(event.data).decode()
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            self.ended = True
        else:
            raise AssertionError(f"unexpected {event!r}")

    async def body_json(self) -> Any:
        with trio.fail_after(10):
            while not self.ended:
                await self._more()
        return json.loads(self._text)

    async def next_message(self, timeout: float = 10.0) -> SseMessage:
        """The next block with data, or a comment-only block (a keepalive)."""
        with trio.fail_after(timeout):
            while "\n\n" not in self._text:
                if self.ended:
                    raise EOFError("the server ended the stream")
                await self._more()
        block, self._text = self._text.split("\n\n", 1)
        message = SseMessage()
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                message.comments.append(value)
            elif name == "id":
                message.id = value
            elif name == "retry":
                message.retry = int(value)
            elif name == "data":
                message.data = value if message.data is None else f"{message.data}\n{value}"
            else:
                raise AssertionError(f"unexpected SSE line {line!r}")
        return message

    async def telemetry(self, count: int, timeout: float = 15.0) -> list[SseMessage]:
        """The next `count` telemetry events; keepalive comments are skipped,
        any other message fails the test."""
        events: list[SseMessage] = []
        with trio.fail_after(timeout):
            while len(events) < count:
                message = await self.next_message(timeout)
                if message.data is None:
                    continue
                assert message.json()["type"] == "telemetry.update", message
                events.append(message)
        return events

    async def aclose(self) -> None:
        await self._stream.aclose()
