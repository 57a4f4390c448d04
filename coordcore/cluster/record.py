"""How one log record is stored in etcd, and the checks a reader makes on each.

The value of ``<prefix>/log/<seq>`` is a fixed header and the caller's payload::

    offset  size  field
         0     4  magic b"ccr1"
         4     8  term       create revision of the writer's leader key (u64, little-endian)
        12     8  seq        this record's index, 1, 2, 3... (u64)
        20    16  batch id   random, names this append (unknown-outcome resolution)
        36    32  prev hash  SHA-256 of the previous record's whole value (zeros for seq 1)
        68     4  crc        CRC32C of bytes 0..67 and the payload (u32)
        72     -  payload

:class:`Chain` checks records in order: the key's number, the header's seq and the
chain's next index agree (else a gap); ``prev hash`` is the digest of the record before
(else a fork); the term never goes down (a record of a deposed leader sorted after its
successor's); the CRC holds (damage); the key was written once (etcd ``version`` 1) and
after the leader key it names (``create_revision > term``). Any failure raises
:class:`~coordcore.cluster.errors.LogInvalid`: readers stop, they never skip.

>>> rec = encode(term=7, seq=1, batch_id=bytes(16), prev_hash=GENESIS, payload=b"hello")
>>> len(rec) - HEADER_BYTES, decode(rec).payload
(5, b'hello')
>>> chain = Chain()
>>> chain.check(1, rec, create_revision=9, version=1).seq, chain.index
(1, 1)
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import google_crc32c

from coordcore.cluster.errors import LogInvalid

__all__ = ["MAGIC", "HEADER_BYTES", "GENESIS", "Record", "encode", "decode", "digest", "Chain"]

MAGIC = b"ccr1"
_HEADER = struct.Struct("<4sQQ16s32s")
HEADER_BYTES = _HEADER.size + 4
GENESIS = bytes(32)  # the "previous hash" of record 1


@dataclass(frozen=True, slots=True)
class Record:
    term: int
    seq: int
    batch_id: bytes
    prev_hash: bytes
    payload: bytes
    digest: bytes  # SHA-256 of the whole stored value: the next record's prev hash


def digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def encode(*, term: int, seq: int, batch_id: bytes, prev_hash: bytes, payload: bytes) -> bytes:
    head = _HEADER.pack(MAGIC, term, seq, batch_id, prev_hash)
    crc = google_crc32c.extend(google_crc32c.value(head), payload)
    return b"".join((head, crc.to_bytes(4, "little"), payload))


def decode(value: bytes, *, where: int = 0) -> Record:
    """Parse and CRC-check a stored value; ``where`` names the index in errors."""
    if len(value) < HEADER_BYTES:
        raise LogInvalid(f"record {where}: {len(value)} bytes, shorter than a header", where)
    magic, term, seq, batch_id, prev_hash = _HEADER.unpack_from(value)
    if magic != MAGIC:
        raise LogInvalid(f"record {where}: bad magic {magic!r}", where)
    payload = value[HEADER_BYTES:]
    crc = google_crc32c.extend(google_crc32c.value(value[:_HEADER.size]), payload)
    if crc != int.from_bytes(value[_HEADER.size:HEADER_BYTES], "little"):
        raise LogInvalid(f"record {where}: checksum mismatch (damaged)", where)
    return Record(term, seq, batch_id, prev_hash, payload, digest(value))


class Chain:
    """The verified end of the log: index, digest and term of the last record checked.

    ``Chain(index, digest, term)`` starts after a snapshot (whose manifest carries the
    digest and term of its last record); ``Chain()`` starts at the beginning."""

    __slots__ = ("index", "digest", "term")

    def __init__(self, index: int = 0, digest: bytes = GENESIS, term: int = 0) -> None:
        self.index = index
        self.digest = digest
        self.term = term

    def copy(self) -> Chain:
        return Chain(self.index, self.digest, self.term)

    def check(self, key_seq: int, value: bytes, *, create_revision: int, version: int) -> Record:
        """Verify the record stored under ``log/<key_seq>`` follows this chain; advance."""
        expected = self.index + 1
        if key_seq != expected:
            raise LogInvalid(f"gap in the log: expected record {expected}, found {key_seq}", expected)
        rec = decode(value, where=key_seq)
        if rec.seq != key_seq:
            raise LogInvalid(f"record under key {key_seq} says it is record {rec.seq}", key_seq)
        if version != 1:
            raise LogInvalid(f"record {key_seq} was overwritten (etcd version {version})", key_seq)
        if rec.prev_hash != self.digest:
            raise LogInvalid(f"fork at record {key_seq}: it does not follow record {self.index}", key_seq)
        if rec.term < self.term:
            raise LogInvalid(f"record {key_seq} has term {rec.term} below {self.term} of record {self.index}"
                             " (a deposed writer's record)", key_seq)
        if create_revision <= rec.term:
            raise LogInvalid(f"record {key_seq} was written at revision {create_revision}, not after"
                             f" its term's leader key ({rec.term})", key_seq)
        self.index, self.digest, self.term = key_seq, rec.digest, rec.term
        return rec
