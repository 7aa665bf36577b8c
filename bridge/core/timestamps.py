"""Event times: parse what devices send, write ISO-8601 UTC ending in ``Z``.

Devices send ISO-8601 with an offset, epoch seconds or milliseconds, or a local
time in a format of their own.  Every parser here returns epoch milliseconds
(an int) or raises :class:`TimestampError` with a sentence saying what was
expected, so a dead letter can name the rule that failed.  Which parser a
mapping uses is decided once, when the config loads (:func:`make_parser`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.core.shown import shown

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Plausible event times: 2000-01-01 .. 2100-01-01.  A number outside this range is
# almost always seconds sent where milliseconds were expected (or the reverse).
_MIN_MS = 946_684_800_000
_MAX_MS = 4_102_444_800_000


class TimestampError(ValueError):
    """A time value that does not follow its declared format."""


Parser = Callable[[object], int]


@lru_cache(maxsize=4096)
def format_ms(epoch_ms: int) -> str:
    """``2026-02-25T14:00:00Z``, with ``.mmm`` only when the milliseconds are not zero.

    Cached: a batch of messages from a fleet carries few distinct timestamps, and
    strftime is the most expensive step of normalizing a small message.
    """
    moment = _EPOCH + timedelta(milliseconds=epoch_ms)
    millis = epoch_ms % 1000
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _to_ms(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _checked(epoch_ms: int, raw: object) -> int:
    if not _MIN_MS <= epoch_ms < _MAX_MS:
        raise TimestampError(f"{shown(raw)} is outside 2000-01-01..2100-01-01")
    return epoch_ms


def _number(raw: object, what: str, scale: int) -> int:
    """A JSON number of ``scale`` milliseconds per unit, as epoch milliseconds.

    The range is checked on the number as sent, before any conversion: an int
    too large for a float, or a float that becomes infinite when scaled
    (``1e306`` seconds), would otherwise raise instead of being refused."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise TimestampError(f"expected {what} as a number, got {shown(raw)}")
    if isinstance(raw, float) and not math.isfinite(raw):
        raise TimestampError(f"expected {what}, got {shown(raw)}")
    if not _MIN_MS / scale <= raw < _MAX_MS / scale:  # exact for any int, no overflow
        raise TimestampError(f"{shown(raw)} is outside 2000-01-01..2100-01-01")
    return int(raw * scale)


def parse_epoch_ms(raw: object) -> int:
    return _number(raw, "epoch milliseconds", 1)


def parse_epoch_s(raw: object) -> int:
    return _number(raw, "epoch seconds", 1000)


def parse_iso(raw: object) -> int:
    """ISO-8601 with an explicit offset (``Z`` or ``+02:00``); a time without an
    offset is refused because its zone would be a guess."""
    if not isinstance(raw, str):
        raise TimestampError(f"expected an ISO-8601 string, got {shown(raw)}")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise TimestampError(f"{shown(raw)} is not ISO-8601") from None
    if moment.tzinfo is None:
        raise TimestampError(f"{shown(raw)} has no UTC offset")
    return _checked(_to_ms(moment), raw)


def parse_auto(raw: object) -> int:
    """ISO-8601 with an offset, or epoch milliseconds: the default telemetry rule."""
    if type(raw) is int and _MIN_MS <= raw < _MAX_MS:
        return raw  # the usual ts, settled here: _number would return it unchanged
    if isinstance(raw, str):
        return parse_iso(raw)
    return parse_epoch_ms(raw)


def _strftime_parser(pattern: str, zone: tzinfo) -> Parser:
    # Read back a time written with the pattern, so that a bad directive ("%Q")
    # fails when the config loads rather than on every message.
    probe = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC).strftime(pattern)
    try:
        datetime.strptime(probe, pattern)
    except ValueError as exc:
        raise TimestampError(f"format {pattern!r} cannot be read back: {exc}") from None

    def parse(raw: object) -> int:
        if not isinstance(raw, str):
            raise TimestampError(f"expected a string in format {pattern!r}, got {shown(raw)}")
        try:
            local = datetime.strptime(raw, pattern)
        except ValueError:
            raise TimestampError(f"{shown(raw)} does not match format {pattern!r}") from None
        if local.tzinfo is None:
            local = local.replace(tzinfo=zone)
        return _checked(_to_ms(local), raw)

    return parse


_NAMED_PARSERS: dict[str, Parser] = {
    "auto": parse_auto,
    "iso": parse_iso,
    "epoch_ms": parse_epoch_ms,
    "epoch_s": parse_epoch_s,
}


def zone_for(name: str) -> tzinfo:
    """A time zone by IANA name (``America/Mexico_City``) or ``UTC``."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimestampError(f"unknown time zone {name!r}") from None


def make_parser(fmt: str, tz: str) -> Parser:
    """The parser for a declared ``format``; a ``%`` in it means a strftime pattern."""
    if fmt in _NAMED_PARSERS:
        return _NAMED_PARSERS[fmt]
    if "%" not in fmt:
        raise TimestampError(
            f"unknown time format {fmt!r}: use auto, iso, epoch_s, epoch_ms or a strftime pattern"
        )
    return _strftime_parser(fmt, zone_for(tz))


__all__ = [
    "Parser",
    "TimestampError",
    "format_ms",
    "make_parser",
    "parse_auto",
    "parse_epoch_ms",
    "parse_epoch_s",
    "parse_iso",
    "zone_for",
]
