"""MQTT to Kafka, the ingest path: MQTT batches through the core into Kafka
records, the acknowledgement bookkeeping that releases each QoS 1 message once
Kafka or the spool holds all its records (:mod:`bridge.ingest.pipeline`), the
spool's activation and drain (:mod:`bridge.ingest.store_forward`), the
Sparkplug B state file (:mod:`bridge.ingest.sparkplug_store`) and the counters
the path bumps (:mod:`bridge.ingest.stats`).
"""
