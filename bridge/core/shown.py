"""Values quoted in dead-letter details, bounded in size.

A detail names the value that was refused, but a device chooses that value: a
300-digit number or a 60 KB string must not make the detail as large as the
payload, and ``repr`` of an int beyond 4,300 digits even raises.
"""

from __future__ import annotations


def shown(raw: object, limit: int = 64) -> str:
    """``repr(raw)`` cut to ``limit`` characters; a long integer is described
    by its number of digits instead."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw.bit_length() > 200:
        return f"an integer of about {int(raw.bit_length() * 0.30103)} digits"
    text = repr(raw)
    return text if len(text) <= limit else text[: limit - 3] + "..."
