"""Replies that grow with the state are paged, and the state itself is bounded (issue 9,
item 5): before, SESSION.INFO of a session holding 1M locks stalled every client for
11 s and LOCKS.KEYS built one reply of every key; sessions and locks per session had no
bound at all."""
from __future__ import annotations

import time
from collections.abc import Callable

from tests.server.ccserver import Raw, ServerProc, serve  # noqa: F401 (serve is a fixture)

Serve = Callable[..., ServerProc]


def _pipeline(raw: Raw, commands: list[tuple[object, ...]]) -> list[object]:
    from coordcore.client._wire import pack

    raw.send(b"".join(pack(c) for c in commands))  # type: ignore[arg-type]
    return [raw.read() for _ in commands]


def _map(reply: list[object]) -> dict[bytes, object]:
    return dict(zip(reply[::2], reply[1::2]))  # type: ignore[arg-type]


def test_session_info_lock_info_and_keys_page_through_a_large_state(serve: Serve) -> None:
    srv = serve("--max-reply-items", "500")
    n = 3000
    with Raw(srv.port) as raw, Raw(srv.port) as other:
        cred = raw.command("SESSION.OPEN", 60)
        sid = int(cred.split(b".")[0])
        tokens = _pipeline(raw, [("LOCK.TRY", b"big/%05d" % i, cred) for i in range(n)])
        assert all(isinstance(t, int) for t in tokens)
        waiter = other.command("SESSION.OPEN", 60)
        # SESSION.INFO pages: every contender exactly once, in ticket order, none over COUNT.
        seen: list[int] = []
        after = 0
        while True:
            page = _map(raw.command("SESSION.INFO", sid, "AFTER", after, "COUNT", 400))
            assert page[b"contender_count"] == n
            items = page[b"contenders"]
            assert len(items) <= 400  # type: ignore[arg-type]
            seen += [_map(c)[b"ticket"] for c in items]  # type: ignore[union-attr, misc]
            after = page[b"next"]  # type: ignore[assignment]
            if not after:
                break
        assert seen == sorted(seen) and len(seen) == len(set(seen)) == n
        assert str(raw.command("SESSION.INFO", sid, "COUNT", 501)).startswith("BADARG")  # over the cap
        # LOCKS.KEYS refuses to build a reply past the bound; LOCKS.SCAN pages.
        assert str(raw.command("LOCKS.KEYS", "big/")).startswith("LIMIT")
        assert raw.command("LOCKS.KEYS", "big/001") == [b"big/%05d" % i for i in range(100, 200)]
        keys: list[bytes] = []
        cursor = b"0"
        rounds = 0
        while True:
            cursor, page = raw.command("LOCKS.SCAN", cursor, "MATCH", "big/", "COUNT", 300)
            assert len(page) <= 300
            keys += page
            rounds += 1
            if cursor == b"0":
                break
        assert sorted(keys) == [b"big/%05d" % i for i in range(n)] and rounds >= n // 300
        # LOCK.INFO of a key with many waiters lists the first COUNT and says how many.
        assert isinstance(other.command("LOCK.TRY", "hot", waiter), int)
        sessions = _pipeline(raw, [("SESSION.OPEN", 60) for _ in range(30)])
        parked = [Raw(srv.port) for _ in sessions]
        try:
            for conn, s in zip(parked, sessions):
                conn.send(b"*3\r\n$12\r\nLOCK.ACQUIRE\r\n$3\r\nhot\r\n$%d\r\n%b\r\n" % (len(s), s))  # type: ignore[arg-type]
            deadline = time.monotonic() + 10
            while _map(raw.command("LOCK.INFO", "hot"))[b"waiter_count"] != 30:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            info = _map(raw.command("LOCK.INFO", "hot", "COUNT", 7))
            assert len(info[b"waiters"]) == 7 and info[b"holder_count"] == 1  # type: ignore[arg-type]
        finally:
            for conn in parked:
                conn.close()


def test_sessions_and_locks_per_session_are_bounded(serve: Serve) -> None:
    srv = serve("--max-sessions", "3", "--max-locks-per-session", "100")
    with Raw(srv.port) as raw:
        creds = [raw.command("SESSION.OPEN", 60) for _ in range(3)]
        assert all(isinstance(c, bytes) for c in creds)
        assert str(raw.command("SESSION.OPEN", 60)).startswith("LIMIT")
        assert raw.command("SESSION.CLOSE", creds[2]) == b"OK"
        creds[2] = raw.command("SESSION.OPEN", 60)  # room again
        # The table path (LOCK.TRY) stops exactly at the bound.
        replies = _pipeline(raw, [("LOCK.TRY", b"t/%d" % i, creds[0]) for i in range(120)])
        assert sum(isinstance(r, int) for r in replies) == 100
        assert all(str(r).startswith("LIMIT") for r in replies[100:])
        # The native lane asks the service again every 64 commands per connection: its
        # overshoot is bounded by that.
        got = 0
        for i in range(200):
            r = raw.command("LOCK.ACQUIRE", b"a/%d" % i, creds[1])
            if isinstance(r, int):
                got += 1
            else:
                assert str(r).startswith("LIMIT"), r
        assert 100 <= got <= 100 + 64
        # Releasing makes room.
        assert raw.command("LOCK.RELEASE", "t/0", creds[0]) == b"OK"
        assert isinstance(raw.command("LOCK.TRY", "t/new", creds[0]), int)
