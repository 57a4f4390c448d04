"""Quota pools: leases of integer capacity, shared fairly between tenants.

A *pool* (GPU slots, licences, connections) has a capacity in units; its *tenants* each
have a weight, a guaranteed minimum, a maximum and a priority band (0..7). A session asks
for ``n`` units on behalf of a tenant and gets a *lease* with a fencing token (the
machine's revision at grant, like a lock's), or waits in its tenant's FIFO queue.
Everything runs in the lock state machine, so it replicates, replays and snapshots like
locks, and everything a session holds returns when it ends.

Grant rule (whenever units free up or demand changes), among the tenants' first
requests that fit under their maximum: a tenant below its guaranteed minimum first;
then, in the highest band, a request passed ``patience`` times; then the tenant furthest
below its weighted max-min fair share of the current demand (:func:`fair_shares`). The
chosen request waits for units rather than let smaller ones pass it. While demand holds
still, holdings converge to within one unit of the fair share as leases turn over; a
tenant below its minimum takes the next unit freed, whoever frees it.

Starvation bound (exactly what the machine enforces): a request is *eligible* while it is
the first of its tenant's queue and granting it keeps the tenant within its maximum.
While it is eligible and in the highest band that has an eligible request, at most
``patience`` grants go to later requests (higher tickets) of its band, not counting
grants to a tenant below its minimum: each such grant adds one to its ``passes``
(``WaitInfo.passes``, never above ``patience``). Once it has been passed ``patience``
times it is chosen before every request of its band except older ones passed as often,
and the pool then grants nothing else (except below-minimum requests) until enough units
are free for it: freed units are kept for it, not handed to smaller later requests.
FIFO within a tenant makes every request eligible in turn. The bound counts grants, not
time: units are granted only as they are released, given back or revoked; while a
higher band has an eligible request, only it (and below-minimum requests) are served.

Minimums and maximums: a tenant never holds more than its maximum, nor a pool more than
its capacity (a request for more than ``min(maximum, capacity)`` is refused at once; one
that would take its tenant past the maximum is not eligible and waits); a pool's
minimums add up to at most its capacity (POOL_SET and TENANT_SET refuse more). A
tenant holding less than its minimum is served first, whatever its band (its oldest
eligible request; among several such tenants the oldest ticket), takes the next units
freed, and may preempt any other tenant's whole leases that leave that tenant at or
above its own minimum; if such leases cannot cover what it misses, it waits for
releases. A tenant at or below its minimum is never preempted.

Preemption: a request that cannot be served, and is of a higher band than some holders
(or below its tenant's minimum), asks whole leases to give back: lower bands first,
then the tenant with the most units held per unit of weight, then the newest lease,
never taking a tenant below its minimum, and only if the marked leases (with the free
units and those already asked for) cover the request. The holder gets a GIVEBACK event; a lease still held ``grace_ms``
later is revoked if the request still needs its units (a REVOKE event; its token is
stale from then on, so a :class:`~coordcore.locks.fencing.FencedResource` refuses it);
if other units served it meanwhile, the mark lapses.

The reference model (tests/models/pool_model.py) is the executable form of these rules.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from fractions import Fraction
from typing import TYPE_CHECKING, NamedTuple

from coordcore._native.lockmachine import EventKind, Mode, Status
from coordcore.errors import BadArgument, LockTimeout, NotLockHolder, ServiceClosed, SessionExpired

if TYPE_CHECKING:
    from coordcore.locks.machine import LockMachine
    from coordcore.locks.service import LockService
    from coordcore.locks.sessions import Session
    from coordcore.locks.watches import Watch
    from coordcore.types import Key

__all__ = ["Lease", "LeaseInfo", "PoolInfo", "PoolReads", "PoolSummary", "PoolTotals", "Pools", "TenantInfo", "TenantSummary",
           "WaitInfo", "fair_shares"]


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


class PoolTotals(NamedTuple):
    """Every pool together (INFO, metrics): counts now, and since the service started."""
    pools: int
    capacity: int
    held: int
    waiting: int       # requests waiting
    preemptions: int   # leases asked to give back
    revocations: int   # leases revoked after their grace


class TenantSummary(NamedTuple):
    name: bytes
    weight: int
    minimum: int
    maximum: int
    band: int
    held: int
    wanted: int   # units its waiting requests ask for
    waiting: int  # its waiting requests
    share: Fraction  # its weighted max-min fair share of the current demand


class PoolSummary(NamedTuple):
    """A pool without its leases and waits (what a status page lists)."""
    name: bytes
    capacity: int
    held: int
    waiting: int
    tenants: tuple[TenantSummary, ...]


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


# --- the embedded API (LockService.pools) ------------------------------------------------

class Lease:
    """Units of a pool held by a session for a tenant. ``token`` is the fencing token.
    ``giveback`` is set when the machine asks for the units back (preemption: release
    within the pool's grace), ``revoked`` when the lease was taken (its token is stale)."""

    __slots__ = ("pool", "tenant", "units", "token", "session", "ticket", "giveback", "revoked", "_on_giveback")

    def __init__(self, pool: bytes, tenant: bytes, units: int, token: int, session: int, ticket: int,
                 on_giveback: Callable[[Lease], object] | None) -> None:
        self.pool, self.tenant, self.units, self.token = pool, tenant, units, token
        self.session, self.ticket = session, ticket
        self.giveback = asyncio.Event()
        self.revoked = asyncio.Event()
        self._on_giveback = on_giveback

    def __repr__(self) -> str:
        return f"Lease({self.pool!r}, tenant={self.tenant!r}, units={self.units}, token={self.token})"


class PoolReads:
    """The reads of quota pools over a machine (``machine()``: the one to read now), which
    a cluster follower serves from its replica too."""

    def __init__(self, machine: Callable[[], LockMachine]) -> None:
        self._machine = machine

    def names(self) -> list[bytes]:
        """The pools defined, sorted."""
        return self._machine().pool_names()

    def info(self, pool: Key) -> PoolInfo | None:
        """The pool's state now (capacity, tenants with their holdings, leases, waits)."""
        return self._machine().pool(pool)

    def summary(self, pool: Key, *, shares: bool = True) -> PoolSummary | None:
        """The pool's capacity, holdings, waiting requests and each tenant's fair share
        (0 with ``shares=False``, which skips the water-filling), without its leases and
        waits: bounded by its tenants."""
        name = _name(pool)
        t = self._machine().pool_summary(name)
        if t is None:
            return None
        cap, held, waiting, tenants = t
        demand = [(w, mn, mx, h + want) for _, w, mn, mx, _, h, want, _ in tenants]
        shares_ = fair_shares(cap, demand) if shares else [Fraction(0)] * len(tenants)
        return PoolSummary(name, cap, held, waiting,
                           tuple(TenantSummary(*x, share) for x, share in zip(tenants, shares_)))


class Pools(PoolReads):
    """Quota pools of one :class:`~coordcore.locks.LockService` (``svc.pools``)."""

    def __init__(self, svc: LockService) -> None:
        super().__init__(lambda: svc._machine)
        self._svc = svc
        self._leases: dict[int, Lease] = {}      # token -> lease, while held
        self._watchers: dict[bytes, asyncio.Task[None]] = {}
        self._early: dict[int, int] = {}         # token -> GIVEBACK/REVOKE seen before its lease was known
        # The machine counts give-backs and revocations as it applies them, recovery's
        # replay included: the values now are the zero of "since the service started".
        self._base = svc._machine.pool_totals()[4:]

    async def define(self, pool: Key, capacity: int, *, grace: float = 5.0, patience: int = 16) -> None:
        """Define pool ``pool`` of ``capacity`` units (or change it)."""
        grace_ms = _ms("grace", grace)
        await self._svc.pipeline.call(lambda b: b.pool_set(pool, capacity, grace_ms=grace_ms, patience=patience))

    async def define_tenant(self, pool: Key, tenant: Key, *, weight: int = 1, minimum: int = 0,
                            maximum: int | None = None, band: int = 0) -> None:
        """Define a tenant of ``pool`` (or change it)."""
        mx = 1_000_000 if maximum is None else maximum
        await self._svc.pipeline.call(lambda b: b.tenant_set(pool, tenant, weight=weight, minimum=minimum,
                                                             maximum=mx, band=band))

    def totals(self) -> PoolTotals:
        """Every pool together: pools, capacity, units held, requests waiting, and the
        preemptions (give-back requests) and revocations since the service started."""
        pools, cap, held, waiting, givebacks, revokes = self._svc._machine.pool_totals()
        return PoolTotals(pools, cap, held, waiting, givebacks - self._base[0], revokes - self._base[1])

    async def acquire(self, pool: Key, units: int, session: Session | int, *, tenant: Key,
                      timeout: float | None = None, on_giveback: Callable[[Lease], object] | None = None,
                      track: bool = True, request_id: int = 0) -> Lease:
        """Lease ``units`` of ``pool`` for ``tenant``, waiting up to ``timeout`` seconds
        (None: until granted; 0: only if free now). Raises LockTimeout, SessionExpired,
        BadArgument (more units than the tenant may hold), NOTFOUND (no such pool or
        tenant). ``on_giveback(lease)`` is called when the lease is preempted.
        ``track=False`` leaves ``lease.giveback``/``revoked`` unset (no watch of the pool's
        events, which costs every batch a full decode): the server's way, whose clients
        WATCH the pool themselves.

        ``request_id`` (non-zero, unique per session) makes a retry idempotent: the same
        id again answers the first attempt's lease (its token) and holds the units once;
        if the first attempt was left waiting, the retry takes that wait over (under its
        first deadline) and answers the token if it was granted meanwhile, or raises
        NotFound (code ``NOTFOUND``) if the wait ended meanwhile (timed out or withdrawn):
        the caller then asks again with a new id."""
        sid = self._svc._sid(session)
        name = _name(pool)
        if (track or on_giveback is not None) and self.info(name) is not None:
            self._watch(name)  # pools are defined by admins: one watch each at most
        wait_ms = 0 if not timeout else _ms("timeout", timeout)
        # With a timeout the machine withdraws the wait at its deadline (a CANCEL event,
        # through the log): the timeout survives a restart and needs no timer of ours.
        req = self._svc.pipeline.submit(lambda b: b.cap_acquire(sid, name, tenant, units, wait=timeout != 0,
                                                                      timeout_ms=wait_ms, request_id=request_id),
                                        parks=timeout != 0, contends=sid)
        req.timeout_error = LockTimeout(f"pool {name!r}: {units} units not granted within {timeout} s")
        try:
            result = await req.future
        except asyncio.CancelledError:
            # The caller left (a cancelled task, its connection went): withdraw the wait,
            # or give back a grant that raced with the cancellation, also one still in
            # the batch being written (withdraw_request waits for its outcome). Not when
            # a retry of the same request (same request id) took the wait over: that one
            # owns it now.
            if not req.abandoned:
                pipe = self._svc.pipeline
                pipe.track(asyncio.ensure_future(pipe.withdraw_request(
                    req, name, sid, lambda ticket: self._withdraw(sid, name, ticket))))
            raise
        if result.status == Status.BUSY:
            raise LockTimeout(f"pool {name!r}: {units} units not free now (timeout=0)")
        exc = result.exception()
        if exc is not None:
            raise exc
        lease = Lease(name, _name(tenant), units, result.token, sid, result.ticket, on_giveback)
        if name not in self._watchers:
            return lease
        self._leases[lease.token] = lease
        early = self._early.pop(lease.token, None)
        if early is not None:
            self._note(lease, early)
        return lease

    async def _withdraw(self, sid: int, pool: bytes, ticket: int) -> None:
        # A cancelled wait: withdraw it, or give back what it was granted meanwhile.
        try:
            await self._svc.pipeline.call(lambda b: b.cap_release(sid, pool, ticket))
        except NotLockHolder:
            info = self.info(pool)
            for x in info.leases if info is not None else ():
                if x.ticket == ticket and x.session == sid:
                    await self._svc.pipeline.call(lambda b: b.cap_release(sid, pool, x.token))
        except (SessionExpired, ServiceClosed):
            pass

    async def release(self, lease: Lease, *, request_id: int = 0) -> None:
        """Give the lease's units back. Raises NotLockHolder if it was revoked or released
        (a retry with the same ``request_id`` answers as the first attempt did)."""
        self._leases.pop(lease.token, None)
        await self._svc.pipeline.call(lambda b: b.cap_release(lease.session, lease.pool, lease.token,
                                                              request_id=request_id))

    async def resize(self, lease: Lease, units: int, *, request_id: int = 0) -> bool:
        """Shrink the lease (always done) or grow it (only if nobody waits and the units
        are free now): True if the lease now has ``units`` (a retry with the same
        ``request_id`` answers as the first attempt did)."""
        result = await self._svc.pipeline.call(lambda b: b.cap_resize(lease.session, lease.pool, lease.token, units,
                                                                      request_id=request_id))
        if result.status == Status.OK:
            lease.units = units
        return result.status == Status.OK

    def capacity(self, pool: Key, units: int, session: Session | int, *, tenant: Key, timeout: float | None = None,
                 on_giveback: Callable[[Lease], object] | None = None) -> AbstractAsyncContextManager[Lease]:
        """``async with svc.pools.capacity("gpu", 2, session, tenant="research") as lease:``"""
        return self._held(pool, units, session, tenant, timeout, on_giveback)

    @contextlib.asynccontextmanager
    async def _held(self, pool: Key, units: int, session: Session | int, tenant: Key, timeout: float | None,
                    on_giveback: Callable[[Lease], object] | None) -> AsyncIterator[Lease]:
        lease = await self.acquire(pool, units, session, tenant=tenant, timeout=timeout, on_giveback=on_giveback)
        try:
            yield lease
        finally:
            if not lease.revoked.is_set():
                try:
                    await self.release(lease)
                except (NotLockHolder, SessionExpired, ServiceClosed):
                    pass  # revoked, or gone with its session, meanwhile

    # --- give-back and revoke events ---------------------------------------------------

    def _watch(self, pool: bytes) -> None:
        if pool not in self._watchers:
            w = self._svc.watch(pool)
            self._watchers[pool] = asyncio.ensure_future(self._follow(pool, w))

    async def _follow(self, pool: bytes, w: Watch) -> None:
        async with w:
            async for ev in w:
                if ev.key != pool or ev.mode != Mode.POOL:
                    continue
                if ev.kind in (EventKind.GIVEBACK, EventKind.REVOKE):
                    lease = self._leases.get(ev.token)
                    if lease is not None:
                        self._note(lease, ev.kind)
                    elif len(self._early) < 10_000:
                        self._early[ev.token] = ev.kind
                elif ev.kind in (EventKind.RELEASE, EventKind.GRANT):
                    self._early.pop(ev.token, None)
                    if ev.kind == EventKind.RELEASE:
                        self._leases.pop(ev.token, None)

    def _note(self, lease: Lease, kind: int) -> None:
        if kind == EventKind.REVOKE:
            self._leases.pop(lease.token, None)
            lease.giveback.set()
            lease.revoked.set()
        elif not lease.giveback.is_set():
            lease.giveback.set()
            if lease._on_giveback is not None:
                lease._on_giveback(lease)

    def close(self) -> None:
        for task in self._watchers.values():
            task.cancel()
        self._watchers.clear()


def _name(key: Key) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


def _ms(name: str, seconds: float) -> int:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds <= 30 * 86_400:
        raise BadArgument(f"{name} must be a number of seconds in [0, 2592000], got {seconds!r}")
    return int(seconds * 1000)
