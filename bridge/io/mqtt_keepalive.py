"""When the MQTT client pings the broker, and when it gives the connection up.

paho's own keepalive check (``loop_misc``) is not used.  It counts only the
bytes paho reads itself, and the fast lane (:mod:`bridge.core.mqtt_codec`) reads
every PUBLISH before paho sees it: paho would believe a connection delivering
tens of thousands of messages a second is silent.  It also gives up when the
PINGRESP is late, and mosquitto answers a PINGREQ behind whatever it has
queued for the client: while a persistent session's backlog of a few hundred
thousand messages drains, the PINGRESP arrives many seconds after the
keepalive interval.  Both made the bridge drop the connection exactly when a
backlog had to be drained, and the broker then sent the whole in-flight window
again.

The rule here: any byte from the broker proves the connection is alive, as
much as a PINGRESP does.  The connection is given up only when a PINGREQ was
sent and nothing at all arrived for a whole keepalive interval after it.
A PINGREQ goes out when nothing was sent for an interval (the broker needs a
packet from us at least that often; our PUBACKs count) or nothing was received
for one.  Pure: the caller passes the time in.
"""

from __future__ import annotations

PINGREQ = b"\xc0\x00"


class Keepalive:
    """The keepalive bookkeeping of one connection."""

    __slots__ = ("interval", "last_in", "last_out", "ping_sent_at")

    def __init__(self, interval_s: float, now: float) -> None:
        self.interval = interval_s  # 0: no keepalive, as in MQTT
        self.last_in = now
        self.last_out = now
        self.ping_sent_at: float | None = None

    def received(self, now: float) -> None:
        """Bytes arrived from the broker (any packet, PUBLISH included)."""
        self.last_in = now
        self.ping_sent_at = None

    def sent(self, now: float) -> None:
        """Bytes went out to the broker."""
        self.last_out = now

    def ping_due(self, now: float) -> bool:
        """Whether to send a PINGREQ now (then call :meth:`pinged`)."""
        if not self.interval or self.ping_sent_at is not None:
            return False
        return now - self.last_out >= self.interval or now - self.last_in >= self.interval

    def pinged(self, now: float) -> None:
        self.ping_sent_at = now
        self.last_out = now

    def expired(self, now: float) -> bool:
        """A PINGREQ went unanswered, and nothing else arrived, for a whole
        interval: the connection is dead."""
        return (
            bool(self.interval)
            and self.ping_sent_at is not None
            and now - self.ping_sent_at >= self.interval
        )

    def silent_for(self, now: float) -> float:
        """Seconds since the broker last sent anything (for the log line)."""
        return now - self.last_in
