"""The native cores give back the C memory they take: each compiled module counts the
blocks it holds (``live_blocks()``, through cc_alloc.h), since tracemalloc cannot see
``malloc``. Every test works a machine, a ring or a lane hard, drops it, and checks the
module's count is back where it started (uvloop's debug builds check the same at test
teardown)."""
from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest

from coordcore._native import lockmachine as lm
from coordcore._native import lockwire as lw
from coordcore._native import ring as native_ring
from coordcore.errors import CoordcoreError
from coordcore.locks.machine import BatchBuilder, LockMachine, decode_results, tick
from coordcore.ring import HashRing, Rendezvous


def _blocks_after(module: Any, work: Callable[[], None]) -> tuple[int, int]:
    """(count before, count after) ``work`` ran and everything it made was collected."""
    gc.collect()
    before = module.live_blocks()
    work()
    gc.collect()
    return before, module.live_blocks()


def _machine_workout() -> None:
    m = LockMachine()
    b = BatchBuilder()
    for _ in range(40):
        b.open_session(ttl_ms=1_000, digest=b"d" * 32)
    m.apply(b.build(time_ms=1))
    b.clear()
    for s in range(1, 41):
        b.acquire(s, f"lock/{s % 7}", request_id=1, value=b"label", timeout_ms=500)
        b.acquire(s, "shared", shared=True, request_id=2)
        b.sem_acquire(s, "sem", 3, request_id=3, value=b"v")
        b.campaign(s, "election", b"candidate %d" % s, request_id=4)
    m.apply(b.build(time_ms=2))
    b.clear()
    b.proclaim(1, "election", b"new value")
    b.release(2, "lock/2", request_id=9)
    b.detach(100)
    m.apply(b.build(time_ms=3))
    snap = m.snapshot()
    copy = LockMachine.from_snapshot(snap)
    assert copy.snapshot() == snap
    with pytest.raises(CoordcoreError):
        LockMachine().restore(snap[:-9] + b"x" * 9)  # a damaged snapshot, refused part-way
    with pytest.raises(CoordcoreError):
        m.apply(b.build(time_ms=4)[:-3])  # a truncated record
    m.apply(tick(5_000))  # every session expires: their holds, waits and values go
    assert m.session_count == 0 and m.key_count == 0


def test_lock_machine_frees_what_it_allocates() -> None:
    before, after = _blocks_after(lm, _machine_workout)
    assert after == before


def test_lock_machine_memory_does_not_grow_with_use() -> None:
    """Keys, values and request tables freed inside a live machine, not only at its end."""
    m = LockMachine()
    b = BatchBuilder()

    def cycle(t: int) -> None:
        b.clear()
        b.open_session(ttl_ms=10)
        sid = decode_results(m.apply_raw(b.build(time_ms=t))[0])[0].value
        b.clear()
        for i in range(50):
            b.acquire(sid, b"key-%d" % i, request_id=i + 1, value=b"x" * 100)
        m.apply(b.build(time_ms=t + 1))
        b.clear()
        b.close_session(sid)
        m.apply(b.build(time_ms=t + 2))

    cycle(10)  # the pools and tables reach their size
    gc.collect()
    steady = lm.live_blocks()
    for t in range(20, 400, 20):
        cycle(t)
    assert lm.live_blocks() == steady
    del m
    gc.collect()
    assert lm.live_blocks() < steady


def _ring_workout() -> None:
    ring = HashRing({f"node-{i}": 1 + i % 3 for i in range(12)}, vnodes=40)
    keys = [f"key-{i}" for i in range(500)]
    ring.nodes_for_many(keys, 3)
    for key in keys[:50]:
        ring.nodes_for(key, 11)  # wider than the replica table: walks the ring (malloc'd scratch)
    ring.add_node("extra")
    ring.remove_node("node-0")
    Rendezvous([f"n{i}" for i in range(8)]).node_for_many(keys)


def test_ring_frees_what_it_allocates() -> None:
    before, after = _blocks_after(native_ring, _ring_workout)
    assert after == before


_SECRET = b"0123456789abcdef" * 2


def _pack(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _lane_workout() -> None:
    m = LockMachine()
    b = BatchBuilder()
    b.open_session(ttl_ms=60_000)
    m.apply(b.build(time_ms=1))
    dirty: list[Any] = []
    lane = lw.WireLane(None, lambda batch, i, owner, error: b"-ERR x\r\n", dirty)
    lane.verify = lambda handle: 1 if handle == b"1." + _SECRET else 0
    conns = [lw.WireConn(object(), 16, 4096) for _ in range(20)]
    for n, wire in enumerate(conns):
        wire.feed(_pack(b"LOCK.ACQUIRE", b"k%d" % n, b"1." + _SECRET, b"REQID", b"%d" % (n + 1)))
        wire.feed(_pack(b"PING") + b"$-1\r\n")  # left buffered for the command table
        wire.run_hot(lane, 10)
    half = lane.cut(10)  # a flood: the rest waits in the lane
    rest = lane.cut(100)
    assert half is not None and rest is not None
    for batch in (half, rest):
        raw, _ = m.apply_raw(lm.assemble(2, [batch.commands], batch.count))
        batch.resolve(raw, 0)
    for wire in conns:
        assert wire.take_output()
        assert wire.next_request() == [b"PING"]
    conns[0].feed(b"x" * 100_000)  # a burst that grows the buffer past what it keeps
    assert conns[0].take_input()


def test_lane_frees_what_it_allocates() -> None:
    before, after = _blocks_after(lw, _lane_workout)
    assert after == before


def test_every_native_core_counts_its_blocks() -> None:
    """The counters see allocations at all (a counter stuck at 0 would pass the tests above)."""
    m = LockMachine()
    assert lm.live_blocks() > 0
    wire = lw.WireConn(None, 4, 1024)
    base = lw.live_blocks()
    wire.feed(b"*1\r\n")
    assert lw.live_blocks() == base + 1
    del m, wire
