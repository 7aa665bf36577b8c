"""Structured logs: JSON lines in production, readable columns on a terminal.

Every log call names an event (``mqtt.connected``) and its context as keys, so a
journal can be filtered with ``jq``.  Nothing on the per-message path logs; what
happens per message is counted and reported by :class:`SampledLog` or the metrics.

An adapter (structlog to stderr, hence the journal) rather than part of
``bridge/ops``: the other adapters log through it, and ``bridge/ops`` reads
the paths, which use the adapters.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

import structlog


def level_number(level: str) -> int:
    """``info`` -> 20; ValueError for a level that does not exist."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning or error")
    return numeric


def configure(fmt: Literal["auto", "json", "console"], level: str) -> None:
    """Send structlog output to stderr, as JSON unless stderr is a terminal."""
    numeric = level_number(level)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class SampledLog:
    """Log an event the first time and then at most once per ``interval_s``,
    with how many occurrences were not logged in between.  For per-message
    problems (unmatched topics, malformed records) that could flood the journal.
    """

    def __init__(self, event: str, interval_s: float = 10.0, level: str = "warning") -> None:
        self.event = event
        self.interval_s = interval_s
        self.level = level
        self.total = 0
        self._suppressed = 0
        self._next = 0.0
        self._log = structlog.get_logger("bridge.sampled")

    def __call__(self, **context: Any) -> None:
        self.total += 1
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self.interval_s
        getattr(self._log, self.level)(
            self.event, total=self.total, suppressed=self._suppressed, **context
        )
        self._suppressed = 0
