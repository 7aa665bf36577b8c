"""librdkafka's own log lines, brought into the structured log and sampled.

Left alone, librdkafka prints every failed connection attempt to stderr as
``%3|...|FAIL|...``: with Kafka down that is several unstructured lines a
second for each client.  Given a ``logging.Logger`` in its ``logger`` setting,
confluent-kafka hands each line to it instead (from whichever thread serves
the client's callbacks); this handler turns them into ``kafka.client_log``
events and lets each distinct facility through at most once per interval,
with the count of the ones it held back.  The daemon's own ``kafka.state``
events already say when a broker is unreachable.
"""

from __future__ import annotations

import logging
import threading
import time

import structlog

INTERVAL_S = 30.0
_log = structlog.get_logger("bridge.kafka")


class _SampledHandler(logging.Handler):
    def __init__(self, client: str) -> None:
        super().__init__()
        self.client = client
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        # confluent-kafka logs ("%s [%s] %s", facility, client name, text).
        args = record.args if isinstance(record.args, tuple) else ()
        facility = str(args[0]) if args else ""
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(facility, 0.0):
                self._held[facility] = self._held.get(facility, 0) + 1
                return
            self._next[facility] = now + INTERVAL_S
            held = self._held.pop(facility, 0)
        level = "warning" if record.levelno >= logging.WARNING else "info"
        getattr(_log, level)(
            "kafka.client_log",
            client=self.client,
            facility=facility,
            message=record.getMessage(),
            suppressed=held,
        )


def librdkafka_logger(client: str) -> logging.Logger:
    """A logger for a client's ``logger`` setting; ``client`` names it in events."""
    logger = logging.getLogger(f"bridge.librdkafka.{client}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        logger.addHandler(_SampledHandler(client))
    return logger
