"""The sender of one client, the same for WebSocket and SSE: queued events
out, a ``lagged`` notice where events were dropped, a keepalive when nothing
happened for ``ping_interval_s``, and the end when the client is kicked.
"""

from __future__ import annotations

import time
from typing import Protocol

import trio

from bridge.core.events import lagged_message
from bridge.stream.hub import Client, Event


class Sink(Protocol):
    """How one transport writes; every method may raise when the client is gone."""

    async def events(self, events: list[Event]) -> None: ...

    async def control(self, message: bytes) -> None: ...

    async def ping(self, now_ns: int) -> None: ...


async def pump(client: Client, sink: Sink, *, ping_interval_s: float, grace_s: float) -> bool:
    """Send until the client is kicked for lagging; return whether it was stuck.

    A kicked client still gets the ``lagged`` notice, so it learns why it is
    closed, unless it takes nothing for ``grace_s`` (a stalled reader whose
    socket buffers are full): then the send is abandoned and True returned,
    for the caller to drop the connection without a goodbye.
    """
    queue = client.queue
    with trio.CancelScope() as scope:

        def on_kick() -> None:
            scope.deadline = trio.current_time() + grace_s

        queue.on_kick = on_kick
        if queue.kicked:
            on_kick()
        last_sent = trio.current_time()
        while True:
            idle_left = last_sent + ping_interval_s - trio.current_time()
            batch = await queue.next_batch(max(0.0, idle_left))
            if batch.dropped:
                await sink.control(lagged_message(batch.dropped))
            if batch.kicked:
                return False
            if batch.events:
                await sink.events(batch.events)
            elif trio.current_time() < last_sent + ping_interval_s:
                continue
            else:
                await sink.ping(time.time_ns())
            last_sent = trio.current_time()
    return True
