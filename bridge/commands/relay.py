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
from typing import Any

import msgspec
import structlog
import trio
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from bridge.core.coerce import InputRejected
from bridge.core.command_offsets import CommandOffsets, Commit, InFlight, ProduceDeadLetter
from bridge.core.command_plan import CommandPlan
from bridge.core.normalize import Now, payload_text
from bridge.core.records import DeadLetter, Outgoing
from bridge.core.settings import KafkaSettings
from bridge.io.kafka_config import command_consumer_config
from bridge.io.kafka_logs import librdkafka_logger
from bridge.io.kafka_producer import KafkaProducer
from bridge.io.logs import SampledLog
from bridge.io.mqtt import MqttClient

log = structlog.get_logger(__name__)

_encode = msgspec.json.Encoder().encode

CONSUME_BATCH = 500
CONSUME_TIMEOUT_S = 0.2


class _DeadLetterReport:
    """Delivery waiter of one dead letter: tells the offsets how it went."""

    __slots__ = ("action", "forwarder")

    def __init__(self, forwarder: CommandForwarder, action: ProduceDeadLetter) -> None:
        self.forwarder = forwarder
        self.action = action

    def delivered(self, error: Any, _message: Any) -> None:
        self.forwarder.dead_letter_reported(self.action, error)


class CommandForwarder:
    """One ``[[commands]]`` mapping: its consumer, translating between
    confluent-kafka / paho and :class:`bridge.core.command_offsets.CommandOffsets`,
    which owns the commit rule."""

    def __init__(
        self, plan: CommandPlan, kafka: KafkaSettings, mqtt: MqttClient, producer: KafkaProducer
    ) -> None:
        self.plan = plan
        self.mqtt = mqtt
        self.producer = producer
        self.published = 0
        self.dead_letters = 0
        m = plan.mapping
        self._conf = command_consumer_config(kafka, m) | {
            "logger": librdkafka_logger(f"commands-{m.name}")
        }
        self.offsets = CommandOffsets(plan)
        # Publishes waiting for the broker's acknowledgement (paho's info).
        self._unacked: list[tuple[InFlight, Any]] = []
        # Dead-letter records on their way to Kafka, kept for a retry.
        self._letters: dict[InFlight, Outgoing] = {}
        self._revoked: list[TopicPartition] = []
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
                for action in self.offsets.retries():
                    self._produce_dead_letter(action)
                for message in messages:
                    self._handle(message)
                offsets = self._committable()
                if offsets:
                    await trio.to_thread.run_sync(_commit, consumer, offsets)
        finally:
            self._note_acknowledged()
            final = _partitions(self.offsets.shutdown())
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_close, consumer, final)

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
        if not self._revoked:
            return
        gone = {(tp.topic, tp.partition) for tp in self._revoked}
        self._revoked.clear()
        self.offsets.revoked(gone)
        self._unacked = [(r, i) for r, i in self._unacked if (r.topic, r.partition) not in gone]
        for record in [r for r in self._letters if (r.topic, r.partition) in gone]:
            del self._letters[record]

    def _handle(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("commands.consume_error", error=str(error))
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        raw_headers: list[tuple[str, Any]] = message.headers() or []  # type: ignore[assignment]
        headers = [(k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in raw_headers]
        action = self.offsets.consumed(topic, partition, offset, message.value(), headers)
        if isinstance(action, ProduceDeadLetter):
            self.dead_letters += 1
            self._dead_log(reason=action.refusal.reason, detail=action.refusal.detail)
            self._letters[action.record] = self._letter(message, topic, action.refusal)
            self._produce_dead_letter(action)
        elif action is not None:
            publish = action.message
            info = self.mqtt.publish(
                publish.topic,
                publish.payload,
                qos=self.plan.mapping.qos,
                retain=self.plan.mapping.retain,
                user_properties=publish.user_properties,
            )
            self.published += 1
            self._unacked.append((action.record, info))

    def _letter(self, message: Message, topic: str, refusal: InputRejected) -> Outgoing:
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
        return Outgoing(
            self.plan.mapping.dead_letter_topic,
            message.key(),
            _encode(letter),
            [("reason", refusal.reason.encode()), ("kafka_topic", topic.encode())],
        )

    def _produce_dead_letter(self, action: ProduceDeadLetter) -> None:
        record = self._letters.get(action.record)
        if record is not None and not self.producer.produce(
            record, _DeadLetterReport(self, action)
        ):
            self.offsets.dead_letter_not_taken(action)

    def dead_letter_reported(self, action: ProduceDeadLetter, error: Any) -> None:
        """A dead letter's delivery report (trio side)."""
        if error is None:
            self._letters.pop(action.record, None)
            self.offsets.acknowledged(action.record)
            return
        again = self.offsets.dead_letter_failed(action)
        if again is None:
            self._letters.pop(action.record, None)
        else:
            self._produce_dead_letter(again)

    def _committable(self) -> list[TopicPartition]:
        """The commits the acknowledgements since the last batch allow."""
        self._note_acknowledged()
        return _partitions(self.offsets.commits())

    def _note_acknowledged(self) -> None:
        """Tell the offsets which publishes the broker acknowledged (paho polls)."""
        waiting = []
        for record, info in self._unacked:
            if info.is_published():
                self.offsets.acknowledged(record)
            else:
                waiting.append((record, info))
        self._unacked = waiting


def _partitions(commits: list[Commit]) -> list[TopicPartition]:
    return [TopicPartition(c.topic, c.partition, c.offset) for c in commits]


def _commit(consumer: Consumer, offsets: list[TopicPartition]) -> None:
    """Worker thread: a synchronous commit, so a failure is seen before the next batch."""
    consumer.commit(offsets=offsets, asynchronous=False)


def _close(consumer: Consumer, offsets: list[TopicPartition]) -> None:
    """Worker thread, at exit: commit what was acknowledged since the last batch
    (without waiting: Kafka may be away), then leave the group."""
    if offsets:
        try:
            consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.info("commands.final_commit_failed", error=str(exc))
    consumer.close()
