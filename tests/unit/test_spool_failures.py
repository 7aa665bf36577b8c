"""The spool when its disk fails: errors a real file system cannot be made to
raise on cue (EIO from fdatasync or a read, a truncate refused during the
rollback) come from a file-system layer that fails the chosen call; the rest
of each test runs on real files.

The rule every test checks: nothing ``sync()`` did not report durable is ever
handed out as stored, nothing it did report is lost, and a sequence number is
never used for two different records."""

from __future__ import annotations

import errno
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bridge.core.spool_format import HEADER_SIZE
from bridge.io.spool import READ_ATTEMPTS, FileOps, Spool, SpoolEntry, SpoolUnavailable
from tests.unit.test_spool import FRAME, SEGMENT, open_spool, read_all, rec, seg_files


class FailingFs(FileOps):
    """Real file calls, except those named in ``failing``, which raise the
    given errno (as many times as ``remaining`` says, or forever).  ``room``:
    the bytes the disk still takes; a write beyond it is short, the next one
    raises ENOSPC, as a full tmpfs or ext4 does."""

    def __init__(self) -> None:
        self.failing: dict[str, int] = {}
        self.remaining: dict[str, int] = {}
        self.calls: Counter[str] = Counter()
        self.room: int | None = None

    def fail(self, call: str, code: int = errno.EIO, times: int = -1) -> None:
        self.failing[call] = code
        self.remaining[call] = times

    def heal(self) -> None:
        self.failing.clear()
        self.room = None

    def _check(self, call: str) -> None:
        self.calls[call] += 1
        code = self.failing.get(call)
        if code is None:
            return
        left = self.remaining[call]
        if left == 1:
            del self.failing[call]
        self.remaining[call] = left - 1
        raise OSError(code, os.strerror(code))

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._check("write")
        if self.room is None:
            return super().write(fd, data)
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = super().write(fd, data[: self.room])
        self.room -= written
        return written

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        self._check("pread")
        return super().pread(fd, size, offset)

    def fsync(self, fd: int) -> None:
        self._check("fsync")
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._check("fdatasync")
        super().fdatasync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        self._check("ftruncate")
        super().ftruncate(fd, size)

    def truncate(self, path: Path, size: int) -> None:
        self._check("truncate")
        super().truncate(path, size)

    def replace(self, source: Path, target: Path) -> None:
        self._check("replace")
        super().replace(source, target)


def failing_spool(path: Path, fs: FailingFs, segments: int = 8) -> Spool:
    return Spool(
        path, max_bytes=segments * SEGMENT, segment_bytes=SEGMENT, when_full="backpressure", fs=fs
    )


def stored(spool: Spool, first: int, count: int) -> int:
    spool.append([rec(i) for i in range(first, first + count)])
    return spool.sync()


def seqs(entries: list[SpoolEntry]) -> list[int]:
    return [e.seq for e in entries]


def values(entries: list[SpoolEntry]) -> list[bytes]:
    return [e.record.value for e in entries]


def test_a_failed_fdatasync_is_never_reported_durable_nor_retried_into_success(
    tmp_path: Path,
) -> None:
    fs = FailingFs()
    with failing_spool(tmp_path, fs) as spool:
        assert stored(spool, 1, 2) == 2
        spool.append([rec(3), rec(4)])
        fs.fail("fdatasync", times=1)
        with pytest.raises(SpoolUnavailable, match="EIO") as failed:
            spool.sync()
        assert not failed.value.no_space and not failed.value.gone
        # The next sync succeeds (Linux reports a writeback error once), but the
        # records it would have covered are gone from the spool, not durable.
        spool.sync()
        assert values(read_all(spool)) == [rec(1).value, rec(2).value]
        spool.ack_through(2)
        assert spool.stats().records_pending == 0  # the gap counts as done
        # Written again later, they get new numbers: 3 and 4 are never reused.
        last = stored(spool, 3, 2)
        assert last > 4
        entries = read_all(spool)
        assert values(entries) == [rec(3).value, rec(4).value]
        assert min(seqs(entries)) > 4
        spool.ack_through(last)
        assert spool.stats().records_pending == 0
    with open_spool(tmp_path) as reopened:
        assert reopened.stats().records_pending == 0


def test_a_write_refused_mid_batch_stores_nothing_of_it(tmp_path: Path) -> None:
    fs = FailingFs()
    with failing_spool(tmp_path, fs) as spool:
        stored(spool, 1, 3)
        before = spool.stats()
        fs.fail("write", errno.ENOSPC, times=1)
        with pytest.raises(SpoolUnavailable, match="No space left on device") as full:
            spool.append([rec(i) for i in range(4, 10)])  # crosses into a new segment
        assert full.value.no_space
        assert spool.stats().bytes == before.bytes
        assert len(seg_files(tmp_path)) == 1
        assert stored(spool, 4, 1) >= 4
        assert values(read_all(spool)) == [rec(i).value for i in (1, 2, 3, 4)]


def test_sealing_a_segment_fails_and_the_new_segment_is_rolled_back(tmp_path: Path) -> None:
    fs = FailingFs()
    with failing_spool(tmp_path, fs) as spool:
        stored(spool, 1, 3)
        fs.fail("fsync", times=1)  # the fsync that seals segment 1 before opening the next
        with pytest.raises(SpoolUnavailable):
            spool.append([rec(4), rec(5)])
        assert seg_files(tmp_path) == [f"{1:020d}.seg"]
        assert (tmp_path / f"{1:020d}.seg").stat().st_size == spool.stats().bytes
        assert values(read_all(spool)) == [rec(i).value for i in (1, 2, 3)]


def test_a_rollback_whose_truncate_fails_too_leaves_a_gap_read_across(
    tmp_path: Path,
) -> None:
    fs = FailingFs()
    with failing_spool(tmp_path, fs) as spool:
        stored(spool, 1, 2)
        spool.append([rec(3)])
        fs.fail("fdatasync", times=1)
        fs.fail("ftruncate", times=1)
        with pytest.raises(SpoolUnavailable):
            spool.sync()
        # Record 3's frame stays in the file; nothing reads it or reuses its number.
        last = stored(spool, 4, 2)
        entries = read_all(spool)
        assert values(entries) == [rec(1).value, rec(2).value, rec(4).value, rec(5).value]
        assert 3 not in seqs(entries)
        spool.ack_through(last)
        assert spool.stats().records_pending == 0
    # After a restart the leftover frame is at worst a record sent again (its
    # message was never acknowledged), and what the cursor covers stays done.
    with open_spool(tmp_path) as reopened:
        assert read_all(reopened) == []


def test_a_gap_found_after_a_restart_is_logged_as_one_not_as_damage(tmp_path: Path) -> None:
    fs = FailingFs()
    with failing_spool(tmp_path, fs) as spool:
        stored(spool, 1, 2)
        spool.append([rec(3)])
        fs.fail("fdatasync", times=1)
        with pytest.raises(SpoolUnavailable):
            spool.sync()
        stored(spool, 4, 1)  # segment 1 ends at 2, the next one starts at 4
    with open_spool(tmp_path) as reopened, capture_logs() as logs:
        entries = read_all(reopened)
        assert values(entries) == [rec(1).value, rec(2).value, rec(4).value]
        events = [e["event"] for e in logs]
        assert "spool.sequence_gap" in events
        assert "spool.corrupt_records" not in events
        assert reopened.stats().corrupt_total == 0


def test_a_failed_read_is_retried_and_loses_nothing(tmp_path: Path) -> None:
    fs = FailingFs()
    with failing_spool(tmp_path, fs) as spool:
        stored(spool, 1, 6)
        assert seqs(spool.read(max_records=2)) == [1, 2]
        fs.fail("pread", times=2)
        for _ in range(2):
            with pytest.raises(SpoolUnavailable, match="EIO"):
                spool.read()
        assert seqs(read_all(spool)) == [3, 4, 5, 6]


def test_a_segment_that_keeps_failing_is_given_up_like_a_damaged_one(tmp_path: Path) -> None:
    fs = FailingFs()
    with failing_spool(tmp_path, fs) as spool:
        stored(spool, 1, 6)  # segments 1..4 and 5..6
        fs.fail("pread", times=READ_ATTEMPTS)
        with capture_logs() as logs:
            for _ in range(READ_ATTEMPTS - 1):
                with pytest.raises(SpoolUnavailable):
                    spool.read()
            entries = read_all(spool)
        assert seqs(entries) == [5, 6]
        corrupt = [e for e in logs if e["event"] == "spool.corrupt_records"]
        assert [e["records_lost"] for e in corrupt] == [4]
        spool.ack_through(6)
        assert spool.stats().records_pending == 0


def test_a_cursor_that_cannot_be_written_still_frees_the_disk(tmp_path: Path) -> None:
    fs = FailingFs()
    with failing_spool(tmp_path, fs) as spool:
        stored(spool, 1, 6)
        read_all(spool)
        fs.fail("write", errno.ENOSPC)
        with capture_logs() as logs:
            spool.ack_through(4)  # no exception: the position is kept in memory
            spool.ack_through(5)
        assert [e["event"] for e in logs].count("spool.cursor_not_saved") == 1
        assert seg_files(tmp_path) == [f"{5:020d}.seg"]  # segment 1..4 deleted anyway
        fs.heal()
        spool.ack_through(6)
    with open_spool(tmp_path) as reopened:
        assert reopened.stats().records_pending == 0


def test_a_removed_directory_is_noticed_at_the_next_sync(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    fs = FailingFs()
    spool = failing_spool(path, fs)
    stored(spool, 1, 2)
    shutil.rmtree(path)
    spool.append([rec(3)])  # into a file nothing can find any more
    with pytest.raises(SpoolUnavailable, match="removed") as gone:
        spool.sync()
    assert gone.value.gone
    with pytest.raises(SpoolUnavailable):
        spool.probe()
    spool.close()  # does not raise, releases the lock
    with open_spool(path) as fresh:  # the path works again: a new, empty spool
        assert fresh.stats().records_pending == 0


def test_probe_fails_while_the_disk_refuses_and_passes_after(tmp_path: Path) -> None:
    fs = FailingFs()
    with failing_spool(tmp_path, fs) as spool:
        fs.fail("write", errno.EROFS)
        with pytest.raises(SpoolUnavailable, match="Read-only file system"):
            spool.probe()
        fs.heal()
        spool.probe()
        assert stored(spool, 1, 1) == 1


def test_close_after_a_failed_sync_releases_the_lock(tmp_path: Path) -> None:
    fs = FailingFs()
    spool = failing_spool(tmp_path, fs)
    stored(spool, 1, 1)
    spool.append([rec(2)])
    fs.fail("fdatasync")
    with capture_logs() as logs:
        spool.close()
    assert [e["event"] for e in logs] == ["spool.closed_unsynced", "spool.closed"]
    with open_spool(tmp_path) as reopened:
        assert values(read_all(reopened)) == [rec(1).value]


@pytest.mark.parametrize(
    ("room", "truncate_fails"),
    [
        (1, False),  # a few bytes of the first frame
        (FRAME // 2, False),
        (FRAME + 3, False),  # the first frame whole, the second torn
        (FRAME // 2, True),  # and the rollback's truncate refused too
    ],
)
def test_a_short_write_on_a_full_disk_leaves_nothing_in_front_of_later_records(
    tmp_path: Path, room: int, truncate_fails: bool
) -> None:
    """The disk fills in the middle of a frame of the active segment (the
    write is short, the next one fails): the torn bytes are not durable, but
    the records appended and synced after the disk has room again must not
    land behind them, where the reader would take them for damage."""
    fs = FailingFs()
    with failing_spool(tmp_path, fs) as spool, capture_logs() as logs:
        stored(spool, 1, 2)  # segment 1 holds 1 and 2, room for two more
        fs.room = room
        if truncate_fails:
            fs.fail("ftruncate", times=1)
        with pytest.raises(SpoolUnavailable) as full:
            spool.append([rec(3), rec(4)])
        assert full.value.no_space
        fs.heal()
        last = stored(spool, 5, 3)  # the disk has room again
        assert values(read_all(spool)) == [rec(i).value for i in (1, 2, 5, 6, 7)]
        assert spool.stats().corrupt_total == 0
    with open_spool(tmp_path) as reopened:  # and after a restart (nothing acked)
        entries = read_all(reopened)
        assert values(entries) == [rec(i).value for i in (1, 2, 5, 6, 7)]
        assert entries[-1].seq == last
        # A torn frame the refused truncate left in the sealed segment reads as
        # damage after a restart: only the two numbers never synced (3 and 4).
        assert reopened.stats().corrupt_total == (2 if truncate_fails else 0)
    assert "spool.corrupt_records" not in [e["event"] for e in logs]


def test_the_disk_filling_at_any_byte_of_a_batch_loses_nothing_synced(tmp_path: Path) -> None:
    """The same at every byte where the disk can fill while a batch is written
    across a rotation (the sealed segment's tail, the new segment's header,
    its frames): what was synced before and after reads back whole."""
    batch = 2 * FRAME + HEADER_SIZE + 2 * FRAME
    for room in range(0, batch, 3):
        fs = FailingFs()
        with failing_spool(tmp_path / str(room), fs) as spool:
            stored(spool, 1, 2)
            fs.room = room
            with pytest.raises(SpoolUnavailable):
                spool.append([rec(i) for i in range(3, 7)])  # 3, 4 | 5, 6 in a new segment
            fs.heal()
            stored(spool, 7, 3)
            assert values(read_all(spool)) == [rec(i).value for i in (1, 2, 7, 8, 9)], room
            assert spool.stats().corrupt_total == 0, room
