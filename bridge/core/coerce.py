"""Value rules: turn what a device sent into a typed metric value, or say why not.

Each function takes the raw JSON value and returns ``(value, metric_type)`` or
raises :class:`InputRejected` with a dead-letter reason code and a sentence.  Rules are
built once per declared field (:func:`make_coercer`), so the hot path calls a
closure and never re-reads the config.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import suppress

from bridge.core.records import MetricType, Value
from bridge.core.shown import shown

# Integers must fit in a signed 64-bit integer: what Kafka consumers in Java,
# Go or a database column can hold.  JSON allows any number of digits.
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1


class InputRejected(Exception):
    """A message, metric or command record the bridge will not pass on: it
    becomes a dead letter, ``reason`` its stable code, ``detail`` the sentence
    naming the field and the rule.  (Not :class:`bridge.auth.Refusal`, why a
    client connection is refused.)"""

    def __init__(self, reason: str, detail: str, metric: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.metric = metric


Coercer = Callable[[object], tuple[Value, MetricType]]


def typed_value(raw: object, max_string: int) -> tuple[Value, MetricType]:
    """The ``auto`` rule: a JSON value already carries its type.  A finite number is
    numeric, a bool is bool, a bounded string is str; anything else is refused."""
    if isinstance(raw, bool):
        return raw, "bool"
    if isinstance(raw, int):
        if INT_MIN <= raw <= INT_MAX:
            return raw, "numeric"
        raise _too_large(raw)
    if isinstance(raw, float):
        if math.isfinite(raw):
            return raw, "numeric"
        raise InputRejected("metric_type_invalid", f"{shown(raw)} is not a finite number")
    if isinstance(raw, str):
        if len(raw) > max_string:
            raise InputRejected(
                "metric_type_invalid", f"string longer than {max_string} characters"
            )
        return raw, "str"
    kind = "null" if raw is None else type(raw).__name__
    raise InputRejected("metric_type_invalid", f"a {kind} is not a number, bool or string")


def _too_large(raw: int, where: str | None = None) -> InputRejected:
    detail = f"{shown(raw)} does not fit in a 64-bit integer"
    return InputRejected("value_out_of_range", f"{where}: {detail}" if where else detail)


def parse_number(text: str) -> int | float:
    """A numeric string (``"+20.652472"``, ``"9"``, ``"0.00"``) as int when it is
    written as an integer, else float; ``nan`` and ``inf`` are refused, and so is
    what only Python reads as a number (``"1_000"``, non-ASCII digits)."""
    stripped = text.strip()
    if "_" in stripped or not stripped.isascii():
        raise ValueError(text)
    try:
        return int(stripped)
    except ValueError:
        pass
    number = float(stripped)  # ValueError propagates to the caller's message
    if not math.isfinite(number):
        raise ValueError(text)
    return number


def _numeric(where: str) -> Coercer:
    def coerce(raw: object) -> tuple[Value, MetricType]:
        number = raw
        if isinstance(raw, str):
            with suppress(ValueError):  # refused below, with the text as sent
                number = parse_number(raw)
        if isinstance(number, int) and not isinstance(number, bool):
            if INT_MIN <= number <= INT_MAX:
                return number, "numeric"
            raise _too_large(number, where)
        if isinstance(number, float) and math.isfinite(number):
            return number, "numeric"
        kind = "a bool" if isinstance(raw, bool) else "not a number"
        raise InputRejected("coercion_failed", f"{where}: {shown(raw)} is {kind}, rule numeric")

    return coerce


def _boolean(where: str, true_words: list[str], false_words: list[str]) -> Coercer:
    truthy = {word.lower() for word in true_words}
    falsy = {word.lower() for word in false_words}

    def coerce(raw: object) -> tuple[Value, MetricType]:
        if isinstance(raw, bool):
            return raw, "bool"
        if isinstance(raw, str):
            word = raw.strip().lower()
            if word in truthy:
                return True, "bool"
            if word in falsy:
                return False, "bool"
        words = "/".join([*true_words, *false_words])
        raise InputRejected(
            "coercion_failed", f"{where}: {shown(raw)} is not one of {words}, rule bool"
        )

    return coerce


def _text(where: str, enum: list[str] | None, max_string: int) -> Coercer:
    allowed = frozenset(enum) if enum is not None else None

    def coerce(raw: object) -> tuple[Value, MetricType]:
        if not isinstance(raw, str):
            raise InputRejected(
                "coercion_failed", f"{where}: {shown(raw)} is not a string, rule str"
            )
        if len(raw) > max_string:
            raise InputRejected(
                "metric_type_invalid", f"{where}: string longer than {max_string} characters"
            )
        if allowed is not None and raw not in allowed:
            raise InputRejected(
                "value_not_allowed", f"{where}: {shown(raw)} is not one of {sorted(allowed)}"
            )
        return raw, "str"

    return coerce


def make_coercer(
    kind: str,
    where: str,
    *,
    max_string: int,
    true_words: list[str] | None = None,
    false_words: list[str] | None = None,
    enum: list[str] | None = None,
) -> Coercer:
    """The rule for one declared field; ``where`` names the field in messages."""
    if kind == "numeric":
        return _numeric(where)
    if kind == "bool":
        return _boolean(where, true_words or [], false_words or [])
    if kind == "str":
        return _text(where, enum, max_string)

    def auto(raw: object) -> tuple[Value, MetricType]:
        try:
            return typed_value(raw, max_string)
        except InputRejected as refusal:
            raise InputRejected(refusal.reason, f"{where}: {refusal.detail}") from None

    return auto
