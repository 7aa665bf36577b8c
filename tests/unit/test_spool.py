"""The disk spool with real files: order, rotation, restart, torn tails, the
size bound under both policies, the cursor, deletion of delivered segments."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Literal

import pytest
from structlog.testing import capture_logs

from bridge.core.spool_format import HEADER_SIZE, encode_frame
from bridge.io.spool import (
    Outgoing,
    RecordTooLarge,
    Spool,
    SpoolEntry,
    SpoolError,
    SpoolFull,
    SpoolLocked,
)

PER_SEGMENT = 4


def rec(i: int) -> Outgoing:
    """Records of one fixed size (for sequence numbers below 128, where msgpack
    spends one byte on the number), so that segment capacity is exact."""
    return Outgoing("telemetry.clean", f"t1:D{i:03d}".encode(), f"v{i:04d}".encode(), [])


FRAME = len(encode_frame(1, rec(1)))
SEGMENT = HEADER_SIZE + PER_SEGMENT * FRAME  # exactly PER_SEGMENT records


def open_spool(
    path: Path,
    segments: int = 8,
    when_full: Literal["backpressure", "drop_oldest"] = "backpressure",
) -> Spool:
    return Spool(path, max_bytes=segments * SEGMENT, segment_bytes=SEGMENT, when_full=when_full)


def fill(spool: Spool, first: int, count: int) -> int:
    last = spool.append([rec(i) for i in range(first, first + count)]).last_seq
    assert spool.sync() == last
    return last


def read_all(spool: Spool) -> list[SpoolEntry]:
    out: list[SpoolEntry] = []
    while batch := spool.read(max_records=3):
        out.extend(batch)
    return out


def values(entries: list[SpoolEntry]) -> list[bytes]:
    return [e.record.value for e in entries]


def seg_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("*.seg"))


def test_roundtrip_in_order_with_all_fields(tmp_path: Path) -> None:
    record = Outgoing("telemetry.raw", None, b"\x00\xff" * 10, [("a", b"1"), ("b", b"")])
    with open_spool(tmp_path) as spool:
        first = spool.append([rec(1), record, rec(3)])
        assert first.last_seq == 3 and first.dropped == 0
        assert spool.sync() == 3
        entries = spool.read()
        assert spool.path == tmp_path
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[1].record == record
    assert values(entries) == [b"v0001", record.value, b"v0003"]


def test_read_hands_out_only_durable_records(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        spool.append([rec(1), rec(2)])
        assert spool.read() == []
        assert spool.sync() == 2
        assert [e.seq for e in spool.read()] == [1, 2]
        assert spool.read() == []


def test_rotation_keeps_order_across_segments(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        for first in range(1, 23, 3):  # 24 records in batches of 3
            fill(spool, first, 3)
        assert len(seg_files(tmp_path)) == 24 // PER_SEGMENT
        assert all(p.stat().st_size <= SEGMENT for p in tmp_path.glob("*.seg"))
        entries = read_all(spool)
    assert [e.seq for e in entries] == list(range(1, 25))
    assert values(entries) == [rec(i).value for i in range(1, 25)]


def test_restart_finds_pending_records_and_continues_numbering(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        fill(spool, 1, 10)
    with open_spool(tmp_path) as spool:
        assert spool.stats().records_pending == 10
        assert fill(spool, 11, 2) == 12
        assert [e.seq for e in read_all(spool)] == list(range(1, 13))


def test_cursor_survives_restart(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        fill(spool, 1, 10)
        assert [e.seq for e in spool.read(max_records=6)] == list(range(1, 7))
        spool.ack_through(6)
    with open_spool(tmp_path) as spool:
        assert spool.stats().records_pending == 4
        assert [e.seq for e in read_all(spool)] == [7, 8, 9, 10]


def test_sequence_numbers_never_repeat_after_a_full_drain(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        fill(spool, 1, 5)
        spool.read()
        spool.ack_through(5)
    assert seg_files(tmp_path) == []
    with open_spool(tmp_path) as spool:
        assert spool.append([rec(6)]).last_seq == 6


def test_ack_deletes_delivered_segments(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        fill(spool, 1, 10)  # segments starting at 1, 5, 9
        assert len(seg_files(tmp_path)) == 3
        spool.read(max_records=10)
        spool.ack_through(4)
        assert seg_files(tmp_path) == [f"{5:020d}.seg", f"{9:020d}.seg"]
        spool.ack_through(7)  # segment 5..8 still holds 8
        assert len(seg_files(tmp_path)) == 2
        spool.ack_through(10)
        assert seg_files(tmp_path) == []
        stats = spool.stats()
        assert (stats.bytes, stats.records_pending, stats.segments) == (0, 0, 0)
        assert fill(spool, 11, 1) == 11  # a new segment after the active one was deleted
        assert [e.seq for e in spool.read()] == [11]


def test_ack_beyond_what_was_read_is_refused(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        fill(spool, 1, 3)
        spool.read(max_records=1)
        with pytest.raises(ValueError, match="beyond what was read"):
            spool.ack_through(2)


def _torn_reopen(path: Path) -> tuple[Spool, list[MutableMapping[str, Any]]]:
    with capture_logs() as logs:
        spool = open_spool(path)
    return spool, [e for e in logs if e["event"] == "spool.torn_tail"]


def test_truncated_tail_record_is_cut_off_and_logged_once(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        fill(spool, 1, 6)  # segments 1..4 and 5..6
    last = tmp_path / f"{5:020d}.seg"
    cut = HEADER_SIZE + FRAME + FRAME // 2  # record 5 whole, record 6 torn
    os.truncate(last, cut)
    spool, torn = _torn_reopen(tmp_path)
    with spool:
        assert len(torn) == 1
        assert torn[0]["segment"] == last.name
        assert torn[0]["offset"] == HEADER_SIZE + FRAME
        assert torn[0]["discarded_bytes"] == FRAME // 2
        assert last.stat().st_size == HEADER_SIZE + FRAME
        assert fill(spool, 6, 2) == 7  # the torn number is reused: it was never durable
        assert values(read_all(spool)) == [rec(i).value for i in range(1, 8)]
    reopened, again = _torn_reopen(tmp_path)
    reopened.close()
    assert again == []


def test_flipped_byte_in_last_record_is_a_crc_mismatch(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        fill(spool, 1, 3)
    seg = tmp_path / f"{1:020d}.seg"
    data = bytearray(seg.read_bytes())
    data[-2] ^= 0x01
    seg.write_bytes(bytes(data))
    spool, torn = _torn_reopen(tmp_path)
    with spool:
        assert [(e["reason"], e["offset"]) for e in torn] == [
            ("crc mismatch", HEADER_SIZE + 2 * FRAME)
        ]
        assert [e.seq for e in read_all(spool)] == [1, 2]


def test_zero_filled_tail_after_power_loss(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        fill(spool, 1, 2)
    seg = tmp_path / f"{1:020d}.seg"
    with seg.open("ab") as fh:
        fh.write(bytes(100))
    spool, torn = _torn_reopen(tmp_path)
    with spool:
        assert [e["reason"] for e in torn] == ["bad length"]
        assert [e.seq for e in read_all(spool)] == [1, 2]


def test_segment_torn_before_its_header(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        fill(spool, 1, 4)  # exactly one full segment
    (tmp_path / f"{5:020d}.seg").write_bytes(b"EBSPOOL")  # created, header cut short
    spool, torn = _torn_reopen(tmp_path)
    with spool:
        assert [(e["segment"], e["offset"]) for e in torn] == [(f"{5:020d}.seg", 0)]
        assert fill(spool, 5, 1) == 5
        assert [e.seq for e in read_all(spool)] == [1, 2, 3, 4, 5]


def test_a_segment_of_another_format_version_is_not_touched(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        fill(spool, 1, 2)
    seg = tmp_path / f"{1:020d}.seg"
    data = bytearray(seg.read_bytes())
    data[HEADER_SIZE - 1] = 2
    seg.write_bytes(bytes(data))
    with pytest.raises(SpoolError, match="unsupported spool segment version 2"):
        open_spool(tmp_path)
    assert seg.read_bytes() == bytes(data)
    data[HEADER_SIZE - 1] = 1
    seg.write_bytes(bytes(data))
    with open_spool(tmp_path) as spool:  # not SpoolLocked: the failed open let go
        assert [e.seq for e in read_all(spool)] == [1, 2]


def test_damage_in_an_older_segment_is_skipped_and_counted(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        fill(spool, 1, 10)
    older = tmp_path / f"{1:020d}.seg"
    data = bytearray(older.read_bytes())
    data[HEADER_SIZE + FRAME + 10] ^= 0xFF  # record 2 of 1..4
    older.write_bytes(bytes(data))
    with open_spool(tmp_path) as spool, capture_logs() as logs:
        entries = read_all(spool)
        assert [e.seq for e in entries] == [1, 5, 6, 7, 8, 9, 10]
        corrupt = [e for e in logs if e["event"] == "spool.corrupt_records"]
        assert [(e["segment"], e["records_lost"]) for e in corrupt] == [(older.name, 3)]
        assert spool.stats().corrupt_total == 3
        spool.ack_through(10)
        assert spool.stats().records_pending == 0


def test_damage_after_everything_before_it_was_acked_leaves_nothing_pending(
    tmp_path: Path,
) -> None:
    with open_spool(tmp_path) as spool:
        fill(spool, 1, 3)
        spool.read(max_records=2)
        spool.ack_through(2)
        seg = tmp_path / f"{1:020d}.seg"
        data = bytearray(seg.read_bytes())
        data[-1] ^= 0xFF  # record 3 rots on disk while the spool is open
        seg.write_bytes(bytes(data))
        assert spool.read() == []
        stats = spool.stats()
        assert (stats.corrupt_total, stats.records_pending) == (1, 0)
        assert fill(spool, 4, 1) == 4
        assert [e.seq for e in spool.read()] == [4]


def test_backpressure_refuses_a_batch_that_does_not_fit(tmp_path: Path) -> None:
    with open_spool(tmp_path, segments=2) as spool:
        fill(spool, 1, 6)
        before = spool.stats()
        with pytest.raises(SpoolFull):
            spool.append([rec(i) for i in range(7, 10)])  # 3 > the 2 that fit
        assert spool.stats() == before  # all or nothing
        assert fill(spool, 7, 2) == 8
        with pytest.raises(SpoolFull):
            spool.append([rec(9)])
        spool.read(max_records=4)
        spool.ack_through(4)  # frees the first segment
        assert fill(spool, 9, 4) == 12
        assert [e.seq for e in read_all(spool)] == list(range(5, 13))


def test_drop_oldest_deletes_whole_segments_and_counts_exactly(tmp_path: Path) -> None:
    with open_spool(tmp_path, segments=3, when_full="drop_oldest") as spool:
        fill(spool, 1, 12)  # full: 1..4, 5..8, 9..12
        assert [e.seq for e in spool.read(max_records=2)] == [1, 2]
        spool.ack_through(1)  # 2 is read but not acknowledged: it still counts
        result = spool.append([rec(13)])
        assert (result.last_seq, result.dropped) == (13, 3)
        assert seg_files(tmp_path)[0] == f"{5:020d}.seg"
        result = spool.append([rec(i) for i in range(14, 22)])  # 14..21 push out 5..12
        assert result.dropped == 8
        spool.sync()
        stats = spool.stats()
        assert (stats.dropped_total, stats.records_pending, stats.segments) == (11, 9, 3)
        assert stats.bytes <= 3 * SEGMENT
        assert [e.seq for e in read_all(spool)] == list(range(13, 22))


def test_record_larger_than_a_segment_is_refused_whole(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        fill(spool, 1, 1)
        big = Outgoing("t", None, b"x" * SEGMENT, [])
        with pytest.raises(RecordTooLarge):
            spool.append([rec(2), big])
        assert spool.stats().records_pending == 1
        assert fill(spool, 2, 1) == 2


def test_a_second_process_cannot_open_the_same_spool(tmp_path: Path) -> None:
    with open_spool(tmp_path), pytest.raises(SpoolLocked):
        open_spool(tmp_path)
    open_spool(tmp_path).close()  # released on close


def test_size_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="twice"):
        Spool(tmp_path, max_bytes=SEGMENT, segment_bytes=SEGMENT, when_full="drop_oldest")


def test_writer_and_drainer_threads_see_every_record_once_in_order(tmp_path: Path) -> None:
    total = 3000
    received: list[int] = []
    done = threading.Event()
    with Spool(tmp_path, max_bytes=1 << 20, segment_bytes=8192, when_full="backpressure") as spool:

        def write() -> None:
            for first in range(0, total, 50):
                spool.append([rec(i % 100) for i in range(first, first + 50)])
                spool.sync()
            done.set()

        def drain() -> None:
            deadline = time.monotonic() + 30
            while len(received) < total and time.monotonic() < deadline:
                batch = spool.read(max_records=70)
                if batch:
                    received.extend(e.seq for e in batch)
                    spool.ack_through(batch[-1].seq)
                elif done.is_set() and spool.stats().records_pending == 0:
                    break

        threads = [threading.Thread(target=write), threading.Thread(target=drain)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert received == list(range(1, total + 1))
        assert seg_files(tmp_path) == []


_WRITER = """
import sys
from bridge.core.records import Outgoing
from bridge.io.spool import Spool
spool = Spool(sys.argv[1], max_bytes=1 << 24, segment_bytes=1 << 16, when_full="backpressure")
n = 0
while True:
    spool.append([Outgoing("t", None, b"x" * 100, []) for _ in range(20)])
    n = spool.sync()
    print(n, file=sys.stderr, flush=True)  # stdout carries the logs
"""


def test_kill_9_keeps_every_record_that_sync_reported(tmp_path: Path) -> None:
    """A writer process is killed mid-stream; everything its sync() reported durable
    is there after reopening, in order, and numbering continues after it."""
    spool_dir = tmp_path / "spool"
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(spool_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stderr is not None
    durable = 0
    deadline = time.monotonic() + 30
    while durable < 5000 and time.monotonic() < deadline:
        line = child.stderr.readline()
        assert line, "writer exited early"
        durable = int(line)
    child.kill()
    child.wait(timeout=10)
    assert durable >= 5000
    with Spool(spool_dir, max_bytes=1 << 24, segment_bytes=1 << 16, when_full="backpressure") as s:
        seqs = [e.seq for e in read_all(s)]
        assert len(list(spool_dir.glob("*.seg"))) > 1  # it rotated on the way
        assert seqs[:durable] == list(range(1, durable + 1))
        assert seqs == list(range(1, len(seqs) + 1))
        assert s.append([rec(1)]).last_seq == len(seqs) + 1
