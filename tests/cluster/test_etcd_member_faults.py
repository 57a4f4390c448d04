"""etcd members dying under a writer and a follower: no record lost, none doubled, none
out of order. (A member paused mid-append is in test_etcd_unknown_outcome.py.)"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from tests.cluster.etcd_support import connect, replayed, writer

from coordcore.cluster import EtcdLog, EtcdUnavailable, Keys
from coordcore.cluster.testing import EtcdCluster

Run = Callable[..., Any]


def test_writer_carries_on_after_an_etcd_member_is_killed(run: Run, healthy: EtcdCluster, prefix: str) -> None:
    cluster = healthy

    async def main() -> None:
        w = await writer(cluster.endpoints, prefix, ttl=6.0, timeout=1.0, resolve_timeout=20.0)
        try:
            for i in range(1, 4):
                assert await w.log.append(b"r%d" % i) == i
            victim = cluster.endpoints.index(w.etcd.current_endpoint)
            cluster.kill(victim)
            for i in range(4, 7):
                assert await w.log.append(b"r%d" % i) == i
            cluster.restart(victim)
        finally:
            await w.close()
        seen = await replayed([cluster.endpoints[victim]], prefix)  # the restarted member has it all
        assert seen.records == [(i, b"r%d" % i) for i in range(1, 7)]

    run(main(), timeout=60)


def test_follower_carries_on_when_its_member_is_killed(run: Run, healthy: EtcdCluster, prefix: str) -> None:
    cluster = healthy

    async def main() -> None:
        w = await writer(cluster.endpoints, prefix, ttl=6.0, timeout=1.0, resolve_timeout=20.0)
        # The follower starts on another member than the writer's.
        others = [e for e in cluster.endpoints if e != w.etcd.current_endpoint]
        etcd = await connect(others + [w.etcd.current_endpoint], timeout=1.0)
        got: list[tuple[int, bytes]] = []

        async def tail() -> None:
            async for item in EtcdLog(etcd, Keys(prefix)).follow(1):
                got.append(item)

        task = asyncio.create_task(tail())
        try:
            for i in range(1, 4):
                await w.log.append(b"r%d" % i)
            while len(got) < 3:
                await asyncio.sleep(0.02)
            victim = cluster.endpoints.index(etcd.current_endpoint)
            cluster.kill(victim)  # the follower's watch breaks; it re-reads elsewhere
            for i in range(4, 9):
                await w.log.append(b"r%d" % i)
            async with asyncio.timeout(20):
                while len(got) < 8:
                    await asyncio.sleep(0.02)
            assert etcd.current_endpoint != cluster.endpoints[victim]
            assert got == [(i, b"r%d" % i) for i in range(1, 9)]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await etcd.close()
            await w.close()

    run(main(), timeout=60)


def test_watch_on_a_member_without_leader_fails_instead_of_going_silent(run: Run, healthy: EtcdCluster,
                                                                        prefix: str) -> None:
    """The require-leader metadata: with two of three members paused, the third has no
    Raft leader; a watch on it is cancelled ("no leader") rather than left open."""
    cluster = healthy

    async def main() -> None:
        etcd = await connect([cluster.endpoints[2]])
        try:
            key = Keys(prefix).log_prefix
            start = (await etcd.range(key)).revision + 1

            async def watch() -> None:
                async for _ in etcd.watch(key, b"", start):
                    pass

            task = asyncio.create_task(watch())
            await asyncio.sleep(0.3)
            cluster.pause(0)
            cluster.pause(1)
            try:
                with pytest.raises(EtcdUnavailable, match="no leader"):
                    await asyncio.wait_for(task, 20)
            finally:
                cluster.resume(0)
                cluster.resume(1)
        finally:
            await etcd.close()

    run(main(), timeout=60)
