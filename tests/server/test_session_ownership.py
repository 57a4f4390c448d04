"""Sessions belong to their opener, and waits survive (or are withdrawn after) a crash.

Each test here reproduces a defect found by attacking a live server (issue 9, items 1
and 2) and failed before the fix: a guessed session id acted for its owner; a waiter
whose server was killed was granted after the restart and held by nobody.
"""
from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from coordcore import AsyncClient
from tests.server.ccserver import Raw, ServerProc, serve  # noqa: F401 (serve is a fixture)

Serve = Callable[..., ServerProc]


def _id(credential: bytes) -> int:
    return int(credential.split(b".")[0])


def _holders(raw: Raw, key: str) -> list[int]:
    info = raw.command("LOCK.INFO", key)
    return [h[h.index(b"session") + 1] for h in info[info.index(b"holders") + 1]]


def _waiters(raw: Raw, key: str) -> list[int]:
    info = raw.command("LOCK.INFO", key)
    return [w[w.index(b"session") + 1] for w in info[info.index(b"waiters") + 1]]


def test_a_guessed_session_id_or_secret_acts_for_nobody(serve: Serve) -> None:
    srv = serve()
    with Raw(srv.port) as owner, Raw(srv.port) as thief:
        cred = owner.command("SESSION.OPEN", 30)
        sid = _id(cred)
        token = owner.command("LOCK.ACQUIRE", "jobs/1", cred)
        assert owner.command("SEM.ACQUIRE", "pool", cred, 2) > 0
        assert owner.command("ELECT.CAMPAIGN", "lead", cred, "me") > 0
        # The id is public: reads and watches show it.
        assert _holders(thief, "jobs/1") == [sid]
        secret = cred.split(b".")[1]
        forged = [str(sid).encode(),                                   # the bare id
                  b"%d.%s" % (sid, bytes(reversed(secret))),           # a wrong secret
                  b"%d.%s" % (sid, secret.upper()),                     # not the handle's spelling
                  b"%d.%s" % (sid + 1, secret)]                         # the secret with another id
        revision = thief.command("LOCKS.REVISION")
        for bad in forged:
            # Hot-lane shapes (LOCK.RELEASE, SEM.RELEASE) and table commands alike.
            for args in (("LOCK.RELEASE", "jobs/1", bad), ("LOCK.RELEASE", "jobs/1", bad, "TOKEN", token),
                         ("LOCK.ACQUIRE", "jobs/2", bad), ("LOCK.TRY", "jobs/1", bad),
                         ("SEM.RELEASE", "pool", bad), ("SESSION.KEEPALIVE", bad), ("SESSION.CLOSE", bad),
                         ("ELECT.PROCLAIM", "lead", bad, "evil"), ("ELECT.RESIGN", "lead", bad),
                         ("LOCK.CANCEL", "jobs/1", bad, "TICKET", token)):
                reply = thief.command(*args)
                assert isinstance(reply, Exception) and str(reply).startswith("NOSESSION"), (args, reply)
                assert secret.decode() not in str(reply)  # a reply never echoes a secret
        assert thief.command("LOCKS.REVISION") == revision  # nothing changed
        assert _holders(thief, "jobs/1") == [sid]
        # The owner still does all of it.
        assert owner.command("LOCK.RELEASE", "jobs/1", cred, "TOKEN", token) == b"OK"
        assert owner.command("SESSION.KEEPALIVE", cred) > 0
        assert owner.command("SESSION.CLOSE", cred) == b"OK"
        # A closed session's credential is dead too.
        assert str(owner.command("LOCK.ACQUIRE", "jobs/3", cred)).startswith("NOSESSION")


def test_a_waiter_orphaned_by_a_server_kill_is_withdrawn_after_the_grace(serve: Serve, tmp_path: Any) -> None:
    data = tmp_path / "d"
    srv = serve("--waiter-grace", "1", data=data)
    port = srv.port
    with Raw(port) as a:
        s1 = a.command("SESSION.OPEN", 30)
        s2 = a.command("SESSION.OPEN", 30)
        a.command("LOCK.ACQUIRE", "k", s1)
        a.command("LOCK.ACQUIRE", "t", s1)
    b = Raw(port)
    b.send(b"*5\r\n$12\r\nLOCK.ACQUIRE\r\n$1\r\nk\r\n$%d\r\n%b\r\n$7\r\nTIMEOUT\r\n$6\r\n600000\r\n"
           % (len(s2), s2))
    c = Raw(port)  # a waiter without TIMEOUT follows the same rule
    c.send(b"*3\r\n$12\r\nLOCK.ACQUIRE\r\n$1\r\nt\r\n$%d\r\n%b\r\n" % (len(s2), s2))
    with Raw(port) as probe:
        deadline = time.monotonic() + 10
        while (_waiters(probe, "k"), _waiters(probe, "t")) != ([_id(s2)], [_id(s2)]):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    srv.stop(signal.SIGKILL)
    b.close()
    c.close()
    srv = serve("--waiter-grace", "1", data=data, port=port)
    with Raw(port) as a:
        assert _waiters(a, "k") == [_id(s2)]  # detached, not gone yet
        deadline = time.monotonic() + 10
        while _waiters(a, "k") or _waiters(a, "t"):
            assert time.monotonic() < deadline, "the orphaned waiters were never withdrawn"
            time.sleep(0.05)
        # s1's holds survive (its client keeps it alive); releasing grants nobody.
        assert a.command("SESSION.KEEPALIVE", s1) > 0
        assert a.command("LOCK.RELEASE", "k", s1) == b"OK"
        assert _holders(a, "k") == []


def _wait_then_kill(serve: Serve, srv: ServerProc, data: Any, session: bytes, reqid: bytes) -> ServerProc:
    """Session ``session`` waits for "k" (with REQID ``reqid``); then the server is
    killed with SIGKILL and restarted on the same port and data (grace 1.5 s)."""
    port = srv.port
    b = Raw(port)
    b.send(b"*5\r\n$12\r\nLOCK.ACQUIRE\r\n$1\r\nk\r\n$%d\r\n%b\r\n$5\r\nREQID\r\n$%d\r\n%b\r\n"
           % (len(session), session, len(reqid), reqid))
    with Raw(port) as probe:
        deadline = time.monotonic() + 10
        while _waiters(probe, "k") != [_id(session)]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    srv.stop(signal.SIGKILL)
    b.close()
    return serve("--waiter-grace", "1.5", data=data, port=port)


def test_a_waiter_granted_during_the_grace_is_released_unless_re_attached(serve: Serve, tmp_path: Any) -> None:
    data = tmp_path / "d"
    srv = serve("--waiter-grace", "1.5", data=data)
    port = srv.port
    with Raw(port) as a:
        s1 = a.command("SESSION.OPEN", 30)
        s2 = a.command("SESSION.OPEN", 30)
        a.command("LOCK.ACQUIRE", "k", s1)
    srv = _wait_then_kill(serve, srv, data, s2, b"77")
    with Raw(port) as a:
        assert a.command("LOCK.RELEASE", "k", s1) == b"OK"
        assert _holders(a, "k") == [_id(s2)]  # granted while detached: nobody knows yet
        deadline = time.monotonic() + 10
        while _holders(a, "k"):
            assert time.monotonic() < deadline, "an orphaned grant was never released"
            time.sleep(0.05)
    # The same again, but the client comes back within the grace and retries with its
    # REQID: it learns its token and keeps the lock.
    with Raw(port) as a:
        a.command("LOCK.ACQUIRE", "k", s1)
    srv = _wait_then_kill(serve, srv, data, s2, b"78")
    with Raw(port) as a, Raw(port) as b2:
        assert a.command("LOCK.RELEASE", "k", s1) == b"OK"
        token = b2.command("LOCK.ACQUIRE", "k", s2, "REQID", 78)  # the retry re-attaches
        assert isinstance(token, int)
        time.sleep(2.0)  # past the grace: a re-attached grant stays
        assert _holders(a, "k") == [_id(s2)]
        assert b2.command("LOCK.RELEASE", "k", s2, "TOKEN", token) == b"OK"


def test_an_async_client_rides_out_a_server_kill_while_it_waits(serve: Serve, tmp_path: Any) -> None:
    """The client re-sends its acquire with the same request id when its connection
    breaks: the caller never sees the crash, and gets the lock once it is released."""
    data = tmp_path / "d"
    srv = serve(data=data)
    port = srv.port

    async def main() -> None:
        async with AsyncClient(port=port) as holder, AsyncClient(port=port) as waiter:
            g = await holder.acquire("k", ttl=30)
            task = asyncio.ensure_future(waiter.acquire("k", ttl=30, timeout=20))
            while not (await holder.lock_info("k")).waiters:
                await asyncio.sleep(0.02)
            await asyncio.get_running_loop().run_in_executor(None, srv.stop, signal.SIGKILL)
            await asyncio.get_running_loop().run_in_executor(None, lambda: serve(data=data, port=port))
            await asyncio.sleep(0.3)
            assert not task.done()
            await holder.release(g)
            got = await asyncio.wait_for(task, 15)
            assert got.token > g.token
            info = await holder.lock_info("k")
            assert [h.token for h in info.holders] == [got.token] and info.waiters == []
            await waiter.release(got)

    asyncio.run(main())


def test_a_sync_client_rides_out_a_server_kill_while_it_waits(serve: Serve, tmp_path: Any) -> None:
    import threading

    from coordcore import Client

    data = tmp_path / "d"
    srv = serve(data=data)
    port = srv.port
    with Client(port=port) as holder, Client(port=port) as waiter:
        g = holder.acquire("k", ttl=30)
        got: list[Any] = []
        t = threading.Thread(target=lambda: got.append(waiter.acquire("k", ttl=30, timeout=20)))
        t.start()
        deadline = time.monotonic() + 10
        while not holder.lock_info("k").waiters:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        srv.stop(signal.SIGKILL)
        serve(data=data, port=port)
        time.sleep(0.3)
        assert t.is_alive()  # still waiting: the crash is invisible to the caller
        holder.release(g)
        t.join(15)
        assert got and got[0].token > g.token
        assert [h.token for h in holder.lock_info("k").holders] == [got[0].token]
        waiter.release(got[0])


def test_a_release_cut_off_by_a_server_kill_is_settled_once_the_server_is_back(serve: Serve, tmp_path: Any) -> None:
    """Found by the fault suite: the release's retries ran out during the restart, the
    client kept its session alive, and the lock stayed held by nobody's intent."""
    from coordcore import Client
    from coordcore.errors import ConnectionLost

    data = tmp_path / "d"
    srv = serve(data=data)
    port = srv.port
    with Client(port=port, retries=1, retry_delay=0.01) as c:
        s = c.session(3.0)
        g = c.acquire("k", session=s)
        srv.stop(signal.SIGKILL)
        with pytest.raises(ConnectionLost):
            c.release(g)
        serve(data=data, port=port)
        deadline = time.monotonic() + 10
        while c.lock_info("k").holders:  # the next keep-alive (every ttl/3) settles it
            assert time.monotonic() < deadline, "the unanswered release was never settled"
            time.sleep(0.05)
        assert not s.expired
        assert c.try_acquire("k", session=s) is not None  # the session lives on, the lock is free


def test_a_log_from_before_credentials_opens_and_its_sessions_are_nobodys(tmp_path: Any) -> None:
    """A lock log of format version 1 (sessions without credentials) still opens; its
    sessions can be used by no caller and simply expire."""
    from coordcore.locks.log import BatchLog
    from coordcore.locks.machine import BatchBuilder
    from coordcore.locks.service import LockService

    path = tmp_path / "locks"
    b = BatchBuilder()
    b.open_session(60_000)
    record = bytearray(b.build(int(time.time() * 1000)))
    record[4] = 1  # what a version-1 writer wrote
    log = BatchLog.open(path)
    log.append(bytes(record))
    log.close()

    async def main() -> None:
        async with LockService.open(path) as svc:
            assert svc.session_info(1) is not None
            assert svc.verify_credential(b"1." + b"0" * 32) == 0
            fresh = await svc.open_session(10)
            assert svc.verify_credential(fresh.credential) == fresh.id == 2

    asyncio.run(main())


@pytest.mark.parametrize("bad", [b"", b".", b"1", b"1.xyz", b"99999999999999999999." + b"0" * 32,
                                 b"-1." + b"0" * 32])
def test_verify_credential_refuses_malformed_handles(bad: bytes) -> None:
    from coordcore.locks.service import LockService

    async def main() -> None:
        async with LockService.in_memory() as svc:
            await svc.open_session(10)
            assert svc.verify_credential(bad) == 0

    asyncio.run(main())
