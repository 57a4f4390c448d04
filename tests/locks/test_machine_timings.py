"""The lock machine's wait and hold time histograms (LockMachine.timings): what each kind
counts, the buckets, restored contenders, huge times, and that they are not state.
(The state machine tests check them against the events on random histories.)"""
from __future__ import annotations

from coordcore.locks import BatchBuilder, LockMachine
from coordcore.locks.machine import MAX_TIME_MS, Timings, tick

BOUNDS = [2**i for i in range(24)]


def counts_at(t: Timings, which: str, kind: str) -> dict[int, int]:
    """The non-empty buckets of one histogram, as {bucket index: count}."""
    counts, _ = getattr(t, which)[kind]
    return {i: n for i, n in enumerate(counts) if n}


def machine(sessions: int, ttl_ms: int = 60_000) -> tuple[LockMachine, BatchBuilder]:
    m, b = LockMachine(), BatchBuilder()
    for _ in range(sessions):
        b.open_session(ttl_ms)
    m.apply(b.build(0))
    b.clear()
    return m, b


def test_the_buckets_are_powers_of_two_ms_with_one_above() -> None:
    t = LockMachine().timings()
    assert t.bounds_ms == BOUNDS
    assert set(t.waits) == set(t.holds) == {"exclusive", "shared", "semaphore", "election", "pool"}
    assert all(c == ([0] * 25, 0) for c in list(t.waits.values()) + list(t.holds.values()))


def test_each_kind_counts_its_waits_and_holds() -> None:
    m, b = machine(4)
    b.acquire(1, "x")
    b.acquire(2, "x", wait=True)                 # waits 300 ms
    b.acquire(3, "r", shared=True)
    b.sem_acquire(1, "s", 1)
    b.sem_acquire(2, "s", 1, wait=True)          # waits 300 ms
    b.campaign(4, "e", "me")
    tokens = [r.token for r in m.apply(b.build(1_000)).results]
    b.clear()
    b.release(1, "x", tokens[0])
    b.sem_release(1, "s", tokens[3])
    m.apply(b.build(1_300))
    b.clear()
    b.release(3, "r", tokens[2])
    b.resign(4, "e", tokens[5])
    m.apply(b.build(1_301))
    t = m.timings()
    # Immediate grants wait 0 (bucket 0); 300 ms lies in (256, 512]: bucket 9.
    assert counts_at(t, "waits", "exclusive") == {0: 1, 9: 1} and t.waits["exclusive"][1] == 300
    assert counts_at(t, "waits", "semaphore") == {0: 1, 9: 1} and t.waits["semaphore"][1] == 300
    assert counts_at(t, "waits", "shared") == {0: 1} and counts_at(t, "waits", "election") == {0: 1}
    assert counts_at(t, "holds", "exclusive") == {9: 1} and t.holds["exclusive"][1] == 300
    assert counts_at(t, "holds", "semaphore") == {9: 1}
    assert counts_at(t, "holds", "shared") == {9: 1} and t.holds["shared"][1] == 301
    assert counts_at(t, "holds", "election") == {9: 1}
    assert t.holds["pool"] == ([0] * 25, 0)


def test_an_expired_session_counts_a_hold_and_a_cancelled_wait_counts_nothing() -> None:
    m, b = machine(1, ttl_ms=100)
    b.open_session(10_000)
    b.acquire(1, "x")
    b.acquire(2, "x", wait=True, timeout_ms=20)
    m.apply(b.build(0))
    m.apply(tick(50))   # the waiter times out: no wait observed (never granted)
    m.apply(tick(100))  # session 1 expires: its hold ends here
    t = m.timings()
    assert counts_at(t, "waits", "exclusive") == {0: 1}
    assert counts_at(t, "holds", "exclusive") == {7: 1} and t.holds["exclusive"][1] == 100


def test_restored_contenders_are_not_observed_until_their_next_grant() -> None:
    m, b = machine(2)
    b.acquire(1, "x")
    b.acquire(2, "x", wait=True)
    first = m.apply(b.build(10)).results[0].token
    b.clear()
    before = m.timings()
    snap = m.snapshot()
    m.restore(snap)  # the same object: the counts stay, the contenders' times are gone
    assert m.timings() == before
    b.release(1, "x", first)
    applied = m.apply(b.build(500))
    second = applied.events[-1].token
    assert m.timings() == before  # neither session 1's hold nor session 2's wait is known
    b.clear()
    b.release(2, "x", second)
    m.apply(b.build(540))
    assert counts_at(m.timings(), "holds", "exclusive") == {6: 1}  # 40 ms, granted after the restore
    assert m.snapshot() == LockMachine.from_snapshot(m.snapshot()).snapshot()
    assert LockMachine.from_snapshot(snap).timings() == LockMachine().timings()


def test_the_histograms_are_not_state() -> None:
    m, b = machine(2)
    b.acquire(1, "x")
    b.acquire(2, "x", wait=True)
    m.apply(b.build(10))
    fresh = LockMachine.from_snapshot(m.snapshot())
    assert fresh.snapshot() == m.snapshot() and fresh.timings() != m.timings()
    m.clear_timings()
    assert m.timings() == LockMachine().timings()


def test_huge_times_fall_in_the_last_bucket_and_the_sum_saturates() -> None:
    # Five holds from 0 to MAX_TIME_MS (2**62) ended by expiry: 5 * 2**62 ms is past 2**64.
    m, b = machine(5)
    for s in range(1, 6):
        b.acquire(s, f"k{s}")
    m.apply(b.build(0))
    m.apply(tick(MAX_TIME_MS))
    t = m.timings()
    assert counts_at(t, "holds", "exclusive") == {24: 5}
    assert t.holds["exclusive"][1] == 2**64 - 1
    # A batch time behind the machine's does not move it back: no negative duration.
    b.clear()
    b.open_session(1000)
    m.apply(b.build(MAX_TIME_MS))
    b.clear()
    b.acquire(6, "late")
    token = m.apply(b.build(5)).results[0].token
    b.clear()
    b.release(6, "late", token)
    m.apply(b.build(0))
    assert counts_at(m.timings(), "holds", "exclusive") == {0: 1, 24: 5}


def test_pool_leases_count_their_waits_holds_and_revocations() -> None:
    m, b = LockMachine(), BatchBuilder()
    b.open_session(10_000)
    b.pool_set("gpu", 4, grace_ms=100)
    b.tenant_set("gpu", "batch", band=0)
    b.tenant_set("gpu", "urgent", band=2)
    m.apply(b.build(0))
    b.clear()
    b.cap_acquire(1, "gpu", "batch", 4)
    m.apply(b.build(1))
    b.clear()
    b.cap_acquire(1, "gpu", "urgent", 2)
    m.apply(b.build(2))        # waits; the batch lease is asked to give back
    m.apply(tick(102))         # revoked after the grace, and the urgent wait granted
    t = m.timings()
    assert counts_at(t, "waits", "pool") == {0: 1, 7: 1} and t.waits["pool"][1] == 100
    assert counts_at(t, "holds", "pool") == {7: 1} and t.holds["pool"][1] == 101


def test_the_oldest_waiters_wait_in_batch_time_and_unknown_after_a_restore() -> None:
    m, b = machine(4)
    b.acquire(1, "x")
    b.acquire(2, "x", wait=True)                 # the oldest waiter: arrives at 100
    b.sem_acquire(1, "s", 1)
    b.sem_acquire(2, "s", 1, wait=True)
    m.apply(b.build(100))
    b.clear()
    b.acquire(3, "x", wait=True)                 # a younger one behind it
    m.apply(b.build(250))
    b.clear()
    assert m.oldest_wait_ms("x") == 150 and m.oldest_wait_ms("s") == 150  # machine time: 250
    assert m.oldest_wait_ms("x", now_ms=1_100) == 1_000
    assert m.oldest_wait_ms("x", now_ms=7) == 150  # never before the machine's time
    assert m.oldest_wait_ms("free") is None and m.oldest_wait_ms(b"\xff" * 5) is None
    b.acquire(4, "alone")
    m.apply(b.build(260))
    b.clear()
    assert m.oldest_wait_ms("alone") is None   # held, nobody waits
    snap = m.snapshot()
    assert m.oldest_wait_ms("x") == 160
    assert m.snapshot() == snap                # a read: the state is untouched
    restored = LockMachine.from_snapshot(snap)
    assert restored.snapshot() == snap
    info = restored.info("x")
    assert info is not None and info.waiter_count == 2
    assert restored.oldest_wait_ms("x") is None  # the snapshot keeps no arrival times
    # Once the unknown waiter is granted the next one's wait is unknown too (restored as
    # well); a waiter arriving after the restore is known.
    first = restored.info("x")
    assert first is not None
    b.release(1, "x", first.holders[0].token)
    b.acquire(1, "x", wait=True)
    restored.apply(b.build(300))
    b.clear()
    assert restored.oldest_wait_ms("x") is None
    granted = restored.info("x")
    assert granted is not None
    b.release(2, "x", granted.holders[0].token)
    restored.apply(b.build(320))
    b.clear()
    assert restored.oldest_wait_ms("x") == 20  # session 1 queued at 300, after the restore
    granted = restored.info("x")
    assert granted is not None
    b.release(3, "x", granted.holders[0].token)
    restored.apply(b.build(330))
    assert restored.oldest_wait_ms("x") is None  # session 1 now holds, nobody waits
    b.clear()
    b.acquire(2, "x", wait=True)
    restored.apply(b.build(340))
    assert restored.oldest_wait_ms("x", now_ms=400) == 60
