"""The spool's frame format: what counts as a record, a torn frame, a damaged one."""

from __future__ import annotations

import struct
import zlib

from bridge.core.spool_format import (
    FRAME_OVERHEAD,
    HEADER_SIZE,
    Outgoing,
    Stop,
    decode_frames,
    encode_frame,
    headers_needed,
)

REC = Outgoing("telemetry.clean", b"t1:DEV-001", b'{"v":1}', [("tenant", b"t1")])


def _frames(first: int, count: int) -> bytes:
    return b"".join(encode_frame(seq, REC) for seq in range(first, first + count))


def test_frames_roundtrip_with_their_sequence_numbers() -> None:
    no_key = Outgoing("t", None, b"", [])
    buf = encode_frame(7, REC) + encode_frame(8, no_key)
    decoded = decode_frames(buf, 7)
    assert decoded.stop is Stop.END
    assert decoded.consumed == len(buf)
    assert [(e.seq, e.record) for e in decoded.entries] == [(7, REC), (8, no_key)]


def test_max_records_stops_on_a_frame_boundary() -> None:
    buf = _frames(1, 5)
    decoded = decode_frames(buf, 1, max_records=2)
    assert [e.seq for e in decoded.entries] == [1, 2]
    assert decoded.stop is Stop.END
    assert decode_frames(buf[decoded.consumed :], 3).entries[0].seq == 3


def test_a_cut_frame_is_incomplete_and_says_how_big_it_is() -> None:
    whole = encode_frame(1, REC)
    for cut in (1, FRAME_OVERHEAD - 1, FRAME_OVERHEAD, len(whole) - 1):
        decoded = decode_frames(encode_frame(0, REC) + whole[:cut], 0)
        assert [e.seq for e in decoded.entries] == [0]
        assert decoded.stop is Stop.INCOMPLETE
        assert decoded.need == (FRAME_OVERHEAD if cut < FRAME_OVERHEAD else len(whole))


def test_zero_filled_tail_is_not_a_record() -> None:
    # ext4 after a power loss: the size grew, the new blocks read as zeros, and
    # crc32(b"") == 0 would make an empty frame "valid".
    decoded = decode_frames(_frames(1, 2) + bytes(64), 1)
    assert [e.seq for e in decoded.entries] == [1, 2]
    assert decoded.stop is Stop.BAD_LENGTH


def test_a_flipped_byte_is_a_crc_mismatch() -> None:
    buf = bytearray(_frames(1, 3))
    buf[-3] ^= 0x40
    decoded = decode_frames(bytes(buf), 1)
    assert [e.seq for e in decoded.entries] == [1, 2]
    assert decoded.stop is Stop.BAD_CRC


def test_a_valid_frame_that_is_not_a_record_is_refused() -> None:
    payload = b"\x93\x01\x02\x03"  # msgpack [1, 2, 3]: checksum fine, shape wrong
    frame = struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
    assert decode_frames(frame, 1).stop is Stop.BAD_PAYLOAD


def test_a_frame_with_another_sequence_number_is_refused() -> None:
    decoded = decode_frames(_frames(1, 2) + encode_frame(9, REC), 1)
    assert [e.seq for e in decoded.entries] == [1, 2]
    assert decoded.stop is Stop.BAD_SEQ


def test_headers_needed_follows_the_placement_rule() -> None:
    segment = HEADER_SIZE + 100
    assert headers_needed([40, 40], -1, segment) == 1  # no active segment
    assert headers_needed([40, 40, 40], HEADER_SIZE, segment) == 1  # third one overflows
    assert headers_needed([200], HEADER_SIZE, segment) == 0  # an empty segment takes anything
    assert headers_needed([], -1, segment) == 0
