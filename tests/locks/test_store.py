"""The lock service on a log it has never seen: any LogStore works through the same
commit pipeline (the cluster's etcd log is the second), records are cut to the store's
bound, and a store that fails or loses records is handled as the file log's faults are.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from coordcore.errors import ServiceClosed
from coordcore.locks import LockMachine
from coordcore.locks.service import LockService, ManualClock
from coordcore.locks.store import LogStore, unwrap_snapshot

Run = Callable[..., Any]


class MemoryStore:
    """A LogStore in memory: records and snapshots survive the service (not the test).
    ``fail_next`` makes the next append fail; ``floor`` is what replay reports."""

    syncs = False
    max_in_flight = 1

    def __init__(self, max_record_bytes: int = 1 << 20) -> None:
        self.max_record_bytes = max_record_bytes
        self.records: list[bytes] = []
        self.snapshot: tuple[int, bytes] | None = None
        self.fail_next: BaseException | None = None
        self.floor = 0
        self.applied_revisions: list[int] = []
        self.closed = 0

    @property
    def next_index(self) -> int:
        return len(self.records) + 1

    async def replay(self, restore: Callable[[int, bytes], None], apply: Callable[[int, bytes], None]) -> int:
        start = 1
        if self.snapshot is not None:
            restore(*self.snapshot)
            start = self.snapshot[0] + 1
        for index in range(start, self.next_index):
            apply(index, self.records[index - 1])
        return self.floor

    def append(self, record: bytes) -> asyncio.Future[int]:
        assert len(record) <= self.max_record_bytes, "the pipeline passed the store's bound"
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.fail_next is not None:
            fut.set_exception(self.fail_next)
            self.fail_next = None
        else:
            self.records.append(record)
            fut.set_result(len(self.records))
        return fut

    async def write_snapshot(self, index: int, payload: bytes) -> None:
        self.snapshot = (index, payload)

    def applied(self, revision: int) -> None:
        self.applied_revisions.append(revision)

    async def close(self) -> None:
        self.closed += 1


def test_memory_store_is_a_log_store() -> None:
    store: LogStore = MemoryStore()  # mypy checks the protocol; this checks it at run time
    assert store.next_index == 1


def test_the_service_runs_and_recovers_on_any_store(run: Run) -> None:
    store = MemoryStore()
    clock = ManualClock()

    async def first() -> tuple[int, int]:
        async with LockService.open_store(store, clock=clock) as svc:
            s = await svc.open_session(ttl=60, keepalive=False)
            g = await svc.acquire("jobs/1", s)
            await svc.acquire_semaphore("pool", s, 3)
            await svc.snapshot()
            await svc.acquire("jobs/2", s)
            return s.id, g.token

    sid, token = run(first())
    assert store.closed == 1 and store.snapshot is not None and len(store.records) >= 3
    assert store.applied_revisions == sorted(store.applied_revisions)

    async def second() -> None:
        async with LockService.open_store(store, clock=clock) as svc:
            assert [c.session for c in svc.contenders("jobs/1")] == [sid]
            assert [c.session for c in svc.contenders("jobs/2")] == [sid]
            s2 = await svc.open_session(ttl=60, keepalive=False)
            g = await svc.acquire("other", s2)
            assert g.token > token  # tokens keep rising across the restart
    run(second())


def test_records_are_cut_to_the_stores_bound_in_fifo_order(run: Run) -> None:
    store = MemoryStore(max_record_bytes=600)

    async def main() -> None:
        async with LockService.open_store(store) as svc:
            s = await svc.open_session(ttl=60, keepalive=False)
            grants = await asyncio.gather(*(svc.acquire(f"key/{i:04d}", s) for i in range(300)))
            assert [g.token for g in grants] == sorted(g.token for g in grants)
            assert svc.stats.batches > 10  # one flood, many records
            state = svc.state_snapshot()
        machine = LockMachine()
        for record in store.records:
            assert len(record) <= 600
            machine.apply_raw(record)
        assert machine.snapshot() == state  # the records replay to the same state
    run(main())


def test_a_failed_append_acknowledges_nothing_and_stops_the_service(run: Run) -> None:
    store = MemoryStore()

    async def main() -> None:
        async with LockService.open_store(store) as svc:
            s = await svc.open_session(ttl=60, keepalive=False)
            revision = svc.revision
            store.fail_next = OSError("the log went away")
            with pytest.raises(OSError, match="went away"):
                await svc.acquire("k", s)
            assert svc.revision == revision and svc.contenders("k") == []
            with pytest.raises(ServiceClosed, match="failed"):
                await svc.acquire("k", s)
    run(main())


def test_a_store_that_lost_records_raises_the_revision_and_snapshots(run: Run) -> None:
    store = MemoryStore()

    async def first() -> int:
        async with LockService.open_store(store) as svc:
            s = await svc.open_session(ttl=60, keepalive=False)
            return (await svc.acquire("k", s)).token

    token = run(first())
    store.records.clear()  # lost; the store knows tokens up to 1000 may have been issued
    store.floor = 1000

    async def second() -> None:
        async with LockService.open_store(store) as svc:
            assert svc.revision == 1000
            s = await svc.open_session(ttl=60, keepalive=False)
            assert (await svc.acquire("k", s)).token > 1000 > token
    run(second())
    assert store.snapshot is not None and store.snapshot[0] == 0
    assert unwrap_snapshot(store.snapshot[1], 0, "memory")  # framed as every snapshot


def test_a_failed_recovery_closes_the_store(run: Run) -> None:
    store = MemoryStore()
    store.records.append(b"not a batch record")

    async def main() -> None:
        with pytest.raises(Exception, match="record 1"):
            await LockService.open_store(store)
    run(main())
    assert store.closed == 1


class GatedStore(MemoryStore):
    """A MemoryStore whose appends, once ``gate`` is set, wait until it opens: a log
    that cannot commit for a while (etcd without a leader, a stalled disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None

    def append(self, record: bytes) -> asyncio.Future[int]:
        gate = self.gate
        if gate is None:
            return super().append(record)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()

        async def later() -> None:
            await gate.wait()
            fut.set_result(await MemoryStore.append(self, record))

        self.pending = loop.create_task(later())
        return fut


@pytest.mark.parametrize("stall_s", [0.5, 20.0])
def test_time_in_which_nothing_could_commit_does_not_expire_sessions(run: Run, stall_s: float) -> None:
    """A keep-alive that waited behind a stalled append keeps its session: past
    STALL_GRACE_MS the batch clock leaves the stall out. A short stall counts in full."""
    store = GatedStore()
    clock = ManualClock()

    async def main() -> None:
        async with LockService.open_store(store, clock=clock) as svc:
            s = await svc.open_session(ttl=5, keepalive=False)
            await svc.acquire("jobs/1", s)
            clock.advance(4.0)  # 1 s of the TTL left
            store.gate = asyncio.Event()
            keep = asyncio.ensure_future(svc.keepalive(s))
            await asyncio.sleep(0.05)  # its batch is the one in flight
            clock.advance(stall_s)
            store.gate.set()
            store.gate = None
            await keep
            await svc.tick()
            assert [c.session for c in svc.contenders("jobs/1")] == [s.id]
            # The clock then runs on as before: the session ends a TTL after its renewal.
            clock.advance(5.0 + 0.1 + (stall_s if stall_s < 1.0 else 1.0))
            await svc.tick()
            assert svc.contenders("jobs/1") == []

    run(main())
