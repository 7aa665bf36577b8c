"""paho-mqtt driven from the trio loop, with manual acknowledgements.

paho's external-loop API lets the caller own the waiting: we wait for the socket
to become readable in trio, then read what is there in a few large ``recv()``
calls (up to ``READS_PER_WAKEUP``).  paho connects, subscribes and publishes;
the keepalive is ours (:mod:`bridge.io.mqtt_keepalive`: paho cannot see the
traffic the fast lane reads).  The received bytes go through the pure codec of
:mod:`bridge.core.mqtt_codec`, which decodes QoS 0/1 PUBLISH packets itself;
every other packet goes to paho through :mod:`bridge.io.paho_splice`, the one
place that reaches into paho.  Acknowledgements are written by us too, all of
a batch in one ``send()``, through the same splice, which keeps them from
cutting into paho's packets.  paho's own read path cost more than half of the
bridge's CPU per message (measured, see docs/benchmarks.md).  The messages of
one wake-up go to the handler as one batch.

QoS 1 messages are acknowledged by the caller, through :meth:`MqttClient.ack`,
once Kafka holds every record made from them; the PUBACKs go out in the order
the messages arrived, as MQTT requires, whatever order Kafka confirms them in
(:mod:`bridge.core.puback_order`).  Acknowledgements carry the
connection *generation* they belong to: a message id from a previous connection
must never be acknowledged on a new one (it would acknowledge a different
message); the broker redelivers those instead, as the persistent session
promises.
"""

from __future__ import annotations

import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import structlog
import trio
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.core.mqtt_codec import Framer, InboundMessage, MalformedPacket
from bridge.core.puback_order import PubackOrder
from bridge.core.settings import MqttSettings
from bridge.io.mqtt_keepalive import PINGREQ, Keepalive
from bridge.io.paho_splice import PahoReadFailed, PahoSplice
from bridge.io.tls import client_context

log = structlog.get_logger(__name__)

READS_PER_WAKEUP = 8
#: While the backlog is full, how often the read loop looks whether
#: acknowledgements made room: short against the 2 ms in which delivery
#: reports are served (bridge.io.kafka_producer).
BACKLOG_WAIT_S = 0.001
RECV_BYTES = 65_536  # about 280 messages of 200 bytes per recv()

BatchHandler = Callable[[list[InboundMessage], int], None]

_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> BrokerAddress:
    """``mqtt://host:port`` or ``mqtts://host:port`` (ports default to 1883 / 8883)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"MQTT URL {url!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"MQTT URL {url!r} has no host")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ValueError(f"MQTT URL {url!r} has an invalid port") from None
    return BrokerAddress(parts.hostname, port, tls)


class ConnectionLost(Exception):
    """The session with the broker ended; the run loop reconnects."""


class MqttClient:
    """One logical MQTT session that survives reconnects."""

    def __init__(
        self,
        settings: MqttSettings,
        subscriptions: Sequence[tuple[str, int]],
        on_batch: BatchHandler,
        tls_context: ssl.SSLContext | None = None,
        *,
        max_payload_bytes: int = 65_536,
        on_session_lost: Callable[[int], None] | None = None,
        backlog: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        # Bounds what the framer buffers of one packet (limits.max_payload_bytes).
        self.max_payload_bytes = max_payload_bytes
        self.address = parse_mqtt_url(settings.url)
        # Built and checked with the config (bridge.runtime); built here only
        # when the caller did not.
        self._tls_context = tls_context
        self.subscriptions = list(subscriptions)
        self.on_batch = on_batch
        # Told the next generation when a connection ends: what is pending of
        # the old one is never acknowledged (the broker delivers it again).
        self.on_session_lost = on_session_lost
        self.generation = 0
        self.connected = False
        self.reconnects = 0
        self.paused = False
        # Messages handed on and not yet acknowledged (the ingest's count).
        # While it is at ``receive_maximum`` nothing more is read: see
        # :meth:`_backlog_full`.  None: no bound (a client that acknowledges
        # in on_batch itself).
        self._backlog = backlog
        self._holding = False
        self._inbox: list[InboundMessage] = []
        self._framer = self._new_framer()
        self._sock: socket.socket | None = None
        self._splice: PahoSplice | None = None  # the connection's
        # Our PUBACKs and PINGREQs not written yet: the splice writes from it.
        self._acks = bytearray()
        # The connection's QoS 1 messages, released for PUBACK in arrival order.
        self._order = PubackOrder()
        self._connack: trio.Event | None = None
        self._connect_error: str | None = None
        self._session_present = False
        self._connected_at = 0.0
        self._keepalive = Keepalive(settings.keepalive_s, time.monotonic())
        # The SUBSCRIBE sent with each connection: its SUBACK may come late,
        # behind a resumed session's backlog, and only a refusal in it ends
        # the connection.
        self._subscribe_mid: int | None = None
        self._subscribed = False
        self._subscribe_refused: list[str] | None = None
        self._received_before_suback = 0
        self._client = self._make_client()

    # ------------------------------------------------------------------ setup
    def _make_client(self) -> paho.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if self.address.tls or s.tls is not None:
            client.tls_set_context(self._tls_context or client_context(s.tls))
        # Registering a write hook stops paho from writing on every ack(): the
        # run loop flushes once per batch instead.
        client.on_socket_register_write = lambda *_: None
        # Commands to devices are QoS 1 publishes: paho's default of 20 in flight
        # would make a burst crawl at one broker round trip per 20 messages.
        client.max_inflight_messages_set(1000)
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        return client

    def _new_framer(self) -> Framer:
        return Framer(v5=self.settings.protocol == "5", max_payload=self.max_payload_bytes)

    def _connect_properties(self) -> Properties | None:
        if self.settings.protocol != "5":
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.settings.session_expiry_s
        props.ReceiveMaximum = self.settings.receive_maximum
        return props

    # ------------------------------------------------------------------ callbacks (trio thread)
    def _on_message(self, _client: Any, _userdata: Any, message: paho.MQTTMessage) -> None:
        # Only what the fast lane leaves to paho: QoS 2, which no mapping asks for.
        properties = getattr(message, "properties", None)
        self._inbox.append(
            InboundMessage(
                message.topic,
                bytes(message.payload),
                message.qos,
                message.retain,
                message.mid,
                getattr(properties, "UserProperty", None),
            )
        )

    def _on_connect(
        self, client: paho.Client, _u: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            self._connect_error = str(reason)
        else:
            self._connect_error = None
            self._session_present = bool(getattr(flags, "session_present", False))
            if self.subscriptions:
                _rc, self._subscribe_mid = client.subscribe(self.subscriptions)
            else:
                self._subscribed = True
        if self._connack is not None:
            self._connack.set()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: Any, _p: Any) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error(
                "mqtt.subscribe_refused",
                reasons=failed,
                subscriptions=self.subscriptions,
                hint="check the broker's ACL for this client",
            )
        if mid != self._subscribe_mid:
            return  # a reload's SUBSCRIBE: a refusal is logged, the connection stays
        if failed:
            self._subscribe_refused = failed
        else:
            self._subscribed = True

    # ------------------------------------------------------------------ public
    def ack(self, generation: int, mid: int) -> None:
        """Acknowledge a QoS 1 message of connection ``generation`` (sent by the
        next :meth:`flush_writes`)."""
        if generation == self.generation and self.connected:
            self._acks += self._order.settled(mid)

    @property
    def acks_waiting(self) -> int:
        """Messages acknowledged by the caller whose PUBACK waits for an
        earlier message of the connection (MQTT's order)."""
        return self._order.waiting

    def flush_writes(self) -> None:
        """Send the queued acknowledgements and whatever paho has queued (pings,
        publishes, subscriptions), never splicing one into the middle of the
        other's packet (:meth:`PahoSplice.flush`).  Errors are left to the read
        side, which sees the connection go."""
        if self.connected and self._splice is not None and self._splice.flush():
            self._keepalive.sent(time.monotonic())

    def _writes_pending(self) -> bool:
        return self._splice is not None and self._splice.writes_pending

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        retain: bool = False,
        user_properties: list[tuple[str, str]] | None = None,
    ) -> paho.MQTTMessageInfo:
        """Publish from the trio thread (the Kafka-to-MQTT path).  paho keeps a
        QoS 1 message until the broker acknowledges it, across reconnects; the
        returned info's ``is_published()`` turns true then.  User properties
        are sent with MQTT 5 only."""
        properties = None
        if user_properties and self.settings.protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.UserProperty = user_properties
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        self.flush_writes()
        return info

    def set_subscriptions(self, subscriptions: Sequence[tuple[str, int]]) -> None:
        """Change the subscriptions on the live session (hot reload): subscribe
        the new filters, unsubscribe the dropped ones, keep the connection."""
        new = list(subscriptions)
        old_filters = {topic for topic, _ in self.subscriptions}
        added = [(topic, qos) for topic, qos in new if (topic, qos) not in self.subscriptions]
        removed = [topic for topic in old_filters if topic not in {t for t, _ in new}]
        self.subscriptions = new
        if not self.connected:
            return
        if removed:
            self._client.unsubscribe(removed)
        if added:
            self._client.subscribe(added)
        self.flush_writes()
        if added or removed:
            log.info("mqtt.subscriptions_changed", added=[t for t, _ in added], removed=removed)

    def set_max_payload(self, max_payload_bytes: int) -> None:
        """Take a reloaded ``limits.max_payload_bytes`` for the packets still
        to come on this connection and the next ones."""
        self.max_payload_bytes = max_payload_bytes
        self._framer.set_max_payload(max_payload_bytes)

    def pause(self) -> None:
        """Stop reading from the broker (graceful shutdown); writes still go out.
        The read loop then only wakes once per tick, for the keepalive."""
        self.paused = True

    async def disconnect(self) -> None:
        if self.connected:
            self.flush_writes()  # acknowledgements before the DISCONNECT
            self._client.disconnect()
            self.flush_writes()
            self.connected = False

    # ------------------------------------------------------------------ run
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, read, reconnect with exponential backoff and jitter, forever.
        ``task_status.started()`` fires once the first connection is subscribed:
        when its SUBACK grants the subscriptions, or at once when the broker
        resumed a session, which holds them.  Not waiting then matters: the
        SUBACK queues behind the session's backlog, and a start that waited
        minutes for it would trip systemd's start timeout."""
        delay = self.settings.reconnect_min_s
        started = False

        def subscribed() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        while True:
            try:
                await self._connect()
                delay = self.settings.reconnect_min_s
                if self._session_present:
                    subscribed()
                await self._read_loop(subscribed)
            except ConnectionLost as exc:
                self._close_socket()
                if self.on_session_lost is not None:
                    self.on_session_lost(self.generation + 1)
                self.reconnects += 1
                log.warning(
                    "mqtt.disconnected",
                    broker=str(self.address),
                    reason=str(exc),
                    retry_in_s=round(delay, 2),
                )
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.settings.reconnect_max_s)

    def _close_socket(self) -> None:
        """Close a connection given up, at once: left open through the back-off,
        the broker would go on delivering to it.  (paho closes its wrapper of
        this socket again at the next connect; closing twice is harmless.)"""
        self.connected = False
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _connect(self) -> None:
        """Connect and wait for the CONNACK; the SUBSCRIBE goes out with it and
        its SUBACK is awaited by the read loop, which meanwhile processes what
        a resumed session delivers."""
        addr = self.address
        self._connack = trio.Event()
        self._subscribe_mid = None
        self._subscribed = False
        self._subscribe_refused = None
        self._received_before_suback = 0
        try:
            await trio.to_thread.run_sync(self._blocking_connect)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConnectionLost(f"cannot connect to {addr}: {exc}") from None
        sock = self._attach_fast_lane()
        with trio.move_on_after(max(self.settings.keepalive_s, 5)):
            while not self._connack.is_set():
                self._client.loop_write()
                await trio.lowlevel.wait_readable(sock)
                try:
                    self._receive()
                except ConnectionLost:
                    # A refusing broker sends CONNACK and closes at once: the
                    # reason, when it arrived, says more than the closed socket.
                    if self._connect_error:
                        raise ConnectionLost(
                            f"{addr} refused the connection: {self._connect_error}"
                        ) from None
                    raise ConnectionLost(f"{addr} closed the connection during CONNECT") from None
        if not self._connack.is_set():
            self._client.disconnect()
            raise ConnectionLost(f"{addr} did not answer CONNECT")
        if self._connect_error is not None:
            self._client.disconnect()
            raise ConnectionLost(f"{addr} refused the connection: {self._connect_error}")
        self.generation += 1
        self.connected = True
        self._connected_at = time.monotonic()
        self._client.loop_write()
        log.info(
            "mqtt.connected",
            broker=str(addr),
            client_id=self.settings.client_id,
            protocol=self.settings.protocol,
            session_present=self._session_present,
            subscriptions=[s for s, _ in self.subscriptions],
        )
        self._deliver()  # messages of a resumed session that came with the CONNACK

    def _blocking_connect(self) -> None:
        """DNS lookup and TCP/TLS connect: blocking, so it runs in a worker thread."""
        self._client.connect(
            self.address.host,
            self.address.port,
            keepalive=self.settings.keepalive_s,
            clean_start=False
            if self.settings.protocol == "5"
            else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=self._connect_properties(),
        )

    def _attach_fast_lane(self) -> socket.socket:
        """Splice the fast lane into the new connection (:class:`PahoSplice`),
        so that paho reads only what the framer passes on; what was queued for
        the previous connection goes with it."""
        sock = self._client.socket()
        if not isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
            raise ConnectionLost(f"cannot connect to {self.address}: no socket")
        self._sock = sock
        self._acks = bytearray()
        self._order = PubackOrder()
        self._splice = PahoSplice(self._client, sock, self._acks)
        self._framer = self._new_framer()
        self._keepalive = Keepalive(self.settings.keepalive_s, time.monotonic())
        self._inbox = []
        return sock

    def _receive(self) -> None:
        """Read what the socket has (a few large reads), decode the PUBLISH
        packets into the inbox and let paho handle every other packet.  Any
        byte read counts as a sign of life for the keepalive."""
        sock, splice = self._sock, self._splice
        assert sock is not None and splice is not None
        for _ in range(READS_PER_WAKEUP):
            try:
                data = sock.recv(RECV_BYTES)
            except _WOULD_BLOCK:
                break
            except OSError as exc:
                raise ConnectionLost(f"read failed: {exc}") from None
            if not data:
                raise ConnectionLost("the broker closed the connection")
            self._keepalive.received(time.monotonic())
            try:
                messages, other = self._framer.feed(data)
            except MalformedPacket as exc:
                raise ConnectionLost(f"malformed packet from the broker: {exc}") from None
            self._inbox += messages
            if other:
                try:
                    splice.to_paho(other)
                except PahoReadFailed as exc:
                    raise ConnectionLost(str(exc)) from None
            if len(data) < RECV_BYTES or self._backlog_full(len(self._inbox)):
                break

    def _read_burst(self) -> None:
        """Receive, then hand the messages on as one batch (also when the
        connection broke after they arrived)."""
        try:
            self._receive()
        finally:
            self._deliver()

    def _deliver(self) -> None:
        if self._inbox:
            batch, self._inbox = self._inbox, []
            if not self._subscribed:
                self._received_before_suback += len(batch)
            # The caller acknowledges exactly the messages with a QoS.
            self._order.arrived([m.mid for m in batch if m.qos])
            self.on_batch(batch, self.generation)

    async def _read_loop(self, subscribed: Callable[[], None]) -> None:
        sock = self._sock
        assert sock is not None
        tick = max(min(self.settings.keepalive_s / 4, 1.0), 0.05)
        announced = False
        while True:
            if self._writes_pending():
                with trio.move_on_after(tick):
                    await trio.lowlevel.wait_writable(sock)
                self.flush_writes()
            if self.paused:
                # Nothing to read any more: wake once per tick for the keepalive.
                await trio.sleep(tick)
            elif self._backlog_full():
                self._holding = True
                await trio.sleep(BACKLOG_WAIT_S)
            else:
                self._holding = False
                # TLS may hold decrypted bytes the descriptor no longer shows.
                if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                    with trio.move_on_after(tick):
                        await trio.lowlevel.wait_readable(sock)
                self._read_burst()
            if not announced:
                announced = self._check_subscription(subscribed)
            self._keep_alive()
            self.flush_writes()

    def _check_subscription(self, subscribed: Callable[[], None]) -> bool:
        """After the connection's SUBACK: True, and ``subscribed()`` called.  A
        refusal in it ends the connection; a late one does not, as long as the
        connection is alive (a resumed session's backlog arrives before it)."""
        if self._subscribe_refused is not None:
            raise ConnectionLost(
                f"{self.address} refused the subscriptions: {', '.join(self._subscribe_refused)}"
            )
        if not self._subscribed:
            return False
        log.info(
            "mqtt.subscribed",
            after_s=round(time.monotonic() - self._connected_at, 3),
            messages_before=self._received_before_suback,
        )
        subscribed()
        return True

    def _backlog_full(self, unread: int = 0) -> bool:
        """Whether ``receive_maximum`` messages wait for their acknowledgement,
        counting ``unread`` ones not handed on yet.

        MQTT 5's Receive Maximum asks the broker to send no more than that,
        but not every broker keeps to it (mosquitto 2.0 sent the bench's
        30,000-message window at once, 18,000 of them unacknowledged in the
        daemon): the bridge enforces it itself by not reading, so its memory
        holds at most ``receive_maximum`` messages and one read burst whatever
        the broker does (bridge.memory_budget), and the broker keeps the rest,
        as its queue is for.  At MQTT 3.1.1 and QoS 0, which have no such
        limit, this is the only one."""
        backlog = self._backlog
        return backlog is not None and backlog() + unread >= self.settings.receive_maximum

    def _keep_alive(self) -> None:
        """Ping when due; give the connection up when a ping went unanswered and
        nothing else arrived for a whole interval (see mqtt_keepalive).  While
        paused or holding a full backlog nothing is read, so silence proves
        nothing then."""
        now = time.monotonic()
        keepalive = self._keepalive
        if keepalive.expired(now) and not self.paused and not self._holding:
            raise ConnectionLost(
                f"keepalive timed out: nothing received for {keepalive.silent_for(now):.1f} s"
            )
        if keepalive.ping_due(now):
            keepalive.pinged(now)
            self._acks += PINGREQ


async def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at host:port within ``timeout``
    seconds.  Async: the daemon asks this at start, on the loop that already
    serves the listen address."""
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False
