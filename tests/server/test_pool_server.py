"""Quota pools end to end through a live server on loopback: POOL.* with redis-py, fair
shares reached by AsyncClient workers, preemption with the give-back callback and
revocation, a revoked holder fenced off, and clear errors for bad input."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
import redis
from tests.server.ccserver import ServerProc, serve  # noqa: F401 (serve is a fixture)

from coordcore import AsyncClient, Client
from coordcore.client._common import CapacityLease
from coordcore.errors import NotLockHolder
from coordcore.locks.fencing import FencedResource

Serve = Callable[..., ServerProc]


def test_pool_commands_and_errors(serve: Serve) -> None:
    srv = serve()
    r = redis.Redis(port=srv.port, protocol=3)
    s = r.execute_command("SESSION.OPEN", 10)
    with pytest.raises(redis.ResponseError, match="^NOTFOUND"):
        r.execute_command("POOL.ACQUIRE", "gpu", s, "a", 1)
    assert r.execute_command("POOL.DEFINE", "gpu", 4, "GRACE", 100) == b"OK"
    assert r.execute_command("POOL.TENANT", "gpu", "a", "WEIGHT", 2, "MAX", 3) == b"OK"
    with pytest.raises(redis.ResponseError, match="^BADARG"):
        r.execute_command("POOL.ACQUIRE", "gpu", s, "a", 4)  # over the tenant's maximum
    with pytest.raises(redis.ResponseError, match="^BADARG"):
        r.execute_command("POOL.TENANT", "gpu", "b", "BAND", 9)
    with pytest.raises(redis.ResponseError, match="^BADARG"):
        r.execute_command("POOL.DEFINE", "gpu", 4, "GRACE")
    with pytest.raises(redis.ResponseError, match="^BADARG"):
        r.execute_command("POOL.ACQUIRE", "gpu", s, "a", "x")
    t = r.execute_command("POOL.ACQUIRE", "gpu", s, "a", 2)
    assert r.execute_command("POOL.TRY", "gpu", s, "a", 2) is None  # the maximum is 3
    assert r.execute_command("POOL.RESIZE", "gpu", s, t, 3) == 1
    info = r.execute_command("POOL.INFO", "gpu")
    assert info[b"capacity"] == 4 and info[b"held"] == 3 and info[b"tenants"][0][b"held"] == 3
    assert r.execute_command("POOL.RELEASE", "gpu", s, t) == b"OK"
    with pytest.raises(redis.ResponseError, match="^NOTHOLDER"):
        r.execute_command("POOL.RELEASE", "gpu", s, t)
    assert r.execute_command("POOL.INFO", "nope") is None
    assert r.info("locks")["pools"] == 1
    assert r.execute_command("PING") is True  # the connection survived every error (redis-py maps PONG)
    with Client(port=srv.port) as c:  # the sync client
        with c.capacity("gpu", 1, tenant="a") as lease:
            assert c.pool_info("gpu")["held"] == 1 and lease.token > t  # type: ignore[index]
        assert c.pool_info("gpu")["held"] == 0  # type: ignore[index]
        # Its give-back callback: an urgent request preempts the lease; the holder leaves.
        r.execute_command("POOL.TENANT", "gpu", "u", "BAND", 3)
        asked = threading.Event()
        with c.capacity("gpu", 3, tenant="a", on_giveback=lambda lease: asked.set()):
            s2 = r.execute_command("SESSION.OPEN", 10)
            waiting = redis.Redis(port=srv.port, protocol=3)
            th = threading.Thread(target=lambda: waiting.execute_command("POOL.ACQUIRE", "gpu", s2, "u", 4))
            th.start()
            assert asked.wait(5)
        th.join(5)
        assert not th.is_alive() and c.pool_info("gpu")["tenants"][1]["held"] == 4  # type: ignore[index]


def test_tenants_1_2_1_reach_2_4_2_and_a_preempted_holder_is_revoked_and_fenced(serve: Serve, run: Callable[..., object]) -> None:
    srv = serve()
    r = redis.Redis(port=srv.port, protocol=3)
    r.execute_command("POOL.DEFINE", "gpu", 8, "PATIENCE", 65535)
    for name, w in (("a", 1), ("b", 2), ("c", 1)):
        r.execute_command("POOL.TENANT", "gpu", name, "WEIGHT", w)
    r.execute_command("POOL.DEFINE", "lic", 2, "GRACE", 300)
    r.execute_command("POOL.TENANT", "lic", "batch", "BAND", 0)
    r.execute_command("POOL.TENANT", "lic", "urgent", "BAND", 2)

    async def fair() -> None:
        async with AsyncClient(port=srv.port) as client:
            stop = asyncio.Event()

            async def worker(tenant: str) -> None:
                while not stop.is_set():
                    async with client.capacity("gpu", 1, tenant=tenant):
                        await asyncio.sleep(0.01)

            # "a" asks first and alone; the others join while it holds everything.
            tasks = [asyncio.ensure_future(worker("a")) for _ in range(8)]
            await asyncio.sleep(0.2)
            tasks += [asyncio.ensure_future(worker(t)) for t in "bc" for _ in range(8)]
            start, converged, late = time.monotonic(), None, []
            while time.monotonic() - start < 2.0:
                info = await client.pool_info("gpu")
                assert info is not None
                held = tuple(t["held"] for t in info["tenants"])
                if converged is None and held == (2, 4, 2):
                    converged = time.monotonic() - start
                if time.monotonic() - start > 1.0:
                    late.append(held)
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.gather(*tasks)
            assert converged is not None and converged < 1.0
            assert late and all(abs(h - want) <= 1 for held in late for h, want in zip(held, (2, 4, 2))), late
            print(f"1:2:1 on 8 units converged to 2:4:2 in {converged * 1000:.0f} ms through the server")

    async def preempt() -> None:
        async with AsyncClient(port=srv.port) as low_c, AsyncClient(port=srv.port) as high_c:
            store: FencedResource[str] = FencedResource()
            asked: list[CapacityLease] = []
            async with low_c.capacity("lic", 2, tenant="batch", on_giveback=asked.append) as low:
                store.write("model", low.token, "batch")
                t0 = time.monotonic()
                high = await asyncio.wait_for(high_c.acquire_capacity("lic", 1, tenant="urgent"), 5)
                waited = time.monotonic() - t0
                assert asked == [low]  # the give-back event reached the holder's callback
                assert 0.25 <= waited < 3  # it ignored it: revoked after the 300 ms grace
                store.write("model", high.token, "urgent")
                with pytest.raises(NotLockHolder):
                    store.write("model", low.token, "batch again")
            # Leaving the block after the revocation is quiet (the release is refused).
            info = await high_c.pool_info("lic")
            assert info is not None and info["held"] == 1

    run(fair())
    run(preempt())
