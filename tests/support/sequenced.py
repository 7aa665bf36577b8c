"""Numbered QoS 1 traffic for fault tests, and the count of what reached Kafka.

A fault test publishes at a steady rate while the fault happens, each payload
carrying its sequence number, and afterwards checks that every number the
broker acknowledged to the publisher reached Kafka at least once. Loss shows as
missing numbers, duplicates as numbers seen more than once; both are counted
and printed, so the CI log of every fault test says what it measured.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from .bridge_process import BridgeProcess
from .kafka import KafkaRecord, kafka_read
from .mqtt import parse_mqtt_url, publish_many
from .waiting import wait_until

#: Devices the sequence is spread over, so records use several Kafka keys and
#: partitions (per-key order and partition leaders both matter in the faults).
DEVICES = 8

#: paho numbers messages 1..65535 and then starts over; a run stays below.
MAX_MESSAGES = 65_000


def sequence_payload(seq: int) -> bytes:
    """A valid telemetry payload whose only metric is its sequence number."""
    return json.dumps({"schema_version": 1, "metrics": {"seq": seq}}).encode()


def sequence_topic(seq: int) -> str:
    return f"tenant/t1/device/D{seq % DEVICES}/telemetry"


class SequencePublisher:
    """Publishes ``sequence_payload(first, first + 1, ...)`` at QoS 1, ``rate`` per second,
    from a thread of its own until :meth:`stop`.

    paho's network thread reconnects by itself (a broker restart) and resends
    QoS 1 messages not yet acknowledged, so a sequence number counts as sent
    once the broker's PUBACK for it arrived, whatever happened in between.
    """

    def __init__(self, url: str, *, rate: float, client_id: str, first: int = 0) -> None:
        self.url = url
        self.rate = rate
        self.first = first
        self._published = 0
        self._acked: set[int] = set()  # message ids with a PUBACK
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.max_inflight_messages_set(0)
        self._client.reconnect_delay_set(1, 2)
        self._connected = threading.Event()
        self._client.on_connect = lambda *_: self._connected.set()
        self._client.on_publish = self._on_publish
        self._thread = threading.Thread(target=self._publish, daemon=True)

    def start(self) -> Self:
        host, port = parse_mqtt_url(self.url)
        self._client.connect(host, port, keepalive=10)
        self._client.loop_start()
        if not self._connected.wait(10):
            self._client.loop_stop()
            raise AssertionError(f"publisher could not connect to {self.url}")
        self._thread.start()
        return self

    @property
    def published(self) -> int:
        """How many numbers were handed to paho so far."""
        with self._lock:
            return self._published

    def wait_published(self, count: int, timeout: float = 30.0) -> None:
        """Wait until at least ``count`` numbers were published (to time a fault)."""
        wait_until(lambda: self.published >= count, timeout, f"{count} publishes")

    def stop(self, timeout: float = 30.0) -> set[int]:
        """Stop publishing, wait for the broker to acknowledge every message, and
        return the acknowledged sequence numbers (all of them, or AssertionError)."""
        self._stopping.set()
        self._thread.join(timeout)
        count = self.published
        try:
            wait_until(
                lambda: len(self._acked) >= count,
                timeout,
                f"the broker's PUBACK for all {count} messages",
            )
        finally:
            self._client.disconnect()
            self._client.loop_stop()
        return set(range(self.first, self.first + count))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if not self._stopping.is_set():
            self._stopping.set()
            self._thread.join(5)
            self._client.disconnect()
            self._client.loop_stop()

    def _publish(self) -> None:
        began = time.monotonic()
        count = 0
        while True:
            # Pacing, not synchronisation: the load is meant to be steady.
            delay = began + count / self.rate - time.monotonic()
            if self._stopping.wait(max(delay, 0)):
                return
            # While the broker is away, paho queues the message and sends it
            # after reconnecting; its MQTTMessageInfo then keeps the error of the
            # first attempt, so PUBACKs are counted by message id instead.
            seq = self.first + count
            self._client.publish(sequence_topic(seq), sequence_payload(seq), qos=1)
            with self._lock:
                self._published += 1
            count += 1
            assert count < MAX_MESSAGES, "message ids would repeat"

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, *_: Any) -> None:
        self._acked.add(mid)


def clean_seq(record: KafkaRecord) -> int:
    """The sequence number in a clean record (metric ``seq``)."""
    value: Any = record.json()
    assert value["metric"] == "seq", value
    return int(value["value"])


def raw_seq(record: KafkaRecord) -> int:
    """The sequence number in a raw record (the original payload)."""
    return int(record.json()["metrics"]["seq"])


@dataclass
class Tally:
    """What one topic holds of a sequence: for the assertion and the CI log."""

    topic: str
    sent: int
    received: int
    counts: Counter[int]
    missing: list[int] = field(default_factory=list)

    @property
    def unique(self) -> int:
        return len(self.counts)

    @property
    def duplicates(self) -> int:
        """Records beyond the first of each number."""
        return sum(n - 1 for n in self.counts.values())

    def line(self, test: str) -> str:
        head = self.missing[:10]
        return (
            f"{test}: sent={self.sent} received={self.received} unique={self.unique} "
            f"duplicates={self.duplicates} missing={len(self.missing)}"
            + (f" (first missing: {head})" if head else "")
        )


def tally(
    bootstrap: str,
    topic: str,
    sent: set[int],
    *,
    seq_of: Callable[[KafkaRecord], int] = clean_seq,
    timeout: float = 60.0,
) -> Tally:
    """Read ``topic`` until every number of ``sent`` is in it, or ``timeout``.

    kafka_read stops at a record count, and duplicates make that count come
    before the last number does, so this reads again (from the beginning) for
    as many more records as numbers are still missing. Records whose number
    is not in ``sent`` (other traffic on the topic) are not counted. Where
    loss is expected, call it once the bridge has stopped and pass a short
    ``timeout``: missing numbers make it wait that long.
    """
    deadline = time.monotonic() + timeout
    want = len(sent)
    while True:
        remaining = deadline - time.monotonic()
        records = kafka_read(bootstrap, topic, expected=want, timeout=max(remaining, 1.0))
        counts = Counter(seq for seq in map(seq_of, records) if seq in sent)
        missing = sorted(sent - counts.keys())
        if not missing or time.monotonic() >= deadline:
            return Tally(topic, len(sent), counts.total(), counts, missing)
        want = len(records) + len(missing)


def settle(bridge: BridgeProcess, bootstrap: str, topic: str, sent: set[int]) -> Tally:
    """Wait until every sent number is on ``topic``, stop the bridge gracefully
    (exit code 0), and count again, so that duplicates written late count too."""
    first = tally(bootstrap, topic, sent)
    assert not first.missing, first.line("before stop") + "\n" + bridge.output_tail()
    assert bridge.stop() == 0, bridge.output_tail()
    return tally(bootstrap, topic, sent, timeout=10)


def set_kafka(config: Path, **settings: str | int) -> Path:
    """Set keys of the ``[kafka]`` table in a config file (a test's config is
    written whole by a fixture; TOML cannot reopen a table further down)."""
    lines = config.read_text().splitlines()
    start = lines.index("[kafka]") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    table = [line for line in lines[start:end] if line.split("=")[0].strip() not in settings]
    table += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    config.write_text("\n".join([*lines[:start], *table, *lines[end:]]) + "\n")
    return config


def check_delivered(
    request: pytest.FixtureRequest, result: Tally, label: str, *, duplicate_bound: int
) -> None:
    """Report the counts, then assert: nothing missing, duplicates within bound."""
    line = result.line(label)
    report(request, line)
    assert not result.missing, line
    assert result.duplicates <= duplicate_bound, f"{line}: more than {duplicate_bound} duplicates"


def daemon_metric(port: int, name: str) -> float:
    """One unlabelled sample from the daemon's ``/metrics`` (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


ACKED = "edge_bridge_mqtt_messages_acked_total"
"""The daemon's count of QoS 1 messages acknowledged to the broker."""

QOS0_DROPPED = "edge_bridge_qos0_records_dropped_total"
"""The daemon's count of QoS 0 records it dropped (nowhere to put them)."""


def qos0_burst_dropped(url: str, port: int, count: int) -> None:
    """Publish ``count`` QoS 0 messages (numbers from 10**6 on, outside any
    sequence a test counts) and wait until the daemon has dropped some: while
    the spool refuses records, nothing holds QoS 0 back at the broker."""
    burst = [(sequence_topic(n), sequence_payload(n), 0) for n in range(10**6, 10**6 + count)]
    publish_many(url, burst)
    wait_until(
        lambda: daemon_metric(port, QOS0_DROPPED) > 0,
        10,
        "QoS 0 records dropped while the spool refuses records",
    )


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Put a count line in the test report (a JUnit XML property) and on the
    terminal, even under -q and output capture, so CI logs show it."""
    request.node.user_properties.append(("counts", line))
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(f"\n[counts] {line}", flush=True)
    else:
        print(f"[counts] {line}", flush=True)
