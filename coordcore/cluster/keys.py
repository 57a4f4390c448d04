"""Where a coordcore cluster keeps its state in etcd: every key under one prefix, so
several coordcore clusters can share one etcd.

>>> k = Keys("/coordcore/prod")
>>> k.log(42)
b'/coordcore/prod/log/00000000000000000042'
>>> k.log_seq(k.log(42))
42
>>> k.snap_chunk(42, 0), k.snap_manifest(42)
(b'/coordcore/prod/snap/00000000000000000042/000000', b'/coordcore/prod/snap/00000000000000000042/manifest')
>>> k.leader(0x1234), k.worker(7)
(b'/coordcore/prod/leader/0000000000001234', b'/coordcore/prod/ids/0007')

Numbers are zero-padded so that etcd's key order is numeric order: a Range over
``log/`` returns the records in sequence, and the manifest (``m`` sorts after digits)
is the last key of its snapshot.
"""
from __future__ import annotations

from coordcore.cluster.etcd import prefix_end

__all__ = ["Keys"]


class Keys:
    def __init__(self, prefix: str) -> None:
        prefix = prefix.rstrip("/")
        if not prefix:
            raise ValueError("the key prefix must not be empty")
        self.prefix = prefix.encode()
        self.log_prefix = self.prefix + b"/log/"
        self.snap_prefix = self.prefix + b"/snap/"
        self.leader_prefix = self.prefix + b"/leader/"
        self.ids_prefix = self.prefix + b"/ids/"

    @staticmethod
    def end(prefix: bytes) -> bytes:
        return prefix_end(prefix)

    def log(self, seq: int) -> bytes:
        return self.log_prefix + b"%020d" % seq

    def log_seq(self, key: bytes) -> int:
        if not key.startswith(self.log_prefix):
            raise ValueError(f"{key!r} is not a log key")
        return int(key[len(self.log_prefix):])

    def snap_dir(self, index: int) -> bytes:
        return self.snap_prefix + b"%020d/" % index

    def snap_chunk(self, index: int, chunk: int) -> bytes:
        return self.snap_dir(index) + b"%06d" % chunk

    def snap_manifest(self, index: int) -> bytes:
        return self.snap_dir(index) + b"manifest"

    def snap_index(self, key: bytes) -> int:
        """The snapshot index a ``snap/<index>/...`` key belongs to."""
        return int(key[len(self.snap_prefix):].split(b"/", 1)[0])

    def leader(self, lease_id: int) -> bytes:
        return self.leader_prefix + b"%016x" % lease_id

    def worker(self, worker_id: int) -> bytes:
        return self.ids_prefix + b"%04d" % worker_id

    def worker_of(self, key: bytes) -> int:
        return int(key[len(self.ids_prefix):])
