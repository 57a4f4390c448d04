"""Pool waits at a restart: a DETACH of pool waits (format version 5) gives each at most
the grace, then withdraws it unless its client re-attaches (retries with its request
id); a DETACH without it (every record before version 5) leaves them alone; replay and
snapshots stay byte-identical; the service detaches pool waits when it recovers."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordcore.locks import BatchBuilder, LockMachine, LockService
from coordcore.locks.machine import (
    FLAG_WAIT,
    POOL_BATCH_FORMAT_VERSION,
    POOL_DETACH_BATCH_FORMAT_VERSION,
    Detail,
    EventKind,
    Status,
    decode_batch,
)
from tests.locks.test_pool_retries import Recorder

Run = Callable[..., Any]


def _waiting(r: Recorder) -> Recorder:
    """Session 1 holds all 4 units; session 2 waits for 2 (request id 5, no timeout)."""
    r.one(lambda b: b.cap_acquire(1, "gpu", "a", 4, request_id=1)).results[0].unwrap()
    assert r.one(lambda b: b.cap_acquire(2, "gpu", "b", 2, request_id=5)).results[0].waiting
    return r


def test_a_detached_pool_wait_is_withdrawn_at_the_grace_unless_its_client_reattaches() -> None:
    r = _waiting(Recorder())
    b = BatchBuilder()
    b.detach(50, pools=True)
    record = b.build(r.time + 1)
    assert record[4] == POOL_DETACH_BATCH_FORMAT_VERSION
    r.time += 1
    r.records.append(record)
    out = r.m.apply(record)
    assert out.results[0].value == 1  # one pool wait detached (no lock waiters)
    info = r.m.pool("gpu")
    assert info is not None and [w.deadline_ms for w in info.waits] == [r.time + 50]
    midpoint = (len(r.records), r.m.snapshot())
    # Not yet: 48 ms later it still waits.
    assert r.apply(BatchBuilder(), 48).events == []
    # Its client is back: the retry re-attaches it, without a timeout (none sent).
    again = r.one(lambda b: b.cap_acquire(2, "gpu", "b", 2, request_id=5)).results[0]
    assert again.waiting and again.duplicate
    info = r.m.pool("gpu")
    assert info is not None and [w.deadline_ms for w in info.waits] == [0]
    assert r.apply(BatchBuilder(), 1000).events == []  # the grace passed: it waits on
    # Detached again, and this time nobody comes back: withdrawn at the grace.
    r.one(lambda b: b.detach(50, pools=True))
    assert r.apply(BatchBuilder(), 49).events == []
    ended = r.apply(BatchBuilder(), 1).events
    assert [(e.kind, e.session) for e in ended] == [(EventKind.CANCEL, 2)]
    gone = r.one(lambda b: b.cap_acquire(2, "gpu", "b", 2, request_id=5)).results[0]
    assert gone.status == Status.NOTFOUND and gone.detail == Detail.WAIT_ENDED
    # A detached wait with its own shorter deadline keeps it; one re-attached with a
    # TIMEOUT has it from the retry's time.
    assert r.one(lambda b: b.cap_acquire(2, "gpu", "b", 1, request_id=6, timeout_ms=20)).results[0].waiting
    assert r.one(lambda b: b.cap_acquire(2, "gpu", "b", 1, request_id=7)).results[0].waiting
    r.one(lambda b: b.detach(500, pools=True))
    info = r.m.pool("gpu")
    assert info is not None and [w.deadline_ms for w in info.waits] == [r.time - 2 + 20, r.time + 500]
    r.one(lambda b: b.cap_acquire(2, "gpu", "b", 1, request_id=7, timeout_ms=30))
    info = r.m.pool("gpu")
    assert info is not None and info.waits[1].deadline_ms == r.time + 30
    final = r.assert_replays(midpoint)  # its snapshot holds a detached wait
    assert LockMachine.from_snapshot(final).snapshot() == final


def test_a_detach_without_pools_leaves_pool_waits_alone_as_before() -> None:
    r = _waiting(Recorder())
    before = r.m.snapshot()
    b = BatchBuilder()
    b.detach(50)
    record = b.build(r.time)
    assert record[4] < POOL_BATCH_FORMAT_VERSION  # the record of a log without pools, as before
    assert r.m.apply(record).results[0].value == 0
    assert r.m.snapshot() == before  # nothing changed (the time neither)
    # The pool flag on a DETACH of an older record is refused, not applied.
    t, commands = decode_batch(record)
    old = bytearray(record)
    old[4] = POOL_BATCH_FORMAT_VERSION
    old[21] = FLAG_WAIT  # the command's flags byte
    res = r.m.apply(bytes(old)).results[0]
    assert res.status == Status.BADARG and res.detail == Detail.FLAGS
    assert r.m.snapshot() == before
    assert decode_batch(bytes(old))[1][0].flags == FLAG_WAIT and commands[0].flags == 0


def test_the_service_detaches_pool_waits_when_it_recovers(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "log"
        async with LockService.open(path, durability="unsafe-no-fsync") as svc:
            await svc.pools.define("gpu", 4)
            await svc.pools.define_tenant("gpu", "a")
            s = await svc.open_session(ttl=60, keepalive=False)
            big = await svc.pools.acquire("gpu", 4, s, tenant="a", track=False)
            lost = [asyncio.ensure_future(svc.pools.acquire("gpu", 1, s, tenant="a", request_id=rid, track=False))
                    for rid in (1, 2)]
            await asyncio.sleep(0.05)
            info = svc.pools.info("gpu")
            assert info is not None and [w.deadline_ms for w in info.waits] == [0, 0]
        await asyncio.gather(*lost, return_exceptions=True)  # their callers went with the service
        async with LockService.open(path, durability="unsafe-no-fsync", waiter_grace=0.3) as svc:
            info = svc.pools.info("gpu")
            assert info is not None and len(info.waits) == 2 and all(w.deadline_ms for w in info.waits)
            # The client of request 2 comes back; request 1's never does.
            back = asyncio.ensure_future(svc.pools.acquire("gpu", 1, s.id, tenant="a", request_id=2, track=False))
            await asyncio.sleep(0.6)
            info = svc.pools.info("gpu")
            assert info is not None and [w.deadline_ms for w in info.waits] == [0] and not back.done()
            await svc.pools.release(big)
            lease = await asyncio.wait_for(back, 5)
            info = svc.pools.info("gpu")
            assert info is not None and [x.token for x in info.leases] == [lease.token] and info.waits == ()

    run(main())

