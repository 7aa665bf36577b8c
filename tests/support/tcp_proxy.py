"""A TCP proxy in the test's trio loop, to cut a daemon off from a broker
and let it back: the connections close and new ones are closed at once, as
when a link goes down, while the broker keeps its data (a Tansu restart
would lose it; SIGSTOP leaves the connections open, so librdkafka only
notices after its request timeouts)."""

from __future__ import annotations

import trio


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host``:``target_port``."""

    def __init__(self, port: int, target_host: str, target_port: int) -> None:
        self.port = port
        self._target = (target_host, target_port)
        self._cut = False
        self._scopes: set[trio.CancelScope] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (start it with ``nursery.start``)."""
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._forward, listeners)
            task_status.started()

    def cut(self) -> None:
        """Close every connection; close new ones at once until :meth:`restore`."""
        self._cut = True
        for scope in self._scopes:
            scope.cancel()

    def restore(self) -> None:
        self._cut = False

    async def _forward(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                if not self._cut:
                    upstream = await trio.open_tcp_stream(*self._target)
                    async with upstream, trio.open_nursery() as nursery:
                        nursery.start_soon(_pipe, client, upstream, nursery.cancel_scope)
                        nursery.start_soon(_pipe, upstream, client, nursery.cancel_scope)
            except OSError:
                pass
            finally:
                self._scopes.discard(scope)
        await trio.aclose_forcefully(client)


async def _pipe(source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    done.cancel()
