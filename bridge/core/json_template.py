"""JSON shapes declared in config with ``"{name}"`` placeholders: a stream
endpoint's envelope, welcome message and status body.

Why whole-value placeholders only: a value such as ``"{metrics}"`` becomes an
object, ``"{devices}"`` a list, so the substitution is of JSON values, not of
text; a string that merely contains braces elsewhere stays as written.  A
template is compiled once (unknown names are config errors with their path)
and rendered per event with a dict of values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_PLACEHOLDER = re.compile(r"^\{([a-z_]+)\}$")


@dataclass(frozen=True, slots=True)
class Slot:
    """Where a value goes in the compiled template."""

    name: str


def compile_template(
    template: Mapping[str, object], allowed: Iterable[str], path: str
) -> tuple[dict[str, Any], list[str]]:
    """The template with its placeholders turned into :class:`Slot` objects,
    and one error line per unknown placeholder (``path.key: ...``)."""
    known = frozenset(allowed)
    errors: list[str] = []

    def walk(value: object, where: str) -> object:
        if isinstance(value, str):
            match = _PLACEHOLDER.match(value)
            if match is None:
                return value
            name = match.group(1)
            if name not in known:
                errors.append(
                    f"{where}: unknown placeholder {{{name}}} (known: {', '.join(sorted(known))})"
                )
            return Slot(name)
        if isinstance(value, dict):
            return {k: walk(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    compiled = {k: walk(v, f"{path}.{k}") for k, v in template.items()}
    return compiled, errors


def slots(compiled: object) -> set[str]:
    """Every placeholder name a compiled template uses."""
    if isinstance(compiled, Slot):
        return {compiled.name}
    if isinstance(compiled, dict):
        return set().union(*(slots(v) for v in compiled.values()))
    if isinstance(compiled, list):
        return set().union(*(slots(v) for v in compiled))
    return set()


def render(compiled: object, values: Mapping[str, object]) -> Any:
    """The template with every slot replaced by its value (None if not given)."""
    if isinstance(compiled, Slot):
        return values.get(compiled.name)
    if isinstance(compiled, dict):
        return {k: render(v, values) for k, v in compiled.items()}
    if isinstance(compiled, list):
        return [render(v, values) for v in compiled]
    return compiled
