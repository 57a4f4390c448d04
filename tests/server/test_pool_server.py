"""Quota pools end to end through a live server on loopback: POOL.* with redis-py, fair
shares reached by AsyncClient workers, preemption with the give-back callback and
revocation, a revoked holder fenced off, and clear errors for bad input."""
from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import hiredis
import pytest
import redis
from tests.server.ccserver import Raw, ServerProc, serve  # noqa: F401 (serve is a fixture)

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


def _pack(*args: Any) -> bytes:
    return hiredis.pack_command(args)  # type: ignore[no-any-return]


def _pool_state(raw: Raw, pool: str) -> tuple[int, int, list[int]]:
    """(held, waiting, lease tokens) from POOL.INFO (a RESP2 flat map)."""
    info = raw.command("POOL.INFO", pool)
    m = dict(zip(info[::2], info[1::2]))
    tokens = [dict(zip(x[::2], x[1::2]))[b"token"] for x in m[b"leases"]]
    return m[b"held"], m[b"waiting"], tokens


def test_a_retried_pool_request_with_its_reqid_answers_the_first_outcome(serve: Serve) -> None:
    srv = serve()
    with Raw(srv.port) as a:
        s = a.command("SESSION.OPEN", 30)
        assert a.command("POOL.DEFINE", "gpu", 4) == b"OK"
        assert a.command("POOL.TENANT", "gpu", "a") == b"OK"
        t = a.command("POOL.ACQUIRE", "gpu", s, "a", 3, "REQID", 7)
        assert isinstance(t, int)
        assert a.command("POOL.ACQUIRE", "gpu", s, "a", 3, "REQID", 7) == t  # the retry: the same lease
        assert _pool_state(a, "gpu") == (3, 0, [t])                          # held once
        assert a.command("POOL.TRY", "gpu", s, "a", 2, "REQID", 8) is None   # busy...
        assert a.command("POOL.TRY", "gpu", s, "a", 2, "REQID", 8) is None   # ...and its retry says so too
        assert a.command("POOL.RESIZE", "gpu", s, t, 2, "REQID", 9) == 1
        assert a.command("POOL.RESIZE", "gpu", s, t, 2, "REQID", 9) == 1
        assert a.command("POOL.RELEASE", "gpu", s, t, "REQID", 10) == b"OK"
        assert a.command("POOL.RELEASE", "gpu", s, t, "REQID", 10) == b"OK"  # not NOTHOLDER: a retry
        assert str(a.command("POOL.RELEASE", "gpu", s, t, "REQID", 11)).startswith("NOTHOLDER")
        assert _pool_state(a, "gpu") == (0, 0, [])
        for bad in (["REQID", 0], ["REQID", "x"], ["REQID"], ["REQID", 1, "REQID"], ["TOKEN", 1]):
            err = a.command("POOL.RELEASE", "gpu", s, t, *bad)
            assert str(err).startswith("BADARG"), (bad, err)
        assert str(a.command("POOL.ACQUIRE", "gpu", s, "a", 1, "REQID", -1)).startswith("BADARG")
        assert a.command("PING") == b"PONG"


def test_a_connection_killed_mid_acquire_is_withdrawn_and_its_retry_asks_again(serve: Serve) -> None:
    import socket
    import struct

    srv = serve()
    with Raw(srv.port) as a:
        s1, s2 = a.command("SESSION.OPEN", 30), a.command("SESSION.OPEN", 30)
        a.command("POOL.DEFINE", "gpu", 4)
        a.command("POOL.TENANT", "gpu", "a")
        big = a.command("POOL.ACQUIRE", "gpu", s1, "a", 4)
        b = Raw(srv.port)
        b.send(_pack("POOL.ACQUIRE", "gpu", s2, "a", 2, "REQID", 5))
        deadline = time.monotonic() + 5
        while _pool_state(a, "gpu")[1] != 1:
            assert time.monotonic() < deadline, "the acquire never queued"
            time.sleep(0.01)
        b.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        b.close()  # a reset: the client vanished mid-acquire
        while _pool_state(a, "gpu")[1] != 0:  # the server withdraws the wait
            assert time.monotonic() < deadline, "the vanished client's wait was never withdrawn"
            time.sleep(0.01)
        with Raw(srv.port) as c:
            err = c.command("POOL.ACQUIRE", "gpu", s2, "a", 2, "REQID", 5)  # the retry: that wait ended
            assert str(err).startswith("NOTFOUND"), err
            c.send(_pack("POOL.ACQUIRE", "gpu", s2, "a", 2, "REQID", 6))  # asks again, new REQID
            while _pool_state(a, "gpu")[1] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert a.command("POOL.RELEASE", "gpu", s1, big) == b"OK"
            t = c.read()
            assert isinstance(t, int) and t > big
            assert _pool_state(a, "gpu") == (2, 0, [t])


@pytest.mark.parametrize("transport", ["sync", "async"])
def test_a_client_waiting_for_capacity_rides_out_a_server_kill(serve: Serve, tmp_path: Any, transport: str) -> None:
    """kill -9 while a client waits for units: it reconnects and retries with the same
    REQID (re-attached to its wait, which the log kept, or answered the lease granted
    meanwhile); it gets one lease, and the pool holds its units once."""
    data = tmp_path / "d"
    srv = serve(data=data)
    port = srv.port
    r = redis.Redis(port=port)
    r.execute_command("POOL.DEFINE", "gpu", 4)
    r.execute_command("POOL.TENANT", "gpu", "a")
    r.close()
    with Client(port=port) as holder:
        big = holder.acquire_capacity("gpu", 4, tenant="a", ttl=30)
        got: list[CapacityLease] = []
        if transport == "sync":
            waiter = Client(port=port)
            th = threading.Thread(target=lambda: got.append(waiter.acquire_capacity("gpu", 2, tenant="a", ttl=30,
                                                                                    timeout=30)))
        else:
            async def wait_async() -> None:
                async with AsyncClient(port=port) as aw:
                    got.append(await aw.acquire_capacity("gpu", 2, tenant="a", ttl=30, timeout=30))
                    await asyncio.sleep(1.0)  # keep the session (and its lease) while the test looks
            th = threading.Thread(target=lambda: asyncio.run(wait_async()))
        th.start()
        deadline = time.monotonic() + 10
        while holder.pool_info("gpu")["waiting"] != 1:  # type: ignore[index]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        srv.stop(signal.SIGKILL)
        serve(data=data, port=port)
        holder.release_capacity(big)  # granted now, maybe before the waiter is back
        th.join(20) if transport == "sync" else None
        while not got:
            assert time.monotonic() < deadline + 10, "the waiter never got its lease"
            time.sleep(0.02)
        info = holder.pool_info("gpu")
        assert info is not None and info["held"] == 2 and info["waiting"] == 0
        assert [x["token"] for x in info["leases"]] == [got[0].token] and got[0].token > big.token
        if transport == "sync":
            waiter.release_capacity(got[0])
            waiter.close()
            assert holder.pool_info("gpu")["held"] == 0  # type: ignore[index]
        th.join(20)
