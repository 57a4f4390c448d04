"""The audit journal: every lock-log record, in order, with who opened its sessions.

The lock log cannot carry audit data without a format change: every record in it is a
batch the state machine applies, on recovery and on every cluster follower, and a
record of another kind would have to be taught to all of them. So the audit lives
beside the log, in its own directory::

    journal.log         the live segment: header, then one entry per lock-log record
    journal-<first>.log sealed segments (the same format), until they are archived
    tree.json           the tree's right edge after the sealed segments
    base.snap           the machine state before the journal's first record, if the
                        audit started on a log that already had state
    checkpoints.jsonl   signed checkpoints (see :mod:`coordcore.audit.checkpoint`)

An entry is ``[u32 body length][u32 crc32c(body)][u64 record index][leaf]`` and the
*leaf* (what the Merkle tree hashes, RFC 6962 ``SHA-256(0x00 || leaf)``) is::

    u32 record length, record (the batch record, byte for byte),
    then per OPEN command whose opener is known: u32 command position, u16 name length, name

The user is there because the log cannot tell it: a session's owner is folded into the
credential digest its OPEN carries (``SHA-256(owner || 0 || secret)``) and the secret
never reaches the log. Folding the names into the leaf puts them under the tree's hash
and the checkpoints' signatures like the records themselves.

The journal is written when a record is durable in the log, without an fsync of its
own; it is fsynced before a snapshot lets the log drop records and before a checkpoint
signs them. A power cut can so lose its unsynced tail, which the log still has: on
restart the tail is taken from the log again (without its user names, logged).
"""
from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from coordcore._native.lockmachine import crc32c
from coordcore.errors import BadArgument, LogCorrupted, NotFound

__all__ = ["Entry", "Journal", "JournalReader", "chain_entries", "encode_leaf", "decode_leaf", "segments",
           "segment_name"]

MAGIC: Final = b"CCAUDJNL"
_HEADER = struct.Struct("<8sIIQ")  # magic, version, reserved, first record index
_ENTRY = struct.Struct("<IIQ")  # body length (index + leaf), crc32c of the body, record index
# The same entry cut after the crc: the record index and a user-less leaf's length prefix.
_ENTRY_HEAD = struct.Struct("<II")
_INDEX_LEN = struct.Struct("<QI")
_U32 = struct.Struct("<I")
_USER = struct.Struct("<IH")
#: Longest entry read back (a lock-log record is at most 256 MiB).
MAX_ENTRY: Final = (256 << 20) + (1 << 20)
JOURNAL: Final = "journal.log"
#: The tree's right edge after the sealed segments (written by coordcore.audit.trail).
TREE: Final = "tree.json"
_SEGMENT = re.compile(r"^journal-(\d{20})\.log$")
BASE: Final = "base.snap"


@dataclass(frozen=True)
class Entry:
    """One journal entry: a lock-log record and the users of its OPEN commands."""

    index: int
    record: bytes
    users: tuple[tuple[int, str], ...]

    @property
    def leaf(self) -> bytes:
        return encode_leaf(self.record, self.users)


def encode_leaf(record: bytes, users: tuple[tuple[int, str], ...] = ()) -> bytes:
    parts = [_U32.pack(len(record)), record]
    for pos, name in users:
        raw = name.encode()
        parts.append(_USER.pack(pos, len(raw)))
        parts.append(raw)
    return b"".join(parts)


def decode_leaf(leaf: bytes) -> tuple[bytes, tuple[tuple[int, str], ...]]:
    """``(record, users)`` of a leaf, or :class:`BadArgument` naming what is wrong."""
    if len(leaf) < 4:
        raise BadArgument("a leaf shorter than its record length")
    (n,) = _U32.unpack_from(leaf)
    if 4 + n > len(leaf):
        raise BadArgument(f"a leaf says its record has {n} bytes but holds {len(leaf) - 4}")
    record = leaf[4:4 + n]
    users: list[tuple[int, str]] = []
    pos = 4 + n
    while pos < len(leaf):
        if pos + _USER.size > len(leaf):
            raise BadArgument("a leaf's user list is truncated")
        cmd, size = _USER.unpack_from(leaf, pos)
        pos += _USER.size
        if pos + size > len(leaf):
            raise BadArgument("a leaf's user name is truncated")
        try:
            users.append((cmd, leaf[pos:pos + size].decode()))
        except UnicodeDecodeError:
            raise BadArgument("a leaf's user name is not UTF-8") from None
        pos += size
    return record, tuple(users)


class JournalReader:
    """Reads a journal's complete entries (a torn tail is where it stops)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
        if len(head) < _HEADER.size:
            raise LogCorrupted(f"audit journal {path}: shorter than its header")
        magic, version, _, first = _HEADER.unpack(head)
        if magic != MAGIC or version != 1 or first < 1:
            raise LogCorrupted(f"audit journal {path}: not an audit journal (magic {magic!r}, "
                               f"version {version}, first index {first})")
        self.first_index: int = first
        #: Where the complete entries end (set once :meth:`entries` has read them all).
        self.end = _HEADER.size

    def entries(self, offsets: list[int] | None = None, start: tuple[int, int] | None = None) -> Iterator[Entry]:
        """Every complete entry in order (from ``start``, ``(offset, index)`` of an entry
        read before, if given); checks indices and checksums. Only the last entry can be
        torn (one append at a time, a checkpoint fsyncs before it signs): one that runs
        past the end of the file, or ends at it with a bad checksum, or zeros to the end,
        ends the iteration. Any other damage raises :class:`LogCorrupted`."""
        offset, expected = start if start is not None else (_HEADER.size, self.first_index)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            f.seek(offset)
            while True:
                head = f.read(_ENTRY.size)
                if len(head) < _ENTRY.size:
                    break  # a torn header
                length, crc, index = _ENTRY.unpack(head)
                if not 8 <= length <= MAX_ENTRY:
                    if self._zeros_to_end(f, head):
                        break  # a power cut left zeros where the last entry was going
                    raise LogCorrupted(f"audit journal {self.path}: an entry length of {length} at byte {offset}")
                end = offset + _ENTRY.size + length - 8
                if end > size:
                    break  # the last entry, cut short
                leaf = f.read(length - 8)
                if crc32c(leaf, crc32c(head[8:])) != crc:
                    if end == size:
                        break  # the last entry, half-written
                    raise LogCorrupted(f"audit journal {self.path}: a checksum mismatch in the entry at byte "
                                       f"{offset}, with entries after it")
                if index != expected:
                    raise LogCorrupted(f"audit journal {self.path}: entry at byte {offset} is record "
                                       f"{index}, expected {expected}")
                try:
                    record, users = decode_leaf(leaf)
                except BadArgument as exc:
                    raise LogCorrupted(f"audit journal {self.path}: record {index}: {exc}") from None
                if offsets is not None:
                    offsets.append(offset)
                yield Entry(index, record, users)
                offset = end
                self.end = offset
                expected += 1

    @staticmethod
    def _zeros_to_end(f: BinaryIO, head: bytes) -> bool:
        if head.strip(b"\0"):
            return False
        while chunk := f.read(1 << 16):
            if chunk.strip(b"\0"):
                return False
        return True


def segment_name(first_index: int) -> str:
    return f"journal-{first_index:020d}.log"


def segments(directories: list[Path], live: Path | None = None) -> list[Path]:
    """The sealed segments found in ``directories`` (the first copy of each), then the
    live journal ``live`` if it exists, in record order."""
    found: dict[int, Path] = {}
    for d in directories:
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            continue
        for name in names:
            m = _SEGMENT.match(name)
            if m:
                found.setdefault(int(m.group(1)), d / name)
    out = [found[k] for k in sorted(found)]
    if live is not None and live.exists():
        out.append(live)
    return out


def chain_entries(paths: list[Path], first_index: int | None = None) -> Iterator[Entry]:
    """The entries of consecutive journal files as one journal; a gap between them (a
    segment archived elsewhere) raises :class:`NotFound` naming the missing records."""
    expected = first_index
    for path in paths:
        reader = JournalReader(path)
        if expected is not None and reader.first_index != expected:
            if reader.first_index > expected:
                raise NotFound(f"audit records {expected}..{reader.first_index - 1} are in none of the "
                               "journal files found (archived? give the archive directory)")
            raise LogCorrupted(f"audit journal {path} starts at record {reader.first_index}, which an "
                               f"earlier file holds already (up to {expected - 1})")
        expected = reader.first_index
        for e in reader.entries():
            yield e
            expected = e.index + 1


class Journal:
    """The writer: appends entries, fsyncs on request."""

    def __init__(self, path: Path, fd: int, first_index: int, next_index: int, end: int, fsync: bool) -> None:
        self.path = path
        #: Where the next entry starts.
        self.end = end
        self._fd = fd
        self.first_index = first_index
        self.next_index = next_index
        self._fsync = fsync
        self._dirty = False

    @classmethod
    def create(cls, directory: Path, first_index: int, fsync: bool) -> Journal:
        path = directory / JOURNAL
        tmp = directory / (JOURNAL + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_HEADER.pack(MAGIC, 1, 0, first_index))
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(directory)
        return cls.reopen(path, first_index, first_index, _HEADER.size, fsync)

    @classmethod
    def reopen(cls, path: Path, first_index: int, next_index: int, end: int, fsync: bool) -> Journal:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, end)  # a torn tail goes
            os.lseek(fd, end, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, first_index, next_index, end, fsync)

    def append(self, index: int, leaf_parts: list[bytes]) -> None:
        if index != self.next_index:
            raise LogCorrupted(f"audit journal {self.path}: record {index} follows {self.next_index - 1}")
        size = 0
        crc = crc32c(index.to_bytes(8, "little"))
        for part in leaf_parts:
            crc = crc32c(part, crc)
            size += len(part)
        parts = [_ENTRY.pack(size + 8, crc, index), *leaf_parts]
        size += _ENTRY.size
        done = os.writev(self._fd, parts)
        if done != size:  # a short write (a full disk): finish it or fail loudly
            rest = b"".join(parts)[done:]
            while rest:
                rest = rest[os.write(self._fd, rest):]
        self.end += size
        self.next_index = index + 1
        self._dirty = True

    def append_record(self, index: int, record: bytes) -> None:
        """:meth:`append` of a leaf without users (``[u32 length][record]``), the same
        bytes: two crc32c calls and two packs instead of one per part (the commit path)."""
        if index != self.next_index:
            raise LogCorrupted(f"audit journal {self.path}: record {index} follows {self.next_index - 1}")
        n = len(record)
        body = _INDEX_LEN.pack(index, n)
        head = _ENTRY_HEAD.pack(n + 12, crc32c(record, crc32c(body)))
        size = n + 20
        done = os.writev(self._fd, (head, body, record))
        if done != size:  # a short write (a full disk): finish it or fail loudly
            rest = b"".join((head, body, record))[done:]
            while rest:
                rest = rest[os.write(self._fd, rest):]
        self.end += size
        self.next_index = index + 1
        self._dirty = True

    def sync(self) -> None:
        if self._dirty and self._fsync:
            os.fdatasync(self._fd)
        self._dirty = False

    def sync_data(self) -> None:
        """fdatasync whatever was written, from any thread (unlike :meth:`sync`, it
        leaves the dirty mark alone: the loop may be appending meanwhile)."""
        if self._fsync and self._fd >= 0:
            os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
