"""The live stream: Kafka (or the local ingest) to WebSocket and SSE clients.

Entry point: :func:`bridge.stream.service.run_stream`.
"""
