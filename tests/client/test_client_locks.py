"""Locks, semaphores, elections, sessions and watches through Client and AsyncClient."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.server.ccserver import ServerProc, inprocess_server, serve  # noqa: F401 (serve is a fixture)

from coordcore import AsyncClient, Client, Leader
from coordcore.errors import Cancelled, LockTimeout, NotLockHolder, SessionExpired

Serve = Callable[..., ServerProc]


def test_async_locks_semaphores_elections(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path, locks=True) as server, \
                AsyncClient(port=server.port) as a, AsyncClient(port=server.port) as b:
            async with a.lock("jobs/42", ttl=10) as grant:
                assert grant.token > 0
                assert await b.try_acquire("jobs/42") is None
                with pytest.raises(LockTimeout):
                    await b.acquire("jobs/42", timeout=0.05)
                info = await b.lock_info("jobs/42")
                assert info.mode == "exclusive" and [h.token for h in info.holders] == [grant.token]
                waiter = asyncio.ensure_future(b.acquire("jobs/42"))
                await asyncio.sleep(0.05)
                assert not waiter.done()
            second = await asyncio.wait_for(waiter, 5)
            assert second.token > grant.token
            await b.release(second)
            with pytest.raises(NotLockHolder):
                await b.release(second)
            # Shared holders coexist.
            r1 = await a.acquire("db", shared=True)
            r2 = await b.acquire("db", shared=True)
            assert (await a.lock_info("db")).mode == "shared" and r2.token > r1.token
            await a.release(r1)
            await b.release(r2)
            # Semaphore with 2 permits.
            async with a.semaphore("pool", 2) as p1, b.semaphore("pool", 2) as p2:
                assert p2.token > p1.token
                with pytest.raises(LockTimeout):
                    async with a.semaphore("pool", 2, timeout=0.05):
                        pass
            # Election: FIFO succession.
            ea, eb = a.election("leader"), b.election("leader")
            lead = await ea.campaign("node-a")
            assert (await eb.leader()).value == b"node-a"  # type: ignore[union-attr]
            follower = asyncio.ensure_future(eb.campaign("node-b"))
            await asyncio.sleep(0.05)
            assert await ea.proclaim("node-a2") > lead.token
            assert (await eb.leader()).value == b"node-a2"  # type: ignore[union-attr]
            await ea.resign()
            took = await asyncio.wait_for(follower, 5)
            assert took.token > lead.token and (await ea.leader()).value == b"node-b"  # type: ignore[union-attr]

    run(main(), timeout=60)


def test_async_cancelled_acquire_leaves_nothing_held(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path, locks=True) as server, \
                AsyncClient(port=server.port) as a, AsyncClient(port=server.port) as b:
            g = await a.acquire("k")
            waiter = asyncio.ensure_future(b.acquire("k"))
            await asyncio.sleep(0.05)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await a.release(g)
            await asyncio.sleep(0.2)
            info = await a.lock_info("k")
            assert info.holders == [] and info.waiters == []
            # A grant whose reply was lost (simulated): reconciliation releases it.
            session = await b._run(b._core.session_for(None, None))
            await b.execute("LOCK.ACQUIRE", "lost", session.credential)
            b._ledger.broke_off(b._ledger.begin(session.id, "lost"), "lost", "lock")
            await b._settle(session)
            assert b._ledger.unsettled(session.id) == []
            assert (await a.lock_info("lost")).holders == []
            # A wait given up with its connection (simulated): reconciliation withdraws it.
            g = await a.acquire("busy")
            stray = asyncio.ensure_future(b.execute_blocking("LOCK.ACQUIRE", "busy", session.credential))
            await asyncio.sleep(0.05)
            assert [w.session for w in (await a.lock_info("busy")).waiters] == [session.id]
            b._ledger.broke_off(b._ledger.begin(session.id, "busy"), "busy", "lock")
            await b._settle(session)
            with pytest.raises(Cancelled):
                await stray
            assert (await a.lock_info("busy")).waiters == []
            await a.release(g)

    run(main(), timeout=60)


def test_async_watch_and_session_expiry(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path, locks=True) as server, AsyncClient(port=server.port) as a:
            seen: list[Any] = []

            events = await a.watch("w/").start()

            async def watcher() -> None:
                async for event in events:
                    seen.append(event)
                    if len(seen) == 4:
                        return

            task = asyncio.ensure_future(watcher())
            async with a.lock("w/1"):
                pass
            async with a.lock("w/2"):
                pass
            await asyncio.wait_for(task, 5)
            assert [(e.kind, e.key) for e in seen] == [("grant", b"w/1"), ("release", b"w/1"),
                                                       ("grant", b"w/2"), ("release", b"w/2")]
            assert [e.revision for e in seen] == sorted(e.revision for e in seen)
            events.close()
            # An election observer sees the leader change.
            observed: list[Any] = []
            election = a.election("obs")

            async def observer() -> None:
                async for leader in election.observe():
                    observed.append(None if leader is None else leader.value)
                    if len(observed) == 3:
                        return

            obs_task = asyncio.ensure_future(observer())
            await asyncio.sleep(0.05)
            await election.campaign("v1")
            await asyncio.sleep(0.05)
            await election.proclaim("v2")
            await asyncio.wait_for(obs_task, 5)
            assert observed == [None, b"v1", b"v2"]
            # A session the client does not keep alive expires server side.
            s = await a.session(ttl=0.3, keepalive=False)
            await asyncio.sleep(0.8)
            with pytest.raises(SessionExpired):
                await s.keepalive()
            assert s.expired and s.done.done()
            # One kept alive outlives its TTL many times over.
            kept = await a.session(ttl=0.3)
            await asyncio.sleep(1.0)
            await kept.keepalive()
            await kept.close()

    run(main(), timeout=60)


def test_sync_client_locks(serve: Serve) -> None:
    srv = serve()
    with Client(port=srv.port) as a, Client(port=srv.port) as b:
        with a.lock("jobs/1", ttl=5) as g:
            assert g.token > 0 and b.try_acquire("jobs/1") is None
            with pytest.raises(LockTimeout):
                b.acquire("jobs/1", timeout=0.05)
        with b.semaphore("pool", 1) as p, pytest.raises(LockTimeout):
            a.acquire_semaphore("pool", 1, timeout=0.05)
        assert p.token > g.token
        e = a.election("leader")
        lead = e.campaign("a")
        assert e.leader() is not None and e.leader().token == lead.token  # type: ignore[union-attr]
        e.resign()
        assert e.leader() is None
        events = b.watch("jobs/", timeout=5)
        with a.lock("jobs/2"):
            pass
        first, second = next(events), next(events)
        assert (first.kind, second.kind) == ("grant", "release") and second.revision > first.revision
        events.close()
        # Threads contend on one lock through one client: never two inside.
        inside: list[int] = []
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                session = a.session(ttl=5)
                for _ in range(10):
                    with a.lock("hot", session=session):
                        assert not inside
                        inside.append(i)
                        time.sleep(0.001)
                        inside.pop()
                session.close()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors


def test_both_clients_offer_watch_timeouts_and_election_observers(serve: Serve, run: Callable[..., Any],
                                                                 tmp_path: Path) -> None:
    # The blocking client: observe an election from another thread while it changes.
    srv = serve()
    with Client(port=srv.port) as a, Client(port=srv.port) as b:
        with pytest.raises(TimeoutError):
            with a.watch("quiet/", timeout=0.05) as events:
                next(events)
        observer = b.election("obs").observe(timeout=5)
        assert next(observer) is None  # nobody leads yet
        election = a.election("obs")
        lead = election.campaign("v1")
        assert next(observer) == Leader(lead.session, b"v1", lead.token)
        election.proclaim("v2")
        assert next(observer) == Leader(lead.session, b"v2", lead.token)
        election.resign()
        assert next(observer) is None
        observer.close()
        # The blocking grant and the asyncio one are the same type, with the key as bytes.
        with a.lock("jobs/1") as g:
            assert type(g).__module__ == "coordcore.types" and g.key == b"jobs/1" and g.kind == "lock"

    async def main() -> None:
        async with inprocess_server(tmp_path, locks=True) as server, AsyncClient(port=server.port) as c:
            with pytest.raises(TimeoutError):
                async with c.watch("quiet/", timeout=0.05) as events:
                    await events.__anext__()
            async with c.semaphore("pool", 2) as g:
                assert type(g).__module__ == "coordcore.types" and g.key == b"pool" and g.kind == "semaphore"

    run(main(), timeout=30)
