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
Only a **torn tail** is cut off (with ``ftruncate``, logged, reported in
:attr:`Recovered.torn_tail`, never returned): the *active segment ends inside its last
record*. Exactly: fewer than 8 bytes of a record header are left; or the header's length
is one a record can have (8 bytes to 256 MiB + 8) and says more bytes than the file has,
while the bytes that are there do not pass the header's checksum with their real length
(which would make it a complete record with a damaged length field), and no valid record
follows. That is what a crash mid-append leaves: an append is one ``write`` +
``fdatasync`` of one record, the next append starts only after it is synced, so only the
last record can be unsynced, and a killed process or a full disk leaves a prefix of it
(its length field intact; the body may be part zeros after a power cut).

Everything else that would drop a complete record refuses to open with
:class:`LogDamaged` (a :class:`~coordcore.errors.LogCorrupted`) whose :class:`Damage`
names the file, byte offset, record index, what is wrong and how many records and bytes
cutting it would drop: a complete record with a bad checksum or index (the last one
too), a length no record can have (zeros where a header should be, too), a bad record
with valid ones after it, anything wrong in an earlier segment, a bad segment header, a
gap in the indices, a damaged snapshot the log cannot stand in for. Damage is never
guessed to be a tear: cutting off the issue's "last 4 KiB zeroed" took the revision back
from 62 to 4, and token 62 was issued twice. So a power cut on a file system that can
put zeros or stale bytes where an unsynced record's header was (XFS, ext4
``data=writeback``) refuses too, though that record was never acknowledged: it costs an
explicit :func:`repair` (``coordcore locks repair``), never a silently lost grant.
:func:`repair` is a dry run unless told to apply; applying keeps every file it changes
or sets aside as ``*.damaged``.

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

from coordcore._native.lockmachine import crc32c as _crc32c
from coordcore.errors import BadArgument, LogCorrupted, ServiceClosed, Unavailable, WrongType

__all__ = [
    "BatchLog",
    "Durability",
    "Record",
    "Recovered",
    "Snapshot",
    "TornTail",
    "Damage",
    "LogDamaged",
    "RepairReport",
    "repair",
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
        value = _crc32c(part, value)
    return value


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
    def __init__(self, offset: int, reason: str, short: bool = False) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        #: The file ends inside this record (its header, or the body its length announces).
        self.short = short


def _parse_record(buf: bytes, offset: int, expected_index: int, max_body: int) -> tuple[int, bytes]:
    """Parse the record at ``offset``; return (end offset, payload) or raise _BadRecord."""
    end = len(buf)
    if end - offset < _REC_HEADER.size:
        raise _BadRecord(offset, f"record header cut short ({end - offset} of {_REC_HEADER.size} bytes)",
                         short=True)
    length, crc = _REC_HEADER.unpack_from(buf, offset)
    body_at = offset + _REC_HEADER.size
    if length < _INDEX.size or length > max_body:
        raise _BadRecord(offset, f"record length {length} is out of range")
    if end - body_at < length:
        raise _BadRecord(offset, f"record body cut short ({end - body_at} of {length} bytes)", short=True)
    if _crc(buf[offset:offset + 4], buf[body_at:body_at + length]) != crc:
        raise _BadRecord(offset, f"record checksum mismatch in a complete record ({length} bytes)")
    (index,) = _INDEX.unpack_from(buf, body_at)
    if index != expected_index:
        raise _BadRecord(offset, f"record index {index} where {expected_index} was expected")
    return body_at + length, buf[body_at + _INDEX.size:body_at + length]


def _valid_record_after(buf: bytes, start: int, expected_index: int, max_body: int) -> int | None:
    """The offset of a well-formed record after ``start`` whose index is at least
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


def _complete_with_other_length(buf: bytes, offset: int) -> bool:
    """Whether the bytes from ``offset`` to the end of ``buf`` pass the checksum of the
    record header at ``offset`` once its length field is replaced by what is really there:
    then the record is complete and only its length field is damaged (a torn write
    leaves a prefix of the record, so its length field is always right)."""
    body_at = offset + _REC_HEADER.size
    real = len(buf) - body_at
    if real < _INDEX.size:
        return False
    (crc,) = _LEN.unpack_from(buf, offset + 4)
    return _crc(_LEN.pack(real), buf[body_at:]) == int(crc)


def _recognisable(buf: bytes, start: int, expected_index: int) -> tuple[int, int]:
    """Well-formed records at or after byte ``start`` with indices from ``expected_index``
    on (resynchronising past damage): ``(count, highest index)``, ``(0, 0)`` if none."""
    count = high = 0
    offset = start
    max_body = MAX_RECORD_BYTES + _INDEX.size
    while offset < len(buf):
        try:
            offset, _ = _parse_record(buf, offset, expected_index, max_body)
        except _BadRecord:
            later = _valid_record_after(buf, offset, expected_index, max_body)
            if later is None:
                break
            offset = later
            (expected_index,) = _INDEX.unpack_from(buf, later + _REC_HEADER.size)
            continue
        count += 1
        high = expected_index
        expected_index += 1
    return count, high


@dataclass(frozen=True, slots=True)
class Damage:
    """Damage to a log that recovery does not cut off by itself (anything but a torn tail:
    see the module docs): where it is, and what cutting it off would drop.

    ``coordcore locks repair`` prints these; :class:`LogDamaged` carries one."""

    #: ``"record"``, ``"segment-header"``, ``"gap"`` or ``"snapshot"``.
    kind: str
    #: The damaged file's name in the log directory.
    file: str
    #: Byte offset of the damage in :attr:`file` (0 for the file as a whole).
    offset: int
    #: The first record index that would be lost (the one expected at the damage).
    index: int
    reason: str
    #: Records recognisable in what would be dropped (the damaged one included for
    #: ``"record"``); a zeroed span hides how many it held, so it is a lower bound.
    records: int
    #: The highest record index recognisable in what would be dropped (0: none).
    last_index: int
    #: Bytes that would be dropped: from :attr:`offset` to the end of :attr:`file`,
    #: plus every file in :attr:`later_files`.
    bytes: int
    #: Later files that would be set aside whole.
    later_files: tuple[str, ...] = ()

    def dropped(self) -> str:
        """What cutting the damage off drops, in words."""
        if self.kind == "snapshot":
            return (f"the snapshot {self.file} ({self.bytes} bytes) and with it records up to "
                    f"{self.last_index} that only it held")
        span = f"records {self.index}..{self.last_index}" if self.last_index > self.index \
            else f"record {self.index}" + (" and any after it" if self.kind == "record" else "")
        later = f" and {len(self.later_files)} later file(s)" if self.later_files else ""
        return (f"{span} ({self.records} recognisable record(s), {self.bytes} bytes from byte "
                f"{self.offset} of {self.file}{later})")

    def describe(self, directory: Path | str) -> str:
        where = "" if self.kind == "snapshot" else f" (record {self.index}, byte {self.offset})"
        return (f"lock log {directory}: {self.file}{where}: {self.reason}. This is damage, not a "
                f"torn tail: opening would drop {self.dropped()}. Refusing to open it; "
                f"`coordcore locks repair {directory}` shows the repair (a dry run) and "
                "`--apply` makes it")


class LogDamaged(LogCorrupted):
    """:class:`~coordcore.errors.LogCorrupted` with the :class:`Damage` found."""

    def __init__(self, directory: Path, damage: Damage) -> None:
        super().__init__(damage.describe(directory))
        self.damage = damage


@dataclass(slots=True)
class _Scan:
    """What a log directory holds, read without changing anything."""

    snapshot: Snapshot | None
    records: list[Record]
    torn: TornTail | None
    skipped: list[str]
    damage: Damage | None
    live: list[_Segment]
    covered: list[_Segment]
    older_snapshots: list[Path]
    next_index: int
    #: The index after the last record in the segments (may be <= the snapshot's).
    scan_end: int


def _scan(d: Path, segments: list[_Segment], snapshots: list[tuple[int, Path]],
          limits: dict[Path, int] | None = None, keep_payloads: bool = True) -> _Scan:
    """Read a log (``limits``: pretend these files end at these offsets, for a repair's
    dry run); damage is returned in :attr:`_Scan.damage`, never cut."""
    limits = limits or {}
    max_body = MAX_RECORD_BYTES + _INDEX.size

    def read(path: Path) -> bytes:
        data = path.read_bytes()
        return data[:limits[path]] if path in limits else data

    snapshot: Snapshot | None = None
    skipped: list[str] = []
    for index, path in snapshots:
        try:
            snapshot = _read_snapshot(index, path)
            break
        except LogCorrupted as exc:
            # Written with temp file + fsync + rename, a snapshot is never torn: this
            # is damage. An older snapshot can still do if the log covers the gap
            # (checked below); otherwise we refuse.
            skipped.append(str(exc))
    base = snapshot.index if snapshot else 0
    # Segments wholly covered by the snapshot may be left over if a crash came
    # between the snapshot's rename and their deletion; skip them.
    live = [s for i, s in enumerate(segments)
            if i + 1 >= len(segments) or segments[i + 1].first_index > base + 1]
    covered = [s for s in segments if s not in live]
    older = [p for i, p in snapshots if snapshot is not None and i < snapshot.index]
    records: list[Record] = []
    torn: TornTail | None = None
    expected = live[0].first_index if live else base + 1

    def lost_from(n: int, seg_offset: int, data: bytes | None, kind: str, reason: str) -> _Scan:
        """Damage in ``live[n]`` at ``seg_offset``: it and everything after it go."""
        seg = live[n]
        count, high = (0, 0)
        size = 0
        if data is not None:
            size = len(data) - seg_offset
            count, high = _recognisable(data, seg_offset, expected)
            if kind == "record":  # the damaged record itself, which does not parse
                count, high = count + 1, max(high, expected)
        later = live[n + 1:] if data is not None else live[n:]
        for other in later:
            other_data = read(other.path)
            size += len(other_data)
            c, h = _recognisable(other_data, _SEG_HEADER.size, other.first_index)
            count += c
            high = max(high, h)
        damage = Damage(kind, seg.path.name, seg_offset, expected, reason, count, high, size,
                        tuple(o.path.name for o in later))
        return _Scan(snapshot, records, None, skipped, damage, live, covered, older, expected, expected)

    if live and live[0].first_index > base + 1:
        return lost_from(0, 0, None, "gap",
                         f"records {base + 1}..{live[0].first_index - 1} are missing (the first segment "
                         f"starts at {live[0].first_index}, the snapshot covers up to {base})")
    for n, seg in enumerate(live):
        last = n == len(live) - 1
        if seg.first_index != expected:
            return lost_from(n, 0, None, "gap",
                             f"segment starts at index {seg.first_index} but the previous one ends at "
                             f"{expected - 1}")
        data = read(seg.path)
        problem = _segment_header_problem(seg, data)
        if problem is not None:
            return lost_from(n, 0, None, "segment-header", problem)
        offset = _SEG_HEADER.size
        while offset < len(data):
            try:
                offset, payload = _parse_record(data, offset, expected, max_body)
            except _BadRecord as bad:
                # Only a short last record is a torn tail (see the module docs).
                reason = bad.reason
                if not last:
                    reason += f", and {seg.path.name} is not the last segment"
                elif bad.short and _complete_with_other_length(data, bad.offset):
                    reason = (f"{bad.reason}, but the {len(data) - bad.offset - _REC_HEADER.size} "
                              "bytes there pass the record's checksum: a complete record with a "
                              "damaged length field")
                elif bad.short:
                    later_at = _valid_record_after(data, bad.offset, expected, max_body)
                    if later_at is None:
                        torn = TornTail(seg.path.name, bad.offset, len(data) - bad.offset, bad.reason)
                        break
                    reason += f", followed by a valid record at byte {later_at}"
                return lost_from(n, bad.offset, data, "record", reason)
            if expected > base and keep_payloads:
                records.append(Record(expected, payload))
            expected += 1
    if skipped:
        newest_skipped = max(i for i, _ in snapshots if snapshot is None or i > snapshot.index)
        if expected - 1 < newest_skipped:
            name = _snap_name(newest_skipped)
            damage = Damage("snapshot", name, 0, expected, f"the newest snapshot is damaged ({skipped[0]}) "
                            f"and the log holds records only up to {expected - 1}, not up to "
                            f"{newest_skipped}", 0, newest_skipped,
                            (d / name).stat().st_size, ())
            return _Scan(snapshot, records, torn, skipped, damage, live, covered, older, expected, expected)
    scan_end = expected
    if expected <= base:
        # Every record is covered by the snapshot (segments deleted after it): the
        # next record continues after the snapshot.
        expected = base + 1
    return _Scan(snapshot, records, torn, skipped, None, live, covered, older, expected, scan_end)


def _read_snapshot(index: int, path: Path) -> Snapshot:
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


def _segment_header_problem(seg: _Segment, data: bytes) -> str | None:
    if len(data) < _SEG_HEADER.size:
        return f"segment is shorter than its header ({len(data)} of {_SEG_HEADER.size} bytes)"
    magic, version, _, first, crc, _ = _SEG_HEADER.unpack_from(data)
    if magic != _SEG_MAGIC or version != _VERSION or _crc(data[:24]) != crc:
        return "segment has a bad header"
    if first != seg.first_index:
        return f"segment says it starts at index {first}, its name says {seg.first_index}"
    return None


def _list_dir(d: Path, remove_tmp: bool) -> tuple[list[_Segment], list[tuple[int, Path]]]:
    segments: list[_Segment] = []
    snapshots: list[tuple[int, Path]] = []
    for entry in os.scandir(d):
        name = entry.name
        if name.endswith(".tmp"):
            # A segment or snapshot that never got renamed into place: a crash
            # interrupted its creation, and nothing refers to it.
            if remove_tmp:
                os.unlink(entry.path)
            continue
        if m := _SEG_RE.match(name):
            segments.append(_Segment(int(m.group(1)), Path(entry.path)))
        elif m := _SNAP_RE.match(name):
            snapshots.append((int(m.group(1)), Path(entry.path)))
    segments.sort(key=lambda s: s.first_index)
    snapshots.sort(reverse=True)
    return segments, snapshots


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
        return _list_dir(self._dir, remove_tmp=True)

    def _recover(self) -> None:
        segments, snapshots = self._list()
        scan = _scan(self._dir, segments, snapshots)
        for why in scan.skipped:
            logger.error("skipping damaged snapshot: %s", why)
        if scan.damage is not None:
            raise LogDamaged(self._dir, scan.damage)
        torn = scan.torn
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
        self.recovered = Recovered(scan.snapshot, scan.records, torn, scan.skipped)
        self._next_index = scan.next_index
        # Delete what the snapshot covers (left over by a crash mid-truncation) and older
        # snapshots; then open the last segment for appending, or start one.
        for seg in scan.covered:
            os.unlink(seg.path)
        for path in scan.older_snapshots:
            os.unlink(path)
        base = scan.snapshot.index if scan.snapshot else 0
        if scan.live and scan.scan_end > base:
            self._active = scan.live[-1]
            self._fd = os.open(self._active.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self._active_size = os.fstat(self._fd).st_size
        else:
            self._start_segment(scan.next_index)

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


@dataclass(slots=True)
class RepairReport:
    """What :func:`repair` found and did (or, in a dry run, would do)."""

    path: Path
    applied: bool
    #: Each piece of damage, in the order it was cut off (cutting one can reveal the next).
    damage: list[Damage] = field(default_factory=list)
    #: ``(action, file, detail)``: ``("truncate", name, offset)`` or ``("set-aside", name, 0)``.
    actions: list[tuple[str, str, int]] = field(default_factory=list)
    #: The backups kept (``*.damaged``), when applied.
    backups: list[str] = field(default_factory=list)
    #: A torn tail the next open cuts off by itself (repair leaves it alone).
    torn_tail: TornTail | None = None
    #: The index of the last record the log holds after the repair (or the snapshot's).
    last_index: int = 0

    @property
    def records_dropped(self) -> int:
        """Records recognisably dropped (a lower bound: a zeroed span hides its count)."""
        return sum(d.records for d in self.damage)

    @property
    def bytes_dropped(self) -> int:
        return sum(d.bytes for d in self.damage)

    def lines(self) -> list[str]:
        """The report for a human, one line each."""
        verb = "" if self.applied else "would "
        out = []
        if not self.damage:
            out.append(f"lock log {self.path}: no damage; nothing to repair (log ends at record "
                       f"{self.last_index})")
        for d in self.damage:
            where = f"{d.file}" if d.kind == "snapshot" else f"{d.file} byte {d.offset} (record {d.index})"
            out.append(f"damage: {where}: {d.reason}")
            out.append(f"  {verb}drop {d.dropped()}")
        for action, name, offset in self.actions:
            if action == "truncate":
                out.append(f"{verb}truncate {name} at byte {offset}, keeping the whole file as "
                           f"{name}.damaged")
            else:
                out.append(f"{verb}set aside {name} as {name}.damaged")
        if self.damage:
            out.append(f"{verb}drop {self.records_dropped} recognisable record(s), "
                       f"{self.bytes_dropped} bytes in all; the log then ends at record {self.last_index}")
        if self.torn_tail is not None:
            t = self.torn_tail
            out.append(f"torn tail (cut off at the next open, never acknowledged): {t.bytes_cut} bytes "
                       f"at byte {t.offset} of {t.segment} ({t.reason})")
        return out


def _backup_name(path: Path) -> Path:
    candidate = path.with_name(path.name + ".damaged")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.damaged.{n}")
        n += 1
    return candidate


def repair(path: str | os.PathLike[str], *, apply: bool = False,
           durability: Durability = "fsync") -> RepairReport:
    """Find the damage that keeps the log in ``path`` from opening and cut it off: the
    damaged record and everything after it (a later record cannot be applied without
    the ones before it), a segment with a bad header or after a gap and everything
    after it, a damaged snapshot that the log cannot stand in for.

    A dry run (the default) changes nothing and reports what applying would drop. With
    ``apply=True`` a truncated segment is first copied whole to ``<name>.damaged`` and
    segments or snapshots dropped whole are renamed to ``<name>.damaged``; afterwards
    the log opens. Takes the log's ``LOCK``: refuses (``Unavailable``) while the log is
    open. A lock service must also raise its revision past the tokens the dropped
    records issued: :func:`coordcore.locks.recovery.repair` does both.
    """
    d = Path(os.fspath(path))
    if not d.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no lock log directory here", str(d))
    sync = durability == "fsync"
    lock_fd = os.open(d / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Unavailable(f"the lock log {str(d)!r} is open in another process: stop it "
                              "before repairing the log") from None
        segments, snapshots = _list_dir(d, remove_tmp=False)
        report = RepairReport(d, apply)
        limits: dict[Path, int] = {}
        truncate: dict[Path, int] = {}
        aside: list[Path] = []
        while True:
            scan = _scan(d, segments, snapshots, limits, keep_payloads=False)
            damage = scan.damage
            if damage is None:
                break
            report.damage.append(damage)
            target = d / damage.file
            if damage.kind == "snapshot":
                snapshots = [(i, p) for i, p in snapshots if p != target]
                aside.append(target)
                continue
            later = {d / name for name in damage.later_files}
            if damage.kind == "record":
                limits[target] = truncate[target] = damage.offset
            else:
                later.add(target)
            segments = [s for s in segments if s.path not in later]
            aside.extend(sorted(later))
        base = scan.snapshot.index if scan.snapshot else 0
        report.last_index = max(scan.scan_end - 1, base)
        report.torn_tail = scan.torn
        for p in aside:
            truncate.pop(p, None)
        report.actions = [("truncate", p.name, off) for p, off in sorted(truncate.items())]
        report.actions += [("set-aside", p.name, 0) for p in aside]
        if apply:
            for p, off in sorted(truncate.items()):
                backup = _backup_name(p)
                tmp = backup.with_name(backup.name + ".tmp")
                data = p.read_bytes()
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    if sync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, backup)
                report.backups.append(backup.name)
            if sync and truncate:
                _fsync_dir(d)  # the backups are durable before anything is cut
            for p in aside:
                backup = _backup_name(p)
                os.replace(p, backup)
                report.backups.append(backup.name)
            for p, off in sorted(truncate.items()):
                fd = os.open(p, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.ftruncate(fd, off)
                    if sync:
                        os.fdatasync(fd)
                finally:
                    os.close(fd)
            if sync:
                _fsync_dir(d)
            for line in report.lines():
                logger.warning("repair: %s", line)
        return report
    finally:
        os.close(lock_fd)  # drops the flock
