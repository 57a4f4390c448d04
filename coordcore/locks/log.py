"""The durable batch log under the lock service: checksummed records, group commit, snapshots.

A log is a directory::

    LOCK                                  flock'ed while open: one process per log
    segment-00000000000000000001.log      records 1, 2, ... (the name is the first index)
    segment-00000000000000000815.log      records 815, ... (the active segment)
    snapshot-00000000000000000814.snap    state covering records 1..814

Every record is ``[length u32][crc32c u32][body]``, little-endian, where the body is the
record's index (u64) followed by the caller's opaque payload and the CRC32C covers the
length field and the body. One :meth:`BatchLog.append` is one ``write`` and one
``fdatasync``: the lock service appends one record per batch of requests (group commit)
from a worker thread, so the event loop keeps serving while the disk works.

Segments and snapshots are created as ``*.tmp`` files, fsynced, renamed into place and
the directory fsynced, so a crash never leaves a half-made segment header or snapshot
under a real name. A snapshot records the index it covers; once it is durable, the
segments it covers are deleted.

Recovery (:meth:`BatchLog.open`) takes the newest valid snapshot and the records after it.
A torn or corrupt **last** record (the process or the machine died mid-write) is cut off
with ``ftruncate``, logged and reported in :attr:`Recovered.torn_tail`; it is never
returned. A bad record with valid records after it, a bad segment header or a gap in the
indices is not a torn tail: :meth:`BatchLog.open` raises :class:`~coordcore.errors.LogCorrupted`
and touches nothing.

``durability="unsafe-no-fsync"`` skips every fsync: a killed process loses nothing (the
kernel still has the pages) but a power cut or kernel crash can lose acknowledged
records. It exists for tests and caches; its name says so.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     log = BatchLog.open(d)
...     log.append(b"first"), log.append(b"second")
...     log.close()
...     log = BatchLog.open(d)
...     [(r.index, r.payload) for r in log.recovered.records]
...     log.write_snapshot(2, b"state after 2")
...     log.append(b"third")
...     log.close()
...     log = BatchLog.open(d)
...     log.recovered.snapshot, [(r.index, r.payload) for r in log.recovered.records]
...     log.close()
(1, 2)
[(1, b'first'), (2, b'second')]
3
(Snapshot(index=2, payload=b'state after 2'), [(3, b'third')])
"""
from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import re
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import google_crc32c

from coordcore.errors import BadArgument, LogCorrupted, ServiceClosed, Unavailable, WrongType

__all__ = [
    "BatchLog",
    "Durability",
    "Record",
    "Recovered",
    "Snapshot",
    "TornTail",
    "DEFAULT_SEGMENT_BYTES",
    "MAX_RECORD_BYTES",
]

logger = logging.getLogger("coordcore.locks.log")

#: ``"fsync"`` (the default): every append and snapshot is on disk before it returns.
#: ``"unsafe-no-fsync"``: nothing is fsynced; survives a killed process, not a power cut.
Durability = Literal["fsync", "unsafe-no-fsync"]

DEFAULT_SEGMENT_BYTES: Final = 64 * 1024 * 1024
#: The largest payload one record may carry.
MAX_RECORD_BYTES: Final = 256 * 1024 * 1024

_SEG_MAGIC: Final = b"CCLOGSEG"
_SNAP_MAGIC: Final = b"CCLOGSNP"
_VERSION: Final = 1
# magic, version, reserved, first index, crc32c of the preceding 24 bytes, padding
_SEG_HEADER = struct.Struct("<8sIIQII")
# magic, version, reserved, index covered, payload length, crc32c of the preceding 32 bytes
# and the payload
_SNAP_HEADER = struct.Struct("<8sIIQQI")
_REC_HEADER = struct.Struct("<II")  # length of the body, crc32c of length field + body
_LEN = struct.Struct("<I")
_INDEX = struct.Struct("<Q")
_SEG_RE = re.compile(r"^segment-(\d{20})\.log$")
_SNAP_RE = re.compile(r"^snapshot-(\d{20})\.snap$")
# How far past a bad record recovery looks for a valid one (which would make it mid-file
# corruption, not a torn tail): far enough for any batch the service writes in one go.
_MAX_INDEX_SKIP: Final = 1 << 20


def _crc(*parts: bytes) -> int:
    value = 0
    for part in parts:
        value = google_crc32c.extend(value, part)
    return int(value)


def _seg_name(first_index: int) -> str:
    return f"segment-{first_index:020d}.log"


def _snap_name(index: int) -> str:
    return f"snapshot-{index:020d}.snap"


@dataclass(frozen=True, slots=True)
class Record:
    """One record read back at recovery: its index (1, 2, ...) and the payload appended."""

    index: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot's payload and the index of the last record it covers."""

    index: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class TornTail:
    """What recovery cut off the end of the log: never applied, reported here and logged."""

    segment: str
    offset: int
    bytes_cut: int
    reason: str


@dataclass(slots=True)
class Recovered:
    """What :meth:`BatchLog.open` found: the newest valid snapshot (if any), every record
    after it in index order, and the torn tail it cut off (if any)."""

    snapshot: Snapshot | None
    records: list[Record]
    torn_tail: TornTail | None = None
    skipped_snapshots: list[str] = field(default_factory=list)

    @property
    def last_index(self) -> int:
        """Index of the last record recovered (or covered by the snapshot); 0 when empty."""
        if self.records:
            return self.records[-1].index
        return self.snapshot.index if self.snapshot else 0


@dataclass(slots=True)
class _Segment:
    first_index: int
    path: Path


class _BadRecord(Exception):
    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def _parse_record(buf: bytes, offset: int, expected_index: int, max_body: int) -> tuple[int, bytes]:
    """Parse the record at ``offset``; return (end offset, payload) or raise _BadRecord."""
    end = len(buf)
    if end - offset < _REC_HEADER.size:
        raise _BadRecord(offset, f"record header cut short ({end - offset} of {_REC_HEADER.size} bytes)")
    length, crc = _REC_HEADER.unpack_from(buf, offset)
    body_at = offset + _REC_HEADER.size
    if length < _INDEX.size or length > max_body:
        raise _BadRecord(offset, f"record length {length} is out of range")
    if end - body_at < length:
        raise _BadRecord(offset, f"record body cut short ({end - body_at} of {length} bytes)")
    if _crc(buf[offset:offset + 4], buf[body_at:body_at + length]) != crc:
        raise _BadRecord(offset, "record checksum mismatch")
    (index,) = _INDEX.unpack_from(buf, body_at)
    if index != expected_index:
        raise _BadRecord(offset, f"record index {index} where {expected_index} was expected")
    return body_at + length, buf[body_at + _INDEX.size:body_at + length]


def _valid_record_after(buf: bytes, start: int, expected_index: int, max_body: int) -> int | None:
    """The offset of a well-formed record at or after ``start`` whose index is at least
    ``expected_index`` (a sign that the bad record before it is not a torn tail), or None."""
    limit = len(buf) - _REC_HEADER.size - _INDEX.size
    candidates: Iterable[int] = range(start + 1, limit + 1)
    if start + _REC_HEADER.size <= len(buf):
        # Most often only the bad record's body or checksum is damaged and its length
        # still points at the next record: look there first.
        (length,) = _LEN.unpack_from(buf, start)
        hop = start + _REC_HEADER.size + length
        if start < hop <= limit:
            candidates = itertools.chain((hop,), range(start + 1, limit + 1))
    for off in candidates:
        length, crc = _REC_HEADER.unpack_from(buf, off)
        body_at = off + _REC_HEADER.size
        if length < _INDEX.size or length > max_body or body_at + length > len(buf):
            continue
        (index,) = _INDEX.unpack_from(buf, body_at)
        if not expected_index <= index < expected_index + _MAX_INDEX_SKIP:
            continue
        if _crc(buf[off:off + 4], buf[body_at:body_at + length]) == crc:
            return off
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BatchLog:
    """An append-only log of opaque records in a directory, with snapshots.

    Open with :meth:`open`; read what was recovered from :attr:`recovered`; then
    :meth:`append` records and :meth:`write_snapshot` from one thread at a time (the
    methods take an internal lock, so concurrent calls are serialised, not corrupted).
    After an I/O error the log refuses further writes: what reached the disk is unknown
    until it is opened (and recovered) again.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "fsync",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        create: bool = True,
    ) -> None:
        """Same as :meth:`open`."""
        if durability not in ("fsync", "unsafe-no-fsync"):
            raise BadArgument(
                f"durability must be 'fsync' or 'unsafe-no-fsync', not {durability!r}")
        if isinstance(segment_bytes, bool) or not isinstance(segment_bytes, int) or segment_bytes < 4096:
            raise BadArgument(f"segment_bytes must be an int >= 4096, not {segment_bytes!r}")
        self._dir = Path(os.fspath(path))
        self._fsync = durability == "fsync"
        self.durability: Durability = durability
        self._segment_bytes = segment_bytes
        self._mutex = threading.Lock()
        self._closed = False
        self._broken: BaseException | None = None
        self._fd = -1
        self._lock_fd = -1
        self._next_index = 1
        self._active = _Segment(0, self._dir)
        self._active_size = 0
        self.recovered = Recovered(None, [])
        self._open_dir(create)
        try:
            self._recover()
        except BaseException:
            self._release_dir_lock()
            raise

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "fsync",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        create: bool = True,
    ) -> BatchLog:
        """Open (and recover) the log in directory ``path``, creating it if ``create``.

        Raises :class:`~coordcore.errors.LogCorrupted` for damage other than a torn tail,
        :class:`~coordcore.errors.Unavailable` if another process has the log open, and
        ``FileNotFoundError``/``NotADirectoryError``/``PermissionError`` (naming the path)
        when the directory cannot be used.
        """
        return cls(path, durability=durability, segment_bytes=segment_bytes, create=create)

    # --- opening and recovery ------------------------------------------------------

    def _open_dir(self, create: bool) -> None:
        d = self._dir
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "the lock log path is not a directory", str(d))
        if not d.exists():
            if not create:
                raise FileNotFoundError(errno.ENOENT, "no lock log directory here (create=False)", str(d))
            try:
                d.mkdir(parents=True)
            except FileExistsError:
                pass
            except OSError as exc:
                raise type(exc)(exc.errno, f"cannot create the lock log directory ({exc.strerror})",
                                str(d)) from exc
            if self._fsync:
                _fsync_dir(d.parent)
        if not os.access(d, os.R_OK | os.W_OK | os.X_OK):
            raise PermissionError(
                errno.EACCES, "the lock log directory must be readable and writable by this user", str(d))
        try:
            self._lock_fd = os.open(d / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError as exc:
            raise PermissionError(errno.EACCES, "cannot open the log's LOCK file", str(d / "LOCK")) from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise Unavailable(f"the lock log {str(d)!r} is already open in another process (or another "
                              "BatchLog in this one)") from None

    def _release_dir_lock(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = -1

    def _list(self) -> tuple[list[_Segment], list[tuple[int, Path]]]:
        segments: list[_Segment] = []
        snapshots: list[tuple[int, Path]] = []
        for entry in os.scandir(self._dir):
            name = entry.name
            if name.endswith(".tmp"):
                # A segment or snapshot that never got renamed into place: a crash
                # interrupted its creation, and nothing refers to it.
                os.unlink(entry.path)
                continue
            if m := _SEG_RE.match(name):
                segments.append(_Segment(int(m.group(1)), Path(entry.path)))
            elif m := _SNAP_RE.match(name):
                snapshots.append((int(m.group(1)), Path(entry.path)))
        segments.sort(key=lambda s: s.first_index)
        snapshots.sort(reverse=True)
        return segments, snapshots

    def _read_snapshot(self, index: int, path: Path) -> Snapshot:
        data = path.read_bytes()
        if len(data) < _SNAP_HEADER.size:
            raise LogCorrupted(f"snapshot {path} is cut short ({len(data)} bytes)")
        magic, version, _, covered, length, crc = _SNAP_HEADER.unpack_from(data)
        if magic != _SNAP_MAGIC or version != _VERSION:
            raise LogCorrupted(f"snapshot {path} has a bad header (magic {magic!r}, version {version})")
        payload = data[_SNAP_HEADER.size:]
        if covered != index or len(payload) != length:
            raise LogCorrupted(f"snapshot {path} says it covers index {covered} with {length} bytes; "
                               f"its name says {index} and it has {len(payload)} bytes")
        if _crc(data[:_SNAP_HEADER.size - 4], payload) != crc:
            raise LogCorrupted(f"snapshot {path} fails its checksum")
        return Snapshot(index, payload)

    def _recover(self) -> None:
        segments, snapshots = self._list()
        snapshot: Snapshot | None = None
        skipped: list[str] = []
        for index, path in snapshots:
            try:
                snapshot = self._read_snapshot(index, path)
                break
            except LogCorrupted as exc:
                # Written with temp file + fsync + rename, a snapshot is never torn: this
                # is damage. An older snapshot can still do if the log covers the gap
                # (checked below); otherwise we refuse.
                logger.error("skipping damaged snapshot: %s", exc)
                skipped.append(str(exc))
        base = snapshot.index if snapshot else 0
        # Segments wholly covered by the snapshot may be left over if a crash came
        # between the snapshot's rename and their deletion; skip them.
        live = [s for i, s in enumerate(segments)
                if i + 1 >= len(segments) or segments[i + 1].first_index > base + 1]
        records: list[Record] = []
        torn: TornTail | None = None
        expected = live[0].first_index if live else base + 1
        if live and live[0].first_index > base + 1:
            raise LogCorrupted(
                f"lock log {self._dir}: records {base + 1}..{live[0].first_index - 1} are missing "
                f"(first segment {live[0].path.name}, snapshot covers {base})")
        for n, seg in enumerate(live):
            last = n == len(live) - 1
            if seg.first_index != expected:
                raise LogCorrupted(
                    f"lock log {self._dir}: segment {seg.path.name} starts at index "
                    f"{seg.first_index} but the previous one ends at {expected - 1}")
            data = seg.path.read_bytes()
            self._check_segment_header(seg, data)
            offset = _SEG_HEADER.size
            while offset < len(data):
                try:
                    offset, payload = _parse_record(data, offset, expected, MAX_RECORD_BYTES + _INDEX.size)
                except _BadRecord as bad:
                    if not last:
                        raise LogCorrupted(
                            f"lock log {self._dir}: {bad.reason} at byte {bad.offset} of "
                            f"{seg.path.name}, which is not the last segment") from None
                    later = _valid_record_after(data, bad.offset, expected,
                                                MAX_RECORD_BYTES + _INDEX.size)
                    if later is not None:
                        raise LogCorrupted(
                            f"lock log {self._dir}: {bad.reason} at byte {bad.offset} of "
                            f"{seg.path.name} (record {expected}), followed by a valid record at "
                            f"byte {later}: this is corruption inside the log, not a torn tail; "
                            "refusing to open it") from None
                    torn = TornTail(seg.path.name, bad.offset, len(data) - bad.offset, bad.reason)
                    break
                if expected > base:
                    records.append(Record(expected, payload))
                expected += 1
        if skipped:
            newest_skipped = max(i for i, _ in snapshots if snapshot is None or i > snapshot.index)
            if expected - 1 < newest_skipped:
                raise LogCorrupted(
                    f"lock log {self._dir}: the newest snapshot is damaged ({skipped[0]}) and the "
                    f"log holds records only up to {expected - 1}, not up to {newest_skipped}: "
                    "refusing to open it")
        scan_end = expected
        if expected <= base:
            # Every record is covered by the snapshot (segments deleted after it): the
            # next record continues after the snapshot.
            expected = base + 1
        if torn is not None:
            path = self._dir / torn.segment
            logger.warning("lock log %s: cut off a torn tail of %d bytes at byte %d of %s (%s); "
                           "that batch was never acknowledged", self._dir, torn.bytes_cut,
                           torn.offset, torn.segment, torn.reason)
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, torn.offset)
                if self._fsync:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
        self.recovered = Recovered(snapshot, records, torn, skipped)
        self._next_index = expected
        # Delete what the snapshot covers (left over by a crash mid-truncation) and older
        # snapshots; then open the last segment for appending, or start one.
        for seg in segments:
            if seg not in live:
                os.unlink(seg.path)
        for index, path in snapshots:
            if snapshot is not None and index < snapshot.index:
                os.unlink(path)
        if live and scan_end > base:
            self._active = live[-1]
            self._fd = os.open(self._active.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self._active_size = os.fstat(self._fd).st_size
        else:
            self._start_segment(expected)

    def _check_segment_header(self, seg: _Segment, data: bytes) -> None:
        if len(data) < _SEG_HEADER.size:
            raise LogCorrupted(f"lock log segment {seg.path} is shorter than its header")
        magic, version, _, first, crc, _ = _SEG_HEADER.unpack_from(data)
        if magic != _SEG_MAGIC or version != _VERSION or _crc(data[:24]) != crc:
            raise LogCorrupted(f"lock log segment {seg.path} has a bad header")
        if first != seg.first_index:
            raise LogCorrupted(f"lock log segment {seg.path} says it starts at index {first}")

    # --- writing -------------------------------------------------------------------

    def _start_segment(self, first_index: int) -> None:
        """Create segment ``first_index`` atomically (temp file, fsync, rename, fsync dir)
        and make it the active one."""
        head = _SEG_MAGIC + struct.pack("<IIQ", _VERSION, 0, first_index)
        header = _SEG_HEADER.pack(_SEG_MAGIC, _VERSION, 0, first_index, _crc(head), 0)
        final = self._dir / _seg_name(first_index)
        tmp = final.with_name(final.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, header)
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        if self._fsync:
            _fsync_dir(self._dir)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._fd = os.open(final, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._active = _Segment(first_index, final)
        self._active_size = len(header)

    def _check_writable(self) -> None:
        if self._closed:
            raise ServiceClosed(f"lock log {self._dir} is closed")
        if self._broken is not None:
            raise ServiceClosed(f"lock log {self._dir} failed earlier ({self._broken!r}); reopen it "
                                "to recover") from self._broken

    @property
    def path(self) -> Path:
        """The log's directory."""
        return self._dir

    @property
    def next_index(self) -> int:
        """The index the next appended record will get."""
        return self._next_index

    def append(self, payload: bytes) -> int:
        """Append one record with one write and (unless unsafe-no-fsync) one fdatasync;
        return its index. Blocking: call it from a worker thread under asyncio."""
        fd, data, index = self.begin_append(payload)
        try:
            self._write_all(data)
            if self._fsync:
                os.fdatasync(fd)
        except BaseException as exc:
            self.fail_append(exc)
            raise
        self.end_append(index, len(data))
        return index

    @property
    def segment_full(self) -> bool:
        """The next append starts a new segment (a file create and directory fsync)."""
        return self._active_size >= self._segment_bytes

    def begin_append(self, payload: bytes) -> tuple[int, bytes, int]:
        """The first half of :meth:`append`, for a writer that does the I/O itself:
        ``(fd, data, index)``: write all of ``data`` to ``fd`` (it is opened for
        appending), fdatasync it if :attr:`durability` is ``"fsync"``, then call
        :meth:`end_append` (or :meth:`fail_append`). One append at a time. May start a
        new segment (a file create and directory fsync)."""
        if not isinstance(payload, bytes):
            raise WrongType(f"a log record is bytes, not {type(payload).__name__}")
        if len(payload) > MAX_RECORD_BYTES:
            raise BadArgument(f"a log record is at most {MAX_RECORD_BYTES} bytes, not {len(payload)}")
        with self._mutex:
            self._check_writable()
            if self.segment_full:
                self._start_segment(self._next_index)
            index = self._next_index
            body = _INDEX.pack(index) + payload
            len_bytes = _LEN.pack(len(body))
            return self._fd, len_bytes + _LEN.pack(_crc(len_bytes, body)) + body, index

    def end_append(self, index: int, size: int) -> None:
        """Record ``index`` (``size`` bytes from :meth:`begin_append`) is written (and synced)."""
        with self._mutex:
            if index != self._next_index:
                raise BadArgument(f"end_append({index}) but the next record is {self._next_index}")
            self._active_size += size
            self._next_index = index + 1

    def fail_append(self, exc: BaseException) -> None:
        """The write or fdatasync of :meth:`begin_append`'s data failed: the file's state
        is unknown (the kernel may have dropped the dirty pages), so the log refuses
        further writes; recovery (reopening) sorts it out."""
        with self._mutex:
            self._broken = exc

    def _write_all(self, data: bytes) -> None:
        # One write: a regular file takes it whole unless the disk is full, in which
        # case the loop finishes it or raises (and the log is marked broken).
        done = os.write(self._fd, data)
        if done < len(data):
            rest = memoryview(data)[done:]
            while rest:
                rest = rest[os.write(self._fd, rest):]

    def write_snapshot(self, index: int, payload: bytes) -> None:
        """Durably store ``payload`` as the state after record ``index`` (temp file, fsync,
        rename, fsync the directory), then delete the segments and older snapshots it
        covers. ``index`` must be an index already appended (or the current snapshot's)."""
        if not isinstance(payload, bytes):
            raise WrongType(f"a snapshot is bytes, not {type(payload).__name__}")
        with self._mutex:
            self._check_writable()
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self._next_index:
                raise BadArgument(f"snapshot index must be in 0..{self._next_index - 1}, not {index!r}")
            try:
                self._write_snapshot(index, payload)
            except BaseException as exc:
                self._broken = exc
                raise

    def _write_snapshot(self, index: int, payload: bytes) -> None:
        head = _SNAP_MAGIC + struct.pack("<IIQQ", _VERSION, 0, index, len(payload))
        header = head + _LEN.pack(_crc(head, payload))
        final = self._dir / _snap_name(index)
        tmp = final.with_name(final.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, header)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        if self._fsync:
            _fsync_dir(self._dir)
        # Start a fresh segment when the snapshot covers everything written, so the
        # active one can go too; then delete covered segments (oldest first, so a crash
        # half-way leaves a contiguous log) and older snapshots.
        if index == self._next_index - 1 and self._active_size > _SEG_HEADER.size:
            self._start_segment(self._next_index)
        segments, snapshots = self._list()
        for i, seg in enumerate(segments):
            nxt = segments[i + 1].first_index if i + 1 < len(segments) else None
            if nxt is not None and nxt <= index + 1 and seg.path != self._active.path:
                os.unlink(seg.path)
        for snap_index, path in snapshots:
            if snap_index < index:
                os.unlink(path)

    def segment_names(self) -> list[str]:
        """The segment files in the directory, oldest first (for tests and tooling)."""
        return [s.path.name for s in self._list()[0]]

    def close(self) -> None:
        """Close the files (everything appended is already on disk) and release the
        directory. Idempotent."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            self._release_dir_lock()

    def __enter__(self) -> BatchLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"next_index={self._next_index}"
        return f"<BatchLog {str(self._dir)!r} {self.durability} {state}>"
