"""EtcdLog against a real 3-member etcd: append and replay, deposed writers, a broken log,
snapshots with truncation, following the log across a compaction."""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
from tests.cluster.etcd_support import Applied, Writer, connect, replayed, writer

from coordcore.cluster import EtcdCompacted, EtcdLog, FollowerBehind, Keys, LeadershipLost, LogInvalid
from coordcore.cluster import etcd as etcd_ops
from coordcore.cluster.etcd import Etcd, WatchBatch
from coordcore.cluster.log import DEFAULT_MAX_IN_FLIGHT
from coordcore.cluster.record import decode, encode
from coordcore.cluster.testing import EtcdCluster

Run = Callable[..., Any]


def test_append_then_replay_round_trip(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    payloads = [os.urandom(n) for n in (0, 1, 100, 16 * 1024, 256 * 1024)] + [b"r%d" % i for i in range(15)]

    async def main() -> None:
        w = await writer(cluster.endpoints, prefix)
        try:
            assert w.log.next_index == 1 and w.log.syncs
            got = [await w.log.append(p) for p in payloads]
            assert got == list(range(1, len(payloads) + 1))
            assert w.log.next_index == len(payloads) + 1
        finally:
            await w.close()
        seen = await replayed(cluster.endpoints, prefix)
        assert seen.snapshot is None
        assert seen.records == list(enumerate(payloads, 1))

        # The next writer (a new term) catches up and chains on.
        w2 = await writer(cluster.endpoints, prefix)
        try:
            assert w2.log.next_index == len(payloads) + 1
            assert w2.leadership.term > w.leadership.term
            assert await w2.log.append(b"next term") == len(payloads) + 1
        finally:
            await w2.close()
        seen = await replayed(cluster.endpoints, prefix)
        assert seen.records[-1] == (len(payloads) + 1, b"next term")

    run(main())


def test_record_size_limits(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    async def main() -> None:
        w = await writer(cluster.endpoints, prefix, max_record_bytes=64 * 1024, max_in_flight=4)
        try:
            assert await w.log.append(bytes(64 * 1024)) == 1
            with pytest.raises(ValueError):
                w.log.append(bytes(64 * 1024 + 1))
            assert w.log.max_in_flight == 4
            first = [w.log.append(b"a%d" % i) for i in range(4)]
            assert w.log.in_flight == 4
            assert w.log.next_index == 2  # the durable position: appends in flight go past it
            with pytest.raises(RuntimeError, match="max_in_flight"):
                w.log.append(b"b")  # four appends in flight at a time
            assert await asyncio.gather(*first) == [2, 3, 4, 5]
            assert w.log.in_flight == 0 and w.log.next_index == 6
        finally:
            await w.close()
        with pytest.raises(ValueError):
            EtcdLog(w.etcd, Keys(prefix), max_record_bytes=2 * 1024 * 1024)  # over etcd's 1.5 MiB
        assert EtcdLog(w.etcd, Keys(prefix)).max_in_flight == DEFAULT_MAX_IN_FLIGHT
        for bad in (0, -1, 65):
            with pytest.raises(ValueError, match="max_in_flight"):
                EtcdLog(w.etcd, Keys(prefix), max_in_flight=bad)
        # One Txn may carry max_in_flight records: together they must fit etcd's limit.
        with pytest.raises(ValueError, match="request limit"):
            EtcdLog(w.etcd, Keys(prefix), max_in_flight=8)
        assert EtcdLog(w.etcd, Keys(prefix), max_in_flight=8, max_record_bytes=128 * 1024).max_in_flight == 8

    run(main())


def test_deposed_writer_is_refused_and_never_applied(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    async def main() -> None:
        a = await writer(cluster.endpoints, prefix)
        b: Writer | None = None
        try:
            assert await a.log.append(b"a1") == 1
            # A's lease ends in etcd (as when its server stalls past the TTL) while A
            # still believes it leads: only etcd's guard stands between A and the log.
            await a.etcd.lease_revoke(a.session.lease_id)
            a.leadership.alive = lambda: True  # type: ignore[method-assign]
            with pytest.raises(LeadershipLost, match="leader key .* is gone"):
                await a.log.append(b"a2")  # slot 2 is free: the leader compare alone refuses it
            with pytest.raises(LeadershipLost, match="writes stopped"):
                await a.log.append(b"a2")  # and A stays stopped
            b = await writer(cluster.endpoints, prefix)
            assert b.leadership.term > a.leadership.term
            assert await b.log.append(b"b2") == 2
            assert await b.log.append(b"b3") == 3
            # A writer that missed B's records (A, restarted as writer without catching
            # up) loses the slot race: the record is B's, not A's.
            a.log.lead(a.leadership)
            a.log._caught_up = True
            with pytest.raises(LeadershipLost, match="another writer"):
                await a.log.append(b"a2 again")
        finally:
            await a.close()
            if b is not None:
                await b.close()
        seen = await replayed(cluster.endpoints, prefix)
        assert seen.records == [(1, b"a1"), (2, b"b2"), (3, b"b3")]

    run(main())


# Each case hand-writes record 4 (or rewrites 3) after a good log of 3 records.
BAD_RECORDS = {
    "gap": lambda k, prev: (k.log(5), encode(term=prev.term, seq=5, batch_id=bytes(16), prev_hash=prev.digest,
                                              payload=b"x")),
    "fork": lambda k, prev: (k.log(4), encode(term=prev.term, seq=4, batch_id=bytes(16), prev_hash=bytes(32),
                                               payload=b"x")),
    "lower term": lambda k, prev: (k.log(4), encode(term=prev.term - 1, seq=4, batch_id=bytes(16),
                                                     prev_hash=prev.digest, payload=b"x")),
    "seq mismatch": lambda k, prev: (k.log(4), encode(term=prev.term, seq=5, batch_id=bytes(16),
                                                       prev_hash=prev.digest, payload=b"x")),
    "damaged": lambda k, prev: (k.log(4), encode(term=prev.term, seq=4, batch_id=bytes(16),
                                                  prev_hash=prev.digest, payload=b"x")[:-1] + b"y"),
    "overwritten": lambda k, prev: (k.log(3), prev.value),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_broken_log_stops_the_reader(run: Run, cluster: EtcdCluster, prefix: str, case: str) -> None:
    async def main() -> None:
        w = await writer(cluster.endpoints, prefix)
        try:
            for p in (b"r1", b"r2", b"r3"):
                await w.log.append(p)
            kv = await w.etcd.get(w.log.keys.log(3))
            assert kv is not None
            prev = decode(kv.value)
            prev_info = type("Prev", (), {"term": prev.term, "digest": prev.digest, "value": kv.value})
            key, value = BAD_RECORDS[case](w.log.keys, prev_info)
            await w.etcd.txn([], [etcd_ops.put(key, value)])
            # Records after the bad one are never reached either.
            await w.etcd.txn([], [etcd_ops.put(w.log.keys.log(6), b"junk")])
        finally:
            await w.close()
        etcd = await connect(cluster.endpoints)
        try:
            got = Applied()
            with pytest.raises(LogInvalid) as info:
                await EtcdLog(etcd, Keys(prefix)).replay(got.restore, got.apply)
            bad = 3 if case == "overwritten" else 4
            assert info.value.index == bad
            assert got.records == [(i, b"r%d" % i) for i in range(1, bad)]
        finally:
            await etcd.close()

    run(main())


def test_follower_stops_on_a_bad_record_as_it_arrives(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    async def main() -> None:
        w = await writer(cluster.endpoints, prefix)
        etcd = await connect(cluster.endpoints)
        try:
            await w.log.append(b"r1")
            got: list[tuple[int, bytes]] = []

            async def tail() -> None:
                async for item in EtcdLog(etcd, Keys(prefix)).follow(1):
                    got.append(item)

            task = asyncio.create_task(tail())
            await w.log.append(b"r2")
            while len(got) < 2:
                await asyncio.sleep(0.02)
            await w.etcd.txn([], [etcd_ops.put(w.log.keys.log(4), b"not a record")])  # a gap, live
            with pytest.raises(LogInvalid, match="gap"):
                await asyncio.wait_for(task, 10)
            assert got == [(1, b"r1"), (2, b"r2")]
        finally:
            await etcd.close()
            await w.close()

    run(main())


def test_snapshot_truncates_and_replay_starts_from_it(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    big = os.urandom(2_500_000)  # three chunks of 1 MiB

    async def keys_under(etcd: Etcd, p: bytes) -> list[bytes]:
        r = await etcd.range(p, etcd_ops.prefix_end(p), keys_only=True)
        return [kv.key for kv in r.kvs]

    async def main() -> None:
        w = await writer(cluster.endpoints, prefix)
        k = w.log.keys
        try:
            for i in range(1, 11):
                await w.log.append(b"r%d" % i)
            old_revision = (await w.etcd.range(k.log(1))).revision
            await w.log.write_snapshot(6, big)
            for i in range(11, 13):
                await w.log.append(b"r%d" % i)
            assert await keys_under(w.etcd, k.log_prefix) == [k.log(i) for i in range(7, 13)]
            assert await keys_under(w.etcd, k.snap_prefix) == [k.snap_chunk(6, n) for n in range(3)] + [
                k.snap_manifest(6)]
            with pytest.raises(EtcdCompacted):  # etcd's history was compacted after the truncation
                await w.etcd.range(k.log(1), revision=old_revision)

            seen = await replayed(cluster.endpoints, prefix)
            assert seen.snapshot == (6, big)
            assert seen.records == [(i, b"r%d" % i) for i in range(7, 13)]

            await w.log.write_snapshot(12, b"state after 12")  # at the tail; replaces snapshot 6
            assert await keys_under(w.etcd, k.log_prefix) == []
            assert await keys_under(w.etcd, k.snap_prefix) == [k.snap_chunk(12, 0), k.snap_manifest(12)]
            assert await w.log.append(b"r13") == 13  # the chain goes on from the manifest
        finally:
            await w.close()
        seen = await replayed(cluster.endpoints, prefix)
        assert seen.snapshot == (12, b"state after 12")
        assert seen.records == [(13, b"r13")]
        # A writer that starts now goes on from there too.
        w2 = await writer(cluster.endpoints, prefix)
        try:
            assert await w2.log.append(b"r14") == 14
        finally:
            await w2.close()

    run(main())


class CompactingEtcd(Etcd):
    """An Etcd whose first watch is preceded by ``before_watch()``: the test appends and
    compacts there, in the window between the follower's Range and its watch."""

    before_watch: Callable[[], Any] | None = None
    compacted_seen = 0

    async def watch(self, key: bytes, range_end: bytes, start_revision: int, *,  # type: ignore[override]
                    progress_notify: bool = True) -> Any:
        hook, self.before_watch = self.before_watch, None
        if hook is not None:
            await hook()
        try:
            async for batch in super().watch(key, range_end, start_revision, progress_notify=progress_notify):
                yield batch
        except EtcdCompacted:
            self.compacted_seen += 1
            raise


def test_follow_across_a_compaction_misses_nothing(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    async def main() -> None:
        w = await writer(cluster.endpoints, prefix)
        follower_etcd = await CompactingEtcd(cluster.endpoints, timeout=2.0).connect()
        try:
            for i in range(1, 4):
                await w.log.append(b"r%d" % i)

            async def append_and_compact() -> None:
                for i in range(4, 8):
                    await w.log.append(b"r%d" % i)
                await w.etcd.compact((await w.etcd.range(w.log.keys.log(1))).revision)

            follower_etcd.before_watch = append_and_compact
            got: list[tuple[int, bytes]] = []

            async def tail() -> None:
                async for item in EtcdLog(follower_etcd, Keys(prefix)).follow(1):
                    got.append(item)

            task = asyncio.create_task(tail())
            try:
                while len(got) < 7:
                    await asyncio.sleep(0.02)
                for i in range(8, 11):  # and live records after the re-read
                    await w.log.append(b"r%d" % i)
                while len(got) < 10:
                    await asyncio.sleep(0.02)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert follower_etcd.compacted_seen == 1
            assert got == [(i, b"r%d" % i) for i in range(1, 11)]
        finally:
            await follower_etcd.close()
            await w.close()

    run(main())


def test_follower_behind_a_truncation_is_told_to_restore(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    async def main() -> None:
        w = await writer(cluster.endpoints, prefix)
        etcd = await connect(cluster.endpoints)
        try:
            for i in range(1, 6):
                await w.log.append(b"r%d" % i)
            await w.log.write_snapshot(4, b"state after 4")
            follower = EtcdLog(etcd, Keys(prefix))
            with pytest.raises(FollowerBehind) as info:
                async for _ in follower.follow(2):
                    pass
            assert info.value.snapshot_index == 4
            # After restoring from the snapshot it follows on from 5.
            got = Applied()
            await follower.replay(got.restore, got.apply)
            assert got.snapshot == (4, b"state after 4") and got.records == [(5, b"r5")]
            items = follower.follow(follower.next_index)
            await w.log.append(b"r6")
            assert await asyncio.wait_for(items.__anext__(), 10) == (6, b"r6")
            await items.aclose()
        finally:
            await etcd.close()
            await w.close()

    run(main())


def test_watch_batches_are_whole_records(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    """A watch catching up on more than etcd's request limit of records arrives whole
    (fragments reassembled, receive limit raised)."""

    async def main() -> None:
        etcd = await connect(cluster.endpoints)
        try:
            k = Keys(prefix)
            start = (await etcd.range(k.log_prefix)).revision + 1
            for i in range(1, 9):  # 8 x 512 KiB: a 4 MiB catch-up
                await etcd.txn([], [etcd_ops.put(k.log(i), bytes(512 * 1024))])
            seen = 0
            async for batch in etcd.watch(k.log_prefix, k.end(k.log_prefix), start):
                assert isinstance(batch, WatchBatch)
                seen += len(batch.events)
                assert all(len(ev.kv.value) == 512 * 1024 for ev in batch.events)
                if seen == 8:
                    break
        finally:
            await etcd.close()

    run(main())
