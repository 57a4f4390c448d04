"""The lock semantics users expect, through both clients against a live server: a nested
acquire fails at once (also on the wire), reentrant locks, a lost session is noticed,
keep-alives reset the TTL, a maximum lifetime, and argument errors that name the argument."""
from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.server.ccserver import ServerProc, inprocess_server, serve  # noqa: F401 (serve is a fixture)

from coordcore import AsyncClient, Client
from coordcore.errors import AlreadyHeld, BadArgument, SessionExpired, WrongType

Serve = Callable[..., ServerProc]


def test_sync_nested_acquire_reentrant_and_the_wire(serve: Serve) -> None:
    srv = serve()
    with Client(port=srv.port) as c:
        started = time.monotonic()
        with c.lock("a") as g:
            with pytest.raises(AlreadyHeld, match="already holds"), c.lock("a"):
                pass
            with pytest.raises(AlreadyHeld):  # the same refusal as a raw command
                c.execute("LOCK.ACQUIRE", "a", c._core.session(g.session).credential)  # type: ignore[union-attr]
            with pytest.raises(AlreadyHeld):
                c.try_acquire("a")
        assert time.monotonic() - started < 5  # at once, not after a wait
        r = c.acquire("r", shared=True)
        with pytest.raises(AlreadyHeld, match="upgrade"):
            c.acquire("r")
        c.release(r)
        with c.lock("a", reentrant=True) as outer, c.lock("a", reentrant=True) as inner:
            assert inner == outer
            with Client(port=srv.port) as other:
                assert other.try_acquire("a") is None
        assert c.lock_info("a").holders == []


def test_sync_session_loss_renewal_and_lifetime(serve: Serve) -> None:
    srv = serve()
    with Client(port=srv.port) as c:
        s = c.session(ttl=5)
        heard: list[str] = []
        s.on_lost(heard.append)
        g = c.acquire("a", session=s)
        assert s.holds(g)
        # A keep-alive resets the lease to the TTL from now: it never adds.
        cred = s.credential
        first = c.execute("SESSION.KEEPALIVE", cred)
        second = c.execute("SESSION.KEEPALIVE", cred)
        assert 0 <= second - first < 2_500
        s.close()
        assert heard == ["closed"] and s.done.result(5) == "closed" and not s.holds(g)
        # Told by the server: a session not kept alive that expired.
        gone = c.session(ttl=0.2, keepalive=False)
        time.sleep(0.5)
        with pytest.raises(SessionExpired):
            gone.keepalive()
        assert gone.done.result(5) == "expired"
        # Past its max lifetime it is not kept alive, so it expires.
        short = c.session(ttl=0.3, max_lifetime=0.4)
        time.sleep(0.5)
        with pytest.raises(SessionExpired, match="max lifetime"):
            short.keepalive()
        assert short.done.result(5) == "expired"
        with pytest.raises(BadArgument, match="max_lifetime"):
            c.session(ttl=1, max_lifetime=-1)
        # The server gone: the lease deadline passes unconfirmed, the session is lost.
        lost = c.session(ttl=0.6)
        fired = threading.Event()
        lost.on_lost(lambda reason: fired.set())
        held = c.acquire("b", session=lost)
        srv.stop(signal.SIGKILL)
        assert fired.wait(5) and lost.done.result(1) == "expired" and not lost.holds(held)


def test_sync_argument_types_are_refused_by_name(serve: Serve) -> None:
    srv = serve()
    with Client(port=srv.port) as c:
        for call, name in ((lambda: c.acquire("k", ttl="10"), "ttl"),  # type: ignore[arg-type]
                           (lambda: c.acquire(None), "key"),  # type: ignore[arg-type]
                           (lambda: c.acquire(123), "key"),  # type: ignore[arg-type]
                           (lambda: c.try_acquire(b"k", shared=1), "shared"),  # type: ignore[arg-type]
                           (lambda: c.acquire("k", timeout="1"), "timeout"),  # type: ignore[arg-type]
                           (lambda: c.watch(5), "prefix"),  # type: ignore[arg-type]
                           (lambda: c.session("3"), "ttl")):  # type: ignore[arg-type]
            with pytest.raises(WrongType, match=name):
                call()
        assert c.lock_info("k").holders == []  # nothing was sent that took anything


def test_async_nested_reentrant_loss_and_types(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path, locks=True) as server, AsyncClient(port=server.port) as c:
            async with c.lock("a"):
                with pytest.raises(AlreadyHeld):
                    await asyncio.wait_for(c.acquire("a"), 5)
                async with c.lock("b", reentrant=True) as outer, c.lock("b", reentrant=True) as inner:
                    assert inner == outer
                assert (await c.lock_info("b")).holders == []
            # cancel_on_loss: the body is cancelled when the session ends, the block says why.
            s = await c.session(ttl=5)
            heard: list[str] = []
            s.on_lost(heard.append)
            grants = []

            async def body() -> None:
                async with c.lock("a", session=s, cancel_on_loss=True) as held:
                    grants.append(held)
                    assert s.holds(held)
                    await asyncio.sleep(30)

            task = asyncio.ensure_future(body())
            await asyncio.sleep(0.1)
            await s.close()
            with pytest.raises(SessionExpired, match="closed"):
                await asyncio.wait_for(task, 5)
            assert heard == ["closed"] and await s.done == "closed" and not s.holds(grants[0])
            async with c.lock("a", cancel_on_loss=True):
                pass  # no loss: a plain lock block
            short = await c.session(ttl=0.3, max_lifetime=0.3)
            await asyncio.sleep(0.4)
            with pytest.raises(SessionExpired, match="max lifetime"):
                await short.keepalive()
            assert await asyncio.wait_for(asyncio.shield(short.done), 5) == "expired"
            for make, name in ((lambda: c.acquire("k", ttl="10"), "ttl"),  # type: ignore[arg-type]
                               (lambda: c.acquire(None), "key"),  # type: ignore[arg-type]
                               (lambda: c.acquire(123), "key")):  # type: ignore[arg-type]
                with pytest.raises(WrongType, match=name):
                    await make()
            with pytest.raises(WrongType, match="prefix"):
                c.watch(5)  # type: ignore[arg-type]

    run(main(), timeout=60)
