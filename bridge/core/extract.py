"""Getters compiled from ``Source`` rules: where a value lives in a message.

A getter is built once per rule and called per message with the captured topic
segments and the decoded payload.  It returns :data:`MISSING` rather than raising
when the value is absent, because whether absence is an error depends on the
caller (an optional ``ts`` falls back to the received time, a missing device is a
dead letter).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from bridge.core.settings import Source


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

Getter = Callable[[dict[str, str], dict[str, Any]], object]


def field_path(path: str) -> tuple[str, ...]:
    """``data.DEVICE_ID`` -> ``("data", "DEVICE_ID")``."""
    return tuple(path.split("."))


def get_path(doc: object, keys: tuple[str, ...]) -> object:
    """The value at ``keys`` in nested objects, or MISSING."""
    for key in keys:
        if not isinstance(doc, dict):
            return MISSING
        doc = doc.get(key, MISSING)
        if doc is MISSING:
            return MISSING
    return doc


def _folder(case: str) -> Callable[[str], str] | None:
    if case == "lower":
        return str.lower
    if case == "upper":
        return str.upper
    return None


def describe(source: Source) -> str:
    """How a rule reads in an error message: ``field data.DEVICE_ID``."""
    if source.segment is not None:
        return f"segment {{{source.segment}}}"
    if source.field is not None:
        return f"field {source.field}"
    return f"constant {source.const!r}"


def make_getter(source: Source) -> Getter:
    """Compile a validated Source (exactly one of segment/field/const set).

    Numbers found in a field are turned into text (a device id sent as ``12``
    is the device ``"12"``); other non-text values are returned as they are, for
    the caller to refuse.
    """
    fold = _folder(source.case)
    if source.const is not None:
        constant = fold(source.const) if fold else source.const
        return lambda _segments, _doc: constant
    if source.segment is not None:
        name = source.segment
        if fold:
            return lambda segments, _doc: fold(segments[name])
        return lambda segments, _doc: segments[name]
    keys = field_path(source.field or "")

    def from_field(_segments: dict[str, str], doc: dict[str, Any]) -> object:
        value = get_path(doc, keys)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if fold and isinstance(value, str):
            return fold(value)
        return value

    return from_field
