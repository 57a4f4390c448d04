"""Quota pools: leases of integer capacity, shared fairly between tenants.

A *pool* (GPU slots, licences, connections) has a capacity in units; its *tenants* each
have a weight, a guaranteed minimum, a maximum and a priority band (0..7). A session asks
for ``n`` units on behalf of a tenant and gets a *lease* with a fencing token (the
machine's revision at grant, like a lock's), or waits in its tenant's FIFO queue.
Everything runs in the lock state machine, so it replicates, replays and snapshots like
locks, and everything a session holds returns when it ends.

Grant rule (whenever units free up or demand changes), among the tenants' first
requests that fit under their maximum: a tenant below its guaranteed minimum first;
then, in the highest band, a request passed ``patience`` times; then the tenant with
the smallest held/weight. The chosen request waits for units rather than let smaller
ones pass it. As leases turn over, holdings converge to the weighted max-min fair share
(:func:`fair_shares`) within one unit.

Starvation bound: while a request is the first of its tenant, fits its maximum and is
in the highest waiting band, at most ``patience`` grants go to later requests of its
band (grants that lift a tenant to its minimum aside).

Preemption: a request that cannot be served, and is of a higher band than some holders
(or below its tenant's minimum), asks whole leases to give back: lower bands first,
then the tenant most over its share, then the newest lease, never taking a tenant
below its minimum. The holder gets a GIVEBACK event; a lease still held ``grace_ms``
later is revoked (a REVOKE event; its token is stale from then on, so a
:class:`~coordcore.locks.fencing.FencedResource` refuses it).

The reference model (tests/models/pool_model.py) is the executable form of these rules.
"""
from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

__all__ = ["LeaseInfo", "PoolInfo", "TenantInfo", "WaitInfo", "fair_shares"]


class TenantInfo(NamedTuple):
    name: bytes
    weight: int
    minimum: int
    maximum: int
    band: int
    held: int


class LeaseInfo(NamedTuple):
    session: int
    tenant: bytes
    units: int
    ticket: int
    token: int
    giveback_deadline_ms: int  # 0: not asked to give back


class WaitInfo(NamedTuple):
    session: int
    tenant: bytes
    units: int
    ticket: int
    deadline_ms: int  # 0: waits until granted or withdrawn
    passes: int


class PoolInfo(NamedTuple):
    capacity: int
    grace_ms: int
    patience: int
    tenants: tuple[TenantInfo, ...]
    leases: tuple[LeaseInfo, ...]
    waits: tuple[WaitInfo, ...]

    @classmethod
    def from_tuple(cls, t: tuple[int, int, int, list[tuple[bytes, int, int, int, int, int]],
                                 list[tuple[int, bytes, int, int, int, int]],
                                 list[tuple[int, bytes, int, int, int, int]]]) -> PoolInfo:
        cap, grace, patience, tenants, leases, waits = t
        return cls(cap, grace, patience, tuple(TenantInfo(*x) for x in tenants), tuple(LeaseInfo(*x) for x in leases),
                   tuple(WaitInfo(*x) for x in waits))

    @property
    def held(self) -> int:
        return sum(t.held for t in self.tenants)

    def demand(self, tenant: bytes) -> int:
        """Units the tenant holds plus units it waits for."""
        return sum(t.held for t in self.tenants if t.name == tenant) + sum(w.units for w in self.waits if w.tenant == tenant)

    def shares(self) -> dict[bytes, Fraction]:
        """Each tenant's weighted max-min fair share of the current demand."""
        s = fair_shares(self.capacity, [(t.weight, t.minimum, t.maximum, self.demand(t.name)) for t in self.tenants])
        return {t.name: x for t, x in zip(self.tenants, s)}


def fair_shares(capacity: int, tenants: list[tuple[int, int, int, int]]) -> list[Fraction]:
    """Weighted max-min fair shares by water-filling: ``tenants`` are (weight, minimum,
    maximum, demand); each gets ``clamp(weight * level, min(minimum, demand),
    min(maximum, demand))`` at the level that fills the capacity (all of its capped
    demand if that fits).

    >>> [int(x) for x in fair_shares(8, [(1, 0, 8, 10), (2, 0, 8, 10), (1, 0, 8, 10)])]
    [2, 4, 2]
    """
    lo = [min(m, d) for _, m, _, d in tenants]
    hi = [min(mx, d, capacity) for _, _, mx, d in tenants]
    if sum(hi) <= capacity:
        return [Fraction(h) for h in hi]
    w = [Fraction(x[0]) for x in tenants]

    def at(level: Fraction) -> list[Fraction]:
        return [min(max(w[i] * level, Fraction(lo[i])), Fraction(hi[i])) for i in range(len(tenants))]

    # The filled amount is piecewise linear in the level: find the segment that crosses
    # the capacity, then solve on it.
    prev = Fraction(0)
    for p in sorted({Fraction(v) / w[i] for i in range(len(tenants)) for v in (lo[i], hi[i])}):
        if sum(at(p)) >= capacity:
            break
        prev = p
    slope = sum((w[i] for i in range(len(tenants)) if lo[i] <= w[i] * prev < hi[i]), Fraction(0))
    level = prev + (capacity - sum(at(prev))) / slope if slope else prev
    return at(level)
