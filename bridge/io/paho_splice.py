"""The one seam between the bridge's own MQTT receive path and paho-mqtt.

paho keeps the session: CONNECT and CONNACK, SUBSCRIBE and UNSUBSCRIBE with
their answers, the commands' QoS 1 publishes and the broker's PUBACKs of them,
QoS 2 flows, DISCONNECT.  Keeping it costs little (none of it is per message
received) and spares the bridge a second MQTT state machine.  The messages
received are not paho's: the MQTT client (:mod:`bridge.io.mqtt`) reads the
socket itself, :class:`bridge.core.mqtt_codec.Framer` decodes QoS 0 and 1
PUBLISH packets, and the client writes their PUBACKs, and its PINGREQs, itself,
a batch in one ``send()``.  Both directions share paho's socket, and
:class:`PahoSplice` is the only code that knows:

* Reads: paho is given :class:`_PahoSocket` in place of its socket, which
  serves paho only the packets the framer passed on (:meth:`PahoSplice.to_paho`)
  and tells it "nothing now" otherwise.  paho has no public hook for this; its
  ``_sock`` attribute is the one place it keeps the socket, read again at every
  call (paho-mqtt is pinned below 3 for this).
* Writes: a stream socket takes any prefix of what it is offered, so a packet
  cut short by a full socket must be finished before the other side starts
  one, or the broker reads a packet with another inside it.
  :meth:`PahoSplice.flush` lets paho write first and stops when paho could not
  finish (paho then holds the rest of its packet); once part of our batch is
  on the wire, paho waits until the batch is out.  paho never writes outside
  ``loop_write()``: the client registers a write hook
  (``on_socket_register_write``), which stops paho from writing when a packet
  is queued.

tests/unit/test_paho_splice.py runs the real paho client through a loopback
connection whose ``send()`` takes a random part of what it is offered, and
checks that the broker side reads whole packets only, each side's in the order
it queued them.
"""

from __future__ import annotations

import socket
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode


class PahoReadFailed(Exception):
    """paho failed on a packet passed on to it (or refused it); the
    connection cannot go on."""


class _PahoSocket:
    """The socket paho is given: its writes and everything else go to the real
    socket, its reads are served only from the packets given to it, and raise
    ``BlockingIOError`` (paho's "nothing now") when there are none."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.incoming = bytearray()

    def recv(self, size: int) -> bytes:
        if not self.incoming:
            raise BlockingIOError
        chunk = bytes(self.incoming[:size])
        del self.incoming[:size]  # from the front: no copy of the rest in CPython
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class PahoSplice:
    """The splice on one connection: made once paho has connected its socket,
    dropped with the connection (what is still queued belongs to it).

    ``ours`` is the caller's queue of its own packets (PUBACKs, PINGREQs): the
    caller appends to it, :meth:`flush` writes from it.  A bytearray shared
    rather than a method to call: a PUBACK is queued for every QoS 1 message,
    and the acknowledgement path costs what it did before the splice
    (callgrind, docs/benchmarks.md)."""

    def __init__(self, client: paho.Client, sock: socket.socket, ours: bytearray) -> None:
        if client.on_socket_register_write is None:
            raise ValueError("paho writes by itself without a write hook: see the module doc")
        self.sock = sock
        self._client = client
        self._paho_sock = _PahoSocket(sock)
        client._sock = self._paho_sock
        self._ours = ours
        self._ours_started = False  # part of _ours is on the wire: finish before paho writes

    def to_paho(self, packets: bytes) -> None:
        """Have paho handle these whole packets now (its callbacks run here)."""
        incoming = self._paho_sock.incoming
        incoming += packets
        client = self._client
        while incoming:
            rc = _paho_read(client)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise PahoReadFailed(f"read failed: {paho.error_string(rc)}")

    @property
    def writes_pending(self) -> bool:
        return bool(self._ours) or self._client.want_write()

    def flush(self) -> bool:
        """Write what paho and we have queued, as much as the socket takes,
        never starting a packet inside the other side's.  True when some of
        our bytes went out (the keepalive counts them).  Errors are left to the
        read side, which sees the connection go."""
        client = self._client
        if not self._ours_started and client.want_write():
            client.loop_write()
            if client.want_write():
                return False  # socket full, maybe inside one of paho's packets
        if not self._ours:
            return False
        try:
            sent = self.sock.send(self._ours)
        except OSError:  # would block (TLS: wants read or write) or broken
            return False
        del self._ours[:sent]
        self._ours_started = bool(self._ours) and (sent > 0 or self._ours_started)
        return sent > 0


def _paho_read(client: paho.Client) -> MQTTErrorCode:
    """paho handles one packet passed on.  paho turns most malformed packets
    into an error code, but not all (a broken SUBACK or CONNACK can raise from
    its decoders): whatever it raises ends this connection, never the daemon."""
    try:
        return client.loop_read()
    except Exception as exc:  # the barrier: any error here is the broker's
        raise PahoReadFailed(
            f"malformed packet from the broker: paho raised {type(exc).__name__}: {exc}"
        ) from None
