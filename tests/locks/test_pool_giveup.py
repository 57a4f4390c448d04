"""Capacity acquires whose caller gives up (a cancelled task, the grant still in flight)
through the embedded LockService: whatever the machine granted meanwhile is given back,
so no units stay with the session. Every async test runs on asyncio and uvloop."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordcore.locks.service import LockService

Run = Callable[..., Any]


async def _quiet(svc: LockService) -> None:
    """Let background withdrawals run and commit."""
    for _ in range(5):
        await svc.pipeline.tick()
        await asyncio.sleep(0)


async def _cancel_after(svc: LockService, hops: int, start: Callable[[], Any]) -> str:
    """Start an acquire, let the loop run ``hops`` times, cancel it; what it came to."""
    task = asyncio.ensure_future(start())
    for _ in range(hops):
        await asyncio.sleep(0)
    task.cancel()
    try:
        lease = await task
    except asyncio.CancelledError:
        return "cancelled"
    await svc.pools.release(lease)  # answered before the cancellation: the caller's to release
    return "granted"


async def _exercise(svc: LockService) -> set[str]:
    await svc.pools.define("gpu", 4)
    await svc.pools.define_tenant("gpu", "a")
    s = await svc.open_session(ttl=30)
    other = await svc.open_session(ttl=30)
    seen: set[str] = set()
    for hops in range(12):
        # Free units: a direct grant, cancelled while queued, in its batch, or after.
        seen.add(await _cancel_after(svc, hops, lambda: svc.pools.acquire("gpu", 2, s, tenant="a")))
        await _quiet(svc)
        info = svc.pools.info("gpu")
        assert info is not None and info.held == 0 and info.waits == (), (hops, info)
        # A wait granted in the same batch as its cancellation (the holder's release is
        # queued first, the cancellation lands while that batch is being written).
        full = await svc.pools.acquire("gpu", 4, other, tenant="a")
        task = asyncio.ensure_future(svc.pools.acquire("gpu", 2, s, tenant="a"))
        await _quiet(svc)
        release = asyncio.ensure_future(svc.pools.release(full))
        for _ in range(hops):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await svc.pools.release(await task)
            seen.add("granted")
        except asyncio.CancelledError:
            seen.add("cancelled")
        await release
        await _quiet(svc)
        info = svc.pools.info("gpu")
        assert info is not None and info.held == 0 and info.waits == (), (hops, info)
    return seen


def test_a_cancelled_acquire_leaves_no_units_held_in_memory(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            assert "cancelled" in await _exercise(svc)
    run(main())


def test_a_cancelled_acquire_leaves_no_units_held_with_a_log(run: Run, tmp_path: Path) -> None:
    # A log on disk: batches take a while to write, so the grant is in flight longer.
    async def main() -> None:
        async with LockService.open(tmp_path / "log", durability="unsafe-no-fsync") as svc:
            assert "cancelled" in await _exercise(svc)
    run(main())
