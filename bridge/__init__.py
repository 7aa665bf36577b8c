"""edge-bridge: MQTT telemetry to validated Kafka records, and a live stream back out."""

__version__ = "0.1.0"
