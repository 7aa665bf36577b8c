"""The on-disk format of the spool: segment headers and framed records.

Pure functions over bytes (no files, no clock), so that the torn-tail and
corruption rules can be tested without a disk and reused by the reader and the
open-time scan of :mod:`bridge.io.spool`.

A segment file is an 8-byte header (``SEGMENT_MAGIC``: 7 bytes of magic and one
version byte) followed by frames.  A frame is::

    u32 little-endian  payload length
    u32 little-endian  zlib.crc32(payload)
    payload            msgpack of [seq, [topic, key, value, [[name, value], ...]]]

Every record carries its sequence number.  The segment's file name already
gives the first one and records are consecutive, so the number is redundant on
purpose: a frame that checks out but holds the wrong number (a segment copied
or renamed by hand) is caught instead of being delivered under a wrong
position.

Why a length of zero is refused: after a power loss ext4 can leave a file whose
size grew but whose new blocks read as zeros, and ``crc32(b"") == 0``, so a
frame of eight zero bytes would otherwise "verify".  Every payload is at least
a few bytes of msgpack.
"""

from __future__ import annotations

import enum
import struct
import zlib

import msgspec

from bridge.core.records import Outgoing

SEGMENT_MAGIC = b"EBSPOOL"
SEGMENT_VERSION = 1
SEGMENT_HEADER = SEGMENT_MAGIC + bytes([SEGMENT_VERSION])
HEADER_SIZE = len(SEGMENT_HEADER)

_FRAME = struct.Struct("<II")
FRAME_OVERHEAD = _FRAME.size
MAX_PAYLOAD = 64 << 20
"""A length field above this is corruption, not a record: bounds what a damaged
length can make the reader allocate."""


class SpoolEntry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A record with its spool sequence number (its position for ``ack_through``)."""

    seq: int
    record: Outgoing


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SpoolEntry)


def encode_frame(seq: int, record: Outgoing) -> bytes:
    """The frame for one record: length, CRC32, payload."""
    payload = _encoder.encode(SpoolEntry(seq, record))
    if len(payload) > MAX_PAYLOAD:
        raise RecordTooLarge(f"record of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


class RecordTooLarge(ValueError):
    """A record that cannot fit in one segment (or exceeds ``MAX_PAYLOAD``)."""


class Stop(enum.Enum):
    """Why :func:`decode_frames` stopped before the end of the buffer, if it did."""

    END = "end"
    """The buffer ended exactly on a frame boundary (or ``max_records`` was reached)."""
    INCOMPLETE = "incomplete"
    """The buffer ends inside a frame; ``need`` says how many bytes the frame has."""
    BAD_LENGTH = "bad length"
    BAD_CRC = "crc mismatch"
    BAD_PAYLOAD = "undecodable payload"
    BAD_SEQ = "unexpected sequence number"


CORRUPT = frozenset({Stop.BAD_LENGTH, Stop.BAD_CRC, Stop.BAD_PAYLOAD, Stop.BAD_SEQ})


class Decoded(msgspec.Struct, frozen=True):
    """The frames decoded from the start of a buffer.

    ``consumed`` is the byte length of the valid frames, i.e. the offset (relative
    to the buffer) where decoding stopped; ``need`` is, for ``INCOMPLETE``, the full
    size of the frame that starts there.
    """

    entries: list[SpoolEntry]
    consumed: int
    stop: Stop
    need: int = 0


def decode_frames(
    buf: bytes | memoryview, expected_seq: int, max_records: int = 1 << 62
) -> Decoded:
    """Decode consecutive frames from the start of ``buf``.

    The first frame must hold ``expected_seq`` and each next one the number after.
    Decoding stops at the first frame that is incomplete or corrupt; what came
    before it is returned.  The caller decides what a stop means: an incomplete
    frame at the end of a read chunk just needs more bytes; the same at the end of
    the file, or any corrupt frame, is a torn or damaged tail.
    """
    view = memoryview(buf)
    entries: list[SpoolEntry] = []
    offset = 0
    seq = expected_seq
    while len(entries) < max_records:
        if len(view) - offset < FRAME_OVERHEAD:
            stop = Stop.END if offset == len(view) else Stop.INCOMPLETE
            return Decoded(entries, offset, stop, FRAME_OVERHEAD if stop is Stop.INCOMPLETE else 0)
        length, crc = _FRAME.unpack_from(view, offset)
        if length == 0 or length > MAX_PAYLOAD:
            return Decoded(entries, offset, Stop.BAD_LENGTH)
        end = offset + FRAME_OVERHEAD + length
        if end > len(view):
            return Decoded(entries, offset, Stop.INCOMPLETE, FRAME_OVERHEAD + length)
        payload = view[offset + FRAME_OVERHEAD : end]
        if zlib.crc32(payload) != crc:
            return Decoded(entries, offset, Stop.BAD_CRC)
        try:
            entry = _decoder.decode(payload)
        except msgspec.DecodeError:
            return Decoded(entries, offset, Stop.BAD_PAYLOAD)
        if entry.seq != seq:
            return Decoded(entries, offset, Stop.BAD_SEQ)
        entries.append(entry)
        offset = end
        seq += 1
    return Decoded(entries, offset, Stop.END)


def headers_needed(sizes: list[int], used: int, segment_bytes: int) -> int:
    """How many new segments appending frames of ``sizes`` opens, given an active
    segment of ``used`` bytes (-1: none).  A frame goes into the active segment
    when that segment holds no record yet or the frame still fits in
    ``segment_bytes``; otherwise a new segment is opened.  :class:`Spool` places
    frames by the same rule, so this gives the exact size of a batch before any
    of it is written (the all-or-nothing check of the backpressure policy).
    """
    opened = 0
    for size in sizes:
        if needs_new_segment(used, size, segment_bytes):
            opened += 1
            used = HEADER_SIZE
        used += size
    return opened


def needs_new_segment(used: int, frame_size: int, segment_bytes: int) -> bool:
    """The placement rule: see :func:`headers_needed`."""
    return used < 0 or (used > HEADER_SIZE and used + frame_size > segment_bytes)
