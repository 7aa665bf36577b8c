"""MQTT topic filters with named segments, and string templates that fill them.

A mapping names the levels it cares about: ``tenant/{tenant}/device/{device}/telemetry``.
Each ``{name}`` level behaves as MQTT's ``+`` when subscribing and captures the
level's text when matching; ``+`` and a trailing ``#`` are allowed too and capture
nothing.  Parsing happens once, when the config loads; matching a topic is a walk
over a tuple, with no regular expressions on the hot path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAMED = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# A level of a parsed filter: a literal string, or one of these markers.
_ANY = object()  # "+"
_REST = object()  # "#"


class TopicSyntaxError(ValueError):
    """A filter or template that cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class TopicFilter:
    """A parsed filter.  ``levels`` holds literals, ``_ANY``, ``_REST`` or the name
    of a captured level (as ``("name",)`` so it cannot be confused with a literal)."""

    text: str
    levels: tuple[object, ...]
    names: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> TopicFilter:
        if not text:
            raise TopicSyntaxError("the topic filter is empty")
        levels: list[object] = []
        names: list[str] = []
        parts = text.split("/")
        for index, part in enumerate(parts):
            named = _NAMED.match(part)
            if named:
                name = named.group(1)
                if name in names:
                    raise TopicSyntaxError(f"segment {{{name}}} appears twice in {text!r}")
                names.append(name)
                levels.append((name,))
            elif part == "+":
                levels.append(_ANY)
            elif part == "#":
                if index != len(parts) - 1:
                    raise TopicSyntaxError(f"'#' must be the last level of {text!r}")
                levels.append(_REST)
            elif "{" in part or "}" in part or "+" in part or "#" in part:
                raise TopicSyntaxError(
                    f"level {part!r} of {text!r} must be a literal, {{name}}, '+' or '#'"
                )
            else:
                levels.append(part)
        return cls(text, tuple(levels), tuple(names))

    @property
    def subscription(self) -> str:
        """The MQTT filter to subscribe with: named levels become ``+``."""
        out = []
        for level in self.levels:
            if level is _ANY or isinstance(level, tuple):
                out.append("+")
            elif level is _REST:
                out.append("#")
            else:
                out.append(str(level))
        return "/".join(out)

    def match(self, topic_levels: list[str]) -> dict[str, str] | None:
        """The captured segments when ``topic_levels`` (a topic split on ``/``)
        matches, else None."""
        levels = self.levels
        if len(topic_levels) != len(levels) and not (
            levels and levels[-1] is _REST and len(topic_levels) >= len(levels) - 1
        ):
            return None
        captured: dict[str, str] = {}
        for level, value in zip(levels, topic_levels, strict=False):
            if level is _REST:
                break
            if isinstance(level, tuple):
                captured[level[0]] = value
            elif level is not _ANY and level != value:
                return None
        return captured


@dataclass(frozen=True)
class Template:
    """A string with ``{name}`` placeholders, split once into literal and name
    parts so rendering is a join."""

    text: str
    parts: tuple[tuple[bool, str], ...]  # (is_placeholder, literal-or-name)

    @classmethod
    def parse(cls, text: str) -> Template:
        parts: list[tuple[bool, str]] = []
        pos = 0
        for found in _PLACEHOLDER.finditer(text):
            if found.start() > pos:
                parts.append((False, text[pos : found.start()]))
            name = found.group(1)
            if not _IDENT.match(name):
                raise TopicSyntaxError(f"placeholder {{{name}}} in {text!r} is not a name")
            parts.append((True, name))
            pos = found.end()
        if pos < len(text):
            parts.append((False, text[pos:]))
        if any("{" in value or "}" in value for is_name, value in parts if not is_name):
            raise TopicSyntaxError(f"unbalanced brace in {text!r}")
        return cls(text, tuple(parts))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(value for is_name, value in self.parts if is_name)

    def render(self, values: dict[str, str]) -> str:
        return "".join(values[value] if is_name else value for is_name, value in self.parts)


_FORBIDDEN_IN_SEGMENT = ("+", "#", "\x00")


def segment_problem(value: str, max_length: int) -> str | None:
    """Why a captured topic segment cannot be used as an identifier, or None."""
    if not value:
        return "is empty"
    if len(value) > max_length:
        return f"is longer than {max_length} characters"
    for char in _FORBIDDEN_IN_SEGMENT:
        if char in value:
            return f"contains {char!r}"
    return None
