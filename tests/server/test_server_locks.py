"""Locks over the wire against a real `coordcore serve`: replies, contention with a
fenced resource, wake-ups on release and expiry, clients killed with SIGKILL, the
server killed with SIGKILL and restarted, watches, and bad input with no state change."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from tests.server.ccserver import Raw, ServerProc, serve  # noqa: F401 (serve is a fixture)

from coordcore import AsyncClient
from coordcore.locks.fencing import FencedResource

Serve = Callable[..., ServerProc]


def _id(credential: bytes) -> int:
    """The public id of a session credential (``<id>.<secret>``)."""
    return int(credential.split(b".")[0])


def test_redis_py_lock_commands(serve: Serve) -> None:
    srv = serve()
    r = redis.Redis(port=srv.port, protocol=3)
    s1 = r.execute_command("SESSION.OPEN", 10)
    s2 = r.execute_command("SESSION.OPEN", "2.5")
    assert isinstance(s1, bytes) and _id(s2) > _id(s1)
    t1 = r.execute_command("LOCK.ACQUIRE", "jobs/1", s1)
    assert isinstance(t1, int) and t1 > 0
    assert r.execute_command("LOCK.TRY", "jobs/1", s2) is None
    with pytest.raises(redis.ResponseError, match="^TIMEOUT"):
        r.execute_command("LOCK.ACQUIRE", "jobs/1", s2, "TIMEOUT", 50)
    info = r.execute_command("LOCK.INFO", "jobs/1")
    assert info[b"kind"] == b"lock" and info[b"mode"] == b"exclusive"
    assert [h[b"session"] for h in info[b"holders"]] == [_id(s1)] and info[b"waiters"] == []
    with pytest.raises(redis.ResponseError, match="^NOTHOLDER"):
        r.execute_command("LOCK.RELEASE", "jobs/1", s2)
    assert r.execute_command("LOCK.RELEASE", "jobs/1", s1, "TOKEN", t1) == b"OK"
    t2 = r.execute_command("LOCK.TRY", "jobs/1", s2, "SHARED")
    t3 = r.execute_command("LOCK.TRY", "jobs/1", s1, "SHARED")
    assert t3 > t2 > t1
    assert r.execute_command("LOCK.INFO", "jobs/1")[b"mode"] == b"shared"
    assert r.execute_command("LOCKS.KEYS", "jobs/") == [b"jobs/1"]
    # Semaphores and elections.
    assert r.execute_command("SEM.TRY", "pool", s1, 2) > 0
    assert r.execute_command("SEM.TRY", "pool", s2, 2) > 0
    assert r.execute_command("SEM.TRY", "pool", s2, 2) is None
    with pytest.raises(redis.ResponseError, match="^BADARG"):
        r.execute_command("SEM.TRY", "pool", s2, 3)
    lead = r.execute_command("ELECT.CAMPAIGN", "leader", s1, "node-a")
    assert r.execute_command("ELECT.LEADER", "leader") == {b"session": _id(s1), b"value": b"node-a", b"token": lead}
    assert r.execute_command("ELECT.PROCLAIM", "leader", s1, "node-a2") > lead
    assert r.execute_command("ELECT.LEADER", "leader")[b"value"] == b"node-a2"
    with pytest.raises(redis.ResponseError, match="^WRONGTYPE"):
        r.execute_command("LOCK.TRY", "leader", s2)
    # Sessions.
    assert r.execute_command("SESSION.KEEPALIVE", s2) > 0
    sinfo = r.execute_command("SESSION.INFO", s1)
    assert sinfo[b"ttl_ms"] == 10_000 and len(sinfo[b"contenders"]) == 3
    assert r.execute_command("SESSION.CLOSE", s1) == b"OK"
    with pytest.raises(redis.ResponseError, match="^NOSESSION"):
        r.execute_command("LOCK.ACQUIRE", "jobs/2", s1)
    assert r.execute_command("ELECT.LEADER", "leader") is None
    with pytest.raises(redis.ResponseError, match="^BADARG"):
        r.execute_command("SESSION.OPEN", 0)
    with pytest.raises(redis.ResponseError, match="^BADARG"):
        r.execute_command("LOCK.ACQUIRE", "k" * 2000, s2)
    r.close()


def test_contending_clients_never_overlap(serve: Serve) -> None:
    srv = serve()
    storage: FencedResource[int] = FencedResource()
    holder: list[int] = []
    tokens: list[int] = []

    async def worker(i: int) -> None:
        async with AsyncClient(port=srv.port) as client:
            for _ in range(15):
                async with client.lock("shared/resource", ttl=10) as grant:
                    assert not holder, f"client {i} entered while {holder} holds"
                    holder.append(i)
                    storage.write("shared/resource", grant.token, i)
                    tokens.append(grant.token)
                    await asyncio.sleep(0.001)
                    assert holder == [i]
                    holder.pop()

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(8))), 60)

    asyncio.run(main())
    assert len(tokens) == 8 * 15
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


def test_blocked_acquire_is_granted_on_release_and_on_expiry(serve: Serve) -> None:
    srv = serve()
    a, b = Raw(srv.port), Raw(srv.port)
    s1, s2 = a.command("SESSION.OPEN", 10), a.command("SESSION.OPEN", 10)
    t1 = a.command("LOCK.ACQUIRE", "k", s1)
    b.send(b"*3\r\n$12\r\nLOCK.ACQUIRE\r\n$1\r\nk\r\n$%d\r\n%b\r\n" % (len(s2), s2))
    time.sleep(0.2)
    info = a.command("LOCK.INFO", "k")
    assert [w[1 + w.index(b"session")] for w in info[info.index(b"waiters") + 1]] == [_id(s2)]
    assert a.command("LOCK.RELEASE", "k", s1) == b"OK"
    t2 = b.read()
    assert t2 > t1
    # Expiry: a session that is not kept alive loses its lock after its TTL.
    s3 = a.command("SESSION.OPEN", "0.5")
    c = Raw(srv.port)
    assert c.command("LOCK.TRY", "e", s3) > 0
    started = time.monotonic()
    t4 = b.command("LOCK.ACQUIRE", "e", s2, "TIMEOUT", 5000)
    waited = time.monotonic() - started
    assert isinstance(t4, int) and 0.3 < waited < 3.0
    assert str(c.command("LOCK.RELEASE", "e", s3)).startswith("NOSESSION")
    for raw in (a, b, c):
        raw.close()


def test_client_killed_with_sigkill_loses_its_locks_after_ttl(serve: Serve, tmp_path: Path) -> None:
    srv = serve()
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from coordcore import Client
        client = Client(port={srv.port})
        grant = client.acquire("jobs/42", ttl=1.0)
        print(grant.token, flush=True)
        time.sleep(60)
    """))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        token = int(child.stdout.readline())
        with Raw(srv.port) as raw:
            me = raw.command("SESSION.OPEN", 10)
            # The holder's keep-alive keeps it alive well past its TTL.
            time.sleep(1.5)
            assert str(raw.command("LOCK.ACQUIRE", "jobs/42", me, "TIMEOUT", 100)).startswith("TIMEOUT")
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            killed = time.monotonic()
            mine = raw.command("LOCK.ACQUIRE", "jobs/42", me, "TIMEOUT", 10_000)
            waited = time.monotonic() - killed
            assert isinstance(mine, int) and mine > token
            assert waited < 5.0  # TTL 1 s plus ticks
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


@pytest.mark.slow
def test_server_kill9_restart_keeps_acknowledged_grants(serve: Serve, tmp_path: Path) -> None:
    data = tmp_path / "durable"
    acked: dict[bytes, tuple[int, int]] = {}  # key -> (session, token) still held
    all_tokens: list[int] = []
    srv = serve(data=data)
    port = srv.port
    for rnd in range(3):
        with Raw(port) as raw:
            sessions = [raw.command("SESSION.OPEN", 600) for _ in range(4)]
            # A pipelined burst: many grants in flight when the kill comes.
            for i in range(200):
                key = b"k%d" % (i % 40)
                sid = sessions[i % 4]
                if key in acked and i % 3 == 0:
                    s, t = acked[key]
                    assert raw.command("LOCK.RELEASE", key, s, "TOKEN", t) == b"OK"
                    del acked[key]
                    continue
                token = raw.command("LOCK.TRY", key, sid)
                if str(token).startswith("HELD"):
                    continue  # this session holds it already: refused, not busy
                if token is not None:
                    assert isinstance(token, int)
                    acked[key] = (sid, token)
                    all_tokens.append(token)
            revision = raw.command("LOCKS.REVISION")
            # Unacknowledged requests in flight at the kill.
            raw.send(b"".join(b"*3\r\n$8\r\nLOCK.TRY\r\n$2\r\nz%d\r\n$%d\r\n%b\r\n"
                              % (j, len(sessions[0]), sessions[0]) for j in range(10)))
        srv.stop(signal.SIGKILL)
        srv = serve(data=data, port=port)
        with Raw(port) as raw:
            assert raw.command("LOCKS.REVISION") >= revision
            for key, (sid, token) in acked.items():
                info = raw.command("LOCK.INFO", key)
                holders = info[info.index(b"holders") + 1]
                assert len(holders) == 1, (rnd, key, info)
                h = holders[0]
                assert h[h.index(b"session") + 1] == _id(sid) and h[h.index(b"token") + 1] == token
            fresh = raw.command("SESSION.OPEN", 600)
            newer = raw.command("LOCK.TRY", b"fresh%d" % rnd, fresh)
            assert newer > max(all_tokens)
    assert all_tokens == sorted(all_tokens) and len(set(all_tokens)) == len(all_tokens)


def test_watch_delivers_every_event_in_revision_order(serve: Serve) -> None:
    srv = serve()
    events: list[Any] = []
    with Raw(srv.port) as watcher, Raw(srv.port) as raw:
        assert watcher.command("HELLO", 3)[b"proto"] == 3
        assert watcher.command("WATCH", "") == b"OK"
        start = raw.command("LOCKS.REVISION")
        sessions = [raw.command("SESSION.OPEN", 30) for _ in range(3)]
        for i in range(30):
            sid = sessions[i % 3]
            key = b"w/%d" % (i % 5)
            if raw.command("LOCK.TRY", key, sid) is None:
                continue
            raw.command("LOCK.RELEASE", key, sid)
        for sid in sessions:
            raw.command("SESSION.CLOSE", sid)
        end = raw.command("LOCKS.REVISION")
        while len(events) < end - start:
            events.append(watcher.read())
    revisions = [e[1] for e in events]
    assert revisions == list(range(start + 1, end + 1))  # every event, gap-free, in order
    kinds = [e[2] for e in events]
    assert kinds[:3] == [b"open"] * 3 and kinds[-3:] == [b"close"] * 3
    assert kinds.count(b"grant") == kinds.count(b"release") == 30


def test_bad_input_changes_no_state(serve: Serve) -> None:
    srv = serve()
    with Raw(srv.port) as raw:
        sid = raw.command("SESSION.OPEN", 30)
        raw.command("LOCK.TRY", "held", sid)
        before = raw.command("LOCKS.REVISION")
        bad = [
            ("LOCK.ACQUIRE",), ("LOCK.ACQUIRE", "k"), ("LOCK.ACQUIRE", "k", "notanumber"),
            ("LOCK.ACQUIRE", "k", sid, "TIMEOUT"), ("LOCK.ACQUIRE", "k", sid, "TIMEOUT", -1),
            ("LOCK.ACQUIRE", "k", sid, "BOGUS"), ("LOCK.ACQUIRE", "", sid), ("LOCK.ACQUIRE", "k", 0),
            ("LOCK.RELEASE", "held", b"%d.%s" % (_id(sid) + 1000, sid.split(b".")[1])),
            ("LOCK.RELEASE", "held", _id(sid)), ("LOCK.RELEASE", "nothing", sid),
            ("SESSION.OPEN", -1), ("SESSION.OPEN", "nan"), ("SESSION.OPEN", "1e99"), ("SESSION.KEEPALIVE", 999999),
            ("SEM.ACQUIRE", "s", sid, 0), ("SEM.ACQUIRE", "s", sid, "x"), ("ELECT.CAMPAIGN", "e", sid),
            ("ELECT.PROCLAIM", "e", sid, "v"), ("ELECT.RESIGN", "e", sid), ("LOCK.TRY", "held", sid, "SHARED", "x"),
            ("WATCH",), ("LOCK.INFO",),
        ]
        for args in bad:
            reply = raw.command(*args)
            assert isinstance(reply, Exception), (args, reply)
            assert str(reply).split()[0] in {"BADARG", "NOSESSION", "NOTHOLDER", "NOTLEADER", "NOTFOUND"}, \
                (args, reply)
        assert raw.command("LOCKS.REVISION") == before


def test_sessions_keep_their_ttl_across_a_restart(serve: Serve, tmp_path: Path) -> None:
    """Downtime does not count against sessions: a client that reconnects within its
    TTL after the server comes back keeps its session and locks."""
    data = tmp_path / "restart"
    srv = serve(data=data)
    port = srv.port
    with Raw(port) as raw:
        sid = raw.command("SESSION.OPEN", 1)
        token = raw.command("LOCK.ACQUIRE", "held", sid)
    assert srv.stop() == 0
    time.sleep(1.5)  # longer than the TTL
    serve(data=data, port=port)
    with Raw(port) as raw:
        assert raw.command("SESSION.KEEPALIVE", sid) > 0
        info = raw.command("LOCK.INFO", "held")
        (holder,) = info[info.index(b"holders") + 1]
        assert holder[holder.index(b"token") + 1] == token
        # Not kept alive from here on, it expires after its TTL.
        time.sleep(1.6)
        assert str(raw.command("SESSION.KEEPALIVE", sid)).startswith("NOSESSION")


def _pack(*args: Any) -> bytes:
    import hiredis

    return hiredis.pack_command(args)  # type: ignore[no-any-return]


def test_hot_and_table_commands_in_one_pipeline_answer_in_order(serve: Serve) -> None:
    """The native lane (LOCK.ACQUIRE/RELEASE) and the command table on one connection, in
    one write, then the stream leaving the request grammar (hiredis takes over): every
    reply in request order, each the right one."""
    srv = serve()
    with Raw(srv.port) as raw:
        sid = raw.command("SESSION.OPEN", 30)
        other = raw.command("SESSION.OPEN", 30)
        raw.send(b"".join([
            _pack("PING"),
            _pack("LOCK.RELEASE", "nothing", sid),           # lane: an error reply
            _pack("LOCK.ACQUIRE", "a", sid),                 # lane: parks the connection
            _pack("ID.NEXT"),                                # table, behind the hot replies
            _pack("lock.release", "a", sid),                 # lane again
            _pack("LOCK.INFO", "a"),                         # a read: sees the release
            _pack("LOCK.ACQUIRE", "b", sid, "REQID", 7),     # lane with REQID...
            _pack("LOCK.ACQUIRE", "b", sid, "REQID", 7),     # ...retried: the same token
            _pack("LOCK.ACQUIRE", "b", other, "TIMEOUT", 30),  # table: times out
            _pack("LOCK.RELEASE", "b", sid, "REQID", 8, "TOKEN", 0),
            b":5\r\n",                                       # not a request: -PROTO, hiredis from here
            _pack("LOCK.ACQUIRE", "c", sid),                 # the table's acquire now
            _pack("LOCK.RELEASE", "c", sid),
            _pack("ECHO", "end"),
        ]))
        r = raw.read_n(14)
    assert r[0] == b"PONG"
    assert str(r[1]).startswith("NOTHOLDER"), r[1]
    assert isinstance(r[2], int) and isinstance(r[3], int) and r[3] > 2**40  # token, then an ID
    assert r[4] == b"OK"
    assert r[5][r[5].index(b"holders") + 1] == []
    assert isinstance(r[6], int) and r[7] == r[6] and r[6] > r[2]
    assert str(r[8]).startswith("TIMEOUT"), r[8]
    assert r[9] == b"OK"
    assert str(r[10]).startswith("PROTO"), r[10]
    assert isinstance(r[11], int) and r[11] > r[6] and r[12] == b"OK" and r[13] == b"end"


def test_a_client_that_vanishes_while_its_acquire_waits_is_withdrawn(serve: Serve) -> None:
    """However a waiting hot acquire and its connection's end interleave (the acquire
    still in the lane, in the batch being written, or parked), once the connection is
    gone the wait is withdrawn, so the lock is never granted to a client that cannot
    know it holds it. (A grant answered before the connection went is the session's:
    sessions outlive connections.)"""
    import socket
    import struct

    srv = serve()
    with Raw(srv.port) as raw:
        sid = raw.command("SESSION.OPEN", 60)
        holder = raw.command("SESSION.OPEN", 60)

        def state(key: str) -> tuple[list[Any], list[Any]]:
            info = raw.command("LOCK.INFO", key)
            return info[info.index(b"holders") + 1], info[info.index(b"waiters") + 1]

        for i in range(30):
            key = f"vanish/{i}"
            raw.command("LOCK.ACQUIRE", key, holder)
            sock = socket.create_connection(("127.0.0.1", srv.port))
            sock.sendall(_pack("LOCK.ACQUIRE", key, sid))
            time.sleep(0.001 * (i % 4))
            if i % 2:  # a reset instead of a clean close
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            deadline = time.monotonic() + 10
            while b"connected_clients:1\r\n" not in raw.command("INFO") and time.monotonic() < deadline:
                time.sleep(0.002)  # until the server has seen the connection go
            # A write of ours commits after the vanished acquire (which was read before
            # the connection's end was seen); then its withdrawal commits.
            raw.command("SESSION.KEEPALIVE", holder)
            while state(key)[1] and time.monotonic() < deadline:
                time.sleep(0.005)
            assert state(key)[1] == [], f"{key}: the vanished client's wait was not withdrawn"
            raw.command("LOCK.RELEASE", key, holder)
            assert state(key) == ([], []), f"{key}: granted to the vanished client"


def test_semaphore_acquire_waits_times_out_and_is_granted_on_release(serve: Serve) -> None:
    """SEM.ACQUIRE/SEM.RELEASE (the native lane's): permits, FIFO waits, a timeout that
    withdraws the wait before it answers, and a grant when a permit comes back."""
    srv = serve()
    with Raw(srv.port) as a, Raw(srv.port) as b, Raw(srv.port) as c:
        s1, s2, s3 = (a.command("SESSION.OPEN", 30) for _ in range(3))
        t1 = a.command("SEM.ACQUIRE", "pool", s1, 2, "REQID", 1)
        t2 = b.command("SEM.ACQUIRE", "pool", s2, 2)
        assert isinstance(t1, int) and t2 > t1
        assert a.command("SEM.ACQUIRE", "pool", s1, 2, "REQID", 1) == t1  # a retry: the same grant
        err = c.command("SEM.ACQUIRE", "pool", s3, 2, "TIMEOUT", 30)
        assert str(err) == "TIMEOUT semaphore b'pool' not granted within 0.03 s", err
        info = c.command("SEM.INFO", "pool")
        assert info[info.index(b"waiters") + 1] == []  # withdrawn before the reply
        c.send(_pack("SEM.ACQUIRE", "pool", s3, 2))   # waits...
        time.sleep(0.05)
        assert b.command("SEM.RELEASE", "pool", s2, "TOKEN", t2) == b"OK"
        t3 = c.read()                                  # ...granted by the release
        assert isinstance(t3, int) and t3 > t2
        assert str(b.command("SEM.ACQUIRE", "pool", s2, 3)).startswith("BADARG")  # a different size
        assert str(b.command("SEM.RELEASE", "pool", s2)).startswith("NOTHOLDER")
