"""A capacity acquire that gives up without its answer (its timeout passes while the
grant is in flight, a cancelled task) leaves no units held, through a live server
subprocess and the real clients. A proxy on loopback holds the grant's reply back, so
the race is forced, not hoped for."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from tests.server.ccserver import ServerProc, serve  # noqa: F401 (serve is a fixture)

from coordcore import AsyncClient, Client
from coordcore.client._wire import to_dict
from coordcore.errors import ConnectionLost

Serve = Callable[..., ServerProc]


class HoldingProxy:
    """Forwards 127.0.0.1 connections to ``port``, except that the replies on a
    connection that sent ``POOL.ACQUIRE`` are swallowed: the server granted, the client
    never hears of it. :meth:`cut` then closes those connections."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[tuple[socket.socket, socket.socket]] = []
        self.swallowed = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            pair = (client, server)
            threading.Thread(target=self._pump, args=(client, server, pair, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, pair, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket],
              requests: bool) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    if requests and b"POOL.ACQUIRE" in data and pair not in self.held:
                        self.held.append(pair)
                    if not requests and pair in self.held:
                        self.swallowed += len(data)
                        continue
                dst.sendall(data)
        except OSError:
            pass
        for s in pair:
            s.close()

    def cut(self) -> None:
        with self._lock:
            held, self.held = self.held, []
        for pair in held:
            for s in pair:
                with contextlib.suppress(OSError):  # closed already
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        self.cut()


def _map(reply: Any) -> dict[str, Any]:
    return to_dict(reply)


def _pool(r: redis.Redis) -> tuple[int, list[int]]:
    """Units held, and the sessions of the leases."""
    d = _map(r.execute_command("POOL.INFO", "gpu"))
    return d["held"], [_map(x)["session"] for x in d["leases"]]


def _waiting(r: redis.Redis) -> int:
    return int(_map(r.execute_command("POOL.INFO", "gpu"))["waiting"])


def _until(what: Callable[[], bool], why: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.01)


@pytest.fixture
def setup(serve: Serve) -> Any:
    srv = serve()
    r = redis.Redis(port=srv.port)
    r.execute_command("POOL.DEFINE", "gpu", 4)
    r.execute_command("POOL.TENANT", "gpu", "a")
    holder = r.execute_command("SESSION.OPEN", 30)
    big = r.execute_command("POOL.ACQUIRE", "gpu", holder, "a", 4)
    proxy = HoldingProxy(srv.port)
    yield r, proxy, lambda: r.execute_command("POOL.RELEASE", "gpu", holder, big)
    proxy.close()
    r.close()


def test_a_sync_acquire_whose_timeout_passes_with_the_grant_in_flight_leaves_nothing_held(setup: Any) -> None:
    r, proxy, release_big = setup
    with Client(port=proxy.port) as c:
        outcome: list[BaseException] = []

        def acquire() -> None:
            try:
                c.acquire_capacity("gpu", 2, tenant="a", ttl=30, timeout=1.0)
            except BaseException as exc:  # noqa: BLE001 (recorded for the assertion)
                outcome.append(exc)

        th = threading.Thread(target=acquire)
        th.start()
        _until(lambda: _waiting(r) == 1, "the acquire never queued")
        release_big()  # the wait is granted: its reply is held back in the proxy
        _until(lambda: _pool(r)[0] == 2 and proxy.swallowed > 0, "the wait was never granted")
        time.sleep(1.1)  # past the caller's timeout: the client will not retry
        proxy.cut()
        th.join(20)
        assert len(outcome) == 1 and isinstance(outcome[0], ConnectionLost), outcome
        # Settled at once (the blocking client settles before raising).
        assert _pool(r) == (0, [])


def test_a_cancelled_async_acquire_whose_grant_was_in_flight_leaves_nothing_held(setup: Any, run: Any) -> None:
    r, proxy, release_big = setup

    async def main() -> None:
        async with AsyncClient(port=proxy.port) as c:
            s = await c.session(ttl=30)
            task = asyncio.ensure_future(c.acquire_capacity("gpu", 2, tenant="a", session=s))
            await asyncio.to_thread(_until, lambda: _waiting(r) == 1, "the acquire never queued")
            release_big()
            await asyncio.to_thread(_until, lambda: _pool(r)[0] == 2 and proxy.swallowed > 0,
                                    "the wait was never granted")
            assert _pool(r)[1] == [s.id] and not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The session lives on (kept alive), yet its stray lease is released.
            await asyncio.to_thread(_until, lambda: _pool(r) == (0, []), "the stray lease was never released")
            assert s.alive

    run(main(), timeout=60)


def test_pool_info_session_shows_only_that_sessions_leases_and_waits(setup: Any) -> None:
    r, _, release_big = setup
    s = r.execute_command("SESSION.OPEN", 30)
    sid = int(s.split(b".")[0])
    r2 = redis.Redis(port=r.connection_pool.connection_kwargs["port"])
    waiter = threading.Thread(target=lambda: r2.execute_command("POOL.ACQUIRE", "gpu", s, "a", 1))
    waiter.start()
    _until(lambda: _waiting(r) == 1, "the acquire never queued")
    mine = _map(r.execute_command("POOL.INFO", "gpu", "SESSION", sid))
    assert mine["leases"] == [] and [_map(w)["session"] for w in mine["waits"]] == [sid]
    everyone = _map(r.execute_command("POOL.INFO", "gpu"))
    assert len(everyone["leases"]) == 1 and len(everyone["waits"]) == 1
    release_big()
    waiter.join(10)
    mine = _map(r.execute_command("POOL.INFO", "gpu", "SESSION", sid))
    assert [_map(x)["session"] for x in mine["leases"]] == [sid] and mine["waits"] == []
    for bad in (["SESSION", 0], ["SESSION", "x"], ["SESSION"], ["COUNT", 1], ["SESSION", 1, "SESSION", 2]):
        with pytest.raises(redis.ResponseError, match="BADARG"):
            r.execute_command("POOL.INFO", "gpu", *bad)
    r2.close()
