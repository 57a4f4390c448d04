"""The commit pipeline on a store that takes several appends at once (as etcd's log
does): batches are cut and appended while earlier ones are in flight, applied and
answered strictly in order; a failure fails every later batch in flight and nothing
after it is acknowledged; batch time never goes back across the batches in flight; a
snapshot waits until none is in flight.
"""
from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

from coordcore.errors import ServiceClosed
from coordcore.locks import LockMachine
from coordcore.locks.machine import decode_batch
from coordcore.locks.service import LockService
from coordcore.locks.store import FileStore, LogStore

Run = Callable[..., Any]


class PipelinedStore:
    """A LogStore in memory with up to ``max_in_flight`` appends outstanding. With
    ``auto`` each append settles after a random short delay (always in order, as the
    protocol asks); without it the test settles them with :meth:`settle`. ``records``
    holds what became durable; ``started`` every record appended, in order."""

    syncs = False

    def __init__(self, max_in_flight: int, *, auto: bool = True, seed: int = 0) -> None:
        self.max_in_flight = max_in_flight
        self.max_record_bytes = 1 << 20
        self.auto = auto
        self.rng = random.Random(seed)
        self.records: list[bytes] = []
        self.started: list[bytes] = []
        self.pending: list[asyncio.Future[int]] = []
        self.most_in_flight = 0
        self.in_flight_at_snapshot: int | None = None
        self.snapshot: tuple[int, bytes] | None = None

    @property
    def next_index(self) -> int:
        return len(self.started) + 1

    async def replay(self, restore: Callable[[int, bytes], None], apply: Callable[[int, bytes], None]) -> int:
        return 0

    def append(self, record: bytes) -> asyncio.Future[int]:
        live = [f for f in self.pending if not f.done()]
        assert len(live) < self.max_in_flight, "the pipeline passed max_in_flight"
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self.started.append(record)
        self.pending.append(fut)
        self.most_in_flight = max(self.most_in_flight, len(live) + 1)
        if self.auto:
            index = len(self.started)
            delay = self.rng.uniform(0, 0.003)
            loop.call_later(delay, self._durable_upto, index)
        return fut

    def _durable_upto(self, index: int) -> None:
        # In order: record i is durable only with everything before it.
        for i in range(len(self.records), index):
            self.records.append(self.started[i])
            if not self.pending[i].done():
                self.pending[i].set_result(i + 1)

    def settle(self, index: int, error: BaseException | None = None) -> None:
        """Resolve append ``index`` (1-based) alone, out of order if the test wants."""
        fut = self.pending[index - 1]
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(index)

    async def write_snapshot(self, index: int, payload: bytes) -> None:
        self.in_flight_at_snapshot = sum(not f.done() for f in self.pending)
        self.snapshot = (index, payload)

    def applied(self, revision: int) -> None:
        pass

    async def close(self) -> None:
        pass


def test_the_stores_declare_their_depth() -> None:
    assert FileStore.max_in_flight == 1  # single node: one fsync at a time, as before
    store: LogStore = PipelinedStore(4)  # mypy checks the protocol
    assert store.max_in_flight == 4


def test_a_store_without_room_is_refused(run: Run) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="max_in_flight"):
            await LockService.open_store(PipelinedStore(0))
    run(main())


@pytest.mark.parametrize("depth", [2, 4, 8])
def test_many_batches_in_flight_apply_in_order(run: Run, depth: int) -> None:
    store = PipelinedStore(depth, seed=depth)

    async def main() -> None:
        async with LockService.open_store(store) as svc:
            sessions = [await svc.open_session(ttl=60, keepalive=False) for _ in range(16)]
            tokens: list[list[int]] = [[] for _ in sessions]

            jitter = random.Random(depth)

            async def worker(i: int) -> None:
                for n in range(40):
                    # Staggered arrivals (as over a network): lockstep clients would all
                    # wait for the same batch and never need a second one in flight.
                    await asyncio.sleep(jitter.uniform(0, 0.002))
                    g = await svc.acquire(f"k/{(i + n) % 5}", sessions[i])
                    tokens[i].append(g.token)
                    await svc.release(g)

            await asyncio.gather(*(worker(i) for i in range(len(sessions))))
            state = svc.state_snapshot()
            assert svc.stats.batches == len(store.records)
        assert store.most_in_flight > 1, "never more than one append in flight"
        for t in tokens:
            assert t == sorted(t) and len(set(t)) == len(t)
        every = [x for t in tokens for x in t]
        assert len(set(every)) == len(every)  # no token issued twice
        machine = LockMachine()
        times = []
        for record in store.records:
            times.append(decode_batch(record)[0])
            machine.apply_raw(record)
        assert machine.snapshot() == state  # durable records replay to the served state
        assert times == sorted(times)
    run(main())


def test_a_failure_mid_flight_fails_every_later_batch(run: Run) -> None:
    store = PipelinedStore(4, auto=False)

    async def main() -> None:
        svc = await LockService.open_store(store)
        try:
            opened = asyncio.ensure_future(svc.open_session(ttl=60, keepalive=False))
            await asyncio.sleep(0.01)
            store.settle(1)
            s = await opened
            revision = svc.revision
            first = asyncio.ensure_future(svc.acquire("a", s))
            await asyncio.sleep(0.01)  # batch 2 on its way
            second = asyncio.ensure_future(svc.acquire("b", s))
            await asyncio.sleep(0.01)  # batch 3 too
            third = asyncio.ensure_future(svc.acquire("c", s))
            await asyncio.sleep(0.01)  # and batch 4
            assert len(store.started) == 4 and not any(f.done() for f in store.pending[1:])
            # The last two become "durable" before the one before them fails: they must
            # not be acknowledged, since each follows the failed record.
            store.settle(4)
            store.settle(3)
            await asyncio.sleep(0.01)
            assert not (first.done() or second.done() or third.done())  # strictly in order
            store.settle(2, OSError("the log went away"))
            for fut in (first, second, third):
                with pytest.raises(OSError, match="went away"):
                    await fut
            assert svc.revision == revision and svc.contenders("a") == svc.contenders("c") == []
            with pytest.raises(ServiceClosed, match="failed"):
                await svc.acquire("d", s)
        finally:
            await svc.close()
    run(main())


def test_a_failure_after_acknowledged_batches_keeps_them(run: Run) -> None:
    store = PipelinedStore(3, auto=False)

    async def main() -> None:
        svc = await LockService.open_store(store)
        try:
            opened = asyncio.ensure_future(svc.open_session(ttl=60, keepalive=False))
            await asyncio.sleep(0.01)
            store.settle(1)
            s = await opened
            first = asyncio.ensure_future(svc.acquire("a", s))
            await asyncio.sleep(0.01)
            second = asyncio.ensure_future(svc.acquire("b", s))
            await asyncio.sleep(0.01)
            store.settle(2)
            assert (await first).token > 0  # acknowledged while batch 3 is in flight
            store.settle(3, OSError("disk gone"))
            with pytest.raises(OSError, match="disk gone"):
                await second
            assert [c.session for c in svc.contenders("a")] == [s.id]
        finally:
            await svc.close()
    run(main())


def test_batch_time_never_goes_back_across_batches_in_flight(run: Run) -> None:
    store = PipelinedStore(4, auto=False)
    now = [1_700_000_000.0]

    async def main() -> None:
        svc = await LockService.open_store(store, clock=lambda: now[0])
        try:
            opened = asyncio.ensure_future(svc.open_session(ttl=60, keepalive=False))
            await asyncio.sleep(0.01)
            now[0] -= 30.0  # the clock steps back while batch 1 is in flight
            other = asyncio.ensure_future(svc.open_session(ttl=60, keepalive=False))
            await asyncio.sleep(0.01)
            assert len(store.started) == 2
            store.settle(1)
            store.settle(2)
            await opened, await other
        finally:
            await svc.close()
        t1, t2 = (decode_batch(r)[0] for r in store.started[:2])
        assert t2 >= t1
    run(main())


def test_a_snapshot_waits_for_the_batches_in_flight(run: Run) -> None:
    store = PipelinedStore(4, seed=7)

    async def main() -> None:
        async with LockService.open_store(store) as svc:
            s = await svc.open_session(ttl=60, keepalive=False)
            acquires = [asyncio.ensure_future(svc.acquire(f"k{i}", s)) for i in range(50)]
            await asyncio.sleep(0)
            snap = svc.snapshot()
            await asyncio.gather(snap, *acquires)
        assert store.snapshot is not None and store.in_flight_at_snapshot == 0
        assert store.snapshot[0] <= len(store.records)
    run(main())
