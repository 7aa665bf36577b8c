"""Disk store-and-forward spool: Kafka records kept on local disk while Kafka is
unreachable or slow, delivered in append order when it is back.

Layout of the spool directory::

    00000000000000000001.seg   segments, named by the sequence number of their
    00000000000000004711.seg   first record (format: bridge.core.spool_format)
    cursor                     the highest delivered sequence number (+ CRC)
    lock                       flock'ed while a process has the spool open

The contract with the caller
----------------------------
* ``append(records)`` assigns consecutive sequence numbers and returns the last
  one; ``sync()`` makes everything appended so far durable and returns the
  highest durable sequence number.  An MQTT message may be acknowledged once
  ``sync()`` returned a number >= the sequence of each of its records.
* ``read()`` hands out durable records in append order; once Kafka acknowledged
  every record up to some sequence number, ``ack_through(seq)`` records that in
  the cursor file and deletes the segments that are fully delivered.  A
  record is read once per process: a caller whose produce failed keeps the
  record and produces it again (see :mod:`bridge.ingest.store_forward`).
* Delivery is at-least-once.  Duplicates appear only for records that were
  produced to Kafka but not yet covered by an ``ack_through`` when the process
  died (the ones in flight: at most what the caller read and did not ack).
  The cursor file is replaced with rename after an fsync of the new file, so
  it is always either the old or the new position; the directory is not
  fsynced for it, so a power loss right after an ack can bring back the
  previous position: more duplicates (bounded by the same in-flight window),
  never a loss.
* ``when_full="backpressure"``: an ``append`` that does not fit raises
  :class:`SpoolFull` and writes nothing (all or nothing per batch), so the caller
  stops acknowledging MQTT and the broker keeps the backlog.
  ``when_full="drop_oldest"``: the oldest segment is deleted until the batch fits;
  ``Appended.dropped`` says how many undelivered records went with it (records
  already read but not yet acknowledged count as dropped, even if Kafka later
  takes them).
* Crash safety: records are framed with length and CRC32.  Segments are fsynced
  when they are sealed (rotation), so only the newest segment can have a torn
  tail; ``__init__`` scans it, logs ``spool.torn_tail`` once with the segment and
  byte offset, and truncates there.  Nothing before that point is lost.  Damage
  in the middle of an older segment (bad storage, not a crash) is found by
  ``read()``: it logs ``spool.corrupt_records`` with the count and continues with
  the next segment instead of getting stuck.
* When the file system fails (full, read-only, I/O error, the directory
  removed): ``append``, ``sync`` and ``probe`` raise :class:`SpoolUnavailable`
  after rolling back to the last successful ``sync``: every record appended
  since is forgotten (none was reported durable, so none was acknowledged), a
  segment opened since is deleted, the active one truncated to its synced size
  (a frame the full disk took only part of included) and sealed: later
  records go to a new segment.
  A failed fsync is never retried into success: Linux reports a writeback error
  once and may have dropped the pages, so the records it covered are written
  again, not trusted.  Where the rollback itself fails (the truncate or unlink
  is refused too), the unsynced sequence numbers are skipped, never reused, so
  no leftover frame can stand in for a later record.  Reading needs no writes:
  records synced before the failure stay readable and the drain goes on.  An
  ``ack_through`` that cannot write the cursor keeps the position in memory (a
  restart sends those records again) and still deletes delivered segments,
  which is how a full disk gets room back.  A read that fails (EIO) raises
  :class:`SpoolUnavailable` for the caller to retry; after ``READ_ATTEMPTS``
  the segment is given up like a damaged one, and a segment file that vanished
  is given up at once.

Threads: every public method is blocking file I/O, meant to be called through
``trio.to_thread.run_sync``.  Calls are serialized by an internal lock, so the
append/sync path and the drain path may live in different worker threads; they
do not run in parallel (a read waits for an fsync in progress).  One process at
a time: the ``lock`` file is flock'ed, a second opener gets
:class:`SpoolLocked`.

Why segment files and not sqlite3 (WAL)
---------------------------------------
sqlite3 is in the standard library and would take the torn-write handling off
our hands, so it was measured against this module on the spool's workload:
20,000 Kafka records of ~390 bytes (6.9 MB of frames), appended in batches of
100 with a durable commit per batch, then drained 500 at a time with a delete
(or ``ack_through``) per batch.  ext4, Linux 6.18, 2 vCPU, three runs each::

                                 append+sync     batch p99   written to disk     size after drain
    segments (this module)       210-270k rec/s  0.5-2 ms    7.7 + 0.2 MB        0
    sqlite WAL, synchronous=FULL 130-180k rec/s  ~7 ms       16.2 + 15.6 MB      6.9 MB
      + auto_vacuum=INCREMENTAL  145-170k rec/s  ~7 ms       16.6 + 15.8 MB      0

``synchronous=FULL`` is the only durable WAL setting (``NORMAL`` may lose the
last commits on power loss, which would break "acknowledged means stored").
Then SQLite writes every byte twice (WAL, then the checkpoint into the
database) and writes pages again to delete delivered rows: 4x the bytes the
segments write, which on a gateway's SD card or eMMC is 4x the wear.  Freed
pages stay in the file unless incremental auto-vacuum runs after each delete,
and ``max_bytes`` becomes an estimate from page counts plus the WAL.  The
checkpoints show as a 7 ms tail on commits.  The spool uses nothing SQLite is
good at (random access, queries, updates): it is a queue, written once at the
tail and dropped a whole file at a time at the head.  Segments write each byte
once, free space with one ``unlink``, bound their size exactly, and the crash
rule fits in a paragraph (above).  (Written to disk: while appending + while
draining, from /proc/self/io.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import struct
import sys
import threading
import zlib
from bisect import insort
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import structlog

from bridge.core.records import Outgoing
from bridge.core.settings import SpoolSettings
from bridge.core.spool_format import (
    CORRUPT,
    FRAME_OVERHEAD,
    HEADER_SIZE,
    SEGMENT_HEADER,
    SEGMENT_MAGIC,
    RecordTooLarge,
    SpoolEntry,
    Stop,
    decode_frames,
    encode_frame,
    headers_needed,
    needs_new_segment,
)

__all__ = [
    "Appended",
    "FileOps",
    "RecordTooLarge",
    "Spool",
    "SpoolEntry",
    "SpoolError",
    "SpoolFull",
    "SpoolLocked",
    "SpoolStats",
    "SpoolUnavailable",
]

log = structlog.get_logger(__name__)

_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_CURSOR = struct.Struct("<8sQI")
_CURSOR_MAGIC = b"EBCURSOR"
_SCAN_CHUNK = 1 << 20

READ_ATTEMPTS = 5
"""Failed reads (EIO) at one position before its segment is given up."""

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_GONE = "the spool directory was removed or replaced"


class FileOps:
    """The file-system calls of the spool's write, sync and read paths.

    One seam, so that tests can make a call fail the way a dying disk does (EIO
    from ``fdatasync``, from a read), which a real file system cannot be asked
    to do on cue.  Opening and recovery call :mod:`os` directly."""

    def open(self, path: Path, flags: int) -> int:
        return os.open(path, flags | os.O_CLOEXEC, 0o600)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        if sys.platform == "linux":
            os.fdatasync(fd)
        else:  # pragma: no cover - the daemon runs on Linux; macOS has no fdatasync
            os.fsync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def truncate(self, path: Path, size: int) -> None:
        os.truncate(path, size)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def replace(self, source: Path, target: Path) -> None:
        os.replace(source, target)


def describe(exc: OSError) -> str:
    """``No space left on device (ENOSPC)``: a file-system error as the logs and
    ``/readyz`` show it."""
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


class SpoolError(Exception):
    """The spool directory cannot be used (unsupported format, I/O failure)."""


class SpoolFull(SpoolError):
    """The batch does not fit: ``max_bytes`` reached under the backpressure policy,
    or the file system is full.  Nothing of the batch was stored unless the file
    system filled up mid-batch; in every case the caller must not acknowledge."""


class SpoolLocked(SpoolError):
    """Another process has this spool directory open."""


class SpoolUnavailable(SpoolError):
    """The file system refused a write, a sync or a read (full, read-only, I/O
    error, the directory gone).  Nothing appended since the last successful
    sync is stored.  ``no_space``: ENOSPC or EDQUOT, a smaller batch may still
    fit; ``gone``: the directory was removed or replaced, and only opening the
    spool again (which creates it) can help."""

    def __init__(self, reason: str, *, no_space: bool = False, gone: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.no_space = no_space
        self.gone = gone

    @classmethod
    def from_os_error(cls, exc: OSError) -> SpoolUnavailable:
        if exc.errno == errno.ENOENT:  # a file of the spool, or the spool itself, is gone
            return cls(f"{_GONE} (ENOENT)", gone=True)
        return cls(describe(exc), no_space=exc.errno in _NO_SPACE)


@dataclass(frozen=True, slots=True)
class Appended:
    """Result of :meth:`Spool.append`: the sequence number of the batch's last
    record, and how many undelivered records ``drop_oldest`` deleted to make room."""

    last_seq: int
    dropped: int


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """A snapshot for metrics and status.  ``dropped_total`` and ``corrupt_total``
    count since this process opened the spool."""

    bytes: int
    records_pending: int
    segments: int
    dropped_total: int
    corrupt_total: int


@dataclass(slots=True, eq=False)
class _Segment:
    first_seq: int
    path: Path
    size: int
    """Bytes written (header included)."""
    durable: int
    """Bytes known to be on disk; the reader stops here."""
    end_seq: int
    """The sequence number after its last record."""
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class _SyncPoint:
    """The active segment as the last successful sync left it: what a rollback
    returns to."""

    segment: _Segment
    size: int
    end_seq: int


@dataclass(slots=True, eq=False)
class _SegmentReader:
    """Where the drain reads next: an open segment file and the frame it is at."""

    segment: _Segment
    fd: int
    offset: int
    seq: int
    """The sequence number of the frame at ``offset``."""


def _segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{first_seq:020d}.seg"


class Spool:
    """An open spool directory.  See the module docstring for the contract."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int,
        segment_bytes: int,
        when_full: Literal["backpressure", "drop_oldest"],
        fs: FileOps | None = None,
    ) -> None:
        if segment_bytes < HEADER_SIZE + FRAME_OVERHEAD + 64:
            raise ValueError(f"spool segment_bytes {segment_bytes} is too small")
        if max_bytes < 2 * segment_bytes:
            # drop_oldest must always find a sealed segment to delete.
            raise ValueError(
                f"spool max_bytes ({max_bytes}) must be at least twice segment_bytes "
                f"({segment_bytes})"
            )
        self._dir = Path(path)
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._when_full = when_full
        self._lock = threading.Lock()
        self._dropped_total = 0
        self._corrupt_total = 0
        self._dir_dirty = False
        self._reader: _SegmentReader | None = None
        self._read_high = 0
        self._lost: list[tuple[int, int]] = []
        self._active: _Segment | None = None
        self._active_fd = -1
        self._fs = fs or FileOps()
        self._sync_point: _SyncPoint | None = None
        self._created: list[_Segment] = []  # opened since the last successful sync
        self._cursor_unsaved = False
        self._read_failures = 0

        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._read_only = False
        try:
            self._lock_fd = os.open(
                self._dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            # A read-only file system (an SD card the kernel write-protected
            # after errors) still lets the records the spool holds be drained.
            # No lock file: the spool never held anything.
            if exc.errno != errno.EROFS or not (self._dir / "lock").exists():
                raise
            self._lock_fd = os.open(self._dir / "lock", os.O_RDONLY | os.O_CLOEXEC)
            self._read_only = True
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolLocked(f"spool {self._dir} is in use by another process") from None
        self._dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._recover()
        except BaseException:
            self._close_fds()
            raise

    @classmethod
    def from_settings(cls, settings: SpoolSettings) -> Spool:
        return cls(
            settings.path,
            max_bytes=settings.max_bytes,
            segment_bytes=settings.segment_bytes,
            when_full=settings.when_full,
        )

    @property
    def path(self) -> Path:
        """The spool directory."""
        return self._dir

    @property
    def read_only(self) -> bool:
        """Opened on a read-only file system: records can be read and drained,
        none appended, and the drain position is kept in memory only."""
        return self._read_only

    # ------------------------------------------------------------------ recovery
    def _recover(self) -> None:
        self._acked = self._load_cursor()
        self._read_high = self._acked
        found = sorted(
            (int(m.group(1)), self._dir / m.group(0))
            for m in map(_SEGMENT_NAME.match, os.listdir(self._dir))
            if m is not None
        )
        segments: list[_Segment] = []
        for index, (first_seq, path) in enumerate(found):
            size = path.stat().st_size
            if index + 1 < len(found):
                self._check_version(path)
                end_seq = found[index + 1][0]
                segments.append(_Segment(first_seq, path, size, size, end_seq))
            else:
                tail = self._scan_tail(first_seq, path, size)
                if tail is not None:
                    segments.append(tail)
        self._segments = segments
        newest = found[-1][0] if found else 1  # its name, even if it held nothing
        self._next_seq = max(segments[-1].end_seq if segments else 1, self._acked + 1, newest)
        self._durable_seq = self._next_seq - 1
        self._delete_delivered()
        last = self._segments[-1] if self._segments else None
        if (
            last is not None
            and last.end_seq == self._next_seq
            and last.size < self._segment_bytes
            and not self._read_only
        ):
            self._active = last
            self._active_fd = os.open(last.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self._sync_point = _SyncPoint(last, last.size, last.end_seq)

        self._read_seq = self._first_undelivered()
        log.info(
            "spool.opened",
            path=str(self._dir),
            segments=len(self._segments),
            records_pending=self._next_seq - self._read_seq,
            bytes=self._bytes_total(),
        )

    def _load_cursor(self) -> int:
        try:
            raw = (self._dir / "cursor").read_bytes()
        except FileNotFoundError:
            return 0
        if len(raw) == _CURSOR.size:
            magic, acked, crc = _CURSOR.unpack(raw)
            if magic == _CURSOR_MAGIC and crc == zlib.crc32(raw[:-4]):
                return int(acked)
        # Cannot happen through a crash (the file is replaced by rename); starting
        # over from the oldest segment resends, it does not lose.
        log.warning("spool.cursor_invalid", path=str(self._dir / "cursor"), size=len(raw))
        return 0

    def _check_version(self, path: Path) -> None:
        with path.open("rb") as fh:
            header = fh.read(HEADER_SIZE)
        # A short or foreign header is damage (handled as such); a whole header with
        # our magic and another version is a format this code must not touch.
        if (
            len(header) == HEADER_SIZE
            and header.startswith(SEGMENT_MAGIC)
            and header != SEGMENT_HEADER
        ):
            raise SpoolError(f"{path}: unsupported spool segment version {header[-1]}")

    def _scan_tail(self, first_seq: int, path: Path, size: int) -> _Segment | None:
        """Find the end of the valid records of the newest segment; truncate a torn
        tail (logged once, with the byte offset).  A segment torn before the end
        of its header holds nothing and is deleted (None): writing the header
        again could fail on the full disk that tore it, and the spool must open
        on a full disk to drain, which is what frees it."""
        self._check_version(path)
        fd = os.open(path, (os.O_RDONLY if self._read_only else os.O_RDWR) | os.O_CLOEXEC)
        try:
            offset, seq, reason = 0, first_seq, "bad segment header"
            if os.pread(fd, HEADER_SIZE, 0) == SEGMENT_HEADER:
                offset, reason = HEADER_SIZE, ""
            need = 0
            while not reason and offset < size:
                decoded = decode_frames(os.pread(fd, max(_SCAN_CHUNK, need), offset), seq)
                offset += decoded.consumed
                seq += len(decoded.entries)
                need = decoded.need
                if decoded.stop in CORRUPT or (
                    decoded.stop is Stop.INCOMPLETE and offset + need > size
                ):
                    reason = decoded.stop.value
            if offset < size or offset == 0:
                log.warning(
                    "spool.torn_tail",
                    segment=path.name,
                    offset=offset,
                    discarded_bytes=size - offset,
                    reason=reason,
                )
                if self._read_only:  # cut off when the spool is opened for writing
                    return _Segment(first_seq, path, max(offset, HEADER_SIZE), offset, seq)
                if offset == 0:
                    path.unlink()
                    self._dir_dirty = True
                    return None
                os.ftruncate(fd, offset)

            # What survived may still be only in the page cache (kill -9): make it
            # durable before it counts as stored.
            if not self._read_only:
                os.fsync(fd)
        finally:
            os.close(fd)
        return _Segment(first_seq, path, offset, offset, seq)

    # ------------------------------------------------------------------ writing
    def append(self, records: Sequence[Outgoing]) -> Appended:
        """Store a batch (not yet durable: see :meth:`sync`).

        Raises :class:`SpoolFull` (backpressure policy), :class:`RecordTooLarge`
        (a record bigger than a segment), both before anything is written, and
        :class:`SpoolUnavailable` (the file system refused; everything since the
        last sync is rolled back).  In every case nothing of the batch is
        acknowledged-safe.
        """
        with self._lock:
            if self._read_only:
                raise SpoolUnavailable.from_os_error(OSError(errno.EROFS, os.strerror(errno.EROFS)))
            frames = [encode_frame(seq, r) for seq, r in enumerate(records, self._next_seq)]
            for frame in frames:
                if HEADER_SIZE + len(frame) > self._segment_bytes:
                    raise RecordTooLarge(
                        f"spool record of {len(frame)} bytes does not fit a segment of "
                        f"{self._segment_bytes} bytes"
                    )
            if self._when_full == "backpressure":
                self._check_room([len(f) for f in frames])
            try:
                dropped = self._append_frames(frames)
            except OSError as exc:
                raise self._fail(exc) from exc
            self._dropped_total += dropped
            return Appended(self._next_seq - 1, dropped)

    def _append_frames(self, frames: list[bytes]) -> int:
        dropped = 0
        run: list[bytes] = []
        run_bytes = 0
        for frame in frames:
            used = self._active.size + run_bytes if self._active is not None else -1
            if needs_new_segment(used, len(frame), self._segment_bytes):
                self._write(run)
                run, run_bytes = [], 0
                self._open_segment()
            if self._when_full == "drop_oldest":
                while self._bytes_total() + run_bytes + len(frame) > self._max_bytes:
                    dropped += self._drop_oldest()
            run.append(frame)
            run_bytes += len(frame)
        self._write(run)
        return dropped

    def _check_room(self, sizes: list[int]) -> None:
        used = self._active.size if self._active is not None else -1
        needed = sum(sizes) + HEADER_SIZE * headers_needed(sizes, used, self._segment_bytes)
        if self._bytes_total() + needed > self._max_bytes:
            raise SpoolFull(
                f"spool {self._dir} is full ({self._bytes_total()} of {self._max_bytes} bytes)"
            )

    def _write(self, frames: list[bytes]) -> None:
        if not frames:
            return
        active = self._active
        assert active is not None, "a segment is opened before the first frame"
        try:
            self._write_all(active, b"".join(frames))
        finally:
            # Even when the write failed: its numbers are used (a frame of them
            # may be in the file), so the rollback skips them and seals this
            # segment; later records go to a new one, never behind a torn frame.
            active.end_seq += len(frames)
            self._next_seq += len(frames)

    def _write_all(self, segment: _Segment, data: bytes) -> None:
        """Write ``data`` at the end of the active ``segment``.  Every byte that
        reached the file counts in ``segment.size`` even when a later write
        fails: a full disk takes part of a frame (a short write) before it
        refuses, and the rollback must see that the file grew to cut it off."""
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                written += self._fs.write(self._active_fd, view[written:])
        finally:
            segment.size += written

    def _open_segment(self) -> None:
        """Seal the active segment (fsync, so only the newest can be torn) and
        start a new one at the next sequence number."""
        if self._active is not None:
            self._fs.fsync(self._active_fd)
            self._active.durable = self._active.size
            self._close_active()
        path = _segment_path(self._dir, self._next_seq)
        # No segment of the spool has this name (a segment is opened only after
        # the active one holds a record); a file there is the leftover of a
        # rollback whose unlink failed, and is overwritten.
        assert all(s.path != path for s in self._segments), path
        fd = self._fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
        segment = _Segment(self._next_seq, path, 0, HEADER_SIZE, self._next_seq)
        self._segments.append(segment)
        self._created.append(segment)
        self._active, self._active_fd = segment, fd
        self._dir_dirty = True
        self._write_all(segment, SEGMENT_HEADER)  # registered first: a failure rolls it back

    def _close_active(self) -> None:
        fd, self._active, self._active_fd = self._active_fd, None, -1
        _close_quietly(fd)

    def _drop_oldest(self) -> int:
        """Delete the oldest sealed segment; return its undelivered record count."""
        victim = self._segments[0]
        # max_bytes >= 2 * segment_bytes guarantees a sealed segment exists here.
        assert victim is not self._active
        dropped = victim.end_seq - max(victim.first_seq, self._acked + 1)
        self._remove(victim)
        return max(dropped, 0)

    def sync(self) -> int:
        """Make every appended record durable; return the highest durable sequence
        number (0 when nothing was ever appended).  Raises
        :class:`SpoolUnavailable` (and rolls back) when the sync fails or the
        directory is gone."""
        with self._lock:
            active = self._active
            try:
                self._check_directory()
                if active is not None and active.durable < active.size:
                    self._fs.fdatasync(self._active_fd)
                if self._dir_dirty:
                    self._fs.fsync(self._dir_fd)
            except OSError as exc:
                raise self._fail(exc) from exc
            if active is not None:
                active.durable = active.size
                self._sync_point = _SyncPoint(active, active.size, active.end_seq)
            else:
                self._sync_point = None
            self._created = []
            self._dir_dirty = False
            self._durable_seq = self._next_seq - 1
            return self._durable_seq

    def probe(self) -> None:
        """Whether the spool can be written again: the directory in place, the
        cursor written and synced (opened read-only: the lock file opened for
        writing; the caller then opens the spool again).  Raises
        :class:`SpoolUnavailable`."""
        with self._lock:
            if self._read_only:
                try:
                    os.close(os.open(self._dir / "lock", os.O_RDWR | os.O_CLOEXEC))
                except OSError as exc:
                    raise SpoolUnavailable.from_os_error(exc) from exc
                return
            try:
                self._check_directory()
                self._write_cursor()
            except OSError as exc:
                raise self._fail(exc) from exc
            self._cursor_unsaved = False

    def _check_directory(self) -> None:
        """The spool's directory is still the one opened: not removed, not
        replaced.  Files in a removed directory take writes and fsyncs, but
        nothing would find them again: that must not count as stored."""
        opened = os.fstat(self._dir_fd)
        try:
            now = os.stat(self._dir)
        except FileNotFoundError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
            raise OSError(errno.ENOENT, _GONE, str(self._dir))

    def _fail(self, exc: OSError) -> SpoolUnavailable:
        self._rollback()
        return SpoolUnavailable.from_os_error(exc)

    def _rollback(self) -> None:
        """Forget every record appended since the last successful sync (see the
        module docstring).  Their sequence numbers become a gap, never reused:
        a truncate or unlink the failing disk refuses too, or one a power cut
        undoes, may leave their frames in a file, and a reused number would
        then make a later record look like one already delivered."""
        for segment in reversed(self._created):
            if segment is self._active:
                self._close_active()
            if not segment.deleted:
                segment.deleted = True
                self._segments.remove(segment)
            self._unlink(segment.path)
        self._created = []
        point = self._sync_point
        if point is not None and not point.segment.deleted and point.segment.size > point.size:
            segment = point.segment
            try:  # fewer bytes to read again after a restart; no correctness rests on it
                if segment is self._active:
                    self._fs.ftruncate(self._active_fd, point.size)
                else:
                    self._fs.truncate(segment.path, point.size)
            except OSError:
                pass
            segment.size = segment.durable = point.size
            segment.end_seq = point.end_seq
        self._dir_dirty = True
        first_unsynced = self._durable_seq + 1
        # Every write since the sync, failed ones included, used numbers (see
        # _write): so whenever the file may hold bytes past the sync point,
        # torn or not cut off, the active segment is sealed here.
        if self._next_seq > first_unsynced:
            if self._active is not None:
                self._close_active()  # its next frame would not follow its last one
            insort(self._lost, (first_unsynced, self._next_seq))
            self._advance_acked(self._acked)

    # ------------------------------------------------------------------ draining
    def read(self, max_records: int = 1000, max_bytes: int = 1 << 20) -> list[SpoolEntry]:
        """The next durable records in append order, up to ``max_records`` or about
        ``max_bytes`` of frames; empty when nothing is waiting.  Each call continues
        where the previous one stopped.  A failed read raises
        :class:`SpoolUnavailable` (what was read before it is returned first)."""
        with self._lock:
            out: list[SpoolEntry] = []
            budget = max_bytes
            need = 0
            # Never past the last successful sync: a rollback may reuse those numbers.
            while len(out) < max_records and budget > 0 and self._read_seq <= self._durable_seq:
                try:
                    reader = self._position_reader()
                except OSError as exc:
                    if out:
                        return out
                    raise SpoolUnavailable.from_os_error(exc) from exc
                if reader is None:
                    break
                segment = reader.segment
                if reader.offset >= segment.durable:
                    if segment is self._active:
                        break  # caught up with what is durable
                    if reader.seq < segment.end_seq:
                        self._skip_gap(segment, reader.seq)
                    self._leave_segment()
                    continue
                try:
                    chunk = self._fs.pread(
                        reader.fd,
                        min(segment.durable - reader.offset, max(budget, need)),
                        reader.offset,
                    )
                except OSError as exc:
                    if self._gave_up(exc):
                        first = max(reader.seq, self._read_seq)
                        self._skip_corrupt(segment, reader.offset, first, describe(exc))
                        continue
                    if out:
                        return out
                    raise SpoolUnavailable.from_os_error(exc) from exc
                self._read_failures = 0
                skip = self._read_seq - reader.seq
                wanted = min(max_records - len(out), self._durable_seq + 1 - self._read_seq)
                decoded = decode_frames(chunk, reader.seq, wanted + skip)
                out.extend(decoded.entries[skip:])
                if out:
                    self._read_high = max(self._read_high, out[-1].seq)
                reader.offset += decoded.consumed
                reader.seq += len(decoded.entries)
                self._read_seq = max(self._read_seq, reader.seq)
                budget -= decoded.consumed
                need = decoded.need
                if decoded.stop in CORRUPT or (
                    decoded.stop is Stop.INCOMPLETE and reader.offset + need > segment.durable
                ):
                    self._skip_corrupt(segment, reader.offset, reader.seq, decoded.stop.value)
            return out

    def _position_reader(self) -> _SegmentReader | None:
        """The reader at the segment holding ``_read_seq``, or the first one after
        it across a gap (None: nothing to read)."""
        if self._reader is not None and not self._reader.segment.deleted:
            return self._reader
        self._leave_segment()
        for segment in self._segments:
            if segment.end_seq <= self._read_seq:
                continue
            self._read_seq = max(self._read_seq, segment.first_seq)
            if self._read_seq > self._durable_seq:
                return None  # across a gap, nothing synced yet
            try:
                fd = self._fs.open(segment.path, os.O_RDONLY)
            except OSError as exc:
                # A file removed behind the spool's back cannot come back: given
                # up at once.  Another error is retried by the caller a few times.
                missing = isinstance(exc, FileNotFoundError)
                if not missing and not self._gave_up(exc):
                    raise
                reason = "segment file missing" if missing else describe(exc)
                self._skip_corrupt(segment, 0, self._read_seq, reason)
                continue
            # Start at the first frame; frames before _read_seq are skipped.
            self._reader = _SegmentReader(segment, fd, HEADER_SIZE, segment.first_seq)
            return self._reader
        return None

    def _gave_up(self, exc: OSError) -> bool:
        """Count a failed read of the current position; True once it failed
        ``READ_ATTEMPTS`` times in a row (the caller then skips the segment)."""
        self._read_failures += 1
        log.warning("spool.read_failed", error=describe(exc), attempt=self._read_failures)
        if self._read_failures < READ_ATTEMPTS:
            return False
        self._read_failures = 0
        return True

    def _leave_segment(self) -> None:
        if self._reader is not None:
            _close_quietly(self._reader.fd)
            self._read_seq = max(self._read_seq, self._reader.segment.end_seq)
            self._reader = None

    def _skip_corrupt(self, segment: _Segment, offset: int, seq: int, reason: str) -> None:
        """Give up on the rest of a segment from ``seq`` on: a damaged frame cannot
        be stepped over (its length is not trusted), and getting stuck on it would
        stop the whole drain.  The lost range counts as delivered once everything
        before it is, so that ``records_pending`` can reach zero."""
        lost = self._skip_end(segment)[0] - seq
        log.error(
            "spool.corrupt_records",
            segment=segment.path.name,
            offset=offset,
            reason=reason,
            records_lost=lost,
        )
        self._corrupt_total += lost
        self._give_up(segment, seq)

    def _skip_gap(self, segment: _Segment, seq: int) -> None:
        """A sealed segment ends, on a whole frame, before the number the next
        segment starts at.  A rollback leaves this (its records were never
        synced, so never acknowledged); so would a file cut short by hand."""
        log.warning(
            "spool.sequence_gap",
            segment=segment.path.name,
            records=segment.end_seq - seq,
            hint="records rolled back after a failed write, never acknowledged",
        )
        self._give_up(segment, seq)

    def _give_up(self, segment: _Segment, seq: int) -> None:
        """Move past the rest of ``segment`` from ``seq`` on; those numbers count
        as delivered once everything before them is."""
        end, offset = self._skip_end(segment)
        if seq < end:
            insort(self._lost, (seq, end))
        if self._reader is not None and self._reader.segment is segment:
            self._reader.offset, self._reader.seq = offset, end
        self._read_seq = max(self._read_seq, end)
        self._advance_acked(self._acked)

    def _skip_end(self, segment: _Segment) -> tuple[int, int]:
        """Where giving up on ``segment`` ends: sequence number and byte offset.
        In the active segment only what is synced: records appended after it are
        not the reader's to give up."""
        if segment is self._active:
            return self._durable_seq + 1, segment.durable
        return segment.end_seq, segment.size

    def ack_through(self, seq: int) -> None:
        """Every record up to ``seq`` is acknowledged by Kafka: persist the cursor and
        delete the segments that are fully delivered.  Never raises for the file
        system: an unsaved cursor means duplicates after a restart, no more."""
        with self._lock:
            if seq > self._read_high:
                raise ValueError(f"ack_through({seq}) beyond what was read ({self._read_high})")
            self._advance_acked(seq)

    def _advance_acked(self, seq: int) -> None:
        acked = max(seq, self._acked)
        while self._lost and self._lost[0][0] <= acked + 1:
            acked = max(acked, self._lost.pop(0)[1] - 1)
        if acked > self._acked:
            self._acked = acked
            self._save_cursor()
            self._delete_delivered()
            if self._cursor_unsaved:
                self._save_cursor()  # the deletes may have made room for it

    def _save_cursor(self) -> None:
        try:
            self._write_cursor()
        except OSError as exc:
            if not self._cursor_unsaved:
                log.warning(
                    "spool.cursor_not_saved",
                    error=describe(exc),
                    hint="kept in memory; after a restart delivered records are sent again",
                )
            self._cursor_unsaved = True
        else:
            self._cursor_unsaved = False

    def _write_cursor(self) -> None:
        body = _CURSOR_MAGIC + struct.pack("<Q", self._acked)
        tmp = self._dir / "cursor.tmp"
        fd = self._fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            self._fs.write(fd, body + struct.pack("<I", zlib.crc32(body)))
            self._fs.fsync(fd)
        finally:
            _close_quietly(fd)
        self._fs.replace(tmp, self._dir / "cursor")

    def _delete_delivered(self) -> None:
        while self._segments and self._segments[0].end_seq - 1 <= self._acked:
            self._remove(self._segments[0])

    def _remove(self, segment: _Segment) -> None:
        """Forget a segment and delete its file.  A delete the file system refuses
        (read-only) is logged: the cursor covers a delivered segment at the next
        start, and a dropped one comes back as records sent again."""
        if segment is self._active:
            self._close_active()
        segment.deleted = True
        self._segments.remove(segment)
        self._unlink(segment.path)

    def _unlink(self, path: Path) -> None:
        try:
            self._fs.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("spool.delete_failed", file=path.name, error=describe(exc))

    # ------------------------------------------------------------------ status
    def _bytes_total(self) -> int:
        return sum(s.size for s in self._segments)

    def _first_undelivered(self) -> int:
        first = self._segments[0].first_seq if self._segments else self._next_seq
        return max(self._acked + 1, first)

    def stats(self) -> SpoolStats:
        with self._lock:
            return SpoolStats(
                bytes=self._bytes_total(),
                records_pending=self._next_seq - self._first_undelivered(),
                segments=len(self._segments),
                dropped_total=self._dropped_total,
                corrupt_total=self._corrupt_total,
            )

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Sync what was appended, then release the files and the lock.  Idempotent.
        A sync that fails is logged: what it covered was never acknowledged."""
        if self._lock_fd < 0:
            return
        try:
            self.sync()
        except SpoolUnavailable as exc:
            log.warning("spool.closed_unsynced", path=str(self._dir), reason=exc.reason)
        with self._lock:
            if self._cursor_unsaved:  # a read-only disk writable again, say
                self._save_cursor()
            pending = self._next_seq - self._first_undelivered()
            self._close_fds()

        log.info("spool.closed", path=str(self._dir), records_pending=pending)

    def _close_fds(self) -> None:
        if self._reader is not None:
            _close_quietly(self._reader.fd)
            self._reader = None
        if self._active_fd >= 0:
            self._close_active()
        _close_quietly(self._dir_fd)
        _close_quietly(self._lock_fd)
        self._dir_fd = self._lock_fd = -1

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _close_quietly(fd: int) -> None:
    """Close a descriptor; an error from close (a late EIO) changes nothing here:
    what counts as stored was decided by the sync before."""
    with contextlib.suppress(OSError):
        os.close(fd)
