"""The native LockMachine against the pure-Python reference model, driven by hypothesis.

Both get the same batch records (random mixes of sessions, exclusive/shared locks,
semaphores, elections, cancels, retries with a used request id, ticks that expire
sessions, timestamps that go backwards, credential digests, wait timeouts, DETACH of
every waiter and the retries that re-attach them; records of format version 3 and,
now and then, 2, whose rules differ in a session's second claim on a lock) and must return identical results and events
and have byte-identical snapshots after every step. On top of that, the lock rules are
checked on the native state after every step, tokens must rise strictly, revisions
must have no gaps, and replaying every record from an empty machine (and from a
snapshot taken half-way) must reproduce the final snapshot. The wait and hold time
histograms (not state) must match those computed from the events and batch times, and
never decrease.
"""
from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from coordcore.locks import BatchBuilder, Command, EventKind, Kind, LockMachine, Mode, Op, Status
from coordcore.locks.machine import Timings
from tests.models.lock_model import LockModel

LOCK_KEYS = [b"lock/a", b"lock/a", b"lock/b", b"lock/a/sub"]
SEM_KEYS = [b"sem/x"]
ELECTION_KEYS = [b"elect/e"]
KEYS = sorted(set(LOCK_KEYS + SEM_KEYS + ELECTION_KEYS))
TTLS = [1, 20, 100, 1000, 1000, 60_000]
DELTAS = [0, 0, 0, 0, 1, 3, 10, 50, 200, -7, -1000]


KINDS = {Mode.EXCLUSIVE: "exclusive", Mode.SHARED: "shared", Mode.SEMAPHORE: "semaphore",
         Mode.ELECTION: "election", Mode.POOL: "pool"}


class TimingModel:
    """Wait and hold times as LockMachine.timings() must count them, from the events:
    a wait from a contender's WAIT (or direct GRANT) to its GRANT, a hold from its
    GRANT to its RELEASE or REVOKE, at the batches' times; contenders whose start this
    object did not see (restored from a snapshot) are not observed."""

    def __init__(self) -> None:
        self.arrived: dict[int, int] = {}  # ticket -> time
        self.granted: dict[int, int] = {}  # token -> time
        self.waits: dict[str, list[int]] = {k: [] for k in KINDS.values()}
        self.holds: dict[str, list[int]] = {k: [] for k in KINDS.values()}

    def observe(self, events: list[Any], now: int) -> None:
        for e in events:
            if e.kind == EventKind.WAIT:
                self.arrived[e.ticket] = now
            elif e.kind == EventKind.GRANT:
                if e.ticket == e.token:
                    self.arrived[e.ticket] = now
                if e.ticket in self.arrived:
                    self.waits[KINDS[e.mode]].append(now - self.arrived.pop(e.ticket))
                self.granted[e.token] = now
            elif e.kind in (EventKind.RELEASE, EventKind.REVOKE) and e.token:
                if e.token in self.granted:
                    self.holds[KINDS[e.mode]].append(now - self.granted.pop(e.token))
            elif e.kind == EventKind.CANCEL:
                self.arrived.pop(e.ticket, None)

    def expected(self, bounds: list[int]) -> Timings:
        def hist(times: list[int]) -> tuple[list[int], int]:
            counts = [0] * (len(bounds) + 1)
            for t in times:
                assert t >= 0
                counts[next((i for i, b in enumerate(bounds) if t <= b), len(bounds))] += 1
            return counts, sum(times)

        return Timings(bounds, {k: hist(v) for k, v in self.waits.items()},
                       {k: hist(v) for k, v in self.holds.items()})


class MachineVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.native = LockMachine()
        self.model = LockModel()
        self.time = 0
        self.records: list[bytes] = []
        self.midpoint: tuple[int, bytes] | None = None
        self.sessions: list[int] = []      # every id ever opened (live or not)
        self.revisions: list[int] = [1]    # tickets and tokens seen, for arguments
        self.issued: dict[tuple[int, int], Command] = {}  # (session, request id) -> command
        self.next_request = 1
        self.max_token = 0
        self.stats = {"grant": 0, "wait": 0, "expire": 0, "dup": 0, "held": 0}
        self.timing = TimingModel()
        self.last_timings = self.native.timings()

    # --- drawing commands ----------------------------------------------------------

    def _session(self, data: st.DataObject) -> int:
        live = [s for s in self.sessions[-8:] if self.native.session(s) is not None]
        if live and data.draw(st.integers(0, 9)):
            return data.draw(st.sampled_from(live))
        # a dead one, the next id (not opened yet), or a bogus one
        return data.draw(st.sampled_from(self.sessions[-3:] + [self.native.next_session_id, 10**6]))

    def _key(self, data: st.DataObject, op: int) -> bytes:
        if data.draw(st.integers(0, 9)) == 0:
            return data.draw(st.sampled_from(KEYS))  # possibly the wrong kind
        if op in (Op.SEM_ACQUIRE, Op.SEM_RELEASE):
            return SEM_KEYS[0]
        if op in (Op.CAMPAIGN, Op.PROCLAIM, Op.RESIGN):
            return ELECTION_KEYS[0]
        if op == Op.CANCEL:
            return data.draw(st.sampled_from(KEYS))
        return data.draw(st.sampled_from(LOCK_KEYS))

    def _mine(self, session: int, key: bytes) -> list[tuple[int, int]]:
        """(ticket, token) of the session's contenders on key."""
        info = self.native.info(key)
        if info is None:
            return []
        return [(c.ticket, c.token) for c in info.holders + info.waiters if c.session == session]

    def _command(self, data: st.DataObject) -> Command:
        op = data.draw(st.sampled_from(
            [Op.OPEN] * 2 + [Op.KEEPALIVE, Op.CLOSE] + [Op.ACQUIRE] * 5 + [Op.RELEASE] * 3
            + [Op.SEM_ACQUIRE, Op.SEM_RELEASE, Op.CAMPAIGN, Op.PROCLAIM, Op.RESIGN, Op.CANCEL] * 2
            + ["retry", "retry", Op.DETACH]))
        if op == "retry" and self.issued:
            return data.draw(st.sampled_from(sorted(self.issued.values())))
        if op == Op.DETACH:
            return Command(Op.DETACH, 0, 0, 0, data.draw(st.sampled_from([0, 5, 100, 5000])), b"", b"")
        if op in (Op.OPEN, "retry"):
            digest = data.draw(st.sampled_from([b"", bytes(range(32)), b"\xff" * 32]))
            return Command(Op.OPEN, 0, 0, 0, data.draw(st.sampled_from(TTLS)), b"", digest)
        session = self._session(data)
        if op in (Op.KEEPALIVE, Op.CLOSE):
            return Command(op, 0, session, 0, 0, b"", b"")
        key = self._key(data, op)
        req = 0
        if data.draw(st.booleans()):
            req = self.next_request
            self.next_request += 1
        flags = 0
        if op in (Op.ACQUIRE, Op.SEM_ACQUIRE, Op.CAMPAIGN):
            flags = 2 if data.draw(st.integers(0, 3)) else 0
            if op == Op.ACQUIRE and data.draw(st.booleans()):
                flags |= 1
        arg = 0
        mine = self._mine(session, key)
        if op == Op.SEM_ACQUIRE:
            arg = data.draw(st.sampled_from([2, 2, 2, 1, 3]))
        if op in (Op.ACQUIRE, Op.SEM_ACQUIRE, Op.CAMPAIGN) and flags & 2 and data.draw(st.booleans()):
            arg |= data.draw(st.sampled_from([1, 5, 50, 500])) << 32  # a wait timeout (ms)
        elif op in (Op.RELEASE, Op.SEM_RELEASE, Op.PROCLAIM, Op.RESIGN):
            held = [tok for _, tok in mine if tok]
            arg = data.draw(st.sampled_from(held * 3 + [0, 0] + self.revisions[-3:]))
        elif op == Op.CANCEL:
            arg = data.draw(st.sampled_from([t for t, _ in mine] * 3 + self.revisions[-3:]))
        value = b""
        if op in (Op.CAMPAIGN, Op.PROCLAIM) or (op in (Op.ACQUIRE, Op.SEM_ACQUIRE)
                                                 and data.draw(st.integers(0, 5)) == 0):
            value = data.draw(st.sampled_from([b"", b"host-1:80", b"v" * 40]))
        cmd = Command(op, flags, session, req, arg, key, value)
        if req:
            self.issued[(session, req)] = cmd
        return cmd

    # --- rules ---------------------------------------------------------------------

    @initialize(n=st.integers(1, 4), ttl=st.sampled_from(TTLS))
    def open_some(self, n: int, ttl: int) -> None:
        b = BatchBuilder()
        for _ in range(n):
            b.open_session(ttl)
        self._apply(b, 0)

    @rule(data=st.data(), size=st.integers(1, 8), delta=st.sampled_from(DELTAS),
          version=st.sampled_from([3, 3, 3, 2]))
    def batch(self, data: st.DataObject, size: int, delta: int, version: int) -> None:
        b = BatchBuilder()
        for _ in range(size):
            b.add(self._command(data))
        self._apply(b, delta, version)

    @rule(delta=st.sampled_from([1, 10, 100, 1000, 2000, 70_000]))
    def tick(self, delta: int) -> None:
        self._apply(BatchBuilder(), delta)

    @precondition(lambda self: self.midpoint is None and len(self.records) > 3)
    @rule()
    def snapshot_restore(self) -> None:
        """Continue on a machine restored from a snapshot: it must behave identically."""
        snap = self.native.snapshot()
        self.native = LockMachine.from_snapshot(snap)
        assert self.native.snapshot() == snap
        # A new object: its histograms start empty, and the times of the contenders it
        # restored are unknown (their waits and holds so far are not observed).
        self.timing = TimingModel()
        self.last_timings = self.native.timings()
        self.midpoint = (len(self.records), snap)

    def _apply(self, b: BatchBuilder, delta: int, version: int = 3) -> None:
        self.time = max(0, self.time + delta)
        record = b.build(self.time)
        record = record[:4] + bytes([version]) + record[5:]  # version 2 has the same layout
        self.records.append(record)
        before = self.native.revision
        applied = self.native.apply(record)
        results, events = self.model.apply(record)
        assert [tuple(r) for r in applied.results] == results
        assert [tuple(e) for e in applied.events] == events
        # Revisions: one per event, no gaps, continuing from the previous batch.
        assert [e.revision for e in applied.events] == list(range(before + 1, self.native.revision + 1))
        for e in applied.events:
            if e.kind == EventKind.OPEN:
                self.sessions.append(e.session)
            elif e.kind == EventKind.GRANT:
                assert e.token == e.revision > self.max_token
                assert e.ticket <= e.token
                self.max_token = e.token
                self.stats["grant"] += 1
            elif e.kind == EventKind.WAIT:
                self.stats["wait"] += 1
            elif e.kind == EventKind.EXPIRE:
                self.stats["expire"] += 1
            if e.revision:
                self.revisions.append(e.revision)
        for r in applied.results:
            self.stats["dup"] += r.duplicate
            self.stats["held"] += r.status == Status.HELD
            if r.status == Status.OK and r.op in (Op.ACQUIRE, Op.SEM_ACQUIRE, Op.CAMPAIGN) and not r.duplicate:
                assert r.token == r.ticket
        assert self.native.time_ms == self.model.time
        self.timing.observe(applied.events, self.native.time_ms)

    # --- invariants ----------------------------------------------------------------

    @invariant()
    def same_state(self) -> None:
        assert self.native.snapshot() == self.model.snapshot()
        self.native.check_invariants()

    @invariant()
    def timings(self) -> None:
        now = self.native.timings()
        assert now == self.timing.expected(now.bounds_ms)
        for old, new in ((self.last_timings.waits, now.waits), (self.last_timings.holds, now.holds)):
            for kind, (counts, total) in new.items():
                assert all(a <= b for a, b in zip(old[kind][0], counts)) and old[kind][1] <= total
        self.last_timings = now

    @invariant()
    def lock_rules(self) -> None:
        for key in self.native.keys():
            info = self.native.info(key)
            assert info is not None and (info.holders or info.waiters)
            modes = {c.mode for c in info.holders}
            if info.kind == Kind.LOCK:
                # never two exclusive holders, never a writer with readers
                assert (modes == {Mode.EXCLUSIVE} and len(info.holders) == 1) or modes <= {Mode.SHARED}
            elif info.kind == Kind.SEMAPHORE:
                assert len(info.holders) <= info.permits
            else:
                assert len(info.holders) <= 1
            tokens = [c.token for c in info.holders]
            assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
            tickets = [c.ticket for c in info.waiters]
            assert tickets == sorted(tickets) and all(c.token == 0 for c in info.waiters)
            for c in info.holders + info.waiters:
                assert self.native.session(c.session) is not None

    def teardown(self) -> None:
        if not self.records:
            return
        final = self.native.snapshot()
        replayed = LockMachine()
        for record in self.records:
            replayed.apply(record)
        assert replayed.snapshot() == final, "replay from empty differs from the live state"
        if self.midpoint is not None:
            at, snap = self.midpoint
            resumed = LockMachine.from_snapshot(snap)
            for record in self.records[at:]:
                resumed.apply(record)
            assert resumed.snapshot() == final, "snapshot + replay of the tail differs"


TestMachineVsModel = MachineVsModel.TestCase
