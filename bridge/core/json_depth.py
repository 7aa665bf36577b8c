"""How deeply a JSON text nests, measured on the bytes before decoding them.

A JSON decoder descends into nested arrays and objects recursively: 3,000 ``[``
in a 6 KB message exhaust Python's recursion limit, and the decoder's
``RecursionError`` would end the daemon.  ``limits.max_json_depth`` bounds the
nesting before the payload is decoded.

The normalizer first counts the opening brackets (two ``bytes.count`` calls,
a fraction of a microsecond on a 200-byte message): a text with no more opening
brackets than the limit cannot nest deeper, which settles almost every message.
Only a message with more of them is measured by :func:`nesting_depth`, with
C-speed string operations except for the last step.
"""

from __future__ import annotations

from itertools import accumulate

_OPEN = b"\x01"
_CLOSE = b"\xff"  # -1 as a signed byte
_BRACKETS = bytes.maketrans(b"[{]}", _OPEN * 2 + _CLOSE * 2)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[{]}")


def nesting_depth(payload: bytes, limit: int) -> int:
    """The nesting depth of ``payload``, exact for valid JSON up to ``limit + 1``
    (a deeper text may be reported as ``limit + 1``).

    Brackets inside strings are text, so strings go first: escaped backslashes
    and escaped quotes are removed (left to right, as JSON reads them), after
    which every ``"`` delimits a string and every other piece lies outside
    strings.  What is left is reduced to its brackets, and the depth is the
    highest running sum of ``+1`` per opening and ``-1`` per closing bracket.
    Invalid JSON (an unterminated string, stray backslashes) is measured as
    well as it can be; the decoder refuses it anyway.
    """
    unescaped = payload.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    structure = outside.translate(_BRACKETS, _NOT_BRACKETS)
    if _OPEN * (limit + 1) in structure:
        return limit + 1  # the usual attack, a run of openers, found at C speed
    return max(accumulate(memoryview(structure).cast("b")), default=0)


__all__ = ["nesting_depth"]
