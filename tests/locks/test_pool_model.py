"""The pool reference model against its own spec: random commands, invariants after
every step (capacity, maximums, FIFO within a tenant, bounded waiting, minimums), and
convergence to the weighted max-min fair share as leases turn over."""
from __future__ import annotations

import struct
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.models.pool_model import (CAP_ACQUIRE, CAP_RELEASE, CAP_RESIZE, CLOSE, E_CANCEL, E_GRANT, E_REVOKE, E_WAIT, OK,
                                     OPEN, POOL_CONF, POOL_SET, TENANT_CONF, TENANT_SET, WAIT, PoolModel, fair_shares)

POOL = b"gpu"
TENANTS = [b"a", b"b", b"c"]


def pool_set(capacity: int, grace: int = 50, patience: int = 4) -> tuple[int, int, int, int, bytes, bytes]:
    return (POOL_SET, 0, 0, capacity, POOL, POOL_CONF.pack(grace, patience))


def tenant_set(name: bytes, weight: int, minimum: int, maximum: int, band: int = 0) -> tuple[int, int, int, int, bytes, bytes]:
    return (TENANT_SET, 0, 0, 0, POOL, TENANT_CONF.pack(weight, minimum, maximum, band) + name)


def acquire(sid: int, tenant: bytes, units: int, timeout: int = 0, wait: bool = True) -> tuple[int, int, int, int, bytes, bytes]:
    return (CAP_ACQUIRE, WAIT if wait else 0, sid, timeout << 32 | units, POOL, tenant)


def test_fair_shares_water_filling() -> None:
    assert fair_shares(8, [(1, 0, 8, 9), (2, 0, 8, 9), (1, 0, 8, 9)]) == [2, 4, 2]
    assert fair_shares(8, [(1, 0, 8, 1), (2, 0, 8, 9), (1, 0, 8, 9)]) == [1, Fraction(14, 3), Fraction(7, 3)]
    assert fair_shares(8, [(1, 5, 8, 9), (1, 0, 8, 9)]) == [5, 3]       # a minimum above the level
    assert fair_shares(8, [(1, 0, 1, 9), (1, 0, 8, 9)]) == [1, 7]       # a maximum below it
    assert fair_shares(8, [(1, 0, 8, 2), (1, 0, 8, 3)]) == [2, 3]       # demand below capacity


class PoolSpec(RuleBasedStateMachine):
    """Random commands on one pool with three tenants; ``UNIT`` draws only 1-unit
    requests (whole-lease preemption can then always honour a minimum)."""

    UNIT = False

    def __init__(self) -> None:
        super().__init__()
        self.m = PoolModel()
        self.time = 0
        self.sids: list[int] = []
        self.granted: list[tuple[int, int]] = []  # (session, token)
        self.waiting: dict[int, bytes] = {}       # ticket -> tenant, from the events

    def step(self, commands: list[tuple[int, int, int, int, bytes, bytes]], dt: int = 0) -> list[tuple[int, ...]]:
        self.time += dt
        results, events = self.m.apply(self.time, commands)
        for rev, kind, _, sid, ticket, token, _, tenant in events:
            if kind == E_WAIT:
                self.waiting[ticket] = tenant
            elif kind == E_GRANT:
                # FIFO within a tenant: nothing of its tenant older than it still waits.
                assert not any(t < ticket and n == tenant for t, n in self.waiting.items())
                self.waiting.pop(ticket, None)
                self.granted.append((sid, token))
            elif kind in (E_CANCEL,):
                self.waiting.pop(ticket, None)
        return [tuple(r) for r in results]

    @initialize(cap=st.integers(1, 10), conf=st.lists(st.tuples(st.integers(1, 3), st.integers(0, 3), st.integers(1, 10),
                                                                st.integers(0, 2)), min_size=3, max_size=3))
    def setup(self, cap: int, conf: list[tuple[int, int, int, int]]) -> None:
        self.step([pool_set(cap)])
        for name, (w, mn, mx, band) in zip(TENANTS, conf):
            self.step([tenant_set(name, w, min(mn, mx), mx, band)])
        (r,) = self.step([(OPEN, 0, 0, 10**9, b"", b"")] * 1)
        self.sids = [r[4]]
        for _ in range(3):
            self.sids.append(self.step([(OPEN, 0, 0, 10**9, b"", b"")])[0][4])

    @rule(s=st.integers(0, 3), t=st.sampled_from(TENANTS), n=st.integers(1, 4), timeout=st.sampled_from([0, 0, 30]),
          wait=st.booleans())
    def acquire(self, s: int, t: bytes, n: int, timeout: int, wait: bool) -> None:
        self.step([acquire(self.sids[s], t, 1 if self.UNIT else n, timeout if wait else 0, wait)])

    @rule(i=st.integers(0, 50))
    def release(self, i: int) -> None:
        if self.granted:
            sid, token = self.granted.pop(i % len(self.granted))
            self.step([(CAP_RELEASE, 0, sid, token, POOL, b"")])

    @rule(i=st.integers(0, 50), n=st.integers(1, 4))
    def resize(self, i: int, n: int) -> None:
        if self.granted and not self.UNIT:
            sid, token = self.granted[i % len(self.granted)]
            self.step([(CAP_RESIZE, 0, sid, token, POOL, struct.pack("<I", n))])

    @rule(s=st.integers(0, 3))
    def close(self, s: int) -> None:
        sid = self.sids[s]
        self.step([(CLOSE, 0, sid, 0, b"", b"")])
        self.sids[s] = self.step([(OPEN, 0, 0, 10**9, b"", b"")])[0][4]

    @rule(dt=st.sampled_from([1, 20, 60]))
    def tick(self, dt: int) -> None:
        self.step([], dt)

    @rule(t=st.sampled_from(TENANTS), w=st.integers(1, 3), mx=st.integers(1, 10), band=st.integers(0, 2))
    def retune(self, t: bytes, w: int, mx: int, band: int) -> None:
        r = self.step([tenant_set(t, w, 0, mx, band)])[0]
        assert r[1] == OK or r[2] == 21  # refused only when it holds more than the new maximum

    @invariant()
    def limits_hold(self) -> None:
        pool = self.m.pools.get(POOL)
        if pool is None:
            return
        assert pool.held <= pool.capacity
        assert sum(x.units for x in pool.leases.values()) == pool.held
        for t in pool.tenants.values():
            assert t.held <= t.maximum
            for r in t.queue:  # bounded waiting: nobody passed more than the patience
                assert r.passes <= pool.patience
            assert [r.ticket for r in t.queue] == sorted(r.ticket for r in t.queue)

    @invariant()
    def minimums_are_being_served(self) -> None:
        pool = self.m.pools.get(POOL)
        if pool is None or not self.UNIT:
            return
        heads = [t.queue[0] for t in pool.tenants.values() if t.queue and t.held < t.minimum]
        if heads:  # a tenant below its minimum waits only for units that are on their way back
            marked = sum(x.units for x in pool.leases.values() if x.deadline)
            assert pool.capacity - pool.held + marked >= 1


TestPoolSpec = PoolSpec.TestCase
TestPoolSpec.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


class UnitPoolSpec(PoolSpec):
    UNIT = True


TestUnitPoolSpec = UnitPoolSpec.TestCase
TestUnitPoolSpec.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


@settings(max_examples=60, deadline=None)
@given(cap=st.integers(2, 12), conf=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(0, 14)),
                                             min_size=2, max_size=4))
def test_holdings_converge_to_the_fair_share_as_leases_turn_over(cap: int, conf: list[tuple[int, int, int]]) -> None:
    # No minimums here: a tenant below its minimum takes the next unit freed, whoever
    # frees it (the spec says so), which is not the fair share's order.
    m = PoolModel()
    m.apply(0, [pool_set(cap, patience=65535)])
    names = []
    for i, (w, mx, _) in enumerate(conf):
        names.append(bytes([97 + i]))
        m.apply(0, [tenant_set(names[-1], w, 0, mx)])
    (sid,) = [r[4] for r in m.apply(0, [(OPEN, 0, 0, 10**9, b"", b"")])[0]]
    # Each tenant asks for `demand` single units; every step returns the oldest lease and
    # its tenant asks again, so demand stays put (the queue is stable) while every lease
    # turns over.
    for name, (_, _, demand) in zip(names, conf):
        m.apply(0, [acquire(sid, name, 1)] * demand)
    pool = m.pools[POOL]
    for _ in range(4 * cap):
        if not pool.leases:
            break
        oldest = min(pool.leases.values(), key=lambda x: x.token)
        # Asks again first, then returns: the demand is the same when the unit is decided.
        m.apply(0, [acquire(sid, oldest.tenant.name, 1), (CAP_RELEASE, 0, sid, oldest.token, POOL, b"")])
    shares = fair_shares(cap, [(t.weight, t.minimum, t.maximum, t.held + len(t.queue)) for t in pool.tenants.values()])
    for t, share in zip(pool.tenants.values(), shares):
        assert abs(t.held - share) <= 1, (t, share)
    assert pool.held == min(cap, sum(min(t.maximum, t.held + len(t.queue)) for t in pool.tenants.values()))
