"""The listen address as a plain HTTP server: extra routes, errors, keep-alive,
and a bad client or handler never taking the server down."""

from __future__ import annotations

from functools import partial

import h11
import msgspec
import pytest
import trio
import trio_websocket
from structlog.testing import capture_logs
from trio_websocket import open_websocket_url

from bridge.core.settings import Config
from bridge.io import http
from bridge.io.http import Request, Responder
from bridge.stream.service import run_stream
from tests.integration.test_stream_clients import (
    SseClient,
    client_token,
    next_json,
    running_stream,
    stream_config,
)


async def hello(request: Request, responder: Responder) -> None:
    await responder.send(200, f"hello {request.query.get('name', ['?'])[0]}".encode(), "text/plain")


async def broken(request: Request, responder: Responder) -> None:
    raise RuntimeError("a bug in a handler")


async def silent(request: Request, responder: Responder) -> None:
    """Forgets to answer."""


def local_config(unique: str) -> Config:
    """No Kafka needed to test the HTTP side."""
    return stream_config("127.0.0.1:9", f"unused.{unique}", source="local")


async def exchange(port: int, requests: list[tuple[str, str]]) -> list[tuple[int, bytes]]:
    """Send requests one after the other on one connection; (status, body) each."""
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    answers = []
    with trio.fail_after(10):
        for method, target in requests:
            if conn.our_state is h11.DONE:
                conn.start_next_cycle()
            request = h11.Request(method=method, target=target, headers=[("host", "x")])
            await sock.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            status, body = 0, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await sock.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            answers.append((status, body))
    await sock.aclose()
    return answers


async def test_extra_routes_errors_and_keep_alive(unique: str) -> None:
    routes = {"/hello": hello, "/broken": broken, "/silent": silent}
    async with trio.open_nursery() as nursery:
        serve = partial(run_stream, local_config(unique), extra_routes=routes)
        service = await nursery.start(serve)
        service.router.add("/later", hello)  # routes can be added while serving
        port = service.addresses[0][1]
        answers = await exchange(
            port,
            [
                ("GET", "/hello?name=edge"),
                ("GET", "/hello/"),
                ("GET", "/later"),
                ("GET", "/nowhere"),
                ("POST", "/hello"),
                ("GET", "/broken"),
                ("GET", "/silent"),
                ("GET", "/ws/telemetry/stream/"),
                ("GET", "/api/stream/status"),
            ],
        )
        nursery.cancel_scope.cancel()
    statuses = [status for status, _ in answers]
    assert statuses == [200, 200, 200, 404, 405, 500, 500, 426, 200]
    assert answers[0][1] == b"hello edge"
    assert answers[1][1] == b"hello ?"
    assert b"no route for /nowhere" in answers[3][1]


async def broken_websocket(request: Request, ws: trio_websocket.WebSocketRequest) -> None:
    raise RuntimeError("a bug in a WebSocket handler")


async def closed_after_upgrade(port: int, path: str) -> bool:
    """Ask for a WebSocket at ``path``; True once the server has closed the
    connection."""
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    await sock.send_all(
        f"GET {path} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n".encode()
    )
    with trio.fail_after(10):
        while await sock.receive_some(65536):
            pass
    await sock.aclose()
    return True


async def test_failures_a_client_can_repeat_are_logged_sampled(unique: str) -> None:
    """A handler that fails on every request, a WebSocket handler that ends
    every connection in an error: each client still gets its answer, and the
    log has at most one line of each per 10 s (with the count), however often
    a client repeats the request."""
    failing = [http._handler_failures, http._connection_failures, http._no_responses]
    before = [log.total for log in failing]
    async with trio.open_nursery() as nursery:
        serve = partial(run_stream, local_config(unique), extra_routes={"/b": broken, "/s": silent})
        service = await nursery.start(serve)
        service.router.add_websocket("/boom", broken_websocket)
        port = service.addresses[0][1]
        with capture_logs() as logs:
            answers = await exchange(port, [("GET", "/b"), ("GET", "/s")] * 25)
            for _ in range(10):
                assert await closed_after_upgrade(port, "/boom")
        nursery.cancel_scope.cancel()
    assert [status for status, _ in answers] == [500] * 50
    assert [log.total - n for log, n in zip(failing, before, strict=True)] == [25, 10, 25]
    events = [e["event"] for e in logs]
    for name in ("http.handler_failed", "http.connection_failed", "http.no_response"):
        assert events.count(name) <= 1, events


async def test_a_route_cannot_be_taken_twice(unique: str) -> None:
    async with running_stream(local_config(unique), wait_for_kafka=False) as s:
        with pytest.raises(ValueError, match="already taken"):
            s.service.router.add("/api/stream/status", hello)
        with pytest.raises(ValueError, match="already taken"):
            s.service.router.add("/ws/telemetry/stream", hello)


async def test_garbage_gets_400_and_the_server_keeps_serving(unique: str) -> None:
    async with running_stream(local_config(unique), wait_for_kafka=False) as s:
        sock = await trio.open_tcp_stream("127.0.0.1", s.port)
        await sock.send_all(b"THIS IS NOT HTTP\r\n\r\n")
        with trio.fail_after(10):
            reply = await sock.receive_some(65536)
        await sock.aclose()
        assert reply.startswith(b"HTTP/1.1 400 ")
        # A client that connects and says nothing does not block anyone either.
        idle = await trio.open_tcp_stream("127.0.0.1", s.port)
        status = await SseClient.open(s.port, "/api/stream/status")
        assert status.status == 200
        async with open_websocket_url(s.ws_url(token=client_token("t1"))) as ws:
            assert (await next_json(ws))["type"] == "connected"
        await idle.aclose()


@pytest.mark.parametrize("size", [20_000, 60_000])
async def test_a_request_head_over_16_kb_gets_431_even_in_one_write(unique: str, size: int) -> None:
    """h11 bounds only a head still arriving; one that came in one read is
    measured by the server itself."""
    async with running_stream(local_config(unique), wait_for_kafka=False) as s:
        sock = await trio.open_tcp_stream("127.0.0.1", s.port)
        head = b"GET /api/stream/status HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * size + b"\r\n\r\n"
        await sock.send_all(head)
        with trio.fail_after(10):
            reply = await sock.receive_some(65536)
        await sock.aclose()
        assert reply.startswith(b"HTTP/1.1 431 "), reply[:80]
        # A head just under the limit is served.
        fits = [("x-big", "a" * 15_000)]
        assert (await SseClient.open(s.port, "/api/stream/status", fits)).status == 200


async def test_cors_preflight_is_answered_for_allowed_origins_only(unique: str) -> None:
    """A fetch() with an Authorization header from a page of an allowed origin
    is preceded by OPTIONS; it must get the CORS answer, others 403."""
    config = msgspec.structs.replace(
        local_config(unique),
        stream=msgspec.structs.replace(
            local_config(unique).stream, allow_origins=["https://dash.example"]
        ),
    )
    asking = [
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "authorization"),
    ]
    async with running_stream(config, wait_for_kafka=False) as s:
        for path in ("/sse/telemetry/stream/", "/api/stream/status"):
            allowed = await request(
                s.port, "OPTIONS", path, [("origin", "https://dash.example"), *asking]
            )
            assert allowed.status_code == 204
            headers = {k.decode(): v.decode() for k, v in allowed.headers}
            assert headers["access-control-allow-origin"] == "https://dash.example"
            assert "GET" in headers["access-control-allow-methods"]
            assert "authorization" in headers["access-control-allow-headers"].lower()
            assert int(headers["access-control-max-age"]) > 0
            refused = await request(
                s.port, "OPTIONS", path, [("origin", "https://evil.example"), *asking]
            )
            assert refused.status_code == 403
            assert b"access-control-allow-origin" not in dict(refused.headers)


async def request(
    port: int, method: str, target: str, headers: list[tuple[str, str]]
) -> h11.Response:
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    head = h11.Request(method=method, target=target, headers=[("host", "x"), *headers])
    await sock.send_all(conn.send(head) + conn.send(h11.EndOfMessage()))
    with trio.fail_after(10):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await sock.receive_some(65536))
            elif isinstance(event, h11.Response):
                await sock.aclose()
                return event
