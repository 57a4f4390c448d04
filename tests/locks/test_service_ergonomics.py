"""What users of kazoo, etcd and Redisson expect of the embedded LockService: a nested
acquire that fails at once, reentrant locks, noticing a lost lock, renewal that resets
the TTL, a maximum lifetime, and argument errors that name the argument."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from coordcore.errors import AlreadyHeld, LockConflict, SessionExpired, WrongType
from coordcore.locks.service import LockService, ManualClock

Run = Callable[..., Any]


def test_a_nested_exclusive_acquire_fails_at_once(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            s, other = await svc.open_session(10), await svc.open_session(10)
            async with svc.lock("a", s) as g:
                with pytest.raises(AlreadyHeld, match="already holds"):
                    async with svc.lock("a", s):  # no timeout: it used to wait forever
                        pass
                with pytest.raises(AlreadyHeld):
                    await svc.try_acquire("a", s, shared=True)
                waiting = asyncio.ensure_future(svc.acquire("a", other))
                await asyncio.sleep(0.01)
                with pytest.raises(AlreadyHeld):  # it waits for it: waiting again is refused too
                    await svc.acquire("a", other, timeout=5)
                assert [c.token for c in svc.info("a").holders] == [g.token]  # type: ignore[union-attr]
            await svc.release(await waiting)
            # Shared beside shared is fine; shared to exclusive is no upgrade.
            r1 = await svc.acquire("r", s, shared=True)
            r2 = await svc.acquire("r", s, shared=True)
            with pytest.raises(AlreadyHeld, match="upgrade"):
                await svc.acquire("r", s)
            assert issubclass(AlreadyHeld, LockConflict) and AlreadyHeld.code == "HELD"
            await svc.release(r1)
            await svc.release(r2)

    run(main(), timeout=10)


def test_reentrant_locks_count_holds_over_one_grant(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            s, other = await svc.open_session(10), await svc.open_session(10)
            async with svc.lock("a", s, reentrant=True) as outer:
                async with s.lock("a", reentrant=True) as inner:
                    assert inner == outer
                    assert await svc.acquire("a", s, shared=True, reentrant=True) == outer  # exclusive covers it
                    await svc.release(outer)
                assert s.holds(outer) and await svc.try_acquire("a", other) is None  # still held
            assert not s.holds(outer) and svc.info("a") is None
            # A shared reentrant hold is no upgrade either.
            async with svc.lock("r", s, shared=True, reentrant=True):
                with pytest.raises(AlreadyHeld):
                    await svc.acquire("r", s, reentrant=True)

    run(main())


def test_a_lost_session_is_noticed(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with LockService.in_memory(tick_interval=0.01) as svc:
            heard: list[str] = []
            s = await svc.open_session(0.2, keepalive=False)
            s.on_lost(heard.append)
            unhooked: list[str] = []
            s.on_lost(unhooked.append)()  # unregistered at once
            g = await svc.acquire("a", s)
            assert s.holds(g)
            with caplog.at_level(logging.INFO, logger="coordcore.locks.service"):
                assert await asyncio.wait_for(asyncio.shield(s.done), 5) == "expired"
            assert heard == ["expired"] and unhooked == [] and not s.holds(g)
            assert any("session %d expired" % s.id in r.getMessage() for r in caplog.records)
            late: list[str] = []
            s.on_lost(late.append)
            assert late == ["expired"]  # registered after the end: called at once
            closing = await svc.open_session(5)
            closing.on_lost(heard.append)
            await closing.close()
            assert heard == ["expired", "closed"] and await closing.done == "closed"

    run(main())


def test_cancel_on_loss_cancels_the_body(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            s = await svc.open_session(5)
            ran: list[str] = []

            async def body() -> None:
                async with svc.lock("a", s, cancel_on_loss=True):
                    try:
                        await asyncio.sleep(30)
                    except asyncio.CancelledError:
                        ran.append("cancelled")
                        raise

            task = asyncio.ensure_future(body())
            await asyncio.sleep(0.02)
            await s.close()
            with pytest.raises(SessionExpired, match="closed"):
                await asyncio.wait_for(task, 5)
            assert ran == ["cancelled"] and svc.info("a") is None
            # Without a loss the block is a plain lock block.
            s2 = await svc.open_session(5)
            async with s2.lock("a", cancel_on_loss=True) as g:
                assert s2.holds(g)
            assert svc.info("a") is None

    run(main())


def test_keepalive_resets_the_ttl_and_never_adds(run: Run) -> None:
    async def main() -> None:
        clock = ManualClock(1000.0)
        async with LockService.in_memory(clock=clock) as svc:
            s = await svc.open_session(10, keepalive=False)
            first = await svc.keepalive(s)
            assert first == await svc.keepalive(s) == await svc.keepalive(s) == svc.time_ms + 10_000
            clock.advance(4)
            assert await svc.keepalive(s) == svc.time_ms + 10_000 == first + 4_000

    run(main())


def test_a_session_past_its_max_lifetime_is_not_kept_alive(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory(tick_interval=0.01) as svc:
            s = await svc.open_session(0.2, max_lifetime=0.3)  # kept alive in the background
            await s.keepalive()
            await asyncio.sleep(0.35)
            with pytest.raises(SessionExpired, match="max lifetime"):
                await s.keepalive()
            assert await asyncio.wait_for(asyncio.shield(s.done), 2) == "expired"
            with pytest.raises(WrongType, match="max_lifetime"):
                await svc.open_session(1, max_lifetime="5")  # type: ignore[arg-type]

    run(main())


def test_wrong_argument_types_are_coordcore_errors_that_name_them(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            s = await svc.open_session(5)
            for call, name in ((lambda: svc.acquire("k", s, timeout="10"), "timeout"),  # type: ignore[arg-type]
                               (lambda: svc.acquire(None, s), "key"),  # type: ignore[arg-type]
                               (lambda: svc.acquire(123, s), "key"),  # type: ignore[arg-type]
                               (lambda: svc.open_session("10"), "ttl"),  # type: ignore[arg-type]
                               (lambda: svc.acquire("k", s, reentrant=1), "reentrant")):  # type: ignore[arg-type]
                with pytest.raises(WrongType, match=name):
                    await call()
            with pytest.raises(WrongType, match="prefix"):
                svc.watch(5)  # type: ignore[arg-type]

    run(main())
