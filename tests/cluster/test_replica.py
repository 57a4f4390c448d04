"""The follower's Replica in-process against a real 3-member etcd and a real writer (a
LockService on an EtcdLog under a leadership): byte-equal machines at the same record,
a reload from etcd's snapshot when the records it needs were truncated (never a jump),
and a damaged local snapshot ignored."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.etcd_support import connect

from coordcore.cluster import Election, EtcdLog, Keys, Session
from coordcore.cluster.replica import LOCAL_SNAPSHOT, Replica
from coordcore.cluster.testing import EtcdCluster
from coordcore.errors import ServiceClosed
from coordcore.locks.service import LockService

Run = Callable[..., Any]


async def caught_up(replica: Replica, svc: LockService, store: EtcdLog, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (replica.ready and replica.index == store.next_index - 1 and replica.revision == svc.revision):
        assert loop.time() < deadline, (replica.index, store.next_index - 1)
        await asyncio.sleep(0.02)


async def some_work(svc: LockService, tag: str) -> None:
    s = await svc.open_session(ttl=60, keepalive=False)
    for i in range(3):
        await svc.acquire(f"{tag}/{i}", s)
    await svc.release(await svc.acquire(f"{tag}/x", s))


def test_replica_matches_the_writer_and_reloads_when_truncated_past(run: Run, cluster: EtcdCluster,
                                                                    prefix: str, tmp_path: Path) -> None:
    async def main() -> None:
        etcd = await connect(cluster.endpoints)
        keys = Keys(prefix)
        session = await Session.open(etcd, 5.0)
        store = EtcdLog(etcd, keys)
        store.lead(await Election(etcd, keys, session, "127.0.0.1:1").campaign())
        svc = await LockService.open_store(store, count_downtime=False)
        replica = Replica(etcd, keys, tmp_path)
        task = asyncio.ensure_future(replica.run())
        try:
            await some_work(svc, "a")
            await caught_up(replica, svc, store)
            assert replica.loaded_from == "empty"
            assert replica.state_snapshot() == svc.state_snapshot()  # byte for byte
            watch = replica.watch(b"")

            # Stopped (a follower away), while the writer snapshots and truncates the
            # log below it: going on from its position would skip records. It must
            # notice the gap and load etcd's snapshot instead.
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            stale = replica.index
            await some_work(svc, "b")
            await svc.snapshot()
            await some_work(svc, "c")
            task = asyncio.ensure_future(replica.run())
            await caught_up(replica, svc, store)
            covered = int(replica.loaded_from.split(":")[1])
            assert replica.loaded_from.startswith("etcd:") and covered > stale
            assert replica.state_snapshot() == svc.state_snapshot()
            with pytest.raises(ServiceClosed):  # its events had a gap: it must re-read
                async for _ in watch:
                    pass

            # The local snapshot: saved (by a stopped replica), then resumed from.
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await replica.save()
            saved = replica.index
            again = Replica(etcd, keys, tmp_path)
            t2 = asyncio.ensure_future(again.run())
            try:
                await some_work(svc, "d")
                await caught_up(again, svc, store)
                assert again.loaded_from == f"local:{saved}"
                assert again.state_snapshot() == svc.state_snapshot()
            finally:
                t2.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await t2

            # A damaged local snapshot is ignored (etcd's is loaded), never trusted.
            path = tmp_path / LOCAL_SNAPSHOT
            data = bytearray(path.read_bytes())
            data[-1] ^= 0xFF
            path.write_bytes(bytes(data))
            third = Replica(etcd, keys, tmp_path)
            t3 = asyncio.ensure_future(third.run())
            try:
                await caught_up(third, svc, store)
                assert third.loaded_from.startswith("etcd:")
                assert third.state_snapshot() == svc.state_snapshot()
            finally:
                t3.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await t3
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await svc.close()
            await session.close()
            await etcd.close()

    run(main(), timeout=60)
