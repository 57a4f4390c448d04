"""Retried pool requests (same request id): the machine answers the first outcome and
changes nothing, a retried acquire that was left waiting learns where that wait stands
now, a log of such retries replays (and resumes from a snapshot) to the same state, and
the embedded service hands a retry the first lease or the wait it took over."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from coordcore.errors import NotFound
from coordcore.locks import BatchBuilder, LockMachine, LockService
from coordcore.locks.machine import Detail, EventKind, Status

Run = Callable[..., Any]


class Recorder:
    """A machine with one pool (4 units, tenants a and b), every record kept."""

    def __init__(self) -> None:
        self.m = LockMachine()
        self.records: list[bytes] = []
        self.time = 0
        b = BatchBuilder()
        b.open_session(10**6)
        b.open_session(10**6)
        b.pool_set("gpu", 4, grace_ms=100)
        b.tenant_set("gpu", "a")
        b.tenant_set("gpu", "b")
        self.apply(b)

    def apply(self, b: BatchBuilder, dt: int = 1) -> Any:
        self.time += dt
        record = b.build(self.time)
        b.clear()
        self.records.append(record)
        return self.m.apply(record)

    def one(self, add: Callable[[BatchBuilder], object], dt: int = 1) -> Any:
        b = BatchBuilder()
        add(b)
        return self.apply(b, dt)

    def assert_replays(self, midpoint: tuple[int, bytes]) -> bytes:
        """Every record replayed from the start, and those after ``midpoint`` (record
        count, snapshot) from its snapshot, give this machine's state byte for byte."""
        self.m.check_invariants()
        final = self.m.snapshot()
        replay = LockMachine()
        for rec in self.records:
            replay.apply(rec)
        assert replay.snapshot() == final
        n, snap = midpoint
        half = LockMachine.from_snapshot(snap)
        for rec in self.records[n:]:
            half.apply(rec)
        assert half.snapshot() == final
        return final


def test_a_retried_acquire_answers_the_first_lease_and_holds_the_units_once() -> None:
    r = Recorder()
    first = r.one(lambda b: b.cap_acquire(1, "gpu", "a", 3, request_id=7)).results[0].unwrap()
    before = r.m.pool("gpu")
    again = r.one(lambda b: b.cap_acquire(1, "gpu", "a", 3, request_id=7))
    assert again.results[0].duplicate and again.results[0].token == first.token and again.events == []
    after = r.m.pool("gpu")
    assert after == before and after is not None and after.held == 3 and len(after.leases) == 1
    # Another session's request id 7 is its own: not a duplicate (it does not fit: BUSY).
    other = r.one(lambda b: b.cap_acquire(2, "gpu", "b", 3, wait=False, request_id=7)).results[0]
    assert not other.duplicate and other.status == Status.BUSY
    # A retried release answers OK again (not NOTHOLDER) and releases nothing more.
    assert r.one(lambda b: b.cap_release(1, "gpu", first.token, request_id=8)).results[0].ok
    again = r.one(lambda b: b.cap_release(1, "gpu", first.token, request_id=8)).results[0]
    assert again.ok and again.duplicate
    assert r.one(lambda b: b.cap_release(1, "gpu", first.token, request_id=9)).results[0].status == Status.NOTHOLDER


def test_a_retried_wait_learns_where_it_stands_and_replays_to_the_same_state() -> None:
    r = Recorder()
    big = r.one(lambda b: b.cap_acquire(1, "gpu", "a", 4, request_id=1)).results[0].unwrap()
    waiting = r.one(lambda b: b.cap_acquire(2, "gpu", "b", 2, request_id=1)).results[0]
    assert waiting.waiting
    state = r.m.pool("gpu")
    still = r.one(lambda b: b.cap_acquire(2, "gpu", "b", 2, request_id=1))
    assert still.results[0].waiting and still.results[0].duplicate and still.results[0].ticket == waiting.ticket
    assert still.events == [] and r.m.pool("gpu") == state  # a read: nothing changed
    midpoint = (len(r.records), r.m.snapshot())
    granted = r.one(lambda b: b.cap_release(1, "gpu", big.token))
    grant = [e for e in granted.events if e.kind == EventKind.GRANT]
    assert len(grant) == 1 and grant[0].ticket == waiting.ticket
    late = r.one(lambda b: b.cap_acquire(2, "gpu", "b", 2, request_id=1)).results[0]
    assert late.ok and late.duplicate and late.token == grant[0].token and late.ticket == waiting.ticket
    info = r.m.pool("gpu")
    assert info is not None and info.held == 2 and [x.token for x in info.leases] == [late.token]
    # A wait that timed out (its TIMEOUT in the log) answers NOTFOUND to its retry.
    r.one(lambda b: b.cap_acquire(1, "gpu", "a", 2, request_id=2)).results[0].unwrap()
    timed = r.one(lambda b: b.cap_acquire(1, "gpu", "a", 1, request_id=3, timeout_ms=10)).results[0]
    assert timed.waiting
    assert [e.kind for e in r.apply(BatchBuilder(), 10).events] == [EventKind.CANCEL]
    gone = r.one(lambda b: b.cap_acquire(1, "gpu", "a", 1, request_id=3, timeout_ms=10)).results[0]
    assert gone.status == Status.NOTFOUND and gone.detail == Detail.WAIT_ENDED and gone.duplicate
    # Released, then retried: gone too (the lease is no longer the session's).
    r.one(lambda b: b.cap_release(2, "gpu", late.token))
    gone = r.one(lambda b: b.cap_acquire(2, "gpu", "b", 2, request_id=1)).results[0]
    assert gone.status == Status.NOTFOUND and gone.detail == Detail.WAIT_ENDED
    r.assert_replays(midpoint)


def test_the_service_hands_a_retry_the_first_lease_or_the_wait_it_took_over(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            await svc.pools.define("gpu", 4)
            await svc.pools.define_tenant("gpu", "a")
            s1 = await svc.open_session(ttl=30, keepalive=False)
            s2 = await svc.open_session(ttl=30, keepalive=False)
            first = await svc.pools.acquire("gpu", 3, s1, tenant="a", request_id=5, track=False)
            again = await svc.pools.acquire("gpu", 3, s1, tenant="a", request_id=5, track=False)
            info = svc.pools.info("gpu")
            assert again.token == first.token and info is not None and info.held == 3
            # A wait, abandoned by its first caller (a connection that went) after a retry
            # took it over: the retry gets the grant; the abandoned one withdraws nothing.
            t1 = asyncio.ensure_future(svc.pools.acquire("gpu", 2, s2, tenant="a", request_id=9, track=False))
            await asyncio.sleep(0.05)
            t2 = asyncio.ensure_future(svc.pools.acquire("gpu", 2, s2, tenant="a", request_id=9, track=False))
            with pytest.raises(asyncio.CancelledError):
                await t1  # superseded by its retry
            await asyncio.sleep(0.05)
            info = svc.pools.info("gpu")
            assert info is not None and len(info.waits) == 1 and not t2.done()
            await svc.pools.release(first)
            lease = await asyncio.wait_for(t2, 5)
            info = svc.pools.info("gpu")
            assert info is not None and info.held == 2 and [x.token for x in info.leases] == [lease.token]
            # The wait ended before the retry: NOTFOUND (ask again with a new id).
            await svc.pools.release(lease)
            with pytest.raises(NotFound):
                await svc.pools.acquire("gpu", 2, s2, tenant="a", request_id=9, track=False)
    run(main())
