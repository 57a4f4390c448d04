"""The lock log in etcd: :class:`EtcdLog`, a :class:`~coordcore.locks.store.LogStore`.

Keys (see :mod:`~coordcore.cluster.keys`)::

    <prefix>/log/<seq, 20 digits>            one record per key, never overwritten
    <prefix>/snap/<index>/<chunk, 6 digits>  snapshot chunks
    <prefix>/snap/<index>/manifest           written last (see :mod:`~coordcore.cluster.snapshot`)

**Append** is one Txn: *if* the writer's leader key still has its term as create
revision *and* ``log/<seq>`` does not exist, *then* put the record, *else* read
``log/<seq>`` back. The record carries term, seq, the previous
record's hash and a random batch id (:mod:`~coordcore.cluster.record`). A deposed
leader's Txn fails its compare. Under a live guard no other writer can put a log key
past the end this writer caught up to (a later candidate leads only once this leader
key is gone; an earlier one's key is gone already), so a key found in place is ours.

**Several appends in flight** (up to ``max_in_flight``): seq and hash chain are assigned
when an append starts, so record N+1 is sent before N has committed. etcd does not keep
the order of concurrent requests (each runs in its own goroutine; measured here, about
one append in six overtook the one before it at two in flight), and a log key must
never exist before the one below it: a reader would meet a gap, and if N then never got
in (its writer deposed), the gap would stay. So while records before it are not yet
known to be in etcd, a Txn compares only the guard and carries them all, each in its own
nested put-if-absent (etcd >= 3.3), its own last: whichever Txn etcd takes first writes
them all, in one revision, and a later copy of a record finds it in place. Appends resolve strictly in order: each waits for the one
before, and if that one failed (or its outcome is unknown) it fails too, whatever etcd
did with it, so nothing after a failure is acknowledged. The first failure stops the
log for writes. The records one Txn may carry, ``max_in_flight`` of the largest, must
fit etcd's request limit (checked when the log is made).

**Unknown outcome.** A Txn that timed out or lost its connection may still commit. It
is resolved by sending the *same* Txn again until etcd answers: its compares let at most
one of the two copies put the record, and its else-branch reads the key back. The key
holding our batch id means the record is in (whichever copy, or a later append carrying
it, put it); another batch id, or no key with the guard failed, means it is not and
never will be (a leader key, once gone, never has that create revision again). That is reading back, not a blind
retry: no copy can add a second record. If etcd does not answer within
``resolve_timeout`` the append fails with :class:`AppendOutcomeUnknown` and the log
stops taking writes; the service must stop too (nothing was acknowledged).

**Snapshots** are written by the writer, with its guard: chunks, manifest, then one Txn
deletes older snapshots and the log keys up to the snapshot's index, then etcd is
compacted at that Txn's revision. The writer owns truncation.

**Reading** (``replay``, ``catch_up``, ``follow``) checks every record against the hash
chain and stops loudly (:class:`LogInvalid`) on a gap, fork, term going back or damage.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from coordcore.cluster import reader, snapshot
from coordcore.cluster.election import Leadership
from coordcore.cluster.errors import (
    AppendOutcomeUnknown,
    EtcdRequestFailed,
    EtcdUnavailable,
    FollowerBehind,
    LeadershipLost,
    LogInvalid,
)
from coordcore.cluster.etcd import Compare, Etcd, Op, TxnResult, created_at, delete, get, nested, put, sleep_backoff
from coordcore.cluster.keys import Keys
from coordcore.cluster.record import HEADER_BYTES, Chain, decode, digest, encode

__all__ = ["EtcdLog", "ETCD_MAX_REQUEST_BYTES", "DEFAULT_MAX_IN_FLIGHT"]

log = logging.getLogger(__name__)

ETCD_MAX_REQUEST_BYTES = 1536 * 1024  # etcd's --max-request-bytes default
_REQUEST_OVERHEAD = 1024  # key, compares, protobuf framing
#: Appends in flight by default: chosen by measurement (bench/RESULTS.md, cluster section).
DEFAULT_MAX_IN_FLIGHT = 2
MAX_IN_FLIGHT = 64


class EtcdLog:
    """The batch log of one coordcore cluster in etcd (see the module docs).

    A reader (follower) needs only ``etcd`` and ``keys``; a writer is also given its
    :class:`Leadership` with :meth:`lead` and must :meth:`replay` or :meth:`catch_up`
    after that, before its first append. ``append_timeout`` bounds one Txn (default: the
    connection's timeout), ``resolve_timeout`` the resolution of an unknown outcome,
    ``max_in_flight`` the appends under way at once (see the module docs).
    """

    syncs = True  # an append resolves once etcd committed it: fsynced on a majority

    def __init__(self, etcd: Etcd, keys: Keys, *, max_record_bytes: int = 256 * 1024,
                 append_timeout: float | None = None, resolve_timeout: float = 30.0,
                 snapshot_chunk_bytes: int = 1024 * 1024, page_bytes: int = 32 * 1024 * 1024,
                 max_request_bytes: int = ETCD_MAX_REQUEST_BYTES,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        limit = max_request_bytes - HEADER_BYTES - _REQUEST_OVERHEAD
        if not 0 < max_record_bytes <= limit:
            raise ValueError(f"max_record_bytes must be in 1..{limit} under etcd's request limit")
        if not 1 <= max_in_flight <= MAX_IN_FLIGHT:
            raise ValueError(f"max_in_flight must be in 1..{MAX_IN_FLIGHT}")
        if max_in_flight * (max_record_bytes + HEADER_BYTES + _REQUEST_OVERHEAD) > max_request_bytes:
            raise ValueError(f"max_in_flight={max_in_flight} records of max_record_bytes={max_record_bytes} "
                             f"(one Txn may carry that many) exceed etcd's request limit of {max_request_bytes}")
        if not 0 < snapshot_chunk_bytes <= max_request_bytes - _REQUEST_OVERHEAD:
            raise ValueError("snapshot_chunk_bytes must stay under etcd's request limit")
        self.etcd = etcd
        self.keys = keys
        self.max_record_bytes = max_record_bytes
        self.max_in_flight = max_in_flight
        self.append_timeout = append_timeout if append_timeout is not None else etcd.timeout
        self.resolve_timeout = resolve_timeout
        self.snapshot_chunk_bytes = snapshot_chunk_bytes
        self.page_bytes = page_bytes
        self._page_size = max(1, page_bytes // (max_record_bytes + HEADER_BYTES))
        #: The end of the log as far as it is durable (appends resolved, in order).
        self._chain = Chain()
        #: The end including the appends in flight: where the next record chains on.
        self._tail = Chain()
        self._leadership: Leadership | None = None
        self._caught_up = False
        self._stopped: Exception | None = None  # why writes stopped for good
        self._tasks: set[asyncio.Task[int]] = set()
        self._last: asyncio.Task[int] | None = None  # the newest append
        #: Records appended but not yet known to be in etcd: (seq, key, value), in order.
        self._unsure: collections.deque[tuple[int, bytes, bytes]] = collections.deque()
        self._closed = False

    # --- LogStore ------------------------------------------------------------------

    @property
    def next_index(self) -> int:
        """The index after the last record known to be in etcd: a follower's position, and
        a writer's next record when none is in flight (appends in flight go past it)."""
        return self._chain.index + 1

    @property
    def in_flight(self) -> int:
        """Appends started and not yet resolved."""
        return len(self._tasks)

    async def replay(self, restore: Callable[[int, bytes], None], apply: Callable[[int, bytes], None]) -> int:
        """Feed the newest snapshot, then every record after it, checked, in order.
        etcd loses no acknowledged record, so there is no revision floor (0)."""
        snap = await snapshot.read_newest(self.etcd, self.keys, page_bytes=self.page_bytes)
        chain = Chain()
        if snap is not None:
            m = snap.manifest
            restore(m.index, snap.payload)
            chain = Chain(m.index, m.record_digest, m.term)
        async for rec in reader.read_records(self.etcd, self.keys, chain, page_size=self._page_size):
            apply(rec.seq, rec.payload)
        self._chain, self._tail = chain, chain.copy()
        self._unsure.clear()
        self._caught_up = True
        return 0

    def append(self, record: bytes) -> asyncio.Future[int]:
        if len(self._tasks) >= self.max_in_flight:
            raise RuntimeError(f"{self.max_in_flight} appends in flight already (max_in_flight)")
        if self._closed:
            raise RuntimeError("the log is closed")
        if len(record) > self.max_record_bytes:
            raise ValueError(f"record of {len(record)} bytes exceeds max_record_bytes={self.max_record_bytes}")
        loop = asyncio.get_running_loop()
        try:
            lead = self._writer()
            tail = self._tail
            if lead.term < tail.term:
                raise self._stop(LeadershipLost(f"term {lead.term} is older than the log's {tail.term}"))
        except LeadershipLost as e:
            fut: asyncio.Future[int] = loop.create_future()
            fut.set_exception(e)
            return fut
        # Seq and chain are fixed now, in the order appends start, whatever order etcd
        # answers them in.
        seq = tail.index + 1
        batch_id = os.urandom(16)
        value = encode(term=lead.term, seq=seq, batch_id=batch_id, prev_hash=tail.digest, payload=record)
        tail.index, tail.digest, tail.term = seq, digest(value), lead.term
        record_digest = tail.digest
        before = self._last if self._last is not None and not self._last.done() else None
        key = self.keys.log(seq)
        self._unsure.append((seq, key, value))
        if len(self._unsure) == 1:  # all before it are in: the plain guarded put
            compare, success = [lead.guard(), created_at(key, 0)], [put(key, value)]
        else:  # it puts every record not known to be in yet, its own last (see the docs)
            compare = [lead.guard()]
            success = [nested([created_at(k, 0)], [put(k, v)]) for _, k, v in self._unsure]
        task = loop.create_task(self._append(lead, seq, batch_id, record_digest, key, compare, success, before))
        # The caller may cancel its future; the Txn goes on (cancelling it would make
        # its outcome unknown), and its error is retrieved here, not left dangling.
        task.add_done_callback(self._settled)
        self._tasks.add(task)
        self._last = task
        return asyncio.shield(task)

    def _settled(self, task: asyncio.Task[int]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()

    async def write_snapshot(self, index: int, payload: bytes) -> None:
        """Write the state after record ``index``, then truncate: delete older snapshots
        and the records up to ``index``, compact etcd."""
        lead = self._writer()
        if self._tasks:
            raise RuntimeError("a snapshot waits until no append is in flight")
        if not 0 < index <= self._chain.index:
            raise ValueError(f"snapshot index {index} outside the log's 1..{self._chain.index}")
        if index == self._chain.index:
            term, record_digest = self._chain.term, self._chain.digest
        else:
            kv = await self.etcd.get(self.keys.log(index))
            if kv is None:
                newest = await snapshot.newest_index(self.etcd, self.keys)
                if newest is not None and newest >= index:
                    return  # a snapshot at or past it exists already
                raise LogInvalid(f"record {index} is not in etcd: cannot anchor a snapshot there", index)
            rec = decode(kv.value, where=index)
            if rec.seq != index:
                raise LogInvalid(f"record under key {index} says it is record {rec.seq}", index)
            term, record_digest = rec.term, rec.digest
        await snapshot.write(lead, self.keys, (index, term, record_digest), payload,
                             chunk_bytes=self.snapshot_chunk_bytes, timeout=self.resolve_timeout)
        keys = self.keys
        r = await lead.write([delete(keys.snap_prefix, keys.snap_dir(index)),
                              delete(keys.log_prefix, keys.log(index + 1))], timeout=self.resolve_timeout)
        try:
            await self.etcd.compact(r.revision)
        except (EtcdUnavailable, EtcdRequestFailed) as e:
            log.warning("compaction at revision %d failed (%s); the next snapshot compacts", r.revision, e)

    def applied(self, revision: int) -> None:
        pass

    async def close(self) -> None:
        self._closed = True
        if self._tasks:
            await asyncio.wait(set(self._tasks))  # they settle by themselves, within resolve_timeout

    # --- writer --------------------------------------------------------------------

    def lead(self, leadership: Leadership) -> None:
        """Become the writer under ``leadership``; :meth:`catch_up` (or :meth:`replay`)
        must run before the first append."""
        self._leadership = leadership
        self._caught_up = False
        self._stopped = None

    async def catch_up(self, apply: Callable[[int, bytes], None]) -> int:
        """Apply every record after this log's position (a follower about to write:
        after it won the election, no older writer can append, so this reads to the
        true end). Returns the next index."""
        async for rec in reader.read_records(self.etcd, self.keys, self._chain, page_size=self._page_size):
            apply(rec.seq, rec.payload)
        self._tail = self._chain.copy()
        self._unsure.clear()
        self._caught_up = True
        return self.next_index

    def _writer(self) -> Leadership:
        lead = self._leadership
        if self._stopped is not None:
            raise LeadershipLost(f"writes stopped: {self._stopped}")
        if lead is None or not lead.alive():
            raise LeadershipLost("not the writer: no live leadership")
        if not self._caught_up:
            raise LeadershipLost("the writer has not caught up with the log yet")
        return lead

    def _stop(self, err: Exception) -> Exception:
        if self._stopped is None:  # the first failure is the one to report
            self._stopped = err
        return err

    async def _append(self, lead: Leadership, seq: int, batch_id: bytes, record_digest: bytes, key: bytes,
                      compare: list[Compare], success: list[Op], before: asyncio.Task[int] | None) -> int:
        """Put record ``seq`` (and those before it that ``success`` carries); ``before``
        is the append of ``seq - 1`` while it is in flight. Resolves only after it did."""
        try:
            return await self._put(lead, seq, batch_id, record_digest, key, compare, success, before)
        except Exception as e:
            # The tail already chains on this record: whatever went wrong, no later
            # record may be written after it.
            self._stop(e)
            raise

    async def _put(self, lead: Leadership, seq: int, batch_id: bytes, record_digest: bytes, key: bytes,
                   compare: list[Compare], success: list[Op], before: asyncio.Task[int] | None) -> int:
        if self._stopped is not None:
            raise LeadershipLost(f"writes stopped: {self._stopped}")
        failure = [get(key)]
        try:
            r = await self.etcd.txn(compare, success, failure, timeout=self.append_timeout)
        except EtcdUnavailable as e:
            log.warning("append of record %d: outcome unknown (%s); resolving", seq, e)
            try:
                r = await self._resolve(compare, success, failure)
            except AppendOutcomeUnknown as unknown:
                raise self._stop(unknown) from None
        if not r.succeeded:
            held = r.ranges[0].kvs
            if not held:
                raise self._stop(LeadershipLost(f"record {seq} refused: my leader key (term {lead.term}) is gone"))
            if decode(held[0].value, where=seq).batch_id != batch_id:
                raise self._stop(LeadershipLost(f"record {seq} was written by another writer"))
            # Ours: put before the guard failed, by an earlier copy of this Txn whose
            # answer was lost or by a later append that carried it.
        unsure = self._unsure
        while unsure and unsure[0][0] <= seq:
            unsure.popleft()  # in etcd: later appends need not carry them
        if before is not None:
            await self._after(before, seq)
        chain = self._chain
        assert chain.index == seq - 1, (chain.index, seq)
        chain.index, chain.digest, chain.term = seq, record_digest, lead.term
        return seq

    async def _after(self, before: asyncio.Task[int], seq: int) -> None:
        """Wait for the append before ``seq``; if it failed, so does this one."""
        await asyncio.wait({before})
        if before.cancelled() or before.exception() is not None:
            why = "cancelled" if before.cancelled() else repr(before.exception())
            raise self._stop(LeadershipLost(f"record {seq} not acknowledged: the append before it failed ({why})"))

    async def _resolve(self, compare: list[Compare], success: list[Op], failure: list[Op]) -> TxnResult:
        """Send the same guarded Txn until etcd answers (see the module docs)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.resolve_timeout
        attempt = 0
        while True:
            await sleep_backoff(attempt)
            attempt += 1
            try:
                return await self.etcd.txn(compare, success, failure, timeout=self.append_timeout)
            except (EtcdUnavailable, EtcdRequestFailed) as e:
                if loop.time() > deadline:
                    raise AppendOutcomeUnknown(f"could not learn whether the append committed within"
                                               f" {self.resolve_timeout}s: {e}") from None

    # --- follower ------------------------------------------------------------------

    async def follow(self, start_index: int) -> AsyncIterator[tuple[int, bytes]]:
        """Every record from ``start_index`` on, checked, as they are appended: ``(index,
        payload)``. Runs until cancelled; raises :class:`LogInvalid` on a broken log and
        :class:`FollowerBehind` if the records it needs were truncated (replay then).
        The position advances as a record is yielded: apply it before awaiting anything."""
        if start_index != self._chain.index + 1:
            self._chain = await self._anchor(start_index - 1)
        async for rec in reader.follow(self.etcd, self.keys, self._chain, page_size=self._page_size):
            yield rec.seq, rec.payload

    async def _anchor(self, index: int) -> Chain:
        """The chain position after record ``index``, from that record or a snapshot at it."""
        if index == 0:
            return Chain()
        kv = await self.etcd.get(self.keys.log(index))
        if kv is not None:
            rec = decode(kv.value, where=index)
            return Chain(index, rec.digest, rec.term)
        man = await self.etcd.get(self.keys.snap_manifest(index))
        if man is not None:
            m = snapshot.Manifest.decode(man.value, index)
            return Chain(index, m.record_digest, m.term)
        newest = await snapshot.newest_index(self.etcd, self.keys)
        if newest is not None and newest > index:
            raise FollowerBehind(f"record {index} was truncated below snapshot {newest}", newest)
        raise LogInvalid(f"cannot follow from {index + 1}: record {index} is not in etcd", index)


if TYPE_CHECKING:
    from coordcore.locks.store import LogStore

    def _implements(log: EtcdLog) -> LogStore:
        return log
