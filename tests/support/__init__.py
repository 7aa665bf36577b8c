"""Shared test infrastructure: real brokers on free ports, a Kafka reader,
the daemon as a subprocess, MQTT clients and deadline-bounded waiting."""

from .bridge_process import BridgeProcess, OutputLine, write_config
from .kafka import KafkaRecord, kafka_count, kafka_read
from .mosquitto import Mosquitto
from .mqtt import MqttSubscriber, ReceivedMessage, parse_mqtt_url, publish_many
from .tansu import Tansu
from .waiting import async_wait_until, free_port, port_open, wait_until

__all__ = [
    "BridgeProcess",
    "KafkaRecord",
    "Mosquitto",
    "MqttSubscriber",
    "OutputLine",
    "ReceivedMessage",
    "Tansu",
    "async_wait_until",
    "free_port",
    "kafka_count",
    "kafka_read",
    "parse_mqtt_url",
    "port_open",
    "publish_many",
    "wait_until",
    "write_config",
]
