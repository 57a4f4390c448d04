"""The embedded LockService: locks, sessions, timeouts, semaphores, elections, watches,
group commit, durability and replay. Every async test runs on asyncio and uvloop."""
from __future__ import annotations

import asyncio
import os
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coordcore.errors import (
    BadArgument,
    Cancelled,
    LockConflict,
    LockTimeout,
    NotLeader,
    NotLockHolder,
    ServiceClosed,
    SessionExpired,
    WatchLagged,
    WrongType,
)
from coordcore.locks.log import BatchLog
from coordcore.locks.machine import EventKind, LockMachine
from coordcore.locks.service import Grant, Leader, LockService, ManualClock
from coordcore.locks.store import FileStore

Run = Callable[..., Any]


async def settle(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_lock_and_release_tokens_rise(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            s = await svc.open_session(ttl=10)
            tokens = []
            for _ in range(5):
                async with svc.lock("k", s) as g:
                    assert isinstance(g, Grant) and g.key == b"k" and g.session == s.id
                    assert [c.session for c in svc.contenders("k")] == [s.id]
                    tokens.append(g.token)
                assert svc.contenders("k") == []
            assert tokens == sorted(set(tokens)) and tokens[-1] <= svc.revision
    run(main())


def test_fifo_handoff_wakes_on_commit(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory(tick_interval=0) as svc:
            sessions = [await svc.open_session(ttl=30, keepalive=False) for _ in range(5)]
            first = await svc.acquire("job", sessions[0])
            order: list[int] = []

            async def worker(i: int) -> None:
                g = await svc.acquire("job", sessions[i])
                order.append(i)
                await svc.release(g)

            tasks = []
            for i in range(1, 5):
                tasks.append(asyncio.ensure_future(worker(i)))
                await settle()  # queue them in a known order
            assert [c.session for c in svc.contenders("job")] == [s.id for s in sessions]
            assert not [c for c in svc.contenders("job")[1:] if c.holding]
            await svc.release(first)
            await asyncio.gather(*tasks)
            assert order == [1, 2, 3, 4]
    run(main())


def test_shared_readers_and_no_writer_starvation(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            r1, r2, w, r3 = [await svc.open_session(ttl=30) for _ in range(4)]
            g1 = await svc.acquire("db", r1, shared=True)
            g2 = await svc.acquire("db", r2, shared=True)  # readers share
            writer = asyncio.ensure_future(svc.acquire("db", w))
            await settle()
            late_reader = asyncio.ensure_future(svc.acquire("db", r3, shared=True))
            await settle()
            assert not writer.done() and not late_reader.done()  # queued behind the writer
            assert await svc.try_acquire("db", r3, shared=True) is None
            await svc.release(g1)
            await svc.release(g2)
            gw = await writer
            await settle()
            assert not late_reader.done()
            await svc.release(gw)
            g3 = await late_reader
            assert g3.shared and not gw.shared and g3.kind == gw.kind == "lock" and g3.token > gw.token
    run(main())


def test_try_and_zero_timeout(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            a, b = await svc.open_session(), await svc.open_session()
            g = await svc.try_acquire("t", a)
            assert g is not None
            rev = svc.revision
            assert await svc.try_acquire("t", b) is None
            with pytest.raises(LockTimeout):
                await svc.acquire("t", b, timeout=0)
            assert svc.revision == rev  # a failed try changes nothing
            await svc.release(g)
            assert (await svc.acquire("t", b, timeout=0)).token > g.token
    run(main())


def test_timeout_withdraws_the_waiter(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            a, b = await svc.open_session(), await svc.open_session()
            g = await svc.acquire("t", a)
            with pytest.raises(LockTimeout, match="within 0.05"):
                await svc.acquire("t", b, timeout=0.05)
            assert [c.session for c in svc.contenders("t")] == [a.id]  # b's wait is gone
            await svc.release(g)
            assert svc.contenders("t") == []  # nobody got it behind our back
    run(main())


def test_cancelled_waiter_never_holds(run: Run, rng: random.Random) -> None:
    """Cancel waiting tasks at random moments around the grant: afterwards nobody holds."""
    async def main() -> None:
        async with LockService.in_memory() as svc:
            a, b = await svc.open_session(), await svc.open_session()
            for _ in range(30):
                g = await svc.acquire("c", a)
                waiter = asyncio.ensure_future(svc.acquire("c", b))
                await settle(rng.randrange(0, 6))
                rel = asyncio.ensure_future(svc.release(g))
                await settle(rng.randrange(0, 8))
                waiter.cancel()
                await rel
                try:
                    got = await waiter
                except asyncio.CancelledError:
                    pass
                else:
                    await svc.release(got)  # it won fair and square before the cancel
                await settle(40)
                for _ in range(100):
                    if not svc.contenders("c"):
                        break
                    await asyncio.sleep(0.001)
                assert svc.contenders("c") == []
    run(main())


def test_expiry_releases_and_hands_over(run: Run) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with LockService.in_memory(clock=clock, tick_interval=0) as svc:
            s1 = await svc.open_session(ttl=5, keepalive=False)
            s2 = await svc.open_session(ttl=60, keepalive=False)
            g1 = await svc.acquire("k", s1)
            waiter = asyncio.ensure_future(svc.acquire("k", s2))
            await settle()
            clock.advance(4.9)
            await svc.tick()
            assert s1.alive and not waiter.done()
            clock.advance(0.2)
            await svc.tick()
            assert s1.expired and await s1.done == "expired"
            g2 = await waiter
            assert g2.token > g1.token
            with pytest.raises(SessionExpired):
                await svc.release(g1)
            with pytest.raises(SessionExpired):
                await svc.acquire("k", s1)
    run(main())


def test_lock_lost_inside_the_block_is_not_silent(run: Run) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with LockService.in_memory(clock=clock, tick_interval=0) as svc:
            s = await svc.open_session(ttl=1, keepalive=False)
            with pytest.raises(SessionExpired):
                async with svc.lock("k", s):
                    clock.advance(2)
                    await svc.tick()
            # ...but an exception from the body is not masked by the lost release.
            s = await svc.open_session(ttl=1, keepalive=False)
            with pytest.raises(KeyError):
                async with svc.lock("k", s):
                    clock.advance(2)
                    await svc.tick()
                    raise KeyError("body")
    run(main())


def test_waiters_learn_why_their_wait_ended(run: Run) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with LockService.in_memory(clock=clock, tick_interval=0) as svc:
            holder = await svc.open_session(ttl=100, keepalive=False)
            await svc.acquire("k", holder)
            closing = await svc.open_session(ttl=100, keepalive=False)
            expiring = await svc.open_session(ttl=1, keepalive=False)
            w1 = asyncio.ensure_future(svc.acquire("k", closing))
            w2 = asyncio.ensure_future(svc.acquire("k", expiring))
            await settle()
            await closing.close()
            with pytest.raises(Cancelled, match="closed"):
                await w1
            clock.advance(1.5)
            await svc.tick()
            with pytest.raises(SessionExpired, match="expired while waiting"):
                await w2
            assert [c.session for c in svc.contenders("k")] == [holder.id]
    run(main())


def test_background_keepalive_and_tick_expiry(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory(tick_interval=0.02) as svc:
            # Generous margins: the machine is shared, a keep-alive may be late by a lot.
            kept = await svc.open_session(ttl=1.5)
            idle = await svc.open_session(ttl=0.1, keepalive=False)
            await asyncio.wait_for(asyncio.shield(idle.done), 5)
            await asyncio.sleep(1.6)  # past kept's TTL: only its keep-alives saved it
            assert idle.expired and kept.alive
            await kept.close()
            assert await kept.done == "closed"
    run(main())


def test_semaphore(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            ss = [await svc.open_session() for _ in range(3)]
            g0 = await svc.acquire_semaphore("pool", ss[0], 2)
            async with svc.semaphore("pool", ss[1], 2) as g1:
                assert g1.kind == "semaphore"
                assert await svc.try_acquire_semaphore("pool", ss[2], 2) is None
                third = asyncio.ensure_future(svc.acquire_semaphore("pool", ss[2], 2))
                await settle()
                assert not third.done()
                with pytest.raises(BadArgument):
                    await svc.acquire_semaphore("pool", ss[2], 3)
                await svc.release(g0)
                g2 = await third
            info = svc.info("pool")
            assert info is not None and info.permits == 2
            assert [h.session for h in info.holders] == [ss[2].id]
            await svc.release(g2)
            with pytest.raises(NotLockHolder):
                await svc.release(g2)
    run(main())


def test_election_and_observe(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            a, b = await svc.open_session(), await svc.open_session()
            seen: list[Leader | None] = []

            async def observer() -> None:
                async for leader in svc.observe("leader/x"):
                    seen.append(leader)
                    if len(seen) == 5:
                        return

            obs = asyncio.ensure_future(observer())
            await settle()
            la = await svc.campaign("leader/x", a, "a-1")
            cand = asyncio.ensure_future(svc.campaign("leader/x", b, "b-1"))
            await settle()
            assert not cand.done()
            assert svc.leader("leader/x") == Leader(a.id, b"a-1", la.token)
            await svc.proclaim(la, "a-2")
            assert svc.leader("leader/x") == Leader(a.id, b"a-2", la.token)
            await svc.resign(la)
            lb = await cand
            with pytest.raises(NotLeader):
                await svc.proclaim(la, "stale")
            await svc.resign(lb)
            await asyncio.wait_for(obs, 5)
            assert seen == [None, Leader(a.id, b"a-1", la.token), Leader(a.id, b"a-2", la.token),
                            Leader(b.id, b"b-1", lb.token), None]
            assert svc.leader("leader/x") is None
    run(main())


def test_watch_prefix_in_revision_order(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            s = await svc.open_session()
            watch = svc.watch("a/")
            everything = svc.watch("")
            for key in ("a/1", "b/1", "a/2"):
                await svc.release(await svc.acquire(key, s))
            await s.close()
            got = [await watch.__anext__() for _ in range(4)]
            assert [(e.kind, e.key) for e in got] == [
                (EventKind.GRANT, b"a/1"), (EventKind.RELEASE, b"a/1"),
                (EventKind.GRANT, b"a/2"), (EventKind.RELEASE, b"a/2")]
            assert watch.pending() == 0
            all_events = []
            while everything.pending():
                all_events.append(await everything.__anext__())
            revs = [e.revision for e in all_events]
            # Unfiltered, the stream is gap-free: every revision once, in order.
            assert revs == list(range(everything.start_revision + 1, svc.revision + 1))
            assert all_events[-1].kind == EventKind.CLOSE
            watch.close()
            with pytest.raises(StopAsyncIteration):
                await watch.__anext__()
    run(main())


def test_slow_watcher_gets_a_clear_error(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            s = await svc.open_session()
            watch = svc.watch("k", buffer=5)
            for _ in range(5):
                await svc.release(await svc.acquire("k", s))
            delivered = [await watch.__anext__() for _ in range(5)]
            with pytest.raises(WatchLagged, match="fell more than 5 events behind") as info:
                await watch.__anext__()
            assert info.value.last_revision == delivered[-1].revision
    run(main())


def test_bad_input_is_refused_and_changes_nothing(run: Run) -> None:
    async def main() -> None:
        async with LockService.in_memory() as svc:
            s = await svc.open_session()
            other = await svc.open_session()
            g = await svc.acquire("held", other)
            before = svc.state_snapshot()
            for ttl in (-1, 0, math.nan, math.inf, 10**12):
                with pytest.raises(BadArgument):
                    await svc.open_session(ttl=ttl)
            with pytest.raises(WrongType):
                await svc.open_session(ttl="10")  # type: ignore[arg-type]
            with pytest.raises(WrongType):
                await svc.acquire(42, s)  # type: ignore[arg-type]
            with pytest.raises(BadArgument, match="key must be"):
                await svc.acquire("", s)
            with pytest.raises(BadArgument, match="key must be"):
                await svc.acquire("x" * 5000, s)
            for timeout in (-1, math.nan):
                with pytest.raises(BadArgument):
                    await svc.acquire("k", s, timeout=timeout)
            with pytest.raises(WrongType):
                await svc.acquire("k", "s1")  # type: ignore[arg-type]
            with pytest.raises(SessionExpired):
                await svc.acquire("k", 999_999)
            with pytest.raises(NotLockHolder):
                await svc.release(Grant(b"held", g.token, s.id, ticket=g.ticket))
            with pytest.raises(NotLockHolder):
                await svc.release(Grant(b"nothing-here", 5, s.id, ticket=5))
            with pytest.raises(WrongType):
                await svc.release("held")  # type: ignore[arg-type]
            with pytest.raises(BadArgument):
                await svc.acquire_semaphore("sem", s, 0)
            await svc.campaign("elect", s, "v")
            with pytest.raises(WrongType):  # an election is not a lock
                await svc.acquire("elect", other)
            with pytest.raises(BadArgument):
                svc.watch("", buffer=0)
            after = svc.state_snapshot()
            # Only the campaign changed the state.
            assert svc.info("held") is not None and svc.info("held").holders[0].session == other.id  # type: ignore[union-attr]
            assert before != after and svc.leader("elect") is not None
    run(main())


def test_group_commit_batches_concurrent_requests(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with LockService.open(tmp_path / "log") as svc:
            sessions = [await svc.open_session(ttl=30) for _ in range(32)]
            base = svc.stats.fsyncs

            async def cycles(s: Any, i: int) -> None:
                for _ in range(10):
                    async with svc.lock(f"k{i % 4}", s):
                        pass

            await asyncio.gather(*(cycles(s, i) for i, s in enumerate(sessions)))
            ops = 32 * 10 * 2
            fsyncs = svc.stats.fsyncs - base
            assert 0 < fsyncs < ops / 2, (fsyncs, svc.stats.bucket_counts())
            assert max(svc.stats.sizes) >= 8
    run(main())


def test_durable_restart_keeps_state_and_token_order(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        clock = ManualClock()
        async with LockService.open(tmp_path, clock=clock) as svc:
            s = await svc.open_session(ttl=60, keepalive=False)
            g = await svc.acquire("kept", s)
            sid, rev = s.id, svc.revision
            snap = svc.state_snapshot()
        async with LockService.open(tmp_path, clock=clock) as svc:
            assert svc.state_snapshot() == snap and svc.revision == rev
            assert svc.contenders("kept")[0].token == g.token
            again = svc.session(sid)
            await svc.release(Grant(b"kept", g.token, again.id, ticket=g.ticket))
            g2 = await svc.acquire("kept", again)
            assert g2.token > rev
    run(main())


def test_clock_never_goes_back(run: Run) -> None:
    async def main() -> None:
        times = iter([100.0, 50.0, 200.0, 10.0, 10.0, 300.0] + [300.0] * 100)
        async with LockService.in_memory(clock=lambda: next(times), tick_interval=0) as svc:
            seen = []
            s = await svc.open_session(ttl=1000, keepalive=False)
            for _ in range(5):
                await svc.keepalive(s)
                seen.append(svc.time_ms)
            assert seen == sorted(seen) and seen[-1] == 300_000
    run(main())


def workload_ops(rng: random.Random) -> list[tuple[str, int, str]]:
    return [(rng.choice(["lock", "shared", "sem", "try", "campaign"]), rng.randrange(4),
             f"key/{rng.randrange(6)}") for _ in range(60)]


async def random_workload(svc: LockService, rng: random.Random, clock: ManualClock) -> None:
    sessions = [await svc.open_session(ttl=rng.choice([2, 5, 60, 600]), keepalive=False) for _ in range(4)]

    async def task(ops: list[tuple[str, int, str]]) -> None:
        for op, who, key in ops:
            s = sessions[who]
            try:
                if op == "lock":
                    async with svc.lock(key + "L", s, timeout=0.01):
                        await asyncio.sleep(0)
                elif op == "shared":
                    async with svc.lock(key + "L", s, shared=True, timeout=0.01):
                        await asyncio.sleep(0)
                elif op == "sem":
                    async with svc.semaphore(key + "S", s, 2, timeout=0.01):
                        await asyncio.sleep(0)
                elif op == "try":
                    g = await svc.try_acquire(key + "L", s)
                    if g is not None:
                        await svc.release(g)
                else:
                    g = await svc.campaign(key + "E", s, f"v{who}", timeout=0.01)
                    await svc.proclaim(g, "again")
                    await svc.resign(g)
            except SessionExpired:
                if not sessions[who].alive:  # expired under the clock: a fresh one
                    sessions[who] = await svc.open_session(ttl=rng.choice([2, 5, 60]), keepalive=False)
            except (LockTimeout, NotLockHolder, NotLeader, Cancelled, LockConflict):
                pass
            except BadArgument as exc:  # two tasks of one session campaigning at once
                assert "already campaigns" in str(exc)
            if rng.random() < 0.05:
                clock.advance(rng.choice([0.5, 2.0]))

    await asyncio.gather(*(task(workload_ops(rng)) for _ in range(8)))
    await svc.tick()


def test_replay_from_empty_is_byte_identical(run: Run, tmp_path: Path, rng: random.Random) -> None:
    async def main() -> bytes:
        clock = ManualClock()
        async with LockService.open(tmp_path, clock=clock, durability="unsafe-no-fsync") as svc:
            await random_workload(svc, rng, clock)
            assert svc.stats.snapshots == 0
            return svc.state_snapshot()

    live = run(main())
    with BatchLog.open(tmp_path) as log:
        assert log.recovered.snapshot is None and len(log.recovered.records) > 20
        machine = LockMachine()
        for record in log.recovered.records:
            machine.apply(record.payload)
    assert machine.snapshot() == live


def test_snapshots_compact_and_recover(run: Run, tmp_path: Path, rng: random.Random) -> None:
    async def main() -> bytes:
        clock = ManualClock()
        async with LockService.open(tmp_path, clock=clock, snapshot_every_records=5,
                                    segment_bytes=4096) as svc:
            await random_workload(svc, rng, clock)
            assert svc.stats.snapshots >= 1
            s = await svc.open_session(ttl=600, keepalive=False)
            await svc.acquire("after-snapshot", s)
            await svc.snapshot()
            await svc.acquire("after-manual-snapshot", s)
            return svc.state_snapshot()

    live = run(main())
    assert len(list(tmp_path.glob("snapshot-*.snap"))) == 1

    async def reopen() -> bytes:
        async with LockService.open(tmp_path, clock=ManualClock(0)) as svc:
            return svc.state_snapshot()

    assert run(reopen()) == live


def test_segments_roll_over_under_load_and_recover(run: Run, tmp_path: Path) -> None:
    """Appends that start a new segment (a file create and a directory fsync, done off
    the event loop) interleave with the native writer's appends; all of it recovers."""
    async def main() -> bytes:
        async with LockService.open(tmp_path, segment_bytes=4096, snapshot_every_records=10**6) as svc:
            s = await svc.open_session(ttl=600, keepalive=False)
            for i in range(60):
                grants = await asyncio.gather(*(svc.acquire(f"seg/{i}/{j}", s) for j in range(8)))
                await asyncio.gather(*(svc.release(g) for g in grants[::2]))
            return svc.state_snapshot()

    live = run(main())
    assert len(list(tmp_path.glob("segment-*.log"))) >= 3

    async def reopen() -> bytes:
        async with LockService.open(tmp_path, clock=ManualClock(0)) as svc:
            return svc.state_snapshot()

    assert run(reopen()) == live


def test_close_fails_parked_waiters_and_ends_everything(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        svc = await LockService.open(tmp_path)
        a, b = await svc.open_session(), await svc.open_session()
        await svc.acquire("k", a)
        waiter = asyncio.ensure_future(svc.acquire("k", b))
        watch = svc.watch("")
        await settle()
        in_flight = asyncio.ensure_future(svc.acquire("other", a))
        await asyncio.sleep(0)
        await svc.close()
        assert (await in_flight).token > 0  # queued before close: finished and durable
        with pytest.raises(ServiceClosed):
            await waiter
        assert await a.done == "service closed"
        with pytest.raises(ServiceClosed):
            async for _ in watch:
                pass
        with pytest.raises(ServiceClosed):
            await svc.open_session()
        with pytest.raises(ServiceClosed):
            await svc.tick()
        await svc.close()  # idempotent
        async with LockService.open(tmp_path) as again:  # the log was released and is whole
            assert again.contenders("other")[0].session == a.id
    run(main())


def test_a_failing_disk_fails_the_batch_and_closes(run: Run, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with LockService.open(tmp_path) as svc:
            s = await svc.open_session()
            assert isinstance(svc._store, FileStore)
            log = svc._store._log

            # The log thread's write fails for real: it is handed a read-only descriptor.
            readonly = os.open(tmp_path / "readonly", os.O_RDONLY | os.O_CREAT, 0o644)
            real_begin = log.begin_append

            def begin_on_readonly(payload: bytes) -> tuple[int, bytes, int]:
                _, data, index = real_begin(payload)
                return readonly, data, index
            monkeypatch.setattr(log, "begin_append", begin_on_readonly)
            try:
                with pytest.raises(OSError, match="Bad file descriptor"):
                    await svc.acquire("k", s)
                with pytest.raises(ServiceClosed, match="failed"):
                    await svc.acquire("k", s)
            finally:
                os.close(readonly)
    run(main())


def test_open_reports_bad_paths(run: Run, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")

    async def main() -> None:
        with pytest.raises(NotADirectoryError):
            await LockService.open(tmp_path / "file")
        with pytest.raises(BadArgument):
            LockService.open(tmp_path, tick_interval=-1)
        with pytest.raises(BadArgument):
            LockService.open(tmp_path, durability="fast")  # type: ignore[arg-type]
    run(main())


def test_nothing_is_acknowledged_before_the_append_returns(run: Run, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer answers a batch only after the log's write+fsync came back; meanwhile
    the loop keeps serving and the next batch fills up."""
    import threading

    from coordcore.locks import store as store_module

    gate = threading.Event()
    gate.set()
    real_writer = store_module._SyncWriter

    class GatedWriter:
        """The native log writer, whose jobs start only once ``gate`` is set."""

        def __init__(self) -> None:
            self._real = real_writer()
            self.fileno = self._real.fileno

        def submit(self, fd: int, data: bytes, sync: bool) -> None:
            threading.Thread(target=lambda: (gate.wait(10), self._real.submit(fd, data, sync))).start()

        def result(self) -> int | None:
            return self._real.result()

        @property
        def last_sync_seconds(self) -> float:
            return float(self._real.last_sync_seconds)

        def close(self) -> None:
            self._real.close()

    monkeypatch.setattr(store_module, "_SyncWriter", GatedWriter)

    async def main() -> None:
        async with LockService.open(tmp_path) as svc:
            s = await svc.open_session()
            gate.clear()
            first = asyncio.ensure_future(svc.acquire("a", s))
            await asyncio.sleep(0.05)
            more = [asyncio.ensure_future(svc.acquire(f"b{i}", s)) for i in range(10)]
            await asyncio.sleep(0.05)
            assert not first.done() and not any(m.done() for m in more)
            assert len(svc.pipeline._queue) == 10  # the next batch accumulates during the fsync
            batches = svc.stats.batches
            gate.set()
            await asyncio.gather(first, *more)
            assert svc.stats.batches == batches + 2
    run(main())


def test_a_flood_is_cut_into_bounded_batches(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from coordcore.locks import pipeline

    monkeypatch.setattr(pipeline, "MAX_BATCH", 4)

    async def main() -> None:
        async with LockService.in_memory() as svc:
            s = await svc.open_session(keepalive=False)
            grants = await asyncio.gather(*(svc.acquire(f"k{i}", s) for i in range(10)))
            assert sorted(g.token for g in grants) == [g.token for g in grants]  # FIFO order kept
            assert max(svc.stats.sizes) <= 4 and svc.stats.commands == 11
    run(main())


def test_timeouts_under_contention_never_leave_a_holder(run: Run, rng: random.Random,
                                                        tmp_path: Path) -> None:
    """Many tasks with tiny timeouts on a few keys, on a durable log (so grants and
    timeouts race with fsyncs): at the end nothing is held, and every grant a task got
    was released by it (no grant leaked to a task that saw LockTimeout)."""
    async def main() -> None:
        async with LockService.open(tmp_path) as svc:
            # One session per task: a session is one owner (its second claim is HELD).
            sessions = [await svc.open_session(ttl=30) for _ in range(16)]
            outcomes = {"granted": 0, "timeout": 0}

            async def task(i: int) -> None:
                r = random.Random(rng.random())
                for _ in range(25):
                    key = f"hot/{r.randrange(2)}"
                    try:
                        async with svc.lock(key, sessions[i], timeout=r.choice([0, 0.0005, 0.002])):
                            outcomes["granted"] += 1
                            await asyncio.sleep(r.random() * 0.001)
                    except LockTimeout:
                        outcomes["timeout"] += 1

            await asyncio.gather(*(task(i) for i in range(16)))
            await settle(50)
            for key in ("hot/0", "hot/1"):
                for _ in range(200):
                    if not svc.contenders(key):
                        break
                    await asyncio.sleep(0.002)
                assert svc.contenders(key) == [], key
            assert outcomes["granted"] > 0 and outcomes["timeout"] > 0, outcomes
    run(main())


def test_retried_request_ids_and_session_handles(run: Run) -> None:
    """What a server needs: sessions by id, and a retried acquire (same request id) that
    answers the first grant again instead of granting twice."""
    async def main() -> None:
        async with LockService.in_memory() as svc:
            async with await svc.open_session(ttl=30, keepalive=False) as s:
                handle = svc.session(s.id)
                assert handle is s
                g1 = await svc.acquire("k", s.id, request_id=7)
                g2 = await svc.acquire("k", s.id, request_id=7)  # the retry
                assert g1.token == g2.token and len(svc.contenders("k")) == 1
                await svc.release(Grant(b"k", 0, s.id))  # token 0: its oldest hold
                assert svc.contenders("k") == []
                async with s.lock("k2") as g3:
                    assert svc.contenders("k2")[0].token == g3.token
                deadline = await svc.keepalive(s.id)
                assert deadline == svc.time_ms + 30_000
            assert await s.done == "closed"
            with pytest.raises(SessionExpired):
                svc.session(s.id)
            with pytest.raises(WrongType):
                svc.session("1")  # type: ignore[arg-type]
    run(main())


def test_downtime_counts_unless_told_otherwise(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """By default a session outlives a restart only if the downtime was shorter than its
    TTL; with count_downtime=False the clock resumes where the last batch left it."""
    async def write() -> int:
        async with LockService.open(tmp_path) as svc:
            s = await svc.open_session(ttl=1.0, keepalive=False)
            await svc.acquire("k", s)
            return s.id

    async def reopen(count_downtime: bool) -> bool:
        async with LockService.open(tmp_path, count_downtime=count_downtime) as svc:
            await svc.tick()
            return svc.session_info(sid) is not None

    sid = run(write())
    import time as real

    from coordcore.locks import service as service_module

    class Later:
        """The wall clock 1.2 s on (down for longer than the TTL), without the wait."""
        monotonic = staticmethod(real.monotonic)

        @staticmethod
        def time() -> float:
            return real.time() + 1.2
    monkeypatch.setattr(service_module, "time", Later)
    assert run(reopen(False)) is True  # resumed: ~1 s of TTL left, not yet over
    assert run(reopen(True)) is False  # the downtime counted: expired on the first tick
