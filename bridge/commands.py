"""Kafka to MQTT: consume a command topic, publish each record to its device.

The promise: a record's Kafka offset is committed only after the MQTT broker
acknowledged its publish (QoS 1), or after its dead-letter record was delivered.
Offsets are committed per partition for the longest prefix of records that are
done, so a crash re-publishes at most what was in flight (at-least-once; a
device may see a command twice and should treat command ids idempotently).

``consume()`` and ``commit()`` block in librdkafka and run in a worker thread;
the MQTT publishes and the bookkeeping stay on the trio thread.  All instances
of the daemon share one consumer group per command mapping, so each command is
published once, by one of them.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import msgspec
import structlog
import trio
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from bridge.config import KafkaSettings
from bridge.core.coerce import Refusal
from bridge.core.commands import CommandPlan
from bridge.core.normalize import Now, payload_text
from bridge.core.records import DeadLetter, Outgoing
from bridge.io.kafka_logs import librdkafka_logger
from bridge.io.kafka_producer import KafkaProducer
from bridge.io.mqtt import MqttClient
from bridge.logs import SampledLog

log = structlog.get_logger(__name__)

_encode = msgspec.json.Encoder().encode

CONSUME_BATCH = 500
CONSUME_TIMEOUT_S = 0.2


class _Sent:
    """A record on its way out: done when MQTT (or Kafka, for a dead letter)
    acknowledged it."""

    __slots__ = ("info", "landed")

    def __init__(self, info: Any = None) -> None:
        self.info = info  # paho MQTTMessageInfo, or None for a dead letter
        self.landed = False

    def done(self) -> bool:
        return self.landed or (self.info is not None and self.info.is_published())

    def delivered(self, error: Any, _message: Any) -> None:
        """Dead-letter delivery report."""
        self.landed = error is None


class CommandForwarder:
    """One ``[[commands]]`` mapping: its consumer and its commit bookkeeping."""

    def __init__(
        self, plan: CommandPlan, kafka: KafkaSettings, mqtt: MqttClient, producer: KafkaProducer
    ) -> None:
        self.plan = plan
        self.mqtt = mqtt
        self.producer = producer
        self.published = 0
        self.dead_letters = 0
        m = plan.mapping
        conf: dict[str, Any] = {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": m.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": m.start_from,
            "session.timeout.ms": m.session_timeout_ms,
            "heartbeat.interval.ms": max(m.session_timeout_ms // 3, 100),
            "reconnect.backoff.max.ms": 10_000,
        }
        conf.update(kafka.properties)
        conf["logger"] = librdkafka_logger(f"commands-{m.name}")
        self._conf = conf
        self._pending: dict[tuple[str, int], deque[tuple[int, _Sent]]] = {}
        self._revoked: list[TopicPartition] = []
        self._unsent: list[tuple[Outgoing, _Sent]] = []
        self._dead_log = SampledLog("commands.dead_letter")

    async def run(self) -> None:
        m = self.plan.mapping
        consumer = Consumer(self._conf)
        consumer.subscribe([m.kafka_topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("commands.started", name=m.name, kafka_topic=m.kafka_topic, group=m.group_id)
        try:
            while True:
                messages = await trio.to_thread.run_sync(
                    lambda: consumer.consume(CONSUME_BATCH, CONSUME_TIMEOUT_S)
                )
                self._forget_revoked()
                self._retry_dead_letters()
                for message in messages:
                    self._handle(message)
                offsets = self._committable()
                if offsets:
                    await trio.to_thread.run_sync(_commit, consumer, offsets)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(consumer.close)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Runs in the consume thread: log only.
        log.info(
            "commands.assigned",
            name=self.plan.mapping.name,
            partitions=[f"{tp.topic}[{tp.partition}]" for tp in partitions],
        )

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoked.extend(partitions)

    def _forget_revoked(self) -> None:
        """Another instance owns these now; their unacknowledged records will be
        consumed again there (at-least-once)."""
        for tp in self._revoked:
            self._pending.pop((tp.topic, tp.partition), None)
        self._revoked.clear()

    def _handle(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("commands.consume_error", error=str(error))
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        queue = self._pending.setdefault((topic, partition), deque())
        raw_headers: list[tuple[str, Any]] = message.headers() or []  # type: ignore[assignment]
        headers = [(k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in raw_headers]
        try:
            publish = self.plan.resolve(message.value(), headers)
        except Refusal as refusal:
            queue.append((offset, self._dead_letter(message, topic, refusal)))
            return
        info = self.mqtt.publish(
            publish.topic,
            publish.payload,
            qos=self.plan.mapping.qos,
            retain=self.plan.mapping.retain,
            user_properties=publish.user_properties,
        )
        self.published += 1
        queue.append((offset, _Sent(info)))

    def _dead_letter(self, message: Message, topic: str, refusal: Refusal) -> _Sent:
        self.dead_letters += 1
        self._dead_log(reason=refusal.reason, detail=refusal.detail)
        text, encoding = payload_text(message.value() or b"")
        letter = DeadLetter(
            reason=refusal.reason,
            detail=refusal.detail,
            mqtt_topic=self.plan.mapping.mqtt_topic,
            mapping=self.plan.mapping.name,
            payload=text,
            payload_encoding="base64" if encoding == "base64" else "utf-8",
            received_at=Now(time.time_ns() // 1_000_000).iso,
        )
        sent = _Sent()
        record = Outgoing(
            self.plan.mapping.dead_letter_topic,
            message.key(),
            _encode(letter),
            [("reason", refusal.reason.encode()), ("kafka_topic", topic.encode())],
        )
        if not self.producer.produce(record, sent):
            self._unsent.append((record, sent))
        return sent

    def _retry_dead_letters(self) -> None:
        """Dead letters that found librdkafka's queue full; their offsets stay
        uncommitted until they are delivered."""
        unsent, self._unsent = self._unsent, []
        for record, sent in unsent:
            if not self.producer.produce(record, sent):
                self._unsent.append((record, sent))

    def _committable(self) -> list[TopicPartition]:
        """Per partition, the offset after the longest done prefix."""
        offsets = []
        for (topic, partition), queue in self._pending.items():
            last = None
            while queue and queue[0][1].done():
                last = queue.popleft()[0]
            if last is not None:
                offsets.append(TopicPartition(topic, partition, last + 1))
        return offsets


def _commit(consumer: Consumer, offsets: list[TopicPartition]) -> None:
    """Worker thread: a synchronous commit, so a failure is seen before the next batch."""
    consumer.commit(offsets=offsets, asynchronous=False)
