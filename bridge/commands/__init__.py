"""Kafka to MQTT, the commands path: command records consumed from Kafka,
published to devices with QoS 1 and their offsets committed only after the
broker's acknowledgement (:mod:`bridge.commands.relay`).
"""
