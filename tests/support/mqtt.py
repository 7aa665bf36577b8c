"""Small paho-mqtt 2.x clients for tests: a publisher and a collecting subscriber.

Both run paho's own network thread (loop_start), which is fine for test
traffic and keeps them independent of whatever event loop the test uses. In
trio tests, call them through trio.to_thread.run_sync.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from .waiting import wait_until


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """("127.0.0.1", 1883) from "mqtt://127.0.0.1:1883"."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or parts.hostname is None:
        raise ValueError(f"not an mqtt://HOST:PORT url: {url!r}")
    return parts.hostname, parts.port or 1883


def _connect(client: paho.Client, url: str, timeout: float) -> bool:
    """Connect, run paho's thread, wait for a successful CONNACK.

    Returns the CONNACK's session-present flag.
    """
    connack: dict[str, Any] = {}

    def on_connect(
        _client: paho.Client,
        _userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        _properties: Any,
    ) -> None:
        connack["session_present"] = flags.session_present
        connack["reason"] = reason

    client.on_connect = on_connect
    host, port = parse_mqtt_url(url)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        reason: ReasonCode = wait_until(
            lambda: connack.get("reason"), timeout, f"CONNACK from {url}"
        )
        if reason.is_failure:
            raise AssertionError(f"connection to {url} refused: {reason}")
    except BaseException:
        client.loop_stop()
        raise
    return bool(connack["session_present"])


def publish_many(
    url: str,
    messages: Iterable[tuple[str, bytes, int]],
    *,
    timeout: float = 30.0,
    client_id: str = "",
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
    username: str | None = None,
    password: str | None = None,
) -> int:
    """Publish every (topic, payload, qos), wait until all are sent, disconnect.

    QoS 1 and 2 messages count as sent once the broker acknowledged them;
    QoS 0 once written to the socket. Raises AssertionError if that has not
    happened within `timeout` seconds. Returns the number published.
    """
    deadline = time.monotonic() + timeout
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    if username is not None:
        client.username_pw_set(username, password)
    # paho's default of 20 unacknowledged messages would make a large batch
    # crawl one round trip at a time; the test broker allows any number.
    client.max_inflight_messages_set(0)
    _connect(client, url, timeout)
    try:
        infos = [client.publish(topic, payload, qos) for topic, payload, qos in messages]
        for index, info in enumerate(infos):
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise AssertionError(
                    f"{len(infos) - index} of {len(infos)} messages to {url} "
                    f"not acknowledged within {timeout:g} s"
                )
        return len(infos)
    finally:
        client.disconnect()
        client.loop_stop()


@dataclass(frozen=True)
class ReceivedMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class MqttSubscriber:
    """A subscriber that collects every message it receives.

    With `clean_session=False` (MQTT 3.1.1) the broker keeps the session, its
    subscriptions and its queued QoS 1 messages while the client is away;
    `session_present` tells whether a connect resumed one. Subscriptions are
    made explicitly with subscribe() and never repeated on reconnect, so a
    test can see what the broker kept on its own.
    """

    def __init__(
        self, url: str, client_id: str, *, clean_session: bool = True, timeout: float = 10.0
    ) -> None:
        self.url = url
        self._timeout = timeout
        self._messages: list[ReceivedMessage] = []
        self._lock = threading.Lock()
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session
        )
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        #: Whether the broker resumed a session kept from an earlier connection.
        self.session_present = _connect(self._client, url, timeout)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe and wait for the broker's SUBACK."""
        _, mid = self._client.subscribe(topic, qos)
        assert mid is not None, f"subscribe to {topic} not sent"
        granted: list[ReasonCode] = wait_until(
            lambda: self._subacks.get(mid), self._timeout, f"SUBACK for {topic}"
        )
        if any(code.is_failure for code in granted):
            raise AssertionError(f"subscription to {topic} refused: {granted}")

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Wait until at least `count` messages arrived; return them all."""

        def enough() -> list[ReceivedMessage] | None:
            messages = self.messages
            return messages if len(messages) >= count else None

        return wait_until(
            enough,
            timeout,
            f"{count} MQTT messages from {self.url}",
        )

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self._messages.append(
                ReceivedMessage(msg.topic, bytes(msg.payload), msg.qos, msg.retain)
            )

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Any,
    ) -> None:
        self._subacks[mid] = reason_codes
