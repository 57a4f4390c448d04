"""The native pools against the reference model (tests/models/pool_model.py), driven by
hypothesis with the same batch records: identical results, events and pool state after
every step, the native invariants, replay from the log and from a snapshot giving
the same snapshot bytes, and lease wait and hold times counted as the events say."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from coordcore._native.lockmachine import crc32c
from coordcore.errors import CoordcoreError, LogCorrupted
from coordcore.locks import BatchBuilder, Command, LockMachine, Op
from coordcore.locks.machine import BATCH_FORMAT_VERSION, POOL_BATCH_FORMAT_VERSION, EventKind, Status, tick
from tests.locks.test_machine_state import TimingModel
from tests.models.pool_model import POOL_CONF, TENANT_CONF, PoolModel

POOLS = [b"gpu", b"lic"]
TENANTS = [b"a", b"b", b"c"]


def pool_cmd(name: bytes, capacity: int, grace: int, patience: int) -> Command:
    return Command(Op.POOL_SET, 0, 0, 0, capacity, name, POOL_CONF.pack(grace, patience))


def tenant_cmd(pool: bytes, name: bytes, w: int, mn: int, mx: int, band: int) -> Command:
    return Command(Op.TENANT_SET, 0, 0, 0, 0, pool, TENANT_CONF.pack(w, mn, mx, band) + name)


class NativeVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.native = LockMachine()
        self.model = PoolModel()
        self.time = 0
        self.records: list[bytes] = []
        self.midpoint: tuple[int, bytes] | None = None
        self.sessions: list[int] = []
        self.revs: list[int] = [1]
        self.timing = TimingModel()

    def step(self, commands: list[Command], dt: int = 0) -> None:
        self.time = max(0, self.time + dt)
        b = BatchBuilder()
        for c in commands:
            b.add(c)
        record = b.build(self.time)
        self.records.append(record)
        applied = self.native.apply(record)
        results, events = self.model.apply(self.time, [(c.op, c.flags, c.session, c.arg, c.key, c.value) for c in commands])
        assert [tuple(r) for r in applied.results] == results
        assert [tuple(e) for e in applied.events] == events
        self.timing.observe(applied.events, self.native.time_ms)
        timings = self.native.timings()
        assert timings == self.timing.expected(timings.bounds_ms)
        for e in applied.events:
            if e.kind == EventKind.OPEN:
                self.sessions.append(e.session)
            self.revs += [x for x in (e.ticket, e.token) if x]
        self.revs = self.revs[-12:]
        if len(self.records) == 12:
            self.midpoint = (len(self.records), self.native.snapshot())

    @initialize(caps=st.lists(st.integers(3, 6), min_size=2, max_size=2), patience=st.sampled_from([1, 2, 65535]),
                conf=st.lists(st.tuples(st.integers(1, 3), st.integers(0, 1), st.integers(2, 6)), min_size=3, max_size=3))
    def setup(self, caps: list[int], patience: int, conf: list[tuple[int, int, int]]) -> None:
        self.step([Command(Op.OPEN, 0, 0, 0, ttl, b"", b"") for ttl in (40, 10**6, 10**6)])
        for pool, cap in zip(POOLS, caps):
            # Bands 0, 0 and 2: fair sharing inside a band, preemption across.
            self.step([pool_cmd(pool, cap, 30, patience)]
                      + [tenant_cmd(pool, t, w, mn, mx, band) for t, (w, mn, mx), band in zip(TENANTS, conf, (0, 0, 2))])

    def _sid(self, data: st.DataObject) -> int:
        live = [s for s in self.sessions if s in self.model.sessions][-3:]
        return data.draw(st.sampled_from(live * 4 + [self.sessions[0], 999])) if live else 999

    @rule(data=st.data(), n=st.integers(1, 4))
    def batch(self, data: st.DataObject, n: int) -> None:
        cmds = []
        for _ in range(n):
            kind = data.draw(st.sampled_from(["acq"] * 8 + ["rel"] * 4 + ["resize", "pool", "tenant", "open", "keep",
                                                                             "close"]))
            pool = data.draw(st.sampled_from(POOLS[:1] * 4 + POOLS[1:]))
            if kind == "acq":
                units = data.draw(st.sampled_from([1, 1, 1, 2, 3, 0, 11]))
                wait = data.draw(st.integers(0, 4)) > 0
                timeout = data.draw(st.sampled_from([0, 0, 25])) if wait else 0
                cmds.append(Command(Op.CAP_ACQUIRE, 2 if wait else 0, self._sid(data), 0, timeout << 32 | units, pool,
                                    data.draw(st.sampled_from(TENANTS + [b"zz"]))))
            elif kind == "rel":
                cmds.append(Command(Op.CAP_RELEASE, 0, self._sid(data), 0, data.draw(st.sampled_from(self.revs)), pool, b""))
            elif kind == "resize":
                cmds.append(Command(Op.CAP_RESIZE, 0, self._sid(data), 0, data.draw(st.sampled_from(self.revs)), pool,
                                    struct.pack("<I", data.draw(st.integers(0, 5)))))
            elif kind == "pool":
                cmds.append(pool_cmd(pool, data.draw(st.integers(0, 8)), data.draw(st.sampled_from([0, 30])),
                                     data.draw(st.sampled_from([1, 3, 65535]))))
            elif kind == "tenant":
                mx = data.draw(st.integers(1, 8))
                cmds.append(tenant_cmd(pool, data.draw(st.sampled_from(TENANTS)), data.draw(st.integers(1, 3)),
                                       data.draw(st.integers(0, 3)), mx, data.draw(st.integers(0, 2))))
            elif kind == "open":
                cmds.append(Command(Op.OPEN, 0, 0, 0, data.draw(st.sampled_from([30, 10**6])), b"", b""))
            else:
                cmds.append(Command(Op.KEEPALIVE if kind == "keep" else Op.CLOSE, 0, self._sid(data), 0, 0, b"", b""))
        self.step(cmds, data.draw(st.sampled_from([0, 0, 0, 1, 10, 35, -5])))

    @rule(dt=st.sampled_from([1, 30]))
    def tick(self, dt: int) -> None:
        self.step([], dt)

    @invariant()
    def same_state(self) -> None:
        self.native.check_invariants()
        for name in POOLS:
            info = self.native.pool(name)
            want = self.model.state(name)
            assert (None if info is None else (info.capacity, info.grace_ms, info.patience, [tuple(t) for t in info.tenants],
                                               [tuple(x) for x in info.leases], [tuple(x) for x in info.waits])) == want
        snap = self.native.snapshot()
        assert LockMachine.from_snapshot(snap).snapshot() == snap

    def teardown(self) -> None:
        final = self.native.snapshot()
        replay = LockMachine()
        for r in self.records:
            replay.apply(r)
        assert replay.snapshot() == final
        if self.midpoint is not None:
            n, snap = self.midpoint
            half = LockMachine.from_snapshot(snap)
            for r in self.records[n:]:
                half.apply(r)
            assert half.snapshot() == final


TestNativeVsModel = NativeVsModel.TestCase
TestNativeVsModel.settings = settings(max_examples=120, stateful_step_count=30, deadline=None)


def _machine_with_a_pool() -> tuple[LockMachine, BatchBuilder]:
    m, b = LockMachine(), BatchBuilder()
    b.open_session(10_000)
    b.pool_set("gpu", 4, grace_ms=100)
    b.tenant_set("gpu", "batch", band=0)
    b.tenant_set("gpu", "urgent", band=2)
    m.apply(b.build(0)).results[0].unwrap()
    b.clear()
    return m, b


def test_a_record_is_version_4_only_with_pool_commands_and_older_versions_refuse_them() -> None:
    b = BatchBuilder()
    b.open_session(1000)
    assert b.build(0)[4] == BATCH_FORMAT_VERSION
    b.pool_set("gpu", 4)
    record = b.build(0)
    assert record[4] == POOL_BATCH_FORMAT_VERSION
    old = record[:4] + bytes([BATCH_FORMAT_VERSION]) + record[5:]
    with pytest.raises(Exception, match="unknown op 13"):
        LockMachine().apply(old)


def test_preemption_gives_back_then_revokes_after_the_grace() -> None:
    m, b = _machine_with_a_pool()
    b.cap_acquire(1, "gpu", "batch", 4)
    low = m.apply(b.build(1)).results[0].unwrap()
    b.clear()
    b.cap_acquire(1, "gpu", "urgent", 2)
    applied = m.apply(b.build(2))
    assert applied.results[0].waiting
    assert [(EventKind(e.kind).name, e.token) for e in applied.events] == [("WAIT", 0), ("GIVEBACK", low.token)]
    assert m.next_deadline() == 102
    assert m.apply(tick(101)).events == []
    events = m.apply(tick(102)).events
    assert [(EventKind(e.kind).name, e.value) for e in events] == [("REVOKE", b"batch"), ("GRANT", b"urgent")]
    b.clear()
    b.cap_release(1, "gpu", low.token)  # too late: the lease is gone
    assert m.apply(b.build(103)).results[0].status == Status.NOTHOLDER


def test_a_damaged_pool_section_is_refused() -> None:
    m, b = _machine_with_a_pool()
    b.cap_acquire(1, "gpu", "batch", 2)
    m.apply(b.build(1))
    snap = bytearray(m.snapshot())
    assert snap[4] == 3
    for i in range(40, len(snap) - 4, 7):
        bad = bytearray(snap)
        bad[i] ^= 0xFF
        bad[-4:] = crc32c(bytes(bad[:-4])).to_bytes(4, "little")
        try:
            LockMachine.from_snapshot(bytes(bad)).check_invariants()
        except LogCorrupted:
            pass


def test_an_aged_request_is_granted_before_a_fairer_one_after_patience_passes() -> None:
    t = NativeVsModel()  # every step compares native with the model
    t.setup([3, 3], 1, [(1, 0, 3), (1, 0, 3), (1, 0, 3)])
    sid = t.sessions[-1]

    def acq(tenant: bytes) -> Command:
        return Command(Op.CAP_ACQUIRE, 2, sid, 0, 1, b"gpu", tenant)

    def release_b() -> list[bytes]:
        token = next(x.token for x in t.native.pool(b"gpu").leases if x.tenant == b"b")  # type: ignore[union-attr]
        t.step([Command(Op.CAP_RELEASE, 0, sid, 0, token, b"gpu", b"")])
        t.same_state()
        return [x.tenant for x in t.native.pool(b"gpu").leases]  # type: ignore[union-attr]

    t.step([acq(b"a"), acq(b"a"), acq(b"b"), acq(b"a"), acq(b"b"), acq(b"b")])
    assert release_b() == [b"a", b"a", b"b"]  # b holds less: fair share says b, passing a's older request once
    assert [w.passes for w in t.native.pool(b"gpu").waits] == [1, 0]  # type: ignore[union-attr]
    assert release_b() == [b"a", b"a", b"a"]  # patience 1 reached: a's request goes first


def test_below_minimum_requests_go_first_oldest_first_whatever_their_band() -> None:
    t = NativeVsModel()
    t.setup([4, 4], 65535, [(1, 0, 4), (1, 1, 4), (1, 1, 4)])  # b and c are guaranteed 1 each; c is band 2
    sid = t.sessions[-1]

    def acq(tenant: bytes) -> Command:
        return Command(Op.CAP_ACQUIRE, 2, sid, 0, 1, b"gpu", tenant)

    t.step([acq(b"a")] * 4 + [acq(b"c"), acq(b"b")])
    t.same_state()
    # c (band 2) and b are below their minimums: the oldest (c) is served first: one lease of a is asked back.
    leases = t.native.pool(b"gpu").leases  # type: ignore[union-attr]
    assert sum(1 for x in leases if x.giveback_deadline_ms) == 1
    t.step([Command(Op.CAP_RELEASE, 0, sid, 0, leases[0].token, b"gpu", b"")])
    t.same_state()
    assert [x.tenant for x in t.native.pool(b"gpu").leases][-1] == b"c"  # type: ignore[union-attr]


def _pool_record() -> tuple[LockMachine, bytes]:
    m, b = LockMachine(), BatchBuilder()
    b.open_session(10_000)
    m.apply(b.build(0))
    b.clear()
    b.pool_set("gpu", 3, grace_ms=5)
    b.tenant_set("gpu", "a", weight=2, minimum=1, maximum=3, band=1)
    b.cap_acquire(1, "gpu", "a", 2, timeout_ms=5)
    b.cap_acquire(1, "gpu", "a", 2)
    b.cap_resize(1, "gpu", 4, 1)
    b.cap_release(1, "gpu", 5)
    return m, b.build(1)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_pool_records_are_refused_or_applied_whole_never_a_crash(data: st.DataObject) -> None:
    m, record = _pool_record()
    before = m.snapshot()
    blob = bytearray(record)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        if data.draw(st.booleans()):
            blob[i] = data.draw(st.integers(0, 255))
        else:
            del blob[i:i + data.draw(st.integers(1, 6))]
            if not blob:
                blob = bytearray(b"x")
    try:
        m.apply(bytes(blob))
    except CoordcoreError:
        assert m.snapshot() == before  # refused before anything changed
        return
    m.check_invariants()
    m.apply(tick(10**6))  # expire everything after it: deadlines and teardown hold up
    m.check_invariants()
    assert LockMachine.from_snapshot(m.snapshot()).snapshot() == m.snapshot()


def test_a_mark_lapses_when_other_units_served_the_request_first() -> None:
    t = NativeVsModel()  # native and model side by side
    t.setup([2, 2], 65535, [(1, 0, 2), (1, 0, 2), (1, 0, 2)])  # c is band 2, a band 0
    sid = t.sessions[-1]
    t.step([Command(Op.CAP_ACQUIRE, 2, sid, 0, 1, b"gpu", b"a")] * 2)
    t.step([Command(Op.CAP_ACQUIRE, 2, sid, 0, 1, b"gpu", b"c")])
    leases = t.native.pool(b"gpu").leases  # type: ignore[union-attr]
    marked = [x for x in leases if x.giveback_deadline_ms]
    assert len(marked) == 1 and marked[0].token == leases[-1].token  # the newest is asked back
    t.step([Command(Op.CAP_RELEASE, 0, sid, 0, leases[0].token, b"gpu", b"")])  # the other one comes back
    t.step([], 31)  # past the 30 ms grace
    t.same_state()
    after = t.native.pool(b"gpu").leases  # type: ignore[union-attr]
    assert [(x.tenant, x.token, x.giveback_deadline_ms) for x in after][0] == (b"a", marked[0].token, 0)
    assert [x.tenant for x in after] == [b"a", b"c"]  # no needless revocation
