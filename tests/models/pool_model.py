"""A pure-Python reference model of quota pools (the spec the native machine follows).

A *pool* has an integer capacity, a give-back grace (ms) and a patience (the starvation
bound, below). A pool's *tenants* each have a weight, a guaranteed minimum, a maximum
and a priority band (0..7, higher is more urgent). A session asks a pool for ``n``
units on behalf of a tenant; it gets a *lease* (a fencing token, the machine's revision
at grant, like a lock's) or waits in its tenant's FIFO queue.

The grant rule (``_settle``), run whenever something changes in a pool. A tenant's
*head* is the first request of its queue; it is *eligible* if granting it keeps the
tenant within its maximum. Among eligible heads, the *candidate* is:

1. a head whose tenant holds less than its guaranteed minimum, oldest ticket first
   (minimums outrank bands);
2. otherwise, in the highest band that has an eligible head: a head that has been
   *passed* ``patience`` times, oldest ticket first;
3. otherwise, in that band, the head of the tenant furthest below its fair share
   (``fair_shares``: weighted max-min water-filling over every tenant's demand, held
   plus waiting), then the oldest ticket.

If the candidate fits in the free units it is granted and the rule runs again; if not,
nothing else is granted (free units are kept for it, so a big request is not starved by
small ones) and it may preempt (below). A grant *passes* every other eligible head of
its band with an older ticket (the count the patience bounds).

Starvation bound: while a request is an eligible head of the highest band, at most
``patience`` grants go to later requests of its band, apart from grants that lift a
tenant to its minimum; FIFO within a tenant makes every request a head in turn.
Without aging (rule 2) the grant order is weighted max-min fair: a unit goes to the
largest deficit, which is positive whenever a unit is free, so no grant takes a tenant a
whole unit over its share, and holdings converge to within one unit of the share as
leases turn over (a divisor rule such as smallest held/weight cannot promise that: it
misses by more than a unit with several tenants). An aged grant can move one unit off
that share, which the next grants correct.

Preemption: a candidate that does not fit, below its minimum or of a higher band than
some holders, may ask holders to give back: leases of other tenants that are either of
a lower band or (for a below-minimum candidate) above their own tenant's minimum; the
lowest band first, then the tenant with the largest held/weight (the most over its
share), then the newest lease; never taking a tenant below its minimum. Whole leases are
marked, only if the marks cover what is missing (free units plus units already marked
count). A marked lease gets a GIVEBACK event and a deadline (batch time + grace); if it
is still held at the first batch at or after the deadline, and the pool's candidate still
waits for units and may take them from it, it is revoked (REVOKE event, its token is
then stale); otherwise (served meanwhile by other units) the mark lapses without event.
A tenant below its minimum takes the next units freed, whoever frees them: that can
move another tenant one more unit off its share until its next grant.

Commands, results ``(op, status, detail, flags, value, aux)`` and events
``(revision, kind, mode, session, ticket, token, key, value)`` are those of the native
machine (coordcore/locks/machine.py documents them). This model covers sessions
(open, keepalive, close, expiry) and the pool commands; locks are the lock model's.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from fractions import Fraction

MAX_KEY, MAX_PERMITS, MAX_TTL, MAX_NAME = 1024, 1_000_000, 30 * 86_400_000, 255
MAX_PATIENCE, MAX_BAND = 65535, 7
OPEN, KEEPALIVE, CLOSE = 1, 2, 3
POOL_SET, TENANT_SET, CAP_ACQUIRE, CAP_RELEASE, CAP_RESIZE = 13, 14, 15, 16, 17
WAIT = 2
OK, WAITING, BUSY = 0, 1, 2
NOSESSION, NOTHOLDER, CONFLICT, BADARG, NOTFOUND = 10, 11, 12, 14, 16
D_FLAGS, D_KEY, D_VALUE, D_TTL, D_PERMITS, D_SESSION, D_ARG, D_NO_SUCH_SESSION, D_NO_SUCH_HOLD = 1, 2, 3, 4, 5, 7, 8, 9, 10
D_TIMEOUT = 15
D_NO_SUCH_POOL, D_NO_SUCH_TENANT, D_OVER, D_MINIMUMS = 19, 20, 21, 22
M_NONE, M_POOL = 0, 5
E_OPEN, E_CLOSE, E_EXPIRE, E_WAIT, E_GRANT, E_RELEASE, E_CANCEL = 1, 2, 3, 4, 5, 6, 7
E_GIVEBACK, E_REVOKE = 9, 10

POOL_CONF = struct.Struct("<II")      # grace ms, patience
TENANT_CONF = struct.Struct("<IIIB3x")  # weight, minimum, maximum, band; then the name

Result = tuple[int, int, int, int, int, int]
EventT = tuple[int, int, int, int, int, int, bytes, bytes]


@dataclass
class Tenant:
    name: bytes
    weight: int
    minimum: int
    maximum: int
    band: int
    held: int = 0
    queue: list[Request] = field(default_factory=list)


@dataclass
class Request:
    session: int
    tenant: Tenant
    units: int
    ticket: int
    deadline: int = 0  # wait timeout (0: none)
    passes: int = 0


@dataclass
class Lease:
    session: int
    tenant: Tenant
    units: int
    ticket: int
    token: int
    deadline: int = 0  # give-back deadline (0: not asked to give back)


@dataclass
class Pool:
    name: bytes
    capacity: int
    grace: int
    patience: int
    tenants: dict[bytes, Tenant] = field(default_factory=dict)
    leases: dict[int, Lease] = field(default_factory=dict)   # token -> lease
    waits: dict[int, Request] = field(default_factory=dict)  # ticket -> request

    @property
    def held(self) -> int:
        return sum(t.held for t in self.tenants.values())

    def limit(self, t: Tenant) -> int:
        return min(t.maximum, self.capacity)


def fair_shares(capacity: int, tenants: list[tuple[int, int, int, int]]) -> list[Fraction]:
    """Weighted max-min fair shares by water-filling: ``tenants`` are (weight, minimum,
    maximum, demand); each gets clamp(weight * level, min(minimum, demand),
    min(maximum, demand)) for the level that fills the capacity (or its cap, if the
    demand is smaller)."""
    lo = [min(m, d) for _, m, _, d in tenants]
    hi = [min(mx, d, capacity) for _, _, mx, d in tenants]
    if sum(hi) <= capacity:
        return [Fraction(h) for h in hi]

    def filled(level: Fraction) -> Fraction:
        return sum((min(max(Fraction(w) * level, lo[i]), hi[i]) for i, (w, *_) in enumerate(tenants)), Fraction(0))

    points = sorted({Fraction(v, w) for i, (w, *_) in enumerate(tenants) for v in (lo[i], hi[i])})
    prev = Fraction(0)
    for p in points:
        if filled(p) >= capacity:
            break
        prev = p
    # Linear between prev and p: solve for the level.
    base = filled(prev)
    slope = sum((Fraction(w) for i, (w, *_) in enumerate(tenants) if lo[i] <= w * prev < hi[i]), Fraction(0))
    level = prev + (capacity - base) / slope if slope else prev
    return [min(max(Fraction(w) * level, lo[i]), hi[i]) for i, (w, *_) in enumerate(tenants)]


class PoolModel:
    def __init__(self) -> None:
        self.time = 0
        self.revision = 0
        self.next_session = 1
        self.sessions: dict[int, tuple[int, int]] = {}  # id -> (ttl, deadline)
        self.pools: dict[bytes, Pool] = {}
        self.events: list[EventT] = []

    # --- batches ---------------------------------------------------------------

    def apply(self, time_ms: int, commands: list[tuple[int, int, int, int, bytes, bytes]]) -> tuple[list[Result], list[EventT]]:
        """Apply one batch of (op, flags, session, arg, key, value)."""
        self.events = []
        self.time = max(self.time, time_ms)
        dying = sorted((d, s) for s, (_, d) in self.sessions.items() if d <= self.time)
        self._end_sessions([s for _, s in dying], E_EXPIRE)
        self._expire_pools()
        results = [self._one(*c) for c in commands]
        return results, self.events

    def _rev(self) -> int:
        self.revision += 1
        return self.revision

    def _emit(self, kind: int, pool: Pool, session: int, ticket: int, token: int, tenant: Tenant) -> None:
        self.events.append((self._rev(), kind, M_POOL, session, ticket, token, pool.name, tenant.name))

    def _one(self, op: int, flags: int, sid: int, arg: int, key: bytes, value: bytes) -> Result:
        if op in (OPEN, KEEPALIVE, CLOSE):
            return self._session_op(op, sid, arg)
        detail, conf = self._check(op, flags, sid, arg, key, value)
        if detail:
            return (op, BADARG, detail, 0, 0, 0)
        if op == POOL_SET:
            return self._pool_set(key, arg, *conf)
        if op == TENANT_SET:
            return self._tenant_set(key, value[TENANT_CONF.size:], *conf)
        if sid not in self.sessions:
            return (op, NOSESSION, D_NO_SUCH_SESSION, 0, 0, 0)
        if op == CAP_ACQUIRE:
            return self._acquire(sid, key, value, arg & 0xFFFFFFFF, arg >> 32, bool(flags & WAIT))
        if op == CAP_RELEASE:
            return self._release(sid, key, arg)
        return self._resize(sid, key, arg, conf[0])

    def _check(self, op: int, flags: int, sid: int, arg: int, key: bytes, value: bytes) -> tuple[int, tuple[int, ...]]:
        """Argument checks, in the native order: flags, key, value, arguments, session."""
        if flags & ~(WAIT if op == CAP_ACQUIRE else 0):
            return D_FLAGS, ()
        if not 0 < len(key) <= MAX_KEY:
            return D_KEY, ()
        n = len(value)
        if (op == POOL_SET and n != POOL_CONF.size) or (op == TENANT_SET and not TENANT_CONF.size < n <= TENANT_CONF.size + MAX_NAME) \
                or (op == CAP_ACQUIRE and not 0 < n <= MAX_NAME) or (op == CAP_RELEASE and n) or (op == CAP_RESIZE and n != 4):
            return D_VALUE, ()
        conf: tuple[int, ...] = ()
        if op == POOL_SET:
            grace, patience = conf = POOL_CONF.unpack(value)
            if not 1 <= arg <= MAX_PERMITS:
                return D_PERMITS, ()
            if grace > MAX_TTL:
                return D_TIMEOUT, ()
            if not 1 <= patience <= MAX_PATIENCE:
                return D_ARG, ()
        elif op == TENANT_SET:
            weight, minimum, maximum, band = conf = TENANT_CONF.unpack_from(value)
            if arg:
                return D_ARG, ()
            if not (1 <= weight <= MAX_PERMITS and 1 <= maximum <= MAX_PERMITS and minimum <= maximum):
                return D_PERMITS, ()
            if band > MAX_BAND or value[13:16] != b"\0\0\0":
                return D_ARG, ()
        elif op == CAP_ACQUIRE:
            units, timeout = arg & 0xFFFFFFFF, arg >> 32
            if not 1 <= units <= MAX_PERMITS:
                return D_PERMITS, ()
            if timeout > MAX_TTL or (timeout and not flags & WAIT):
                return D_TIMEOUT, ()
        elif op == CAP_RELEASE:
            if not arg:
                return D_ARG, ()
        else:
            (units,) = conf = struct.unpack("<I", value)
            if not arg:
                return D_ARG, ()
            if not 1 <= units <= MAX_PERMITS:
                return D_PERMITS, ()
        if (sid != 0) != (op not in (POOL_SET, TENANT_SET)):
            return D_SESSION, ()
        return 0, conf

    # --- sessions --------------------------------------------------------------

    def _session_op(self, op: int, sid: int, arg: int) -> Result:
        if op == OPEN:
            s = self.next_session
            self.next_session += 1
            self.sessions[s] = (arg, self.time + arg)
            self.events.append((self._rev(), E_OPEN, M_NONE, s, 0, 0, b"", b""))
            return (op, OK, 0, 0, s, self.time + arg)
        if sid not in self.sessions:
            return (op, NOSESSION, D_NO_SUCH_SESSION, 0, 0, 0)
        if op == KEEPALIVE:
            ttl, _ = self.sessions[sid]
            self.sessions[sid] = (ttl, self.time + ttl)
            return (op, OK, 0, 0, self.time + ttl, self.time + ttl)
        self._end_sessions([sid], E_CLOSE)
        return (op, OK, 0, 0, 0, 0)

    def _end_sessions(self, sids: list[int], kind: int) -> None:
        touched: set[bytes] = set()
        for sid in sids:
            del self.sessions[sid]
            self.events.append((self._rev(), kind, M_NONE, sid, 0, 0, b"", b""))
            items: list[tuple[int, Pool, Lease | Request]] = []
            for pool in self.pools.values():
                items += [(x.ticket, pool, x) for x in pool.leases.values() if x.session == sid]
                items += [(x.ticket, pool, x) for x in pool.waits.values() if x.session == sid]
            for _, pool, x in sorted(items, key=lambda i: i[0]):
                self._drop(pool, x, E_RELEASE if isinstance(x, Lease) else E_CANCEL)
                touched.add(pool.name)
        for name in sorted(touched):
            self._settle(self.pools[name])

    def _drop(self, pool: Pool, x: Lease | Request, kind: int) -> None:
        if isinstance(x, Lease):
            del pool.leases[x.token]
            x.tenant.held -= x.units
            self._emit(kind, pool, x.session, x.ticket, x.token, x.tenant)
        else:
            del pool.waits[x.ticket]
            x.tenant.queue.remove(x)
            self._emit(kind, pool, x.session, x.ticket, 0, x.tenant)

    def _expire_pools(self) -> None:
        for name in sorted(self.pools):
            pool = self.pools[name]
            due: list[tuple[int, int, Lease | Request]] = [(x.deadline, x.ticket, x) for x in pool.waits.values() if x.deadline and x.deadline <= self.time]
            due += [(x.deadline, x.token, x) for x in pool.leases.values() if x.deadline and x.deadline <= self.time]
            if not due:
                continue
            for _, _, x in sorted(due, key=lambda d: (d[0], d[1])):
                if isinstance(x, Request):
                    self._drop(pool, x, E_CANCEL)
                elif self._still_needed(pool, x):
                    self._drop(pool, x, E_REVOKE)
                else:
                    x.deadline = 0  # served meanwhile: the mark lapses, the lease stays
            self._settle(pool)

    def _still_needed(self, pool: Pool, x: Lease) -> bool:
        """Whether the pool's candidate still waits for units and may take them from x."""
        heads = [t.queue[0] for t in pool.tenants.values() if t.queue and t.held + t.queue[0].units <= t.maximum]
        if not heads:
            return False
        pick = self._candidate(pool, heads)
        if pick.units <= pool.capacity - pool.held or x.tenant is pick.tenant:
            return False
        below = pick.tenant.held < pick.tenant.minimum
        return x.tenant.band < pick.tenant.band or (below and x.tenant.held > x.tenant.minimum)

    # --- pool commands ---------------------------------------------------------

    def _pool_set(self, name: bytes, capacity: int, grace: int, patience: int) -> Result:
        pool = self.pools.get(name)
        if pool is not None:
            if capacity < pool.held:
                return (POOL_SET, CONFLICT, D_OVER, 0, pool.held, 0)
            mins = sum(t.minimum for t in pool.tenants.values())
            if capacity < mins:
                return (POOL_SET, BADARG, D_MINIMUMS, 0, mins, 0)
            pool.capacity, pool.grace, pool.patience = capacity, grace, patience
        else:
            pool = self.pools[name] = Pool(name, capacity, grace, patience)
        rev = self._rev()
        self._cancel_oversized(pool, None)
        self._settle(pool)
        return (POOL_SET, OK, 0, 0, capacity, rev)

    def _tenant_set(self, pool_name: bytes, name: bytes, weight: int, minimum: int, maximum: int, band: int) -> Result:
        pool = self.pools.get(pool_name)
        if pool is None:
            return (TENANT_SET, NOTFOUND, D_NO_SUCH_POOL, 0, 0, 0)
        t = pool.tenants.get(name)
        mins = sum(x.minimum for x in pool.tenants.values() if x is not t) + minimum
        if mins > pool.capacity:
            return (TENANT_SET, BADARG, D_MINIMUMS, 0, mins, 0)
        if t is not None and t.held > maximum:
            return (TENANT_SET, CONFLICT, D_OVER, 0, t.held, 0)
        if t is None:
            t = pool.tenants[name] = Tenant(name, weight, minimum, maximum, band)
            pool.tenants = dict(sorted(pool.tenants.items()))
        else:
            t.weight, t.minimum, t.maximum, t.band = weight, minimum, maximum, band
        rev = self._rev()
        self._cancel_oversized(pool, t)
        self._settle(pool)
        return (TENANT_SET, OK, 0, 0, weight, rev)

    def _cancel_oversized(self, pool: Pool, only: Tenant | None) -> None:
        for r in list(pool.waits.values()):
            if (only is None or r.tenant is only) and r.units > pool.limit(r.tenant):
                self._drop(pool, r, E_CANCEL)

    def _acquire(self, sid: int, name: bytes, tenant: bytes, units: int, timeout: int, wait: bool) -> Result:
        pool = self.pools.get(name)
        if pool is None:
            return (CAP_ACQUIRE, NOTFOUND, D_NO_SUCH_POOL, 0, 0, 0)
        t = pool.tenants.get(tenant)
        if t is None:
            return (CAP_ACQUIRE, NOTFOUND, D_NO_SUCH_TENANT, 0, 0, 0)
        if units > pool.limit(t):
            return (CAP_ACQUIRE, BADARG, D_PERMITS, 0, pool.limit(t), 0)
        if not pool.waits and pool.capacity - pool.held >= units and t.held + units <= t.maximum:
            rev = self.revision + 1
            self._grant(pool, Request(sid, t, units, rev), direct=True)
            return (CAP_ACQUIRE, OK, 0, 0, rev, rev)
        if not wait:
            return (CAP_ACQUIRE, BUSY, 0, 0, 0, 0)
        r = Request(sid, t, units, self.revision + 1, self.time + timeout if timeout else 0)
        pool.waits[r.ticket] = r
        t.queue.append(r)
        self._emit(E_WAIT, pool, sid, r.ticket, 0, t)
        self._settle(pool)
        return (CAP_ACQUIRE, WAITING, 0, 0, 0, r.ticket)

    def _release(self, sid: int, name: bytes, rev: int) -> Result:
        pool = self.pools.get(name)
        x: Lease | Request | None = None
        if pool is not None:
            x = pool.leases.get(rev) or pool.waits.get(rev)
        if pool is None or x is None or x.session != sid:
            return (CAP_RELEASE, NOTHOLDER, D_NO_SUCH_HOLD, 0, 0, 0)
        self._drop(pool, x, E_RELEASE if isinstance(x, Lease) else E_CANCEL)
        self._settle(pool)
        return (CAP_RELEASE, OK, 0, 0, rev, x.units)

    def _resize(self, sid: int, name: bytes, token: int, units: int) -> Result:
        pool = self.pools.get(name)
        lease = pool.leases.get(token) if pool is not None else None
        if pool is None or lease is None or lease.session != sid:
            return (CAP_RESIZE, NOTHOLDER, D_NO_SUCH_HOLD, 0, 0, 0)
        t = lease.tenant
        if units > pool.limit(t):
            return (CAP_RESIZE, BADARG, D_PERMITS, 0, pool.limit(t), 0)
        if units > lease.units:
            more = units - lease.units
            if lease.deadline or pool.waits or pool.capacity - pool.held < more or t.held + more > t.maximum:
                return (CAP_RESIZE, BUSY, 0, 0, token, lease.units)
        if units != lease.units:
            t.held += units - lease.units
            lease.units = units
            self._rev()
            self._settle(pool)
        return (CAP_RESIZE, OK, 0, 0, token, units)

    # --- the grant rule --------------------------------------------------------

    def _grant(self, pool: Pool, r: Request, direct: bool = False) -> None:
        if not direct:
            del pool.waits[r.ticket]
            r.tenant.queue.remove(r)
        rev = self.revision + 1
        pool.leases[rev] = Lease(r.session, r.tenant, r.units, r.ticket, rev)
        r.tenant.held += r.units
        self._emit(E_GRANT, pool, r.session, r.ticket, rev, r.tenant)

    def _settle(self, pool: Pool) -> None:
        while True:
            heads = [t.queue[0] for t in pool.tenants.values() if t.queue and t.held + t.queue[0].units <= t.maximum]
            if not heads:
                return
            pick = self._candidate(pool, heads)
            if pick.units > pool.capacity - pool.held:
                self._preempt(pool, pick)
                return
            below = pick.tenant.held < pick.tenant.minimum
            self._grant(pool, pick)
            if not below:
                for r in heads:
                    if r is not pick and r.tenant.band == pick.tenant.band and r.ticket < pick.ticket:
                        r.passes += 1

    @staticmethod
    def _candidate(pool: Pool, heads: list[Request]) -> Request:
        below = [r for r in heads if r.tenant.held < r.tenant.minimum]
        if below:
            return min(below, key=lambda r: r.ticket)
        top = max(r.tenant.band for r in heads)
        band = [r for r in heads if r.tenant.band == top]
        aged = [r for r in band if r.passes >= pool.patience]
        if aged:
            return min(aged, key=lambda r: r.ticket)
        if len(band) == 1:
            return band[0]
        tenants = list(pool.tenants.values())
        share = dict(zip((t.name for t in tenants), fair_shares(
            pool.capacity, [(t.weight, t.minimum, t.maximum, t.held + sum(q.units for q in t.queue)) for t in tenants])))
        return min(band, key=lambda r: (r.tenant.held - share[r.tenant.name], r.ticket))

    def _preempt(self, pool: Pool, pick: Request) -> None:
        marked = sum(x.units for x in pool.leases.values() if x.deadline)
        need = pick.units - (pool.capacity - pool.held) - marked
        if need <= 0:
            return
        below = pick.tenant.held < pick.tenant.minimum
        spare = {t.name: t.held - t.minimum - sum(x.units for x in pool.leases.values() if x.deadline and x.tenant is t)
                 for t in pool.tenants.values()}
        victims = [x for x in pool.leases.values() if not x.deadline and x.tenant is not pick.tenant
                   and (x.tenant.band < pick.tenant.band or (below and x.tenant.held > x.tenant.minimum))]
        victims.sort(key=lambda x: (x.tenant.band, -Fraction(x.tenant.held, x.tenant.weight), -x.token))
        chosen: list[Lease] = []
        for x in victims:
            if need <= 0:
                break
            if spare[x.tenant.name] >= x.units:
                spare[x.tenant.name] -= x.units
                chosen.append(x)
                need -= x.units
        if need > 0:
            return
        for x in chosen:
            x.deadline = self.time + pool.grace
            self._emit(E_GIVEBACK, pool, x.session, x.ticket, x.token, x.tenant)

    # --- reads -----------------------------------------------------------------

    def state(self, name: bytes) -> tuple[object, ...] | None:
        """A pool's whole state as plain tuples (what the native ``pool_info`` gives)."""
        pool = self.pools.get(name)
        if pool is None:
            return None
        tenants = [(t.name, t.weight, t.minimum, t.maximum, t.band, t.held) for t in pool.tenants.values()]
        leases = [(x.session, x.tenant.name, x.units, x.ticket, x.token, x.deadline) for x in sorted(pool.leases.values(), key=lambda x: x.token)]
        waits = [(x.session, x.tenant.name, x.units, x.ticket, x.deadline, x.passes) for x in sorted(pool.waits.values(), key=lambda x: x.ticket)]
        return (pool.capacity, pool.grace, pool.patience, tenants, leases, waits)
