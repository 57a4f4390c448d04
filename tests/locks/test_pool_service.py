"""Quota pools through the embedded LockService: fair shares under contention,
preemption with give-back and revocation, fencing of a revoked holder. Every async test
runs on asyncio and uvloop."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coordcore.errors import BadArgument, CoordcoreError, LimitExceeded, LockTimeout, NotLockHolder
from coordcore.locks import FencedResource
from coordcore.locks.pools import Lease
from coordcore.locks.service import LockService, ManualClock

Run = Callable[..., Any]


def test_three_tenants_weighted_1_2_1_on_8_units_converge_to_2_4_2(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory(tick_interval=0.01) as svc:
            await svc.pools.define("gpu", 8, patience=65535)
            for name, w in (("a", 1), ("b", 2), ("c", 1)):
                await svc.pools.define_tenant("gpu", name, weight=w)
            s = await svc.open_session(ttl=30)
            stop = asyncio.Event()

            async def worker(tenant: str) -> None:
                while not stop.is_set():
                    async with svc.capacity("gpu", 1, s, tenant=tenant):
                        await asyncio.sleep(0.005)

            # A burst from "a" first: it takes all 8 units before the others ask.
            first = [await svc.pools.acquire("gpu", 1, s, tenant="a") for _ in range(8)]
            tasks = [asyncio.ensure_future(worker(t)) for t in "abc" for _ in range(8)]
            await asyncio.sleep(0.02)
            for lease in first:
                await svc.pools.release(lease)
            start = time.monotonic()
            converged = None
            samples = []
            while time.monotonic() - start < 1.5:
                info = svc.pools.info("gpu")
                assert info is not None and info.held <= 8
                held = tuple(t.held for t in info.tenants)
                samples.append(held)
                if converged is None and held == (2, 4, 2):
                    converged = time.monotonic() - start
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*tasks)
            assert converged is not None and converged < 1.0, samples[:20]
            late = samples[len(samples) // 2:]
            assert all(abs(h - want) <= 1 for held in late for h, want in zip(held, (2, 4, 2))), late
            print(f"converged to 2:4:2 in {converged * 1000:.0f} ms")

    run(main())


def test_preemption_asks_back_then_revokes_and_the_stale_token_is_fenced(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory(tick_interval=0.01) as svc:
            await svc.pools.define("gpu", 4, grace=0.2)
            await svc.pools.define_tenant("gpu", "batch", band=0)
            await svc.pools.define_tenant("gpu", "urgent", band=2)
            low_s, high_s = await svc.open_session(ttl=30), await svc.open_session(ttl=30)
            asked: list[Lease] = []
            low = await svc.pools.acquire("gpu", 4, low_s, tenant="batch", on_giveback=asked.append)
            store: FencedResource[str] = FencedResource()
            store.write("model", low.token, "batch-1")
            t0 = time.monotonic()
            high_task = asyncio.ensure_future(svc.pools.acquire("gpu", 2, high_s, tenant="urgent"))
            await asyncio.wait_for(low.giveback.wait(), 2)
            assert asked == [low] and not low.revoked.is_set()  # the holder ignores it
            high = await asyncio.wait_for(high_task, 2)
            waited = time.monotonic() - t0
            assert low.revoked.is_set() and 0.18 <= waited < 1.5  # the grace (ms clock granularity aside)
            assert high.token > low.token
            store.write("model", high.token, "urgent-1")
            with pytest.raises(NotLockHolder):
                store.write("model", low.token, "batch-2")  # the revoked holder is refused
            assert store.read("model") == "urgent-1"
            info = svc.pools.info("gpu")
            assert info is not None and [(x.tenant, x.units) for x in info.leases] == [(b"urgent", 2)]

    run(main())


def test_a_cooperative_holder_gives_back_before_the_grace(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory(tick_interval=0.01) as svc:
            await svc.pools.define("gpu", 2, grace=10)
            await svc.pools.define_tenant("gpu", "batch", band=0)
            await svc.pools.define_tenant("gpu", "urgent", band=1)
            s = await svc.open_session(ttl=30)
            async with svc.capacity("gpu", 2, s, tenant="batch") as low:
                t = asyncio.ensure_future(svc.pools.acquire("gpu", 1, s, tenant="urgent"))
                await asyncio.wait_for(low.giveback.wait(), 2)
            high = await asyncio.wait_for(t, 2)  # long before the 10 s grace
            assert not low.revoked.is_set() and high.units == 1

    run(main())


def test_bad_requests_give_clear_errors(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            s = await svc.open_session(ttl=30)
            with pytest.raises(CoordcoreError, match="no such pool"):
                await svc.pools.acquire("nope", 1, s, tenant="a")
            assert not svc.pools._watchers  # no watch kept for a pool that does not exist
            await svc.pools.define("gpu", 2)
            with pytest.raises(CoordcoreError, match="no such tenant"):
                await svc.pools.acquire("gpu", 1, s, tenant="a")
            await svc.pools.define_tenant("gpu", "a", maximum=1)
            with pytest.raises(BadArgument):
                await svc.pools.acquire("gpu", 2, s, tenant="a")  # over its maximum: never grantable
            with pytest.raises(BadArgument):
                await svc.pools.define("gpu", 0)
            lease = await svc.pools.acquire("gpu", 1, s, tenant="a")
            with pytest.raises(LockTimeout):
                await svc.pools.acquire("gpu", 1, s, tenant="a", timeout=0)
            with pytest.raises(LockTimeout):
                await svc.pools.acquire("gpu", 1, s, tenant="a", timeout=0.05)
            await svc.pools.release(lease)
            assert await svc.pools.resize(await svc.pools.acquire("gpu", 1, s, tenant="a"), 1)
            await svc.close_session(s)
            info = svc.pools.info("gpu")
            assert info is not None and info.leases == () and info.waits == ()  # all returned with the session
            # Pool leases and waits count toward the session's bound, like locks.
            svc.set_limits(max_contenders_per_session=3)
            await svc.pools.define("big", 10)
            await svc.pools.define_tenant("big", "a")
            s2 = await svc.open_session(ttl=30)
            for _ in range(3):
                await svc.pools.acquire("big", 1, s2, tenant="a", timeout=0)
            with pytest.raises(LimitExceeded):
                await svc.pools.acquire("big", 1, s2, tenant="a")

    run(main())


def test_pools_survive_a_restart_from_the_log_and_from_a_snapshot(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with LockService.open(tmp_path, clock=clock) as svc:
            await svc.pools.define("gpu", 4, grace=1)
            await svc.pools.define_tenant("gpu", "batch")
            await svc.pools.define_tenant("gpu", "urgent", band=1)
            s = await svc.open_session(ttl=60, keepalive=False)
            low = await svc.pools.acquire("gpu", 3, s, tenant="batch")
            await svc.snapshot()  # the pool section goes into a snapshot ...
            waiting = asyncio.ensure_future(svc.pools.acquire("gpu", 2, s, tenant="urgent"))
            await asyncio.sleep(0.05)  # ... and the wait and the give-back mark into the log after it
            info = svc.pools.info("gpu")
            assert info is not None and info.leases[0].giveback_deadline_ms and len(info.waits) == 1
            waiting.cancel()
        async with LockService.open(tmp_path, clock=clock) as svc:
            after = svc.pools.info("gpu")
            assert after is not None and after.leases == info.leases and after.tenants == info.tenants
            clock.advance(2)  # past the grace: the lease is revoked at the next batch
            await svc.tick()
            left = svc.pools.info("gpu")
            assert left is not None and all(x.token != low.token for x in left.leases)

    run(main())
