"""Reading the log in etcd: every record after a point, checked, in order; and tailing it.

Both advance a :class:`~coordcore.cluster.record.Chain` record by record, so a gap,
fork or damaged record raises :class:`~coordcore.cluster.errors.LogInvalid` where it is,
and a reader whose next record was truncated below a snapshot gets
:class:`~coordcore.cluster.errors.FollowerBehind` (restore from the snapshot) instead of
a jump over the records it missed.

Tailing is a Range from the next index to the end, then a watch from that Range's
revision + 1. Records are never overwritten, so the Range (paged, at successive
revisions) saw every record up to its last page's revision and the watch sees every one
after. When the watch breaks (a compaction past its revision, a member that lost its
leader, a broken stream) the reader goes back to a Range from its own position: it never
resumes at the compaction revision, where records would be lost.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from coordcore.cluster import snapshot
from coordcore.cluster.errors import EtcdCompacted, EtcdUnavailable, FollowerBehind, LogInvalid
from coordcore.cluster.etcd import KV, Etcd, sleep_backoff
from coordcore.cluster.keys import Keys
from coordcore.cluster.record import Chain, Record

__all__ = ["check", "read_records", "follow"]

log = logging.getLogger(__name__)


async def check(etcd: Etcd, keys: Keys, chain: Chain, kv: KV) -> Record:
    """Check ``kv`` is the record after ``chain`` and advance it. A gap that a snapshot
    covers is :class:`FollowerBehind`, any other failure :class:`LogInvalid`."""
    seq = keys.log_seq(kv.key)
    try:
        return chain.check(seq, kv.value, create_revision=kv.create_revision, version=kv.version)
    except LogInvalid:
        if seq > chain.index + 1:
            snap = await snapshot.newest_index(etcd, keys)
            if snap is not None and snap > chain.index:
                raise FollowerBehind(f"records {chain.index + 1}..{snap} were truncated below snapshot {snap}",
                                     snap) from None
        raise


async def read_records(etcd: Etcd, keys: Keys, chain: Chain, *, page_size: int) -> AsyncIterator[Record]:
    """Every record after ``chain`` up to the end of the log, checked; the chain advances
    as each is yielded."""
    async for page in etcd.pages(keys.log(chain.index + 1), keys.end(keys.log_prefix), page_size=page_size):
        for kv in page.kvs:
            yield await check(etcd, keys, chain, kv)


async def follow(etcd: Etcd, keys: Keys, chain: Chain, *, page_size: int) -> AsyncIterator[Record]:
    """Every record after ``chain``, forever (see the module docs). The chain advances
    before each record is yielded."""
    attempt = 0
    while True:
        revision = 0
        try:
            async for page in etcd.pages(keys.log(chain.index + 1), keys.end(keys.log_prefix),
                                         page_size=page_size):
                for kv in page.kvs:
                    yield await check(etcd, keys, chain, kv)
                revision = page.revision
            async for batch in etcd.watch(keys.log_prefix, keys.end(keys.log_prefix), revision + 1):
                attempt = 0
                for ev in batch.events:
                    # Deletes are the writer's truncation below a snapshot: records we
                    # still needed going away show up as a gap at the next put.
                    if ev.kind == "put":
                        yield await check(etcd, keys, chain, ev.kv)
        except EtcdCompacted:
            log.info("log watch hit a compaction; re-reading from record %d", chain.index + 1)
        except EtcdUnavailable as e:
            log.info("log watch broke (%s); re-reading from record %d", e, chain.index + 1)
            await sleep_backoff(attempt)
            attempt += 1
