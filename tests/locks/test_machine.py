"""The lock machine's rules, one scenario at a time (the random comparison with the
reference model is in test_machine_state.py, bad input in test_machine_refuses_bad_input.py)."""
from __future__ import annotations

from collections.abc import Callable

import pytest

from coordcore import errors
from coordcore._native import lockmachine as native
from coordcore.locks import BatchBuilder, EventKind, Kind, LockMachine, Mode, Op, Status, decode_batch, tick
from coordcore.locks import machine as facade
from coordcore.locks.machine import BATCH_FORMAT_VERSION, Applied, Detail, Event, Result, decode_events, decode_results
from tests.models.lock_model import LockModel, crc32c


class Harness:
    """A native machine and the model side by side; every step is checked on both."""

    def __init__(self) -> None:
        self.m = LockMachine()
        self.model = LockModel()
        self.records: list[bytes] = []

    def step(self, time_ms: int, build: Callable[[BatchBuilder], object] = lambda b: None, *,
             version: int = BATCH_FORMAT_VERSION) -> Applied:
        b = BatchBuilder()
        build(b)
        record = b.build(time_ms)
        if version != BATCH_FORMAT_VERSION:  # an older record of the same layout
            record = record[:4] + bytes([version]) + record[5:]
        self.records.append(record)
        applied = self.m.apply(record)
        results, events = self.model.apply(record)
        assert [tuple(r) for r in applied.results] == results
        assert [tuple(e) for e in applied.events] == events
        assert self.m.snapshot() == self.model.snapshot()
        self.m.check_invariants()
        return applied

    def open(self, n: int, ttl: int = 10_000, time_ms: int | None = None) -> list[int]:
        t = self.m.time_ms if time_ms is None else time_ms
        applied = self.step(t, lambda b: [b.open_session(ttl) for _ in range(n)])
        return [r.session_id for r in applied.results]

    def one(self, time_ms: int, build: Callable[[BatchBuilder], object]) -> tuple[Result, list[Event]]:
        applied = self.step(time_ms, build)
        assert len(applied.results) == 1
        return applied.results[0], applied.events


@pytest.fixture
def h() -> Harness:
    return Harness()


def kinds(events: list[Event]) -> list[tuple[str, int]]:
    return [(EventKind(e.kind).name, e.session) for e in events]


def test_constants_match_the_native_module() -> None:
    for name in ("BATCH_FORMAT_VERSION", "MAX_KEY_SIZE", "MAX_VALUE_SIZE", "MIN_TTL_MS", "MAX_TTL_MS",
                 "MAX_PERMITS", "MAX_TIME_MS", "MAX_BATCH_COMMANDS", "REQUEST_WINDOW"):
        assert getattr(facade, name) == getattr(native, name), name


def test_crc32c_known_vector() -> None:
    assert native.crc32c(b"123456789") == 0xE3069283 == crc32c(b"123456789")
    assert native.crc32c(b"6789", native.crc32c(b"12345")) == 0xE3069283
    assert native.crc32c(b"") == 0


@pytest.mark.parametrize("crc", [native.crc32c, native._crc32c_portable], ids=["native", "portable"])
def test_crc32c_agrees_with_google_crc32c(crc: Callable[..., int]) -> None:
    """The one CRC-32C (log records, the revision mark, snapshots), both of its paths,
    against the reference library: every length around the 8-byte steps, odd starts,
    continuation, and a record of a megabyte."""
    import random

    import google_crc32c

    data = random.Random(7).randbytes(1 << 20)
    for n in [*range(70), 1000, 4097, len(data)]:
        for start in (0, 1, 3):
            part = memoryview(data)[start:start + n]
            assert crc(part) == google_crc32c.value(bytes(part)), (n, start)
    assert crc(data[500:], crc(data[:500])) == google_crc32c.value(data)


def test_sessions_open_keepalive_close(h: Harness) -> None:
    a, b = h.open(2, ttl=100, time_ms=1000)
    assert (a, b) == (1, 2) and h.m.next_session_id == 3
    s = h.m.session(a)
    assert s is not None and (s.ttl_ms, s.deadline_ms) == (100, 1100)
    assert h.m.next_deadline() == 1100
    r, events = h.one(1050, lambda bb: bb.keepalive(a))
    assert r.ok and r.deadline_ms == 1150 and events == []  # keep-alive: no event, no revision
    r, events = h.one(1060, lambda bb: bb.close_session(a))
    assert r.ok and kinds(events) == [("CLOSE", a)]
    assert h.m.session(a) is None
    r, _ = h.one(1060, lambda bb: bb.close_session(a))
    assert r.status == Status.NOSESSION and isinstance(r.exception(), errors.SessionExpired)
    # b expires at its deadline exactly (deadline <= batch time), a tick is enough
    assert h.step(1099).events == []
    assert kinds(h.step(1100).events) == [("EXPIRE", b)]
    assert h.m.session_count == 0 and h.m.next_deadline() is None


def test_exclusive_lock_fifo_and_fencing_tokens(h: Harness) -> None:
    a, b, c = h.open(3)
    r1, _ = h.one(1, lambda bb: bb.acquire(a, "k"))
    r2, _ = h.one(1, lambda bb: bb.acquire(b, "k"))
    r3, _ = h.one(1, lambda bb: bb.acquire(c, "k"))
    assert r1.ok and r1.token == r1.ticket == h.m.revision - 2
    assert r2.waiting and r3.waiting and r2.ticket < r3.ticket and r2.token == 0
    assert [x.session for x in h.m.contenders("k")] == [a, b, c]
    r, events = h.one(2, lambda bb: bb.release(a, "k", r1.token))
    assert r.ok and r.token == r1.token
    assert [(EventKind(e.kind).name, e.session) for e in events] == [("RELEASE", a), ("GRANT", b)]
    grant = events[1]
    assert grant.ticket == r2.ticket and grant.token == grant.revision > r1.token
    info = h.m.info("k")
    assert info is not None and info.kind == Kind.LOCK and [x.session for x in info.holders] == [b]
    # a try on a held lock is BUSY and changes nothing; as an exception, a LockTimeout
    before = h.m.snapshot()
    r, events = h.one(2, lambda bb: bb.acquire(a, "k", wait=False))
    assert r.status == Status.BUSY and events == [] and isinstance(r.exception(), errors.LockTimeout)
    assert h.m.snapshot() == before


def test_a_waiting_writer_blocks_later_readers(h: Harness) -> None:
    r1, r2, w, r3 = h.open(4)
    h.step(1, lambda b: (b.acquire(r1, "rw", shared=True), b.acquire(r2, "rw", shared=True)))
    assert len(h.m.info("rw").holders) == 2  # type: ignore[union-attr]
    res = h.step(1, lambda b: (b.acquire(w, "rw"), b.acquire(r3, "rw", shared=True))).results
    assert res[0].waiting and res[1].waiting  # r3 queues behind the writer
    assert h.step(1, lambda b: b.acquire(r3, "rw", shared=True, wait=False)).results[0].status == Status.BUSY
    events = h.step(2, lambda b: b.release(r1, "rw")).events
    assert kinds(events) == [("RELEASE", r1)]  # r2 still reads
    events = h.step(3, lambda b: b.release(r2, "rw")).events
    assert kinds(events) == [("RELEASE", r2), ("GRANT", w)]
    events = h.step(4, lambda b: b.release(w, "rw")).events
    assert kinds(events) == [("RELEASE", w), ("GRANT", r3)]


def test_readers_behind_a_writer_are_granted_together(h: Harness) -> None:
    w, a, b, w2, c = h.open(5)
    h.step(1, lambda bb: (bb.acquire(w, "k"), bb.acquire(a, "k", shared=True), bb.acquire(b, "k", shared=True),
                          bb.acquire(w2, "k"), bb.acquire(c, "k", shared=True)))
    events = h.step(2, lambda bb: bb.release(w, "k")).events
    assert kinds(events) == [("RELEASE", w), ("GRANT", a), ("GRANT", b)]
    assert [e.mode for e in events[1:]] == [Mode.SHARED, Mode.SHARED]
    assert [x.session for x in h.m.info("k").waiters] == [w2, c]  # type: ignore[union-attr]


def test_a_second_exclusive_claim_of_one_session_is_refused_at_once(h: Harness) -> None:
    s, other = h.open(2)
    res = h.step(1, lambda b: (b.acquire(s, "k", request_id=1), b.acquire(s, "k", request_id=2),
                               b.acquire(s, "k", shared=True), b.acquire(other, "k"))).results
    assert res[0].ok and res[3].waiting
    assert [(Status(r.status).name, Detail(r.detail).name) for r in res[1:3]] == [("HELD", "HELD")] * 2
    assert isinstance(res[1].exception(), errors.AlreadyHeld) and "already holds" in str(res[1].exception())
    # A waiting exclusive claim counts too; shared beside shared is allowed; no upgrade.
    r, _ = h.one(2, lambda b: b.acquire(other, "k", wait=False))
    assert r.status == Status.HELD
    r, events = h.one(3, lambda b: b.acquire(other, "r", shared=True))
    r2, _ = h.one(3, lambda b: b.acquire(other, "r", shared=True))
    assert r.ok and r2.ok
    r, _ = h.one(4, lambda b: b.acquire(other, "r"))
    assert (r.status, r.detail) == (Status.HELD, Detail.UPGRADE)
    assert len(h.m.contenders("k")) == 2 and len(h.m.contenders("r")) == 2  # refusals change nothing


def test_a_version_2_record_lets_one_session_contend_twice_for_a_lock(h: Harness) -> None:
    (s,) = h.open(1)
    res = h.step(1, lambda b: (b.acquire(s, "k", request_id=1), b.acquire(s, "k", request_id=2)),
                 version=2).results
    assert res[0].ok and res[1].waiting
    events = h.step(2, lambda b: b.release(s, "k", res[0].token)).events
    assert kinds(events) == [("RELEASE", s), ("GRANT", s)]
    # token 0 releases the session's oldest hold on the key
    r, events = h.one(3, lambda b: b.release(s, "k"))
    assert r.ok and r.token == events[0].token and h.m.info("k") is None


def test_semaphore_permits_and_mismatch(h: Harness) -> None:
    a, b, c = h.open(3)
    res = h.step(1, lambda bb: (bb.sem_acquire(a, "pool", 2), bb.sem_acquire(b, "pool", 2),
                                bb.sem_acquire(c, "pool", 2), bb.sem_acquire(c, "pool", 3))).results
    assert [r.status for r in res] == [Status.OK, Status.OK, Status.WAITING, Status.BADARG]
    assert res[3].detail == Detail.PERMITS_MISMATCH and res[3].value == 2 and "(2)" in res[3].message
    info = h.m.info("pool")
    assert info is not None and info.kind == Kind.SEMAPHORE and info.permits == 2 and len(info.holders) == 2
    events = h.step(2, lambda bb: bb.sem_release(a, "pool", res[0].token)).events
    assert kinds(events) == [("RELEASE", a), ("GRANT", c)]
    r, _ = h.one(2, lambda bb: bb.release(b, "pool"))
    assert r.status == Status.WRONGTYPE and r.detail == Detail.KIND and "semaphore" in r.message


def test_election_succession_proclaim_resign(h: Harness) -> None:
    a, b, c = h.open(3)
    res = h.step(1, lambda bb: (bb.campaign(a, "svc", "a:1"), bb.campaign(b, "svc", "b:1"),
                                bb.campaign(c, "svc", "c:1", wait=False), bb.campaign(a, "svc", "again"))).results
    assert [r.status for r in res] == [Status.OK, Status.WAITING, Status.BUSY, Status.CONFLICT]
    leader = h.m.leader("svc")
    assert leader is not None and (leader.session, leader.value, leader.token) == (a, b"a:1", res[0].token)
    r, events = h.one(2, lambda bb: bb.proclaim(a, "svc", "a:2"))
    assert r.ok and r.value == events[0].revision and r.token == res[0].token
    assert (EventKind(events[0].kind), events[0].value) == (EventKind.PROCLAIM, b"a:2")
    assert h.m.leader("svc").value == b"a:2"  # type: ignore[union-attr]
    r, _ = h.one(2, lambda bb: bb.proclaim(b, "svc", "nope"))
    assert r.status == Status.NOTLEADER and isinstance(r.exception(), errors.NotLeader)
    r, _ = h.one(2, lambda bb: bb.resign(a, "svc", res[0].token + 1))
    assert r.status == Status.NOTLEADER
    r, events = h.one(3, lambda bb: bb.resign(a, "svc"))
    assert r.ok and kinds(events) == [("RELEASE", a), ("GRANT", b)] and events[1].value == b"b:1"
    assert h.m.leader("svc").session == b  # type: ignore[union-attr]
    assert h.m.leader("nothing") is None


def test_cancel_waiter_and_holder(h: Harness) -> None:
    a, b, c = h.open(3)
    res = h.step(1, lambda bb: (bb.acquire(a, "k"), bb.acquire(b, "k"), bb.acquire(c, "k", shared=True))).results
    # cancelling the waiting writer lets nothing in yet (a still holds)
    r, events = h.one(2, lambda bb: bb.cancel(b, "k", res[1].ticket))
    assert r.ok and r.value == 0 and kinds(events) == [("CANCEL", b)]
    # cancelling a holder releases it (the grant won the race with a timeout)
    r, events = h.one(3, lambda bb: bb.cancel(a, "k", res[0].ticket))
    assert r.ok and r.value == res[0].token and kinds(events) == [("RELEASE", a), ("GRANT", c)]
    r, _ = h.one(3, lambda bb: bb.cancel(b, "k", res[1].ticket))
    assert r.status == Status.NOTFOUND and isinstance(r.exception(), errors.NotFound)
    r, _ = h.one(3, lambda bb: bb.cancel(a, "k", res[2].ticket))  # someone else's ticket
    assert r.status == Status.NOTFOUND


def test_close_releases_everything_and_grants_in_order(h: Harness) -> None:
    a, b, c = h.open(3)
    h.step(1, lambda bb: (bb.acquire(a, "x"), bb.acquire(a, "y"), bb.acquire(b, "y"), bb.acquire(c, "x"),
                          bb.acquire(a, "z", shared=True), bb.acquire(b, "x")))
    events = h.step(2, lambda bb: bb.close_session(a)).events
    assert kinds(events) == [("CLOSE", a), ("RELEASE", a), ("RELEASE", a), ("RELEASE", a),
                             ("GRANT", c), ("GRANT", b)]
    assert [e.key for e in events[1:]] == [b"x", b"y", b"z", b"x", b"y"]
    assert h.m.info("z") is None and h.m.keys() == [b"x", b"y"]


def test_expiry_order_and_no_grant_to_a_dying_session(h: Harness) -> None:
    a = h.open(1, ttl=50, time_ms=0)[0]
    b = h.open(1, ttl=40, time_ms=0)[0]
    c = h.open(1, ttl=1000, time_ms=0)[0]
    h.step(0, lambda bb: (bb.acquire(a, "k"), bb.acquire(b, "k"), bb.acquire(c, "k")))
    assert h.m.next_deadline() == 40
    events = h.step(60).events
    # (deadline, id) order: b (40) before a (50); b's wait is cancelled, never granted
    assert kinds(events) == [("EXPIRE", b), ("CANCEL", b), ("EXPIRE", a), ("RELEASE", a), ("GRANT", c)]
    # commands in the same batch see the sessions gone
    assert h.step(60, lambda bb: bb.keepalive(a)).results[0].status == Status.NOSESSION


def test_keepalive_postpones_expiry(h: Harness) -> None:
    (a,) = h.open(1, ttl=100, time_ms=0)
    for t in range(50, 1000, 50):
        assert h.step(t, lambda b: b.keepalive(a)).results[0].ok
    assert h.m.session(a) is not None
    assert h.step(1049).events == []
    assert kinds(h.step(1050).events) == [("EXPIRE", a)]


def test_time_never_goes_back(h: Harness) -> None:
    (a,) = h.open(1, ttl=100, time_ms=1000)
    r, _ = h.one(500, lambda b: b.keepalive(a))  # stamped earlier: applied at 1000
    assert h.m.time_ms == 1000 and r.deadline_ms == 1100
    (b,) = h.open(1, ttl=10, time_ms=0)
    assert h.m.session(b).deadline_ms == 1010  # type: ignore[union-attr]


def test_idempotent_retry_returns_the_original_result(h: Harness) -> None:
    a, b = h.open(2)
    first = h.step(1, lambda bb: bb.acquire(a, "k", request_id=7)).results[0]
    snap = h.m.snapshot()
    again = h.step(1, lambda bb: bb.acquire(a, "k", request_id=7))
    assert again.events == [] and again.results[0].duplicate
    assert again.results[0]._replace(flags=0) == first
    assert h.m.snapshot() == snap
    # a retried release after the lock moved on does not release the new holder
    h.step(1, lambda bb: bb.acquire(b, "k", request_id=1))
    rel = h.step(2, lambda bb: bb.release(a, "k", first.token, request_id=8))
    assert kinds(rel.events) == [("RELEASE", a), ("GRANT", b)]
    again = h.step(3, lambda bb: bb.release(a, "k", first.token, request_id=8))
    assert again.results[0].duplicate and again.results[0].ok and again.events == []
    # errors are remembered too: same answer even though the state changed since
    err = h.step(3, lambda bb: bb.acquire(a, "k", wait=False, request_id=9)).results[0]
    assert err.status == Status.BUSY
    h.step(4, lambda bb: bb.release(b, "k"))
    assert h.step(4, lambda bb: bb.acquire(a, "k", wait=False, request_id=9)).results[0].status == Status.BUSY
    # request ids are per session
    assert not h.step(4, lambda bb: bb.acquire(b, "k", wait=False, request_id=9)).results[0].duplicate


def test_request_window_is_bounded(h: Harness) -> None:
    (a,) = h.open(1)
    first = h.step(1, lambda b: b.acquire(a, "k0", request_id=1)).results[0]
    assert h.step(1, lambda b: b.acquire(a, "k0", request_id=1)).results[0].duplicate
    window = facade.REQUEST_WINDOW
    h.step(1, lambda b: [b.acquire(a, f"k{i}", wait=False, request_id=i + 1) for i in range(1, window)])
    assert h.step(1, lambda b: b.acquire(a, "k0", request_id=1)).results[0].duplicate  # still in
    h.step(1, lambda b: b.acquire(a, "kx", request_id=window + 1))
    # now evicted: executed again (a second claim on k0, refused as the session holds it)
    r = h.step(1, lambda b: b.acquire(a, "k0", request_id=1)).results[0]
    assert not r.duplicate and r.status == Status.HELD and first.ok


def test_wrong_kind_and_missing_holds(h: Harness) -> None:
    (a,) = h.open(1)
    h.step(1, lambda b: b.acquire(a, "k"))
    res = h.step(1, lambda b: (b.sem_acquire(a, "k", 2), b.campaign(a, "k", "v"), b.proclaim(a, "k", "v"),
                               b.resign(a, "k"), b.sem_release(a, "k"), b.release(a, "nope"),
                               b.release(a, "k", 12345), b.resign(a, "none"), b.proclaim(a, "none", "v"),
                               b.cancel(a, "none", 1))).results
    assert [r.status for r in res] == [Status.WRONGTYPE] * 5 + [Status.NOTHOLDER] * 2 + [Status.NOTLEADER] * 2 \
        + [Status.NOTFOUND]
    assert all(r.value == Kind.LOCK for r in res[:5])
    with pytest.raises(errors.NotLockHolder, match="holds nothing"):
        res[5].unwrap()


def test_results_and_their_exceptions() -> None:
    ok = Result(Op.ACQUIRE, Status.OK, 0, 0, 5, 5)
    assert ok.unwrap() is ok and ok.exception() is None and ok.code is None and ok.message == ""
    for status, cls in [(Status.NOSESSION, errors.SessionExpired), (Status.NOTHOLDER, errors.NotLockHolder),
                        (Status.CONFLICT, errors.LockConflict), (Status.NOTLEADER, errors.NotLeader),
                        (Status.BADARG, errors.BadArgument), (Status.WRONGTYPE, errors.WrongType),
                        (Status.NOTFOUND, errors.NotFound), (Status.BUSY, errors.LockTimeout)]:
        r = Result(Op.RELEASE, status, 0, 0, 0, 0)
        assert type(r.exception()) is cls and r.code == cls.code
        with pytest.raises(cls):
            r.unwrap()
    opened = Result(Op.OPEN, Status.OK, 0, 0, 3, 1234)
    assert (opened.session_id, opened.deadline_ms, opened.token, opened.ticket) == (3, 1234, 0, 0)


def test_replay_from_empty_is_byte_identical(h: Harness, rng: object) -> None:
    import random

    assert isinstance(rng, random.Random)
    sessions = h.open(8, ttl=300, time_ms=0)
    t = 0
    for _ in range(300):
        t += rng.choice([0, 1, 10, 100])
        s = rng.choice(sessions + [h.m.next_session_id])
        key = rng.choice(["a", "b", "c"])

        def build(b: BatchBuilder) -> None:
            for _ in range(rng.randrange(1, 6)):
                choice = rng.random()
                if choice < 0.4:
                    b.acquire(s, key, shared=rng.random() < 0.5, request_id=rng.randrange(1, 50))
                elif choice < 0.8:
                    b.release(s, key, request_id=rng.randrange(50, 100))
                elif choice < 0.9:
                    b.keepalive(s)
                else:
                    b.open_session(300)

        applied = h.step(t, build)
        sessions += [r.session_id for r in applied.results if r.op == Op.OPEN and r.ok]
    replayed = LockMachine()
    for record in h.records:
        replayed.apply(record)
    assert replayed.snapshot() == h.m.snapshot()
    assert LockMachine.from_snapshot(h.m.snapshot()).snapshot() == h.m.snapshot()


def test_restore_keeps_revision_and_tokens_rising(h: Harness) -> None:
    a, b = h.open(2)
    r = h.step(1, lambda bb: (bb.acquire(a, "k", request_id=5), bb.acquire(b, "k"))).results
    m2 = LockMachine.from_snapshot(h.m.snapshot())
    assert (m2.revision, m2.time_ms, m2.next_session_id) == (h.m.revision, h.m.time_ms, h.m.next_session_id)
    assert m2.next_deadline() == h.m.next_deadline()
    assert m2.session(a) == h.m.session(a) and m2.info("k") == h.m.info("k")
    b2 = BatchBuilder()
    b2.release(a, "k", r[0].token)
    b2.open_session(10)
    applied = m2.apply(b2.build(2))
    assert applied.events[1].token > r[0].token and applied.results[1].session_id == 3
    # the retry table survived the snapshot
    b3 = BatchBuilder()
    b3.acquire(a, "k", request_id=5)
    again = m2.apply(b3.build(2))
    assert again.results[0].duplicate and again.results[0].token == r[0].token and again.events == []


def test_raw_results_and_events_decode() -> None:
    m = LockMachine()
    b = BatchBuilder()
    b.open_session(100)
    b.acquire(1, b"\x00\xffbin", value="label")
    raw_results, raw_events = m.apply_raw(b.build(1))
    assert len(raw_results) == 2 * facade.RESULT_SIZE
    results, events = decode_results(raw_results), decode_events(raw_events)
    assert results[1].token == 2 and events[1] == Event(2, EventKind.GRANT, Mode.EXCLUSIVE, 1, 2, 2,
                                                        b"\x00\xffbin", b"label")
    assert m.contenders(b"\x00\xffbin")[0].value == b"label" and m.contenders("none") == []
    assert "revision=2" in repr(m)


def test_decode_batch_round_trip() -> None:
    b = BatchBuilder()
    b.open_session(5)
    b.acquire(3, "k", shared=True, wait=False, request_id=9, value="v")
    b.sem_acquire(3, "s", 4)
    b.campaign(3, "e", "me")
    b.proclaim(3, "e", "new", 11)
    b.resign(3, "e")
    b.cancel(3, "k", 12)
    b.keepalive(3)
    b.sem_release(3, "s", 1)
    b.close_session(3)
    record = b.build(77)
    t, commands = decode_batch(record)
    assert t == 77 and [c.op for c in commands] == [1, 4, 6, 8, 9, 10, 11, 2, 7, 3]
    assert commands[1].flags == 1 and commands[1].key == b"k" and commands[1].value == b"v"
    again = BatchBuilder()
    for c in commands:
        again.add(c)
    assert again.build(77) == record
    assert tick(77) == BatchBuilder().build(77)
    again.clear()
    assert len(again) == 0 and again.build(1) == tick(1)


def test_native_decoders_match_struct_decoding() -> None:
    import gc
    import struct

    m = LockMachine()
    b = BatchBuilder()
    for _ in range(50):
        b.open_session(100)
    m.apply(b.build(0))
    b.clear()
    for i in range(50):
        b.campaign(i + 1, f"e{i % 7}", b"v" * i)
        b.acquire(i + 1, "k", shared=i % 3 == 0, value=b"\x00" * (i % 5))
        b.release(i + 1, "k")
    raw_results, raw_events = m.apply_raw(b.build(1))
    results, events = decode_results(raw_results), decode_events(raw_events)
    gc.collect()
    assert results == [Result(*t) for t in struct.iter_unpack("<BBBB4xQQ", raw_results)]
    expected, pos = [], 0
    while pos < len(raw_events):
        kind, mode, klen, vlen, rev, s, ticket, token = struct.unpack_from("<BBHIQQQQ", raw_events, pos)
        pos += 40
        expected.append(Event(rev, kind, mode, s, ticket, token, raw_events[pos:pos + klen],
                              raw_events[pos + klen:pos + klen + vlen]))
        pos += klen + vlen
    assert events == expected and type(events[0]) is Event and events[0].key == b"e0"
    assert len(events) > 100 and results[1].token > 0
    with pytest.raises(errors.BadArgument):
        decode_results(raw_results[:-1])
    with pytest.raises(errors.BadArgument):
        decode_events(raw_events[:-1])
    with pytest.raises(errors.WrongType):
        native.decode_results(raw_results, tuple)


def test_many_keepalives_keep_expiry_exact(h: Harness, rng: object) -> None:
    """Keep-alives leave stale entries in the expiry heap, compacted now and then; the
    expiry order and next_deadline() must not notice (the harness also compares every
    step with the model)."""
    import random

    assert isinstance(rng, random.Random)
    sessions = h.open(40, ttl=100, time_ms=0)
    live = set(sessions)
    stop = {s: rng.randrange(0, 500) for s in sessions}  # when each session's owner goes quiet
    for t in range(1, 400):
        deadline = {s: h.m.session(s).deadline_ms for s in live}  # type: ignore[union-attr]
        due = sorted((d, s) for s, d in deadline.items() if d <= t)
        picked = [s for s in sessions if s in live and t < stop[s] and rng.random() < 0.3]
        applied = h.step(t, lambda b: [b.keepalive(s) for s in picked])
        expired = [e.session for e in applied.events if e.kind == EventKind.EXPIRE]
        assert expired == [s for _, s in due]  # exactly the due ones, in (deadline, id) order
        live -= set(expired)
        assert h.m.next_deadline() == min((h.m.session(s).deadline_ms for s in live),  # type: ignore[union-attr]
                                          default=None)
    assert h.m.session_count == len(live) and 0 < len(live) < 40


# --- credentials, wait deadlines, detached waiters (format version 2) ------------------


def test_a_session_keeps_its_credential_digest_and_a_version_1_session_has_none() -> None:
    import hashlib

    m = LockMachine()
    digest = hashlib.sha256(b"s" * 16).digest()
    b = BatchBuilder()
    b.open_session(5_000, digest=digest)
    b.open_session(5_000)
    m.apply(b.build(1_000))
    assert m.credential_matches(1, digest)
    assert not m.credential_matches(1, hashlib.sha256(b"t" * 16).digest())
    assert not m.credential_matches(2, bytes(32))  # no credential: nobody's
    assert not m.credential_matches(3, digest)  # no such session
    assert LockMachine.from_snapshot(m.snapshot()).credential_matches(1, digest)
    # A record of format version 1 (before credentials) still applies, with its rules.
    v1 = bytearray(b.build(2_000))
    v1[4] = 1
    with pytest.raises(errors.BadArgument):
        BatchBuilder().open_session(5_000, digest=b"short")
    results = m.apply(bytes(v1)).results
    assert results[0].status == Status.BADARG and results[0].detail == Detail.VALUE  # v1 OPEN takes no value
    assert results[1].ok and not m.credential_matches(results[1].session_id, bytes(32))


def test_a_wait_timeout_in_the_record_withdraws_the_waiter_at_batch_time() -> None:
    m = LockMachine()
    b = BatchBuilder()
    b.open_session(60_000)
    b.open_session(60_000)
    m.apply(b.build(1_000))
    b.clear()
    b.acquire(1, "k")
    b.acquire(2, "k", timeout_ms=500, request_id=9)
    held, waiting = m.apply(b.build(1_000)).results
    assert waiting.waiting and m.next_deadline() == 1_500
    assert m.apply(tick(1_499)).events == []
    events = m.apply(tick(1_500)).events
    assert [(e.kind, e.ticket) for e in events] == [(EventKind.CANCEL, waiting.ticket)]
    # A replay from the records (or a restore) does the same: the deadline is state.
    b.clear()
    b.release(1, "k", held.token)
    assert [e.kind for e in m.apply(b.build(1_600)).events] == [EventKind.RELEASE]  # nobody to grant
    with pytest.raises(errors.BadArgument):
        BatchBuilder().acquire(1, "k", wait=False, timeout_ms=5)


def test_detached_waiters_are_withdrawn_after_the_grace_unless_their_client_retries() -> None:
    m = LockMachine()
    b = BatchBuilder()
    for _ in range(3):
        b.open_session(60_000)
    m.apply(b.build(1_000))
    b.clear()
    b.acquire(1, "k")
    b.acquire(2, "k", request_id=1)            # will re-attach
    b.acquire(3, "k", request_id=1)            # its client never comes back
    holder, w2, w3 = m.apply(b.build(1_000)).results
    b.clear()
    b.detach(2_000)
    assert m.apply(b.build(1_100)).results[0].value == 2
    b.clear()
    b.acquire(2, "k", request_id=1, timeout_ms=10_000)  # the retry: still waiting
    again = m.apply(b.build(1_200)).results[0]
    assert again.waiting and again.duplicate and again.ticket == w2.ticket
    b.clear()
    b.release(1, "k", holder.token)
    granted = m.apply(b.build(1_300)).events
    assert [(e.kind, e.session) for e in granted] == [(EventKind.RELEASE, 1), (EventKind.GRANT, 2)]
    b.clear()
    b.release(2, "k")
    events = m.apply(b.build(1_400)).events
    assert [(e.kind, e.session) for e in events] == [(EventKind.RELEASE, 2), (EventKind.GRANT, 3)]
    # Session 3 was granted while detached: released at the grace, nobody knew it held.
    events = m.apply(tick(3_100)).events
    assert [(e.kind, e.session) for e in events] == [(EventKind.RELEASE, 3)]
    b.clear()
    b.acquire(3, "k", request_id=1)
    late = m.apply(b.build(3_200)).results[0]
    assert late.status == Status.NOTFOUND and late.detail == Detail.WAIT_ENDED and late.duplicate
    assert m.info("k") is None
