"""Where batch records become durable: the log interface and the file log behind it.

The commit pipeline (:mod:`coordcore.locks.pipeline`) hands each batch record to a
:class:`LogStore` and answers the batch's requesters once the store says the record is
durable. Recovery reads the records back through the same interface. Two stores
implement it: :class:`FileStore` (segments and snapshots in a directory, fdatasync per
record, :mod:`coordcore.locks.log`) and, in cluster mode, etcd's (one key per record,
appended by a guarded transaction). A store sees records as opaque bytes.

>>> import asyncio, tempfile
>>> async def demo(path: str) -> list[object]:
...     store = await FileStore.open(path, durability="unsafe-no-fsync")
...     first = await store.append(b"one")
...     second = await store.append(b"two")
...     await store.close()
...     store = await FileStore.open(path, durability="unsafe-no-fsync")
...     seen: list[tuple[int, bytes]] = []
...     await store.replay(lambda i, p: None, lambda i, p: seen.append((i, p)))
...     await store.close()
...     return [first, second, seen]
>>> with tempfile.TemporaryDirectory() as d:
...     asyncio.run(demo(d))
[1, 2, [(1, b'one'), (2, b'two')]]
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

from coordcore._native import require
from coordcore.errors import LogCorrupted
from coordcore.locks import recovery
from coordcore.locks.log import DEFAULT_SEGMENT_BYTES, MAX_RECORD_BYTES, BatchLog, Durability, TornTail
from coordcore.locks.recovery import RevisionMark

__all__ = ["FileStore", "LogStore", "SyncTimes", "snapshot_payload", "unwrap_snapshot"]

logger = logging.getLogger("coordcore.locks.store")

_SyncWriter = require("syncwrite").SyncWriter

_SNAP_MAGIC: Final = b"CCSVCSNP"
_SNAP_HEAD = struct.Struct("<8sIIQQQ")  # magic, version, reserved, log index, revision, time_ms


class LogStore(Protocol):
    """The durable, ordered log of batch records (index 1, 2, 3, ...) and its snapshots."""

    #: The longest record :meth:`append` takes (the pipeline cuts batches to fit).
    max_record_bytes: int
    #: True when :meth:`append` resolves only once the record is on stable storage.
    syncs: bool
    #: How many appends may be in flight at once (1: the next starts once the last is
    #: durable). With more, the pipeline cuts and appends batch N+1 before N is durable;
    #: the store must then resolve appends in the order they started, and fail every
    #: append after one that failed (each record follows the one before).
    max_in_flight: int

    @property
    def next_index(self) -> int:
        """The index after the last durable record: the one the next appended record
        gets while no append is in flight (the pipeline snapshots only then)."""
        ...

    async def replay(self, restore: Callable[[int, bytes], None],
                     apply: Callable[[int, bytes], None]) -> int:
        """Feed the newest snapshot (``restore(index, payload)``: the state after record
        ``index``), if any, then every record after it in order (``apply(index, payload)``).
        Raises on a gap, a fork or damage. Returns a revision the state must be raised
        to before it serves (0: none), when the store knows records were lost."""
        ...

    def append(self, record: bytes) -> asyncio.Future[int]:
        """Start appending ``record`` (on the event loop; at most :attr:`max_in_flight`
        appends in flight). The future resolves with its index once it is durable, and
        fails if it was not written or its fate is unknown (the service then stops:
        nothing is acknowledged)."""
        ...

    async def write_snapshot(self, index: int, payload: bytes) -> None:
        """Store a snapshot of the state after record ``index``; the records it covers
        may then be dropped."""
        ...

    def applied(self, revision: int) -> None:
        """The state reached ``revision`` (after recovery, and after each applied record),
        before anyone sees a token at it."""
        ...

    async def close(self) -> None:
        """Finish the appends in flight, release the storage. Idempotent."""
        ...


def snapshot_payload(index: int, revision: int, time_ms: int, state: bytes) -> bytes:
    """A lock service snapshot: the machine's ``state`` after record ``index``, framed."""
    return _SNAP_HEAD.pack(_SNAP_MAGIC, 1, 0, index, revision, time_ms) + state


def unwrap_snapshot(payload: bytes, index: int, where: object) -> bytes:
    """The machine state in a :func:`snapshot_payload`, or :class:`LogCorrupted`."""
    if len(payload) < _SNAP_HEAD.size:
        raise LogCorrupted(f"lock log {where}: snapshot {index} is too short for its header")
    magic, version, _, covered, _rev, _t = _SNAP_HEAD.unpack_from(payload)
    if magic != _SNAP_MAGIC or version != 1 or covered != index:
        raise LogCorrupted(f"lock log {where}: snapshot {index} is not a lock service snapshot "
                           f"(magic {magic!r}, version {version}, index {covered})")
    return payload[_SNAP_HEAD.size:]


class SyncTimes:
    """How long the log's fdatasyncs took, in fixed buckets (a Prometheus histogram's
    shape, kept here so the lock layer needs no metrics library): one ``observe`` per
    batch, never per request.

    >>> t = SyncTimes()
    >>> t.observe(0.0003); t.observe(0.2)
    >>> t.count, t.counts[:3], round(t.sum, 4)
    (2, [0, 0, 1], 0.2003)
    """

    #: Upper bounds in seconds (etcd's wal_fsync_duration_seconds uses 1 ms .. 8 s).
    BOUNDS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0)
    #: An fdatasync slower than this is logged as a warning (at most one line per second).
    SLOW: Final = 0.1

    def __init__(self) -> None:
        self.counts = [0] * len(self.BOUNDS)  # per bucket, not cumulative; past the last: count only
        self.count = 0
        self.sum = 0.0
        self.slowest = 0.0
        #: The latest fdatasync's seconds (a traced batch's span reports it).
        self.last = 0.0
        self._warned_at = float("-inf")

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.last = seconds
        self.sum += seconds
        if seconds > self.slowest:
            self.slowest = seconds
        for i, bound in enumerate(self.BOUNDS):
            if seconds <= bound:
                self.counts[i] += 1
                break
        if seconds > self.SLOW:
            now = time.monotonic()
            if now - self._warned_at >= 1.0:
                self._warned_at = now
                logger.warning("slow fsync: the lock log's fdatasync took %.1f ms (over %.0f ms); "
                               "every commit waits for it", seconds * 1e3, self.SLOW * 1e3)


class FileStore:
    """The lock log in a directory (:class:`~coordcore.locks.log.BatchLog`), with the
    revision high-water mark beside it (:mod:`coordcore.locks.recovery`).

    Appends go to a native thread that never takes the GIL
    (:class:`coordcore._native.syncwrite.SyncWriter`): a Python thread had to take the
    GIL to start each write and again to report it, and with the event loop busy that
    hand-off cost as much as the fdatasync itself. The loop learns of each append from
    the writer's eventfd.
    """

    max_record_bytes: int = MAX_RECORD_BYTES
    #: One write and fdatasync at a time: a group commit per fsync is what makes it fast.
    max_in_flight: int = 1

    def __init__(self, log: BatchLog, mark: RevisionMark, lost: list[str]) -> None:
        self._log = log
        self._mark = mark
        self._lost = lost
        self.syncs = log.durability == "fsync"
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="coordcore-log")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: Any = None  # the native SyncWriter, started with the first append
        #: (future, index, bytes, what runs before the future resolves: append_then's)
        self._pending: tuple[asyncio.Future[int], int, int, Callable[[int], None] | None] | None = None
        #: After recovery the mark is rewritten once whatever it says (see applied()).
        self._rewrite_mark = True
        self._closed = False
        #: fdatasync durations (metrics read them at scrape time).
        self.sync_times = SyncTimes()

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, durability: Durability = "fsync",
                   segment_bytes: int = DEFAULT_SEGMENT_BYTES, allow_empty_log: bool = False) -> FileStore:
        """Open (creating) the log in directory ``path``; see
        :meth:`LockService.open <coordcore.locks.service.LockService.open>` for the
        errors. The directory is scanned off the event loop."""
        loop = asyncio.get_running_loop()
        opener = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="coordcore-open")
        try:
            return await loop.run_in_executor(opener, cls._open, path, durability, segment_bytes,
                                              allow_empty_log)
        finally:
            opener.shutdown(wait=False)

    @classmethod
    def _open(cls, path: str | os.PathLike[str], durability: Durability, segment_bytes: int,
              allow_empty_log: bool) -> FileStore:
        directory = Path(os.fspath(path))
        # Before BatchLog.open, which starts a segment in an empty directory.
        lost = recovery.lost_log_evidence(directory)
        if lost and not allow_empty_log:
            raise recovery.missing_log_error(directory, lost, "allow_empty_log=True")
        log = BatchLog.open(path, durability=durability, segment_bytes=segment_bytes)
        try:
            mark = RevisionMark(directory, fsync=durability == "fsync")
        except BaseException:
            log.close()
            raise
        return cls(log, mark, lost)

    @property
    def path(self) -> Path:
        return self._log.path

    @property
    def durability(self) -> Durability:
        return self._log.durability

    @property
    def next_index(self) -> int:
        return self._log.next_index

    @property
    def torn_tail(self) -> TornTail | None:
        """What recovery cut off the end of the log (a record being written when the
        previous process died, never acknowledged), or None."""
        return self._log.recovered.torn_tail

    async def replay(self, restore: Callable[[int, bytes], None],
                     apply: Callable[[int, bytes], None]) -> int:
        """Replays in a worker thread (the state is not serving yet)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, self._replay, restore, apply)

    def _replay(self, restore: Callable[[int, bytes], None], apply: Callable[[int, bytes], None]) -> int:
        rec = self._log.recovered
        if rec.snapshot is not None:
            restore(rec.snapshot.index, rec.snapshot.payload)
        for record in rec.records:
            apply(record.index, record.payload)
        replayed = len(rec.records)
        if rec.snapshot is not None or replayed or rec.torn_tail is not None:
            logger.info("lock log %s recovered: snapshot %s, %d records replayed%s", self.path,
                        rec.snapshot.index if rec.snapshot is not None else "none", replayed,
                        f", torn tail of {rec.torn_tail.bytes_cut} bytes cut" if rec.torn_tail is not None else "")
        rec.records.clear()  # replayed: free the memory
        state = self._mark.state
        last = self._log.next_index - 1
        if state is not None and state.raise_to:
            return state.raise_to  # records were dropped by a repair
        if state is not None and self._lost:
            return state.reserved  # the log was lost (allow_empty_log)
        if state is not None and last < state.index:
            raise recovery.LogBehindMark(
                f"lock log {self.path}: it ends at record {last}, but {recovery.MARK_NAME} says "
                f"record {state.index} (revision {state.revision}) was on disk: records are "
                "missing (segments deleted, or an older copy of the directory restored), and "
                f"tokens up to {state.reserved} may have been issued. `coordcore locks repair "
                f"{self.path} --apply` accepts the loss (new tokens start above {state.reserved})")
        if self._lost:
            logger.warning("lock log %s: starting empty (allow_empty_log) without a revision "
                           "mark: fencing tokens issued before may be issued again", self.path)
        return 0

    def applied(self, revision: int) -> None:
        state = self._mark.state
        index = self._log.next_index - 1
        if self._rewrite_mark:
            self._rewrite_mark = False
            if state is None or state.raise_to or revision >= state.reserved:
                self._mark.write(recovery.MarkState(revision + recovery.RESERVE, revision, index))
        elif state is not None and revision > state.reserved:
            # Past the reserved revisions: reserve more before anyone sees a token above
            # the mark (on the loop, so no read sees it either; once per RESERVE revisions).
            self._mark.reserve(revision, index)

    def append(self, record: bytes) -> asyncio.Future[int]:
        fut = self.append_then(record, None)
        assert fut is not None
        return fut

    def append_then(self, record: bytes, then: Callable[[int], None] | None) -> asyncio.Future[int] | None:
        """:meth:`append`, with ``then(index)`` run once the record is durable, before
        the future resolves (an exception it raises fails the append instead): the audit
        trail's, one event-loop turn per batch fewer than a done callback and a second
        future. None, with nothing started, if ``then`` is given for an append that
        starts a segment (in the executor): use :meth:`append` then."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._writer = _SyncWriter()
            self._loop.add_reader(self._writer.fileno, self._on_done)
        loop = self._loop
        fut: asyncio.Future[int] = loop.create_future()
        if self._pending is not None:  # pragma: no cover - the pipeline never overlaps appends
            raise RuntimeError("an append is in flight already")
        log = self._log
        if log.segment_full:
            if then is not None:
                return None
            # Starting a segment creates a file and fsyncs the directory: in the
            # executor, not on the event loop (once per segment).
            return loop.run_in_executor(self._io, log.append, record)
        try:
            fd, data, index = log.begin_append(record)
            self._writer.submit(fd, data, self.syncs)
        except BaseException as exc:
            fut.set_exception(exc)
            return fut
        self._pending = (fut, index, len(data), then)
        return fut

    def _on_done(self) -> None:
        pending = self._pending
        if pending is None:
            return
        try:
            if self._writer.result() is None:
                return  # not done yet (a spurious wake-up)
        except OSError as exc:
            self._pending = None
            self._log.fail_append(exc)
            if not pending[0].done():
                pending[0].set_exception(exc)
            return
        self._pending = None
        fut, index, size, then = pending
        self._log.end_append(index, size)
        if not fut.done():
            try:
                if then is not None:
                    then(index)
            except BaseException as exc:  # (an unaudited record is not acknowledged)
                fut.set_exception(exc)
            else:
                fut.set_result(index)
        if self.syncs:  # after the result: a figure for metrics never holds up an append
            self.sync_times.observe(self._writer.last_sync_seconds)

    async def write_snapshot(self, index: int, payload: bytes) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, self._log.write_snapshot, index, payload)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            if self._writer is not None:
                assert self._loop is not None
                self._loop.remove_reader(self._writer.fileno)
                # Off the loop: it blocks until the write in flight (after a failed batch) is done.
                await loop.run_in_executor(self._io, self._writer.close)
            await loop.run_in_executor(self._io, self._log.close)
        finally:
            self._io.shutdown(wait=False)

    def close_now(self) -> None:
        """Close without a loop (a service that failed to start)."""
        self._closed = True
        self._log.close()
        self._io.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"<FileStore {self._log.path} next={self._log.next_index}>"
