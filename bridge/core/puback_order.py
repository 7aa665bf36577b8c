"""PUBACKs in the order their PUBLISH packets arrived.

MQTT makes it a rule for the receiver of QoS 1 messages: PUBACK packets go
out in the order in which the corresponding PUBLISH packets were received
(MQTT 5.0 section 4.6, [MQTT-4.6.0-2]; MQTT 3.1.1 says the same).  The bridge
acknowledges a message only once Kafka holds every record made from it, and
Kafka confirms each partition on its own, so messages are *settled* out of
order all the time: a message whose records went to a partition on a slower
broker, or into the spool, settles after messages that arrived behind it.

Brokers may rely on it: mosquitto, for one, looks a PUBACK up from its
oldest message in flight, and decides how many queued messages to send next
from where in that list the acknowledged one was (database.c,
``db__message_delete_outgoing``).  The bridge used to send its PUBACKs in
the order Kafka confirmed them (tests/integration/test_mqtt_puback_order.py
shows the difference through the daemon).

:class:`PubackOrder` is the rule and nothing else: told the packet ids of a
connection's QoS 1 messages as they arrive and each message when it is
settled, it returns the PUBACKs that are due, in arrival order.  A message
settled before an earlier one waits (an int in a dict) until that one is
settled too.  One per connection: ids of a lost connection are never
acknowledged on the next one (the broker sends those messages again).

Pure, no I/O (tests/unit/test_puback_order.py checks the order with
hypothesis against any arrival and settling order, duplicate ids included).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from bridge.core.mqtt_codec import puback


class PubackOrder:
    """The PUBACKs of one connection, released in arrival order."""

    __slots__ = ("_arrived", "_early")

    def __init__(self) -> None:
        # Packet ids of the messages not acknowledged yet, oldest first.
        self._arrived: deque[int] = deque()
        # Settled ids still behind an unsettled earlier message, with how many
        # times each was settled (a broker may reuse an id while it is
        # unacknowledged, against the protocol; the count keeps each PUBACK).
        self._early: dict[int, int] = {}

    def arrived(self, mids: Iterable[int]) -> None:
        """QoS 1 messages arrived with these packet ids, in this order."""
        self._arrived.extend(mids)

    def settled(self, mid: int) -> bytes:
        """Message ``mid`` may be acknowledged: the PUBACKs due now, in arrival
        order (its own and those of later messages settled before it), or
        nothing while an earlier message is unsettled.

        ``mid`` must be the id of a message told to :meth:`arrived` and not
        settled yet.  A broker that reuses an id before it is acknowledged
        (against the protocol) still gets one PUBACK per message with that
        id, in arrival order; which of them a PUBACK stands for cannot be
        told on the wire, by the broker either."""
        arrived = self._arrived
        if not arrived or arrived[0] != mid:
            early = self._early
            early[mid] = early.get(mid, 0) + 1
            return b""
        arrived.popleft()
        due = puback(mid)
        early = self._early
        while early and arrived:
            head = arrived[0]
            count = early.get(head)
            if count is None:
                break
            arrived.popleft()
            if count == 1:
                del early[head]
            else:
                early[head] = count - 1
            due += puback(head)
        return due

    @property
    def waiting(self) -> int:
        """Settled messages whose PUBACK waits for an earlier message."""
        return sum(self._early.values())
