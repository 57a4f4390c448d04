"""FencedResource: stale tokens are refused per key; with the lock service, writers that
hold the lock are always admitted and a writer that lost it is refused."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from coordcore.errors import BadArgument, NotFound, NotLockHolder, WrongType
from coordcore.locks.fencing import FencedResource
from coordcore.locks.service import LockService, ManualClock

Run = Callable[..., Any]


def test_newest_token_per_key() -> None:
    r = FencedResource[str]()
    r.write("a", 5, "a5")
    r.write("a", 5, "a5 again")  # the same holder writes twice
    r.write("b", 1, "b1")  # keys are independent
    with pytest.raises(NotLockHolder, match="token 4 for 'a' is older than the newest seen \\(5\\)"):
        r.write("a", 4, "stale")
    assert r.read("a") == "a5 again" and r.newest("a") == 5  # the refused write changed nothing
    with pytest.raises(NotLockHolder):
        r.check(b"a", 1)  # a str key and its UTF-8 bytes are one key (one lock, one fence)
    r.write("a", 9, "a9")
    assert (r.read("a"), r.newest("a"), len(r)) == ("a9", 9, 2)
    with pytest.raises(NotFound):
        r.read("nothing")


def test_bad_arguments() -> None:
    r = FencedResource[int]()
    with pytest.raises(WrongType):
        r.check(1, 1)  # type: ignore[arg-type]
    with pytest.raises(WrongType):
        r.check("k", "1")  # type: ignore[arg-type]
    with pytest.raises(WrongType):
        r.check("k", True)
    with pytest.raises(BadArgument):
        r.check("k", -1)
    assert len(r) == 0


def test_threads_never_lose_the_newest() -> None:
    r = FencedResource[int]()
    refused = []

    def writer(start: int) -> None:
        for t in range(start, 3000, 4):
            try:
                r.write("k", t, t)
            except NotLockHolder:
                refused.append(t)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.newest("k") == 2999 and r.read("k") == 2999
    assert all(t < 2999 for t in refused)


def test_lock_holders_are_admitted_and_never_overlap(run: Run) -> None:
    async def main() -> None:
        store = FencedResource[int]()
        inside: dict[str, int] = {}
        async with LockService.in_memory() as svc:
            async def client(i: int) -> None:
                s = await svc.open_session(ttl=30)
                for n in range(20):
                    key = f"res/{(i + n) % 3}"
                    async with svc.lock(key, s) as g:
                        inside[key] = inside.get(key, 0) + 1
                        assert inside[key] == 1, "two holders inside at once"
                        store.write(key, g.token, i)  # never refused: tokens only rise
                        await asyncio.sleep(0)
                        inside[key] -= 1
                await s.close()
            await asyncio.gather(*(client(i) for i in range(12)))
        assert len(store) == 3
    run(main())


def test_paused_client_with_a_real_service(run: Run) -> None:
    async def main() -> None:
        clock = ManualClock()
        store = FencedResource[str]()
        async with LockService.in_memory(clock=clock, tick_interval=0) as svc:
            slow = await svc.open_session(ttl=2, keepalive=False)
            g1 = await svc.acquire("file", slow)
            store.write("file", g1.token, "v1")
            clock.advance(3)  # slow pauses past its TTL
            await svc.tick()
            fast = await svc.open_session(ttl=2, keepalive=False)
            g2 = await svc.acquire("file", fast)
            store.write("file", g2.token, "v2")
            with pytest.raises(NotLockHolder):
                store.write("file", g1.token, "late v1")
            assert store.read("file") == "v2"
    run(main())


def test_a_key_as_str_and_as_its_utf8_bytes_is_one_fence() -> None:
    # Before: check("jobs/42", 9) then check(b"jobs/42", 3) was admitted, a fencing hole
    # (the lock service treats both spellings as one lock).
    from coordcore.errors import NotLockHolder
    from coordcore.locks.fencing import FencedResource

    r: FencedResource[str] = FencedResource()
    r.check("jobs/42", 9)
    with pytest.raises(NotLockHolder):
        r.check(b"jobs/42", 3)
    r.write("ключ", 5, "a")
    with pytest.raises(NotLockHolder):
        r.write("ключ".encode(), 4, "b")
    assert r.read("ключ".encode()) == "a" and r.newest(b"jobs/42") == 9 and len(r) == 2
