# Quota pools: leases of integer capacity with weighted fair shares, priority bands and
# preemption. The rules are the reference model's (tests/models/pool_model.py, whose
# docstring is the spec: grant rule, starvation bound, preemption order); the contract
# (commands, results, events) is in coordcore/locks/machine.py.
#
# Pools are few and small next to locks (tens of tenants, a queue per tenant), and a
# grant decision compares tenants, not keys: they live in Python containers owned by the
# machine. Determinism: every walk is in name or revision order (dicts keep insertion
# order, and items are inserted in revision order), never in hash order.
# Included by lockmachine.pyx: functions of the LockMachine it defines.

import heapq
import struct as _struct
from fractions import Fraction

cdef enum:
    C_MAX_NAME = 255
    C_MAX_PATIENCE = 65535
    C_MAX_BAND = 7
    POOL_CONF_SIZE = 8     # u32 grace ms, u32 patience
    TENANT_CONF_SIZE = 16  # u32 weight, u32 minimum, u32 maximum, u8 band, 3 zero bytes; then the name
    TENANT_VALUE_MAX = 271  # TENANT_CONF_SIZE + C_MAX_NAME (a literal: a sum is an int, compared with a u32)

cdef extern from *:
    # gcc and clang: the water-filling's cross-multiplied sums stay exact for any number of
    # tenants (each factor is at most C_MAX_PERMITS, below 2^20, or a sum of weights).
    # Cython takes it for the long long it is declared as, so the functions computing with
    # it have overflowcheck off (a debug build would refuse the size otherwise).
    ctypedef long long i128 "__int128"

ctypedef struct _ShareRow:
    int64_t w, lo, hi

ctypedef struct _Point:  # a breakpoint of the level, v / d
    int64_t v, d


_POOL_HEAD = _struct.Struct("<HHIIIIII")  # name length, 0, capacity, grace, patience, tenants, leases, waits
_TENANT_REC = _struct.Struct("<BBHIII")   # name length, band, 0, weight, minimum, maximum
_LEASE_REC = _struct.Struct("<QQQQII")    # session, ticket, token, give-back deadline, units, tenant index
_WAIT_REC = _struct.Struct("<QQQIIII")    # session, ticket, wait deadline, units, passes, tenant index, detached


@cython.final
cdef class _Tenant:
    cdef bytes name
    cdef uint32_t weight, minimum, maximum
    cdef uint8_t band
    cdef uint64_t held
    cdef uint64_t want  # units its waiting requests ask for (demand = held + want)
    cdef i128 share  # its fair share times its pool's scale (_pool_shares; a cache, not state)
    cdef int64_t s_w, s_lo, s_hi  # the inputs that share was water-filled from
    cdef list queue  # its waiting _Items, ticket order (FIFO)


@cython.final
cdef class _Item:
    """A waiting request (token 0) or, once granted, a lease (same object)."""
    cdef uint64_t session, ticket, token
    cdef uint64_t deadline  # waiting: wait timeout; lease: give-back deadline (0: none)
    cdef uint32_t units, passes
    cdef uint8_t detached  # a wait at a restart: withdrawn at its deadline unless its client re-attaches
    cdef _Tenant tenant
    cdef uint64_t since  # batch time of its arrival, then of its grant (lm_timings.pxi); C_NO_TIME: restored


@cython.final
cdef class _Pool:
    cdef bytes name
    cdef uint32_t capacity, grace, patience
    cdef uint64_t held
    cdef uint64_t marked  # units of the leases asked to give back (kept, not scanned: a waiting head asks often)
    cdef dict tenants  # name -> _Tenant, name order
    cdef dict leases   # token -> _Item, token order
    cdef dict waits    # ticket -> _Item, ticket order
    cdef i128 scale    # the tenants' shares' denominator (0: not computed)
    cdef uint32_t s_cap  # the capacity they were computed for

    cdef inline uint64_t limit(self, _Tenant t):
        return t.maximum if t.maximum < self.capacity else self.capacity


@cython.final
cdef class _Pools:
    cdef dict pools    # name -> _Pool
    cdef dict by_sess  # session id -> {ticket: (_Pool, _Item)}
    cdef list heap     # (deadline, revision, pool name), stale entries skipped
    cdef set touched   # pools to settle after a session teardown
    # Counted as applied, never snapshotted (a read for metrics: a service takes the
    # values after its recovery as the zero of "since start").
    cdef uint64_t givebacks, revokes
    # _pool_shares' scratch, for the largest pool seen (nshare tenants): no allocation per decision.
    cdef _ShareRow *rows
    cdef _Point *pts
    cdef Py_ssize_t nshare

    def __cinit__(self):
        self.pools = {}
        self.by_sess = {}
        self.heap = []
        self.touched = set()

    def __dealloc__(self):
        cc_free(self.rows)
        cc_free(self.pts)


cdef inline const unsigned char *_bp(bytes b):
    return <const unsigned char *>PyBytes_AS_STRING(b)


cdef int _pool_emit(LockMachine self, uint8_t kind, _Pool pool, _Item x, uint64_t token) except -1:
    cdef uint64_t rev = self.st.revision + 1
    self.st.revision = rev
    return _emit(self, kind, M_POOL, rev, x.session, x.ticket, token, _bp(pool.name), <uint32_t>len(pool.name),
                 _bp(x.tenant.name), <uint32_t>len(x.tenant.name))


cdef int _pool_deadline(LockMachine self, _Pool pool, _Item x, uint64_t deadline) except -1:
    x.deadline = deadline
    if deadline:
        heapq.heappush(self.pl.heap, (deadline, x.token or x.ticket, pool.name))
    return 0


cdef int _pool_drop(LockMachine self, _Pool pool, _Item x, uint8_t kind) except -1:
    """Remove a lease (RELEASE or REVOKE) or a waiting request (CANCEL)."""
    cdef dict mine = self.pl.by_sess.get(x.session)
    if mine is not None:
        mine.pop(x.ticket, None)
        if not mine:
            del self.pl.by_sess[x.session]
    if x.token:
        _hist_add(&self.holds[M_POOL - 1], x.since, self.st.time)
        del pool.leases[x.token]
        x.tenant.held -= x.units
        pool.held -= x.units
        if x.deadline:
            pool.marked -= x.units
        return _pool_emit(self, kind, pool, x, x.token)
    del pool.waits[x.ticket]
    x.tenant.queue.remove(x)
    x.tenant.want -= x.units
    return _pool_emit(self, kind, pool, x, 0)


cdef int _pool_grant(LockMachine self, _Pool pool, _Item x) except -1:
    cdef uint64_t rev = self.st.revision + 1
    if x.ticket != rev:  # from the queue (a direct grant is not queued)
        del pool.waits[x.ticket]
        x.tenant.queue.pop(0)
        x.tenant.want -= x.units
        x.deadline = 0
        x.detached = 0
    x.token = rev
    _hist_add(&self.waits[M_POOL - 1], x.since, self.st.time)
    x.since = self.st.time
    pool.leases[rev] = x
    x.tenant.held += x.units
    pool.held += x.units
    return _pool_emit(self, E_GRANT, pool, x, rev)


cdef int _point_cmp(const void *a, const void *b) noexcept nogil:
    cdef int64_t l = (<const _Point *>a).v * (<const _Point *>b).d
    cdef int64_t r = (<const _Point *>b).v * (<const _Point *>a).d
    return (l > r) - (l < r)


cdef inline i128 _clamp(i128 x, i128 lo, i128 hi) noexcept nogil:
    return min(max(x, lo), hi)


cdef i128 _pool_shares(_Pools pl, _Pool pool) except -1:
    """Each tenant's weighted max-min fair share, as t.share / the returned scale,
    water-filled again only when an input changed: the capacity, or a tenant's weight,
    min(minimum, demand) or min(maximum, demand, capacity). A grant moves units from
    wanted to held (the demand stays), and a tenant that asks for more than the pool
    holds keeps its inputs as its queue moves: most decisions reuse the shares."""
    cdef bint same = pool.scale != 0 and pool.s_cap == pool.capacity
    cdef _Tenant t
    cdef uint64_t dem
    cdef int64_t lo, hi
    for t in pool.tenants.values():
        dem = t.held + t.want
        lo = min(<uint64_t>t.minimum, dem)
        hi = min(<uint64_t>t.maximum, dem, <uint64_t>pool.capacity)
        if t.s_w != t.weight or t.s_lo != lo or t.s_hi != hi:
            same = False
            t.s_w, t.s_lo, t.s_hi = t.weight, lo, hi
    if same:
        return pool.scale
    pool.scale = 0  # stays so if the fill fails (no memory)
    pool.s_cap = pool.capacity
    pool.scale = _pool_fill(pl, pool)
    return pool.scale


@cython.overflowcheck(False)
cdef i128 _pool_fill(_Pools pl, _Pool pool) except -1:
    """Water-filling over the inputs _pool_shares left in each tenant (s_w, s_lo, s_hi):
    share = clamp(weight * level, lo, hi) at the level that fills the capacity. Integers
    only (cross-multiplied): the model's Fractions, bit for bit, without their cost.
    Breakpoints of equal value may come in any order: the fill test and the shares are
    homogeneous in (v, d), and decisions compare deficits at one scale, so any of them
    gives the same grants."""
    cdef Py_ssize_t i, k, n = len(pool.tenants)
    cdef _ShareRow *rows
    cdef _Point *pts
    cdef _Tenant t
    cdef int64_t cap = pool.capacity, pv = 0, pw = 1, v, d, sum_hi = 0
    cdef i128 filled, x, fixed = 0, slope = 0
    if n > pl.nshare:
        rows = <_ShareRow *>cc_realloc(pl.rows, n * sizeof(_ShareRow))
        if rows == NULL:
            raise MemoryError()
        pl.rows = rows
        pts = <_Point *>cc_realloc(pl.pts, 2 * n * sizeof(_Point))
        if pts == NULL:
            raise MemoryError()
        pl.pts = pts
        pl.nshare = n
    rows, pts = pl.rows, pl.pts
    i = 0
    for t in pool.tenants.values():
        rows[i].w, rows[i].lo, rows[i].hi = t.s_w, t.s_lo, t.s_hi
        sum_hi += t.s_hi
        i += 1
    if sum_hi <= cap:
        i = 0
        for t in pool.tenants.values():
            t.share = rows[i].hi
            i += 1
        return 1
    # The filled amount is piecewise linear in the level, with breakpoints lo/w and hi/w:
    # find the last breakpoint (pv/pw) below the capacity, then solve on its segment.
    for i in range(n):
        pts[2 * i].v, pts[2 * i].d = rows[i].lo, rows[i].w
        pts[2 * i + 1].v, pts[2 * i + 1].d = rows[i].hi, rows[i].w
    qsort(pts, 2 * n, sizeof(_Point), _point_cmp)
    for k in range(2 * n):
        v, d = pts[k].v, pts[k].d
        filled = 0
        for i in range(n):
            filled += _clamp(<i128>rows[i].w * v, <i128>rows[i].lo * d, <i128>rows[i].hi * d)
        if filled >= <i128>cap * d:
            break
        pv, pw = v, d
    for i in range(n):
        x = <i128>rows[i].w * pv
        if x < <i128>rows[i].lo * pw:
            fixed += rows[i].lo
        elif x >= <i128>rows[i].hi * pw:
            fixed += rows[i].hi
        else:
            slope += rows[i].w
    if slope == 0:  # the level is the breakpoint itself
        i = 0
        for t in pool.tenants.values():
            t.share = _clamp(<i128>rows[i].w * pv, <i128>rows[i].lo * pw, <i128>rows[i].hi * pw)
            i += 1
        return pw
    x = cap - fixed  # level = x / slope
    i = 0
    for t in pool.tenants.values():
        t.share = _clamp(<i128>rows[i].w * x, <i128>rows[i].lo * slope, <i128>rows[i].hi * slope)
        i += 1
    return slope


@cython.overflowcheck(False)
cdef _Item _pool_candidate(_Pools pl, _Pool pool, list heads):
    cdef _Item r, best = None
    cdef int top = -1
    cdef list band
    cdef i128 gap, scale, best_gap = 0
    for r in heads:
        if r.tenant.held < r.tenant.minimum and (best is None or r.ticket < best.ticket):
            best = r
    if best is not None:
        return best
    for r in heads:
        if r.tenant.band > top:
            top = r.tenant.band
    for r in heads:
        if r.tenant.band == top and r.passes >= pool.patience and (best is None or r.ticket < best.ticket):
            best = r
    if best is not None:
        return best
    band = [r for r in heads if r.tenant.band == top]
    if len(band) == 1:
        return band[0]
    scale = _pool_shares(pl, pool)
    for r in band:  # the largest deficit (share - held), then the oldest ticket
        gap = <i128>r.tenant.held * scale - r.tenant.share
        if best is None or gap < best_gap or (gap == best_gap and r.ticket < best.ticket):
            best, best_gap = r, gap
    return best


cdef int _pool_settle(LockMachine self, _Pool pool) except -1:
    cdef list heads
    cdef _Tenant t
    cdef _Item r, pick
    cdef bint below
    while True:
        heads = []
        for t in pool.tenants.values():
            if t.queue:
                r = t.queue[0]
                if t.held + r.units <= t.maximum:
                    heads.append(r)
        if not heads:
            return 0
        if pool.held == pool.capacity and not _pool_may_preempt(pool, heads):
            return 0  # nothing to grant, nobody to ask: skip choosing (shares cost)
        pick = _pool_candidate(self.pl, pool, heads)
        if pick.units > pool.capacity - pool.held:
            return _pool_preempt(self, pool, pick)
        below = pick.tenant.held < pick.tenant.minimum
        _pool_grant(self, pool, pick)
        if not below:
            for r in heads:
                if r is not pick and r.tenant.band == pick.tenant.band and r.ticket < pick.ticket:
                    r.passes += 1


def _victim_order(_Item v):
    return (v.tenant.band, -Fraction(v.tenant.held, v.tenant.weight), -<int64_t>v.token)


cdef bint _pool_may_preempt(_Pool pool, list heads) except -1:
    """Whether some head could ask someone to give back (a superset of _pool_preempt's
    victims: a head below its minimum, or one above the lowest band holding more than
    its minimum)."""
    cdef _Item r
    cdef _Tenant t
    cdef int low = 256, top = -1
    for r in heads:
        if r.tenant.held < r.tenant.minimum:
            return True
        if r.tenant.band > top:
            top = r.tenant.band
    for t in pool.tenants.values():
        if t.held > t.minimum and t.band < low:
            low = t.band
    return top > low


cdef int _pool_preempt(LockMachine self, _Pool pool, _Item pick) except -1:
    cdef _Item x
    cdef _Tenant t
    cdef int64_t need
    cdef dict spare = {}
    cdef list victims = []
    cdef list chosen = []
    cdef bint below = pick.tenant.held < pick.tenant.minimum
    cdef bint any_victim = False
    need = <int64_t>pick.units - <int64_t>(pool.capacity - pool.held) - <int64_t>pool.marked
    if need <= 0:
        return 0
    for t in pool.tenants.values():  # a cheap look first: is there anyone it may preempt?
        if t is not pick.tenant and t.held > t.minimum and (t.band < pick.tenant.band or below):
            any_victim = True
    if not any_victim:
        return 0
    for t in pool.tenants.values():
        spare[t.name] = <int64_t>t.held - <int64_t>t.minimum
    for x in pool.leases.values():
        if x.deadline:
            spare[x.tenant.name] -= x.units
        elif x.tenant is not pick.tenant and (x.tenant.band < pick.tenant.band
                                               or (below and x.tenant.held > x.tenant.minimum)):
            victims.append(x)
    if not victims:
        return 0
    # Lowest band first, then the tenant most over its share, then the newest lease.
    victims.sort(key=_victim_order)
    for x in victims:
        if need <= 0:
            break
        if spare[x.tenant.name] >= x.units:
            spare[x.tenant.name] -= x.units
            chosen.append(x)
            need -= x.units
    if need > 0:
        return 0  # not enough can be given back: ask nobody
    self.pl.givebacks += len(chosen)
    for x in chosen:
        pool.marked += x.units
        _pool_deadline(self, pool, x, self.st.time + pool.grace)
        _pool_emit(self, E_GIVEBACK, pool, x, x.token)
    return 0


cdef int _pool_cancel_oversized(LockMachine self, _Pool pool, _Tenant only) except -1:
    cdef _Item r
    for r in list(pool.waits.values()):
        if (only is None or r.tenant is only) and r.units > pool.limit(r.tenant):
            _pool_drop(self, pool, r, E_CANCEL)
    return 0


# --- commands -------------------------------------------------------------------

cdef uint8_t _pool_check(uint8_t op, uint8_t flags, uint64_t sid, uint64_t arg, uint32_t klen,
                         const unsigned char *v, uint32_t vlen) noexcept:
    """Argument checks, in the model's order: flags, key, value, arguments, session."""
    cdef uint64_t units, timeout
    if flags & ~(F_WAIT if op == OP_CAP_ACQUIRE else 0):
        return D_FLAGS
    if klen == 0 or klen > C_MAX_KEY:
        return D_KEY
    if (op == OP_POOL_SET and vlen != POOL_CONF_SIZE) \
            or (op == OP_TENANT_SET and (vlen <= TENANT_CONF_SIZE or vlen > TENANT_VALUE_MAX)) \
            or (op == OP_CAP_ACQUIRE and (vlen == 0 or vlen > C_MAX_NAME)) \
            or (op == OP_CAP_RELEASE and vlen != 0) or (op == OP_CAP_RESIZE and vlen != 4):
        return D_VALUE
    if op == OP_POOL_SET:
        if arg < 1 or arg > C_MAX_PERMITS:
            return D_PERMITS
        if cc_ld32(v) > C_MAX_TTL:
            return D_TIMEOUT
        if cc_ld32(v + 4) < 1 or cc_ld32(v + 4) > C_MAX_PATIENCE:
            return D_ARG
    elif op == OP_TENANT_SET:
        if arg:
            return D_ARG
        if cc_ld32(v) < 1 or cc_ld32(v) > C_MAX_PERMITS or cc_ld32(v + 8) < 1 or cc_ld32(v + 8) > C_MAX_PERMITS \
                or cc_ld32(v + 4) > cc_ld32(v + 8):
            return D_PERMITS
        if v[12] > C_MAX_BAND or v[13] or v[14] or v[15]:
            return D_ARG
    elif op == OP_CAP_ACQUIRE:
        units = arg & 0xFFFFFFFFULL
        timeout = arg >> 32
        if units < 1 or units > C_MAX_PERMITS:
            return D_PERMITS
        if timeout > C_MAX_TTL or (timeout and not (flags & F_WAIT)):
            return D_TIMEOUT
    elif op == OP_CAP_RELEASE:
        if arg == 0:
            return D_ARG
    else:
        if arg == 0:
            return D_ARG
        if cc_ld32(v) < 1 or cc_ld32(v) > C_MAX_PERMITS:
            return D_PERMITS
    if (sid != 0) != (op != OP_POOL_SET and op != OP_TENANT_SET):
        return D_SESSION
    return D_NONE


cdef inline void _res(unsigned char *res, uint8_t status, uint8_t detail, uint64_t value, uint64_t aux) noexcept:
    res[1] = status
    res[2] = detail
    cc_st64(res + 8, value)
    cc_st64(res + 16, aux)


cdef int _pool_set(LockMachine self, bytes name, uint32_t capacity, uint32_t grace, uint32_t patience,
                   unsigned char *res) except -1:
    cdef _Pool pool = self.pl.pools.get(name)
    cdef _Tenant t
    cdef uint64_t mins = 0
    if pool is not None:
        if capacity < pool.held:
            _res(res, ST_CONFLICT, D_OVER, pool.held, 0)
            return 0
        for t in pool.tenants.values():
            mins += t.minimum
        if capacity < mins:
            _res(res, ST_BADARG, D_MINIMUMS, mins, 0)
            return 0
    else:
        pool = _Pool()
        pool.name = name
        pool.tenants = {}
        pool.leases = {}
        pool.waits = {}
        self.pl.pools[name] = pool
    pool.capacity = capacity
    pool.grace = grace
    pool.patience = patience
    self.st.revision += 1
    _res(res, ST_OK, D_NONE, capacity, self.st.revision)
    _pool_cancel_oversized(self, pool, None)
    return _pool_settle(self, pool)


cdef int _tenant_set(LockMachine self, bytes pool_name, const unsigned char *v, uint32_t vlen,
                     unsigned char *res) except -1:
    cdef _Pool pool = self.pl.pools.get(pool_name)
    cdef bytes name = PyBytes_FromStringAndSize(<const char *>v + TENANT_CONF_SIZE, vlen - TENANT_CONF_SIZE)
    cdef _Tenant t, x
    cdef uint64_t mins = cc_ld32(v + 4)
    if pool is None:
        _res(res, ST_NOTFOUND, D_NO_SUCH_POOL, 0, 0)
        return 0
    t = pool.tenants.get(name)
    for x in pool.tenants.values():
        if x is not t:
            mins += x.minimum
    if mins > pool.capacity:
        _res(res, ST_BADARG, D_MINIMUMS, mins, 0)
        return 0
    if t is not None and t.held > cc_ld32(v + 8):
        _res(res, ST_CONFLICT, D_OVER, t.held, 0)
        return 0
    if t is None:
        t = _Tenant()
        t.name = name
        t.queue = []
        pool.tenants[name] = t
        pool.tenants = dict(sorted(pool.tenants.items()))
    t.weight = cc_ld32(v)
    t.minimum = cc_ld32(v + 4)
    t.maximum = cc_ld32(v + 8)
    t.band = v[12]
    self.st.revision += 1
    _res(res, ST_OK, D_NONE, t.weight, self.st.revision)
    _pool_cancel_oversized(self, pool, t)
    return _pool_settle(self, pool)


cdef int _cap_acquire(LockMachine self, uint64_t sid, bytes name, const unsigned char *v, uint32_t vlen,
                      uint32_t units, uint64_t timeout, bint wait, unsigned char *res) except -1:
    cdef _Pool pool = self.pl.pools.get(name)
    cdef _Tenant t
    cdef _Item x
    cdef dict mine
    if pool is None:
        _res(res, ST_NOTFOUND, D_NO_SUCH_POOL, 0, 0)
        return 0
    t = pool.tenants.get(PyBytes_FromStringAndSize(<const char *>v, vlen))
    if t is None:
        _res(res, ST_NOTFOUND, D_NO_SUCH_TENANT, 0, 0)
        return 0
    if units > pool.limit(t):
        _res(res, ST_BADARG, D_PERMITS, pool.limit(t), 0)
        return 0
    cdef bint direct = not pool.waits and pool.capacity - pool.held >= units and t.held + units <= t.maximum
    if not direct and not wait:
        _res(res, ST_BUSY, D_NONE, 0, 0)
        return 0
    x = _Item()
    x.session = sid
    x.tenant = t
    x.units = units
    x.ticket = self.st.revision + 1
    x.since = self.st.time
    mine = self.pl.by_sess.get(sid)
    if mine is None:
        mine = self.pl.by_sess[sid] = {}
    mine[x.ticket] = (pool, x)
    if direct:
        _pool_grant(self, pool, x)
        _res(res, ST_OK, D_NONE, x.token, x.ticket)
        return 0
    pool.waits[x.ticket] = x
    t.queue.append(x)
    t.want += units
    _pool_emit(self, E_WAIT, pool, x, 0)
    _pool_deadline(self, pool, x, self.st.time + timeout if timeout else 0)
    _res(res, ST_WAITING, D_NONE, 0, x.ticket)
    return _pool_settle(self, pool)


cdef int _cap_release(LockMachine self, uint64_t sid, bytes name, uint64_t rev, unsigned char *res) except -1:
    cdef _Pool pool = self.pl.pools.get(name)
    cdef _Item x = None
    if pool is not None:
        x = pool.leases.get(rev)
        if x is None:
            x = pool.waits.get(rev)
    if x is None or x.session != sid:
        _res(res, ST_NOTHOLDER, D_NO_SUCH_HOLD, 0, 0)
        return 0
    _pool_drop(self, pool, x, E_RELEASE if x.token else E_CANCEL)
    _res(res, ST_OK, D_NONE, rev, x.units)
    return _pool_settle(self, pool)


cdef int _cap_resize(LockMachine self, uint64_t sid, bytes name, uint64_t token, uint32_t units,
                     unsigned char *res) except -1:
    cdef _Pool pool = self.pl.pools.get(name)
    cdef _Item x = pool.leases.get(token) if pool is not None else None
    cdef uint64_t more
    if x is None or x.session != sid:
        _res(res, ST_NOTHOLDER, D_NO_SUCH_HOLD, 0, 0)
        return 0
    if units > pool.limit(x.tenant):
        _res(res, ST_BADARG, D_PERMITS, pool.limit(x.tenant), 0)
        return 0
    if units > x.units:
        more = units - x.units
        if x.deadline or pool.waits or pool.capacity - pool.held < more or x.tenant.held + more > x.tenant.maximum:
            _res(res, ST_BUSY, D_NONE, token, x.units)
            return 0
    _res(res, ST_OK, D_NONE, token, units)
    if units != x.units:
        x.tenant.held = x.tenant.held + units - x.units
        pool.held = pool.held + units - x.units
        if x.deadline:  # a marked lease that shrinks (a grow of one is refused above)
            pool.marked = pool.marked + units - x.units
        x.units = units
        self.st.revision += 1
        _pool_settle(self, pool)
    return 0


cdef int _pool_reattach(LockMachine self, uint64_t sid, uint64_t ticket, uint64_t timeout,
                        unsigned char *res) except -1:
    """A retried acquire whose first answer was WAITING learns where that request stands
    now: granted (OK, its token), still waiting (WAITING) or gone (NOTFOUND: timed out,
    withdrawn, released). A wait keeps its first deadline, except a detached one (see
    _pools_detach): its client is back, so it is re-attached with the retry's TIMEOUT
    from now, as a lock waiter is. Only a detached wait changes: logs written before
    pool waiters were detached replay to the same state."""
    cdef dict mine = self.pl.by_sess.get(sid)
    cdef object item = mine.get(ticket) if mine is not None else None
    cdef _Item x
    if item is None:
        res[1] = ST_NOTFOUND
        res[2] = D_WAIT_ENDED
        cc_st64(res + 8, 0)
        return 0
    x = <_Item>(<tuple>item)[1]
    if x.token:
        res[1] = ST_OK
        cc_st64(res + 8, x.token)
    elif x.detached:
        x.detached = 0
        _pool_deadline(self, <_Pool>(<tuple>item)[0], x, self.st.time + timeout if timeout else 0)
    return 0


cdef uint64_t _pools_detach(LockMachine self, uint64_t grace) except? 0xFFFFFFFFFFFFFFFF:
    """DETACH for pools (format version 5): every pool wait gets at most ``grace`` ms more,
    then is withdrawn unless its client re-attaches (retries with its request id). One
    granted meanwhile stays a lease: its client learns of it on the retry, or releases
    it when it settles an acquire it gave up; the session's end returns it otherwise.
    Pools in name order, waits in ticket order. Returns how many."""
    cdef uint64_t n = 0
    cdef uint64_t deadline = self.st.time + grace
    cdef _Pool pool
    cdef _Item x
    for name in sorted(self.pl.pools):
        pool = self.pl.pools[name]
        for x in pool.waits.values():
            x.detached = 1
            if x.deadline == 0 or x.deadline > deadline:
                _pool_deadline(self, pool, x, deadline)
            n += 1
    return n


cdef int _pool_apply(LockMachine self, uint8_t op, uint8_t flags, uint64_t sid, uint64_t req, uint64_t arg,
                     const unsigned char *k, uint32_t klen, const unsigned char *v, uint32_t vlen,
                     unsigned char *res) except -1:
    cdef uint8_t detail = _pool_check(op, flags, sid, arg, klen, v, vlen)
    cdef uint32_t si
    cdef ReqEntry *e
    cdef bytes name
    if detail != D_NONE:
        res[1] = ST_BADARG
        res[2] = detail
        return 0
    name = PyBytes_FromStringAndSize(<const char *>k, klen)
    if op == OP_POOL_SET:
        return _pool_set(self, name, <uint32_t>arg, cc_ld32(v), cc_ld32(v + 4), res)
    if op == OP_TENANT_SET:
        return _tenant_set(self, name, v, vlen, res)
    si = map_get(&self.st.ses_map, sid)
    if si == NIL:
        res[1] = ST_NOSESSION
        res[2] = D_NO_SUCH_SESSION
        return 0
    if req != 0:
        e = _req_find(self, &self.st.ses[si], req)
        if e != NULL:
            res[0] = e.op
            res[1] = e.status
            res[2] = e.detail
            res[3] = 1
            cc_st64(res + 8, e.value)
            cc_st64(res + 16, e.aux)
            if e.status == ST_WAITING and e.op == OP_CAP_ACQUIRE:
                _pool_reattach(self, sid, e.aux, arg >> 32 if op == OP_CAP_ACQUIRE else 0, res)
            return 0
    if op == OP_CAP_ACQUIRE:
        _cap_acquire(self, sid, name, v, vlen, <uint32_t>(arg & 0xFFFFFFFFULL), arg >> 32, flags & F_WAIT, res)
    elif op == OP_CAP_RELEASE:
        _cap_release(self, sid, name, arg, res)
    else:
        _cap_resize(self, sid, name, arg, cc_ld32(v), res)
    if req != 0:
        _req_record(self, si, req, res)
    return 0


# --- time and session teardown ------------------------------------------------------

cdef int _pools_expire(LockMachine self, uint64_t now) except -1:
    """Withdraw timed-out waits and revoke leases past their give-back grace, pool by
    pool in name order, each pool's in (deadline, revision) order; then settle it."""
    cdef list heap = self.pl.heap
    cdef dict due = {}
    cdef _Pool pool
    cdef _Item x
    cdef tuple e
    while heap and (<tuple>heap[0])[0] <= now:
        e = heapq.heappop(heap)
        pool = self.pl.pools.get(e[2])
        if pool is None:
            continue
        x = pool.waits.get(e[1])
        if x is None:
            x = pool.leases.get(e[1])
        if x is None or x.deadline != e[0]:
            continue
        due.setdefault(e[2], {})[e[1]] = (e[0], e[1], x)
    for name in sorted(due):
        pool = self.pl.pools[name]
        for item in sorted(due[name].values()):  # (deadline, revision) are distinct: never compares items
            x = item[2]
            if not x.token:
                _pool_drop(self, pool, x, E_CANCEL)
            elif _pool_still_needed(self.pl, pool, x):
                self.pl.revokes += 1
                _pool_drop(self, pool, x, E_REVOKE)
            else:
                x.deadline = 0  # served meanwhile by other units: the mark lapses, the lease stays
                pool.marked -= x.units
        _pool_settle(self, pool)
    return 0


cdef bint _pool_still_needed(_Pools pl, _Pool pool, _Item x) except -1:
    """Whether the pool's candidate still waits for units and may take them from lease x."""
    cdef list heads = []
    cdef _Tenant t
    cdef _Item r, pick
    for t in pool.tenants.values():
        if t.queue:
            r = t.queue[0]
            if t.held + r.units <= t.maximum:
                heads.append(r)
    if not heads:
        return False
    pick = _pool_candidate(pl, pool, heads)
    if pick.units <= pool.capacity - pool.held or x.tenant is pick.tenant:
        return False
    return x.tenant.band < pick.tenant.band or (pick.tenant.held < pick.tenant.minimum
                                                and x.tenant.held > x.tenant.minimum)


cdef int _pools_end_session(LockMachine self, uint64_t sid) except -1:
    cdef dict mine = self.pl.by_sess.pop(sid, None)
    cdef _Pool pool
    if mine is None:
        return 0
    for ticket in sorted(mine):
        pool, x = mine[ticket]
        _pool_drop(self, pool, x, E_RELEASE if (<_Item>x).token else E_CANCEL)
        self.pl.touched.add(pool.name)
    return 0


cdef int _pools_settle_touched(LockMachine self) except -1:
    cdef list names
    if not self.pl.touched:
        return 0
    names = sorted(self.pl.touched)
    self.pl.touched.clear()
    for name in names:
        _pool_settle(self, self.pl.pools[name])
    return 0


cdef object _pools_next_deadline(LockMachine self):
    cdef list heap = self.pl.heap
    cdef _Pool pool
    cdef _Item x
    cdef tuple e
    while heap:
        e = heap[0]
        pool = self.pl.pools.get(e[2])
        x = None
        if pool is not None:
            x = pool.waits.get(e[1])
            if x is None:
                x = pool.leases.get(e[1])
        if x is not None and x.deadline == e[0]:
            return e[0]
        heapq.heappop(heap)
    return None


# --- reads, snapshot, invariants ------------------------------------------------------

cdef object _pool_info(LockMachine self, bytes name):
    cdef _Pool pool = self.pl.pools.get(name)
    cdef _Tenant t
    cdef _Item x
    if pool is None:
        return None
    return (pool.capacity, pool.grace, pool.patience,
            [(t.name, t.weight, t.minimum, t.maximum, t.band, t.held) for t in pool.tenants.values()],
            [(x.session, x.tenant.name, x.units, x.ticket, x.token, x.deadline) for x in pool.leases.values()],
            [(x.session, x.tenant.name, x.units, x.ticket, x.deadline, x.passes) for x in pool.waits.values()])


cdef tuple _pools_totals(LockMachine self):
    cdef _Pool pool
    cdef uint64_t cap = 0, held = 0, waiting = 0
    for pool in self.pl.pools.values():
        cap += pool.capacity
        held += pool.held
        waiting += len(pool.waits)
    return len(self.pl.pools), cap, held, waiting, self.pl.givebacks, self.pl.revokes


cdef object _pool_summary(LockMachine self, bytes name):
    cdef _Pool pool = self.pl.pools.get(name)
    cdef _Tenant t
    if pool is None:
        return None
    return (pool.capacity, pool.held, len(pool.waits),
            [(t.name, t.weight, t.minimum, t.maximum, t.band, t.held, t.want, len(t.queue))
             for t in pool.tenants.values()])


cdef bytes _pools_snapshot(LockMachine self):
    cdef list out = [_struct.pack("<I", len(self.pl.pools))]
    cdef _Pool pool
    cdef _Tenant t
    cdef _Item x
    cdef dict index
    for name in sorted(self.pl.pools):
        pool = self.pl.pools[name]
        out.append(_POOL_HEAD.pack(len(pool.name), 0, pool.capacity, pool.grace, pool.patience,
                                   len(pool.tenants), len(pool.leases), len(pool.waits)) + pool.name)
        index = {}
        for t in pool.tenants.values():
            index[t.name] = len(index)
            out.append(_TENANT_REC.pack(len(t.name), t.band, 0, t.weight, t.minimum, t.maximum) + t.name)
        for x in pool.leases.values():
            out.append(_LEASE_REC.pack(x.session, x.ticket, x.token, x.deadline, x.units, index[x.tenant.name]))
        for x in pool.waits.values():
            out.append(_WAIT_REC.pack(x.session, x.ticket, x.deadline, x.units, x.passes, index[x.tenant.name],
                                      x.detached))
    return b"".join(out)


cdef size_t _pools_load(LockMachine self, const unsigned char *p, size_t n) except? 0:
    """Load a snapshot's pool section (n bytes at p) into this fresh machine, checking
    everything; returns the bytes it used."""
    cdef bytes data = PyBytes_FromStringAndSize(<const char *>p, <Py_ssize_t>n)
    try:
        return _pools_parse(self, data)
    except (_struct.error, IndexError, KeyError, OverflowError):
        raise LogCorrupted("snapshot pool section is truncated or out of range") from None


cdef size_t _pools_parse(LockMachine self, bytes data) except? 0:
    cdef size_t pos = 4
    cdef uint32_t npools = _struct.unpack_from("<I", data, 0)[0]
    cdef _Pool pool
    cdef _Tenant t
    cdef _Item x
    cdef list tenants
    cdef set revs = set()
    cdef bytes prev = None
    cdef uint64_t last, mins
    for _ in range(npools):
        klen, zero, cap, grace, patience, nt, nl, nw = _POOL_HEAD.unpack_from(data, pos)
        pos += _POOL_HEAD.size
        name = data[pos:pos + klen]
        pos += klen
        if len(name) != klen or not 0 < klen <= C_MAX_KEY or zero or not 1 <= cap <= C_MAX_PERMITS \
                or grace > C_MAX_TTL or not 1 <= patience <= C_MAX_PATIENCE or (prev is not None and name <= prev):
            raise LogCorrupted("snapshot pool record out of range or out of order")
        prev = name
        pool = _Pool()
        pool.name, pool.capacity, pool.grace, pool.patience = name, cap, grace, patience
        pool.tenants, pool.leases, pool.waits = {}, {}, {}
        tenants = []
        mins = 0
        for _ in range(nt):
            nlen, band, zero, w, mn, mx = _TENANT_REC.unpack_from(data, pos)
            pos += _TENANT_REC.size
            t = _Tenant()
            t.name = data[pos:pos + nlen]
            pos += nlen
            if len(t.name) != nlen or nlen == 0 or zero or band > C_MAX_BAND or not 1 <= w <= C_MAX_PERMITS \
                    or not 1 <= mx <= C_MAX_PERMITS or mn > mx or (tenants and t.name <= (<_Tenant>tenants[len(tenants) - 1]).name):
                raise LogCorrupted("snapshot tenant record out of range or out of order")
            t.band, t.weight, t.minimum, t.maximum, t.queue = band, w, mn, mx, []
            mins += mn
            tenants.append(t)
            pool.tenants[t.name] = t
        if mins > cap:
            raise LogCorrupted("snapshot pool minimums exceed its capacity")
        last = 0
        for _ in range(nl):
            sid, ticket, token, deadline, units, ti = _LEASE_REC.unpack_from(data, pos)
            pos += _LEASE_REC.size
            x = _pool_loaded_item(self, pool, tenants[ti], sid, ticket, units, deadline, revs)
            if token <= last or token < ticket or token > self.st.revision \
                    or (token != ticket and (token in revs or map_get(&self.st.rev_map, token) != NIL)):
                raise LogCorrupted("snapshot leases out of order or out of range")
            revs.add(token)
            last = x.token = token
            pool.leases[token] = x
            x.tenant.held += units
            pool.held += units
            if x.tenant.held > x.tenant.maximum or pool.held > cap:
                raise LogCorrupted("snapshot pool over its capacity or a tenant over its maximum")
            if deadline:
                pool.marked += units
                heapq.heappush(self.pl.heap, (deadline, token, name))
        last = 0
        for _ in range(nw):
            sid, ticket, deadline, units, passes, ti, detached = _WAIT_REC.unpack_from(data, pos)
            pos += _WAIT_REC.size
            if ticket <= last or detached > 1 or (detached and not deadline) or passes > patience:
                raise LogCorrupted("snapshot waits out of order or out of range")
            x = _pool_loaded_item(self, pool, tenants[ti], sid, ticket, units, deadline, revs)
            last = ticket
            x.passes = passes
            x.detached = detached
            pool.waits[ticket] = x
            x.tenant.queue.append(x)
            x.tenant.want += units
            if deadline:
                heapq.heappush(self.pl.heap, (deadline, ticket, name))
        self.pl.pools[name] = pool
    for sid in list(self.pl.by_sess):  # each session's items in ticket order
        self.pl.by_sess[sid] = dict(sorted(self.pl.by_sess[sid].items()))
    return pos


cdef _Item _pool_loaded_item(LockMachine self, _Pool pool, _Tenant t, uint64_t sid, uint64_t ticket, uint32_t units,
                             uint64_t deadline, set revs):
    cdef _Item x = _Item()
    if map_get(&self.st.ses_map, sid) == NIL or ticket == 0 or ticket > self.st.revision or ticket in revs \
            or map_get(&self.st.rev_map, ticket) != NIL or not 1 <= units <= pool.limit(t) or deadline > C_MAX_TIME:
        raise LogCorrupted("snapshot pool item out of range")
    revs.add(ticket)
    x.session, x.ticket, x.units, x.deadline, x.tenant = sid, ticket, units, deadline, t
    x.since = C_NO_TIME  # a snapshot has no such times: not observed (lm_timings.pxi)
    self.pl.by_sess.setdefault(sid, {})[ticket] = (pool, x)
    return x


cdef int _pools_check(LockMachine self) except -1:
    cdef _Pool pool
    cdef _Tenant t
    cdef _Item x
    cdef uint64_t held, marked, n = 0
    for pool in self.pl.pools.values():
        held = marked = 0
        for x in pool.leases.values():
            assert x.token and x.units and self.pl.by_sess[x.session][x.ticket][1] is x, "pool lease index"
            assert not x.detached, "a detached lease"
            assert map_get(&self.st.ses_map, x.session) != NIL, "pool lease of a dead session"
            held += x.units
            marked += x.units if x.deadline else 0
            n += 1
        assert marked == pool.marked, "pool marked units"
        assert held == pool.held == sum([(<_Tenant>t).held for t in pool.tenants.values()]), "pool held units"
        assert pool.held <= pool.capacity, "pool over capacity"
        for t in pool.tenants.values():
            assert t.held <= t.maximum, "tenant over its maximum"
            assert t.want == sum([(<_Item>x).units for x in t.queue]), "tenant wanted units"
            assert [(<_Item>x).ticket for x in t.queue] == sorted([(<_Item>x).ticket for x in t.queue]), "tenant queue order"
        assert sum([len((<_Tenant>t).queue) for t in pool.tenants.values()]) == len(pool.waits), "pool queues"
        for x in pool.waits.values():
            assert x.token == 0 and x in x.tenant.queue and self.pl.by_sess[x.session][x.ticket][1] is x, "pool wait index"
            assert x.deadline or not x.detached, "a detached wait without a deadline"
            n += 1
    assert n == sum([len(d) for d in self.pl.by_sess.values()]), "pool session index"
    return 0
