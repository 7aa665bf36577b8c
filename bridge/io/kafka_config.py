"""Every librdkafka configuration the bridge builds, in one place.

The producer, the stream's consumer, the replay's consumer and each command
mapping's consumer share the same decisions: our safe settings first, the
user's ``kafka.properties`` (SASL, TLS, ...) over them, the stream's own
``stream.consumer_properties`` over those; a reconnect back-off of 10 s
rather than librdkafka's 1 s, which floods the log while a broker is down;
the consumers' prefetch bounded in bytes (:data:`CONSUMER_PREFETCH`).  Kept
together they cannot drift apart, and ``check-config`` judges the very
dictionaries the daemon uses (:func:`refusal`).

The builders return plain settings; the callbacks (``error_cb``,
``stats_cb``, ``logger``) belong to the handle's owner, which adds them last,
so no property can replace them.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import confluent_kafka

from bridge.core.settings import CommandMapping, KafkaSettings, StreamSettings

#: The Kafka consumers' prefetch, in bytes; any of them can be overridden
#: with ``kafka.properties`` or ``stream.consumer_properties``.  Queued
#: records at most 8 MiB (and 5,000 per partition); one fetch at most 4 MiB,
#: 1 MiB of it per partition.  librdkafka's own defaults queue up to 100,000
#: records per partition and 64 MiB, which a stream that falls behind a
#: saturated ingest fills, for records no client may ever get
#: (bridge/ops/memory_budget.py counts these bounds).
CONSUMER_PREFETCH: dict[str, int] = {
    "queued.max.messages.kbytes": 8192,
    "queued.min.messages": 5000,
    "fetch.max.bytes": 4 << 20,
    "max.partition.fetch.bytes": 1 << 20,
}


def producer_config(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    """librdkafka settings: safe defaults first, the user's ``properties`` last."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap,
        "client.id": client_id,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": settings.compression,
        "linger.ms": settings.linger_ms,
        "queue.buffering.max.messages": settings.queue_max_messages,
        "message.timeout.ms": settings.delivery_timeout_ms,
        # The default (1 s) floods the log when a broker is down; back off instead.
        "reconnect.backoff.max.ms": 10_000,
    }
    conf.update(settings.properties)
    return conf


def stream_consumer_config(
    kafka: KafkaSettings, stream: StreamSettings, group_id: str
) -> dict[str, Any]:
    """The live stream's consumer: ours, then ``kafka.properties`` (SASL,
    TLS ...), then ``stream.consumer_properties``, which win."""
    return {
        "bootstrap.servers": kafka.bootstrap,
        "client.id": "edge-bridge-stream",
        "group.id": group_id,
        "auto.offset.reset": "latest",
        # Commits only mean something for a group that outlives the process.
        "enable.auto.commit": stream.group_id is not None,
        "session.timeout.ms": stream.session_timeout_ms,
        "heartbeat.interval.ms": max(100, stream.session_timeout_ms // 3),
        "statistics.interval.ms": 5000,
        # A subscribed topic that does not exist yet is looked for this often.
        "topic.metadata.refresh.interval.ms": 5000,
        # A live stream: do not let an idle fetch sit on new records.
        "fetch.wait.max.ms": 100,
        # Past these bounds librdkafka stops fetching.
        **CONSUMER_PREFETCH,
        # librdkafka retries a down broker every 100 ms by default; back off to 10 s.
        "reconnect.backoff.max.ms": 10_000,
        **kafka.properties,
        **stream.consumer_properties,
    }


def replay_consumer_config(
    kafka: KafkaSettings, stream: StreamSettings, group_id: str
) -> dict[str, Any]:
    """A replay's consumer, which reads a gap with ``assign()``: the group id
    is required by librdkafka but unused (no group join, no commits); the
    end of each partition is reported (``enable.partition.eof``) so that the
    replay knows when it is done."""
    return {
        "bootstrap.servers": kafka.bootstrap,
        "client.id": "edge-bridge-replay",
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        **CONSUMER_PREFETCH,  # bounded in bytes, as the live stream's
        **kafka.properties,
        **stream.consumer_properties,
    }


def command_consumer_config(kafka: KafkaSettings, mapping: CommandMapping) -> dict[str, Any]:
    """A ``[[commands]]`` mapping's consumer: offsets committed by hand, only
    once the broker acknowledged the publish (bridge/core/command_offsets.py);
    then the user's ``kafka.properties``."""
    return {
        "bootstrap.servers": kafka.bootstrap,
        "group.id": mapping.group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": mapping.start_from,
        "session.timeout.ms": mapping.session_timeout_ms,
        "heartbeat.interval.ms": max(mapping.session_timeout_ms // 3, 100),
        "reconnect.backoff.max.ms": 10_000,
        **CONSUMER_PREFETCH,  # bounded in bytes (bridge/ops/memory_budget.py)
        **kafka.properties,
    }


#: librdkafka's log lines go here while a handle is only built to be checked:
#: they are queued for a poll() that never comes, so none reach stderr.
_QUIET = logging.getLogger("bridge.librdkafka.check")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())


def refusal(kind: type[Any], conf: dict[str, Any]) -> str | None:
    """Create a librdkafka handle with no broker to contact and close it:
    None, or why librdkafka refused the configuration."""
    try:
        handle = kind({**conf, "bootstrap.servers": "", "logger": _QUIET})
    except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
        error = exc.args[0] if exc.args else exc
        text = error.str() if isinstance(error, confluent_kafka.KafkaError) else str(error)
        return re.sub(r"^Failed to create \w+: ", "", text.strip())
    if isinstance(handle, confluent_kafka.Consumer):
        handle.close()
    else:
        handle.flush(0)
    return None
