"""The listen address: HTTP/1.1 with h11 on trio TCP listeners, WebSocket with
trio-websocket, and a route table so other modules add endpoints
(``/metrics``, ``/healthz`` ...) without touching the server.  Routes answer
GET unless they name other methods; a request body (bounded by
:data:`MAX_REQUEST_BODY`) reaches the handler as :attr:`Request.body`.

h11 parses every request.  A request that asks for a WebSocket upgrade on a
WebSocket route is handed to trio-websocket (``wrap_server_stream``) on a
stream that first replays that request and then continues on the socket.  The
replayed bytes are the request as h11 parsed it, serialised again by h11's own
client side, plus whatever h11 had already read past it (``trailing_data``):
h11 does not say where in the socket's byte stream a request began (keep-alive
may have carried earlier requests), so re-serialising is exact where slicing a
raw buffer would not be.  wsproto then performs the handshake.

Handlers never see a socket: an HTTP handler gets a :class:`Request` and a
:class:`Responder` (one response, or a streamed body for SSE); a WebSocket
handler gets the :class:`Request` and trio-websocket's ``WebSocketRequest``
to accept or reject.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import msgspec
import trio
import trio_websocket

from bridge.io.logs import SampledLog

#: A failure while serving one connection or one request is a bug, but one a
#: client can repeat at will: logged with its traceback at most every 10 s
#: (with how many were not), so no client can flood the journal.
_connection_failures = SampledLog("http.connection_failed", level="error")
_handler_failures = SampledLog("http.handler_failed", level="error")
_no_responses = SampledLog("http.no_response", level="error")

RECEIVE_BYTES = 65_536
MAX_HEADER_BYTES = 16_384
MAX_REQUEST_BODY = 65_536
#: A client must send its request headers within this time of connecting (or
#: of the previous response, on a kept-alive connection).
REQUEST_TIMEOUT_S = 10.0
#: Bound on the WebSocket opening handshake after the upgrade request was read.
HANDSHAKE_TIMEOUT_S = 10.0
#: Largest message a WebSocket client may send (filter changes are small).
MAX_WS_MESSAGE = 65_536


class ListenError(Exception):
    """The listen address cannot be used; the message names it and says why."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6, ``:8080`` for every address)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ListenError(f"listen address {text!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


_REASONS = {
    errno.EADDRINUSE: "address already in use (another edge-bridge, or another server?)",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
    errno.EADDRNOTAVAIL: "no such address on this machine",
}


async def open_listeners(address: str) -> list[trio.SocketListener]:
    """Bind ``address``; a :class:`ListenError` naming it when that fails."""
    host, port = parse_listen(address)
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {address}: unknown host: {exc.strerror}") from None
    except OSError as exc:
        reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
        raise ListenError(f"cannot listen on {address}: {reason}") from None


def bound_addresses(listeners: Sequence[trio.SocketListener]) -> list[tuple[str, int]]:
    """(host, port) each listener really bound, e.g. the port chosen for ``:0``."""
    out = []
    for listener in listeners:
        host, port, *_ = listener.socket.getsockname()
        out.append((host, port))
    return out


# --------------------------------------------------------------------------- requests
@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request.  Header names are lower case; a repeated header's
    values are joined with ``", "``."""

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    remote: str
    body: bytes = b""


def _build_request(event: h11.Request, remote: str, body: bytes = b"") -> Request:
    target = event.target.decode("latin-1")
    parts = urlsplit(target)
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(
        method=event.method.decode("latin-1"),
        target=target,
        path=parts.path,
        query=parse_qs(parts.query, keep_blank_values=True),
        headers=headers,
        remote=remote,
        body=body,
    )


def _is_websocket_upgrade(request: Request) -> bool:
    upgrade = request.headers.get("upgrade", "").lower()
    return "websocket" in upgrade and "sec-websocket-key" in request.headers


def _normalise(path: str) -> str:
    return path.rstrip("/") or "/"


# --------------------------------------------------------------------------- responses
class BodyWriter:
    """Writes the chunks of a streamed response (one writer task at a time)."""

    def __init__(self, conn: h11.Connection, stream: trio.abc.Stream) -> None:
        self._conn = conn
        self._stream = stream

    async def write(self, data: bytes) -> None:
        await self._stream.send_all(self._conn.send(h11.Data(data=data)))


class Responder:
    """Sends the response to one request: once with :meth:`send`, or as a
    stream with :meth:`start_stream` (Server-Sent Events).  A streamed response
    ends when the handler returns; the handler is cancelled when the client
    goes away."""

    def __init__(
        self, conn: h11.Connection, stream: trio.abc.Stream, nursery: trio.Nursery | None = None
    ) -> None:
        self._conn = conn
        self._stream = stream
        self._nursery = nursery
        self.status: int | None = None
        self.streaming = False

    def _head(self, status: int, content_type: str, headers: Sequence[tuple[str, str]]) -> bytes:
        if self.status is not None:
            raise RuntimeError("a response was already sent")
        self.status = status
        reason = HTTPStatus(status).phrase.encode()
        all_headers = [("content-type", content_type), *headers]
        return self._conn.send(h11.Response(status_code=status, headers=all_headers, reason=reason))

    async def send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        head = self._head(status, content_type, [("content-length", str(len(body))), *headers])
        data = self._conn.send(h11.Data(data=body)) if body else b""
        await self._stream.send_all(head + data + self._conn.send(h11.EndOfMessage()))

    async def send_json(
        self, status: int, value: Any, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        await self.send(status, msgspec.json.encode(value), "application/json", headers)

    async def start_stream(
        self, status: int, content_type: str, headers: Sequence[tuple[str, str]] = ()
    ) -> BodyWriter:
        """Send the head of a response whose body follows in chunks."""
        if self._nursery is None:
            raise RuntimeError("this response cannot stream")
        await self._stream.send_all(self._head(status, content_type, headers))
        self.streaming = True
        self._nursery.start_soon(self._cancel_at_eof)
        return BodyWriter(self._conn, self._stream)

    async def end_stream(self) -> None:
        """The last chunk of a streamed response, once the handler is done."""
        await self._stream.send_all(self._conn.send(h11.EndOfMessage()))

    async def _cancel_at_eof(self) -> None:
        """While a response streams, the client only ever closes: end the handler then.

        Bytes it sends meanwhile (a pipelined request) are discarded; the
        connection closes after a streamed response anyway.
        """
        try:
            while await self._stream.receive_some(RECEIVE_BYTES):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()


HttpHandler = Callable[[Request, Responder], Awaitable[None]]
WebSocketHandler = Callable[[Request, trio_websocket.WebSocketRequest], Awaitable[None]]


class Router:
    """Path -> handler, for HTTP requests and for WebSocket upgrades.

    Paths match exactly, a trailing slash aside (``/metrics`` and ``/metrics/``
    are the same route).  An HTTP route answers the methods it was added with
    (GET by default), 405 to the others.
    """

    def __init__(self, *, preflight: HttpHandler | None = None) -> None:
        self._http: dict[str, HttpHandler] = {}
        self._methods: dict[str, tuple[str, ...]] = {}
        self._websocket: dict[str, WebSocketHandler] = {}
        #: Answers ``OPTIONS`` (CORS preflight) on every HTTP route when set.
        self.preflight = preflight

    def add(self, path: str, handler: HttpHandler, methods: tuple[str, ...] = ("GET",)) -> None:
        key = _normalise(path)
        if key in self._http or key in self._websocket:
            raise ValueError(f"route {path} is already taken")
        self._http[key] = handler
        self._methods[key] = methods

    def methods(self, path: str) -> tuple[str, ...]:
        """The methods the route at ``path`` answers (GET when unknown)."""
        return self._methods.get(_normalise(path), ("GET",))

    def add_websocket(self, path: str, handler: WebSocketHandler) -> None:
        key = _normalise(path)
        if key in self._http or key in self._websocket:
            raise ValueError(f"route {path} is already taken")
        self._websocket[key] = handler

    def http(self, path: str) -> HttpHandler | None:
        return self._http.get(_normalise(path))

    def websocket(self, path: str) -> WebSocketHandler | None:
        return self._websocket.get(_normalise(path))


# --------------------------------------------------------------------------- WebSocket hand-off
class _ReplayStream(trio.abc.Stream):
    """A socket stream whose first bytes are ``prefix``: what h11 already read."""

    def __init__(self, prefix: bytes, stream: trio.abc.Stream) -> None:
        self._prefix = prefix
        self._stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


def _replayed_request(event: h11.Request, conn: h11.Connection) -> bytes:
    client = h11.Connection(h11.CLIENT)
    head = client.send(
        h11.Request(method=event.method, target=event.target, headers=event.headers.raw_items())
    )
    trailing, _closed = conn.trailing_data
    return head + trailing


async def _hand_to_websocket(
    request: Request,
    event: h11.Request,
    conn: h11.Connection,
    stream: trio.abc.Stream,
    handler: WebSocketHandler,
) -> None:
    replay = _ReplayStream(_replayed_request(event, conn), stream)
    async with trio.open_nursery() as nursery:
        ws_request: trio_websocket.WebSocketRequest | None = None
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
            ws_request = await trio_websocket.wrap_server_stream(
                nursery, replay, max_message_size=MAX_WS_MESSAGE
            )
        try:
            if ws_request is not None:
                await handler(request, ws_request)
        finally:
            # The handler has closed the WebSocket (or the client went away);
            # stop trio-websocket's reader task with it.
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- server
class _ClientGone(Exception):
    """The client closed or broke the connection, or was too slow to send."""


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        try:
            data = await stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _ClientGone from None
        conn.receive_data(bytes(data))


def _head_size(event: h11.Request) -> int:
    """The size of a request head as sent (request line, header lines, CRLFs).

    h11's ``max_incomplete_event_size`` only bounds a head still arriving, so a
    head that came in one read is checked here, against the same limit."""
    size = len(event.method) + len(event.target) + len(b"  HTTP/1.1\r\n\r\n")
    return size + sum(len(name) + len(value) + 4 for name, value in event.headers.raw_items())


async def _read_request(
    conn: h11.Connection, stream: trio.abc.Stream
) -> tuple[h11.Request, bytes] | None:
    """The next request with its (bounded) body; None when the client closed,
    or sent nothing in time."""
    with trio.move_on_after(REQUEST_TIMEOUT_S):
        event = await _next_event(conn, stream)
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}", 400)
        if _head_size(event) > MAX_HEADER_BYTES:
            raise h11.RemoteProtocolError(f"request head larger than {MAX_HEADER_BYTES} bytes", 431)
        body = bytearray()
        while True:
            part = await _next_event(conn, stream)
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > MAX_REQUEST_BODY:
                    raise h11.RemoteProtocolError("request body too large", 413)
            elif isinstance(part, h11.EndOfMessage):
                return event, bytes(body)
            else:
                raise h11.RemoteProtocolError(f"unexpected {type(part).__name__}", 400)
    return None


async def _error(responder: Responder, status: int, message: str) -> None:
    await responder.send_json(status, {"error": HTTPStatus(status).phrase, "message": message})


class HttpServer:
    """Serves a :class:`Router` on already bound listeners."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def serve(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._connection, list(listeners))
            task_status.started()

    async def _connection(self, stream: trio.SocketStream) -> None:
        """One TCP connection: requests until close.  Nothing raised here may
        reach the listener's nursery: a bad client must not stop the server."""
        try:
            peer = stream.socket.getpeername()
            remote = f"{peer[0]}:{peer[1]}"
        except OSError:
            return
        try:
            await self._requests(stream, remote)
        except (_ClientGone, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:
            _connection_failures(remote=remote, error=type(exc).__name__, exc_info=exc)
        finally:
            await trio.aclose_forcefully(stream)

    async def _requests(self, stream: trio.SocketStream, remote: str) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        while True:
            try:
                received = await _read_request(conn, stream)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _error(Responder(conn, stream), exc.error_status_hint, str(exc))
                return
            if received is None:
                return
            event, body = received
            request = _build_request(event, remote, body)
            keep_going = await self._dispatch(request, event, conn, stream)
            if not keep_going or conn.our_state is not h11.DONE:
                return
            if conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _dispatch(
        self, request: Request, event: h11.Request, conn: h11.Connection, stream: trio.SocketStream
    ) -> bool:
        """Answer one request; False when the connection must close after it."""
        ws_handler = self.router.websocket(request.path)
        if ws_handler is not None and _is_websocket_upgrade(request):
            await _hand_to_websocket(request, event, conn, stream, ws_handler)
            return False
        gone = False
        async with trio.open_nursery() as nursery:
            responder = Responder(conn, stream, nursery)
            try:
                await self._answer(request, responder, ws_handler is not None)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                gone = True  # not raised from here: the nursery would wrap it
            nursery.cancel_scope.cancel()
        return not gone and not responder.streaming and responder.status is not None

    async def _answer(self, request: Request, responder: Responder, websocket_only: bool) -> None:
        handler = self.router.http(request.path)
        if websocket_only:
            await _error(responder, 426, "this endpoint speaks WebSocket only")
        elif handler is None:
            await _error(responder, 404, f"no route for {request.path}")
        elif request.method == "OPTIONS" and self.router.preflight is not None:
            await self._call(self.router.preflight, request, responder)
        elif request.method not in (methods := self.router.methods(request.path)):
            allow = [*methods, "OPTIONS"] if self.router.preflight is not None else methods
            await responder.send_json(
                405, {"error": "Method Not Allowed"}, headers=[("allow", ", ".join(allow))]
            )
        else:
            await self._call(handler, request, responder)

    async def _call(self, handler: HttpHandler, request: Request, responder: Responder) -> None:
        try:
            await handler(request, responder)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception as exc:
            _handler_failures(path=request.path, error=type(exc).__name__, exc_info=exc)
            if responder.status is None:
                await _error(responder, 500, "internal error")
            return
        if responder.status is None:
            _no_responses(path=request.path)
            await _error(responder, 500, "the handler sent no response")
        elif responder.streaming:
            await responder.end_stream()
