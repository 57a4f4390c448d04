"""Errors of cluster mode. Each is a leaf of :mod:`coordcore.errors`' hierarchy and sends
its parent's code word on the wire (UNAVAILABLE, CORRUPT, NOWORKER...)."""
from __future__ import annotations

from coordcore.errors import CoordcoreError, LogCorrupted, Unavailable

__all__ = [
    "EtcdUnavailable",
    "EtcdRequestFailed",
    "EtcdCompacted",
    "LeadershipLost",
    "AppendOutcomeUnknown",
    "LogInvalid",
    "FollowerBehind",
]


class EtcdUnavailable(Unavailable):
    """etcd could not be reached, or did not answer in time. For a write, the outcome is
    unknown: it may have been applied."""


class EtcdRequestFailed(CoordcoreError, RuntimeError):
    """etcd answered with an error (bad argument, request too large, quota exceeded...)."""


class EtcdCompacted(CoordcoreError, LookupError):
    """A read or watch asked for a revision etcd has compacted away."""

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.compact_revision))


class LeadershipLost(Unavailable):
    """This server is not (or no longer) the cluster's writer: its lease lapsed, its
    leader key is gone, or another writer's record took the slot. Nothing was written."""


class AppendOutcomeUnknown(Unavailable):
    """An append's transaction got no answer and reading the record back did not settle
    whether it was written, within the resolve timeout. Acknowledge nothing; stop."""


class LogInvalid(LogCorrupted):
    """A record or snapshot in etcd fails its checks (gap, fork, term going back, bad
    checksum, overwritten key). Readers stop here; they never skip a record.

    ``index`` is the record (or snapshot) index where the check failed."""

    def __init__(self, message: str, index: int = 0) -> None:
        super().__init__(message)
        self.index = index

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.index))


class FollowerBehind(Unavailable):
    """The records a follower needs next were truncated below a snapshot: restore from
    the snapshot (``replay``) and follow again from there."""

    def __init__(self, message: str, snapshot_index: int = 0) -> None:
        super().__init__(message)
        self.snapshot_index = snapshot_index

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.snapshot_index))
