"""Reading a Kafka topic back in a test, exactly, without trusting offsets.

Tansu's answer to ListOffsets(latest) can be stale, so the reader does not
ask where a topic ends: it assigns every partition from the beginning and
counts what arrives. assign() also skips the consumer-group join, which takes
seconds on Tansu.

kafka_read blocks (librdkafka waits inside it): trio tests call it through
trio.to_thread.run_sync.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

T = TypeVar("T")

#: After the expected count is reached, how long to keep reading. See kafka_read.
DUPLICATE_GRACE = 0.5

#: Errors a consumer reports while it (re)connects; the deadline covers them.
_TRANSIENT = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})


@dataclass(frozen=True)
class KafkaRecord:
    """One record as a test sees it. A header stored as null reads as b""."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    def json(self) -> Any:
        """The value decoded as JSON."""
        return json.loads(self.value)


def kafka_read(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout: float = 30.0,
    grace: float = DUPLICATE_GRACE,
) -> list[KafkaRecord]:
    """Read `topic` from the beginning until `expected` records or `timeout`.

    Returns every record read, sorted by (partition, offset), so the caller
    asserts the exact count: fewer means loss (the deadline passed), more
    means duplicates. Reaching `expected` is not the end: the reader goes on
    for `grace` seconds, because a duplicate written after the last expected
    record would otherwise never be seen. That drain waits on nothing in
    particular on purpose; it is the one place where the tests look for the
    absence of something, and it only runs once everything expected is there.

    The topic may not exist yet (Tansu creates it, with 4 partitions, on the
    first produce): its metadata is polled within the same deadline. With
    `expected=0` a topic that never appears reads as empty.
    """
    records = _read(bootstrap, topic, expected, timeout, grace, _record)
    return sorted(records, key=lambda r: (r.partition, r.offset))


def kafka_count(
    bootstrap: str,
    topic: str,
    expected: int,
    identify: Callable[[bytes], Hashable],
    timeout: float = 60.0,
) -> Counter[Hashable]:
    """How many times each identity (``identify(value)``) occurs in ``topic``;
    read as :func:`kafka_read` reads.  For topics of hundreds of thousands of
    records, where keeping every record would cost hundreds of megabytes."""
    return Counter(
        _read(bootstrap, topic, expected, timeout, DUPLICATE_GRACE, lambda m: identify(_value(m)))
    )


def _read(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout: float,
    grace: float,
    convert: Callable[[Message], T],
) -> list[T]:
    deadline = time.monotonic() + timeout
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Unique and never committed: each read starts from scratch and
            # leaves nothing behind for other readers.
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "allow.auto.create.topics": False,
        }
    )
    try:
        partitions = _wait_for_partitions(consumer, topic, deadline, required=expected > 0)
        if not partitions:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[T] = []
        while len(records) < expected and time.monotonic() < deadline:
            records.extend(_consume(consumer, min(0.2, deadline - time.monotonic()), convert))
        if len(records) >= expected:
            drain_until = time.monotonic() + grace
            while time.monotonic() < drain_until:
                records.extend(
                    _consume(consumer, min(0.1, drain_until - time.monotonic()), convert)
                )
        return records
    finally:
        consumer.close()


def _wait_for_partitions(
    consumer: Consumer, topic: str, deadline: float, *, required: bool
) -> list[int]:
    """Partition ids of `topic` once its metadata exists.

    Raises AssertionError at the deadline when `required`; otherwise [].
    """
    last_error: object = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if required:
                raise AssertionError(
                    f"topic {topic!r} has no metadata before the deadline: {last_error}"
                )
            return []
        try:
            metadata = consumer.list_topics(topic, timeout=max(0.1, min(1.0, remaining)))
        except KafkaException as exc:  # a busy broker can miss one metadata round trip
            last_error = exc
            continue
        found = metadata.topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            return sorted(found.partitions)
        last_error = found.error if found is not None else "topic missing from metadata"
        time.sleep(0.05)


def _consume(consumer: Consumer, timeout: float, convert: Callable[[Message], T]) -> list[T]:
    records: list[T] = []
    if timeout <= 0:
        return records
    for message in consumer.consume(num_messages=1000, timeout=timeout):
        error = message.error()
        if error is None:
            records.append(convert(message))
        elif error.code() not in _TRANSIENT:
            raise AssertionError(f"reading {message.topic()}: {error}")
    return records


def _record(message: Message) -> KafkaRecord:
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None
    raw_headers = message.headers() or []
    # A consumed message carries a list of pairs; the stubs also allow a dict.
    assert isinstance(raw_headers, list)
    headers: dict[str, bytes] = {}
    for name, value in raw_headers:
        if name in headers:
            raise AssertionError(f"record {topic}/{partition}@{offset} repeats header {name!r}")
        headers[name] = value.encode() if isinstance(value, str) else value or b""
    return KafkaRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        key=message.key(),
        value=_value(message),
        headers=headers,
    )


def _value(message: Message) -> bytes:
    return message.value() or b""
