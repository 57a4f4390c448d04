# cython: language_level=3, autotestdict=False, auto_pickle=False
"""The deterministic lock state machine, in C data structures.

The contract (commands, results, events, batch and snapshot formats) is documented in
coordcore/locks/machine.py; this file implements it. Everything here is driven by the
batch bytes: no clock, no randomness that can be observed (the key hash seed only
changes where keys sit in a private hash table; every output is sorted or ordered by
revision), so two machines fed the same records are byte-identical.

Layout: contenders, keys and sessions live in three growable arrays of C structs,
addressed by 32-bit indices (NIL = none) with free lists. A contender is linked into
two doubly linked lists: its key's holders or waiters (FIFO), and its session's list
(ticket order). Lookups go through open-addressing hash tables with backward-shift
deletion: key bytes -> key slot, session id -> session slot, revision (ticket or
token) -> contender slot. Session expiry uses a min-heap of (deadline, id) with lazy
deletion (stale entries are skipped on pop).
"""
cimport cython
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcmp, memcpy, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_FromUnsignedLongLong
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_SET_ITEM

from coordcore._native.cc cimport (CC_DEBUG, cc_crc32c, cc_crc32c_init, cc_crc32c_sw, cc_fmix64, cc_free, cc_ld16, cc_ld32,
    cc_ld64, cc_live_blocks, cc_malloc, cc_realloc, cc_st16, cc_st32, cc_st64, cc_tuple_alloc, cc_xxh64)
from coordcore._native.lockformat cimport *

import os
from enum import IntEnum

from coordcore.errors import BadArgument, LogCorrupted, UnknownCommand, WrongType

cc_crc32c_init()

include "lm_state.pxi"
include "lm_timings.pxi"
include "lm_tables.pxi"
include "lm_codec.pxi"
include "lm_store.pxi"
include "lm_rules.pxi"
include "lm_pools.pxi"
include "lm_apply.pxi"
include "lm_snapshot.pxi"
include "lm_queries.pxi"

# --- the contract's constants, from lockformat.pxd and lm_state.pxi --------------------
# coordcore/locks/machine.py re-exports these and documents what each means.

BATCH_FORMAT_VERSION = BATCH_VERSION
POOL_BATCH_FORMAT_VERSION = BATCH_VERSION_POOLS
POOL_DETACH_BATCH_FORMAT_VERSION = BATCH_VERSION_POOL_DETACH
BATCH_MAGIC = C_MAGIC[:4]
SNAPSHOT_VERSION = 2
CREDENTIAL_DIGEST_SIZE = CRED
BATCH_HEADER_SIZE = HDR_SIZE
COMMAND_HEADER_SIZE = CMD_SIZE
RESULT_SIZE = RES_SIZE
EVENT_HEADER_SIZE = EV_SIZE
MAX_KEY_SIZE = C_MAX_KEY
MAX_VALUE_SIZE = C_MAX_VALUE
MIN_TTL_MS = C_MIN_TTL
MAX_TTL_MS = C_MAX_TTL
MAX_TIMEOUT_MS = C_MAX_TTL
MAX_PERMITS = C_MAX_PERMITS
MAX_TIME_MS = C_MAX_TIME
MAX_BATCH_COMMANDS = C_MAX_BATCH
REQUEST_WINDOW = C_WINDOW
FLAG_SHARED = F_SHARED
FLAG_WAIT = F_WAIT


class Op(IntEnum):
    """Command codes of the batch record (stable: they are stored in logs)."""

    OPEN = OP_OPEN
    KEEPALIVE = OP_KEEPALIVE
    CLOSE = OP_CLOSE
    ACQUIRE = OP_ACQUIRE
    RELEASE = OP_RELEASE
    SEM_ACQUIRE = OP_SEM_ACQUIRE
    SEM_RELEASE = OP_SEM_RELEASE
    CAMPAIGN = OP_CAMPAIGN
    PROCLAIM = OP_PROCLAIM
    RESIGN = OP_RESIGN
    CANCEL = OP_CANCEL
    DETACH = OP_DETACH
    POOL_SET = OP_POOL_SET
    TENANT_SET = OP_TENANT_SET
    CAP_ACQUIRE = OP_CAP_ACQUIRE
    CAP_RELEASE = OP_CAP_RELEASE
    CAP_RESIZE = OP_CAP_RESIZE


class Status(IntEnum):
    """Result status of a command (stable numbers, stored in snapshots)."""

    OK = ST_OK
    WAITING = ST_WAITING
    BUSY = ST_BUSY
    NOSESSION = ST_NOSESSION
    NOTHOLDER = ST_NOTHOLDER
    CONFLICT = ST_CONFLICT
    NOTLEADER = ST_NOTLEADER
    BADARG = ST_BADARG
    WRONGTYPE = ST_WRONGTYPE
    NOTFOUND = ST_NOTFOUND
    HELD = ST_HELD


class Detail(IntEnum):
    """Why a command failed (``Result.detail``); 0 when it did not."""

    NONE = D_NONE
    FLAGS = D_FLAGS  # a flag this command does not take
    KEY = D_KEY  # key empty, too long, or given to a command that takes none
    VALUE = D_VALUE  # value too long, or given to a command that takes none
    TTL = D_TTL  # TTL out of [MIN_TTL_MS, MAX_TTL_MS]
    PERMITS = D_PERMITS  # permits out of [1, MAX_PERMITS]
    PERMITS_MISMATCH = D_PERMITS_MISMATCH  # the semaphore exists with another size (``value``)
    SESSION = D_SESSION  # session id 0 (or non-zero for OPEN)
    ARG = D_ARG  # a non-zero argument to a command that takes none / ticket 0
    NO_SUCH_SESSION = D_NO_SUCH_SESSION
    NO_SUCH_HOLD = D_NO_SUCH_HOLD  # no hold of this session with that token on this key
    NOT_LEADER = D_NOT_LEADER
    NO_SUCH_CONTENDER = D_NO_SUCH_CONTENDER  # no contender of this session with that ticket on this key
    ALREADY_CANDIDATE = D_ALREADY_CANDIDATE  # the session already campaigns in (or leads) this election
    KIND = D_KIND  # the key is of another kind (``value`` is its Kind)
    TIMEOUT = D_TIMEOUT  # a wait timeout out of [0, MAX_TIMEOUT_MS], or one without wait
    WAIT_ENDED = D_WAIT_ENDED  # a retried acquire whose wait ended (timed out, withdrawn, released)
    HELD = D_HELD  # the session already holds or waits for this lock, exclusively or this time asking so
    UPGRADE = D_UPGRADE  # the session holds this lock shared and asked for it exclusively
    NO_SUCH_POOL = D_NO_SUCH_POOL
    NO_SUCH_TENANT = D_NO_SUCH_TENANT
    OVER = D_OVER  # a pool (or tenant) would hold more than its new capacity (maximum): ``value`` holds now
    MINIMUMS = D_MINIMUMS  # the pool's guaranteed minimums would exceed its capacity (``value``: their sum)


class Kind(IntEnum):
    """What a key is, from its first contender to its last."""

    LOCK = K_LOCK
    SEMAPHORE = K_SEM
    ELECTION = K_ELECTION


class Mode(IntEnum):
    """How a contender holds or waits (``NONE`` for session events)."""

    NONE = M_NONE
    EXCLUSIVE = M_EXCLUSIVE
    SHARED = M_SHARED
    SEMAPHORE = M_SEM
    ELECTION = M_ELECTION
    POOL = M_POOL


class EventKind(IntEnum):
    """What an event reports."""

    OPEN = E_OPEN
    CLOSE = E_CLOSE
    EXPIRE = E_EXPIRE
    WAIT = E_WAIT
    GRANT = E_GRANT
    RELEASE = E_RELEASE
    CANCEL = E_CANCEL
    PROCLAIM = E_PROCLAIM
    GIVEBACK = E_GIVEBACK
    REVOKE = E_REVOKE


for _enum in (Op, Status, Detail, Kind, Mode, EventKind):
    _enum.__module__ = "coordcore.locks.machine"  # where they were defined before: pickles and docs still find them there
del _enum


def live_blocks():
    """How many C blocks this module holds now (a leak test reads it before and after)."""
    return cc_live_blocks()


@cython.final
cdef class LockMachine:
    """The compiled machine. Use coordcore.locks.LockMachine (typed, documented facade)."""

    cdef State st
    cdef Buf ev          # events of the batch being applied
    cdef uint32_t *aff   # keys touched by a session teardown, in first-touch order
    cdef uint32_t aff_len, aff_cap
    cdef uint32_t *dead  # sessions expiring at the start of a batch, in order
    cdef uint32_t dead_len, dead_cap
    cdef bint broken
    cdef _Pools pl       # quota pools (lm_pools.pxi)
    cdef Histogram waits[HIST_KINDS]  # wait and hold times by mode (lm_timings.pxi): not state
    cdef Histogram holds[HIST_KINDS]

    def __cinit__(self):
        memset(&self.st, 0, sizeof(State))
        memset(&self.ev, 0, sizeof(Buf))
        memset(self.waits, 0, sizeof(self.waits))
        memset(self.holds, 0, sizeof(self.holds))
        self.aff = NULL
        self.dead = NULL
        self.aff_len = self.aff_cap = self.dead_len = self.dead_cap = 0
        self.broken = False
        self.pl = _Pools()
        self.st.next_session = 1
        self.st.con_free = NIL
        self.st.key_free = NIL
        self.st.ses_free = NIL
        map_init(&self.st.ses_map, 16)
        map_init(&self.st.rev_map, 16)
        self.st.ktab.slots = <uint32_t *>cc_malloc(16 * sizeof(uint32_t))
        if self.st.ktab.slots == NULL:
            raise MemoryError()
        memset(self.st.ktab.slots, 0xFF, 16 * sizeof(uint32_t))
        self.st.ktab.cap = 16

    def __dealloc__(self):
        _free_state(self, &self.st)
        cc_free(self.ev.data)
        cc_free(self.aff)
        cc_free(self.dead)


    # --- the public, log-driven path -----------------------------------------------

    # Every public method runs in a critical section on the machine: a no-op with the GIL;
    # on free-threaded builds (this module declares itself safe there) it turns a misuse
    # the facade documents (calls from several threads) into serialised calls instead of
    # torn C structures.

    def apply(self, batch):
        """Apply one batch record; returns (packed results, packed events)."""
        with cython.critical_section(self):
            return _apply(self, batch)

    # --- snapshot ------------------------------------------------------------------

    def snapshot(self):
        """The whole state as deterministic, checksummed bytes (format in machine.py)."""
        with cython.critical_section(self):
            return _snapshot(self)

    def restore(self, data):
        """Replace the whole state by a snapshot's; validated before anything changes."""
        with cython.critical_section(self):
            _restore(self, data)

    # --- read-only queries ---------------------------------------------------------

    @property
    def revision(self):
        return self.st.revision

    def raise_revision(self, uint64_t floor):
        # Only for recovery after records were dropped (repair, lost log): the tokens
        # they issued must never be issued again. Not a log command: the caller writes a
        # snapshot at once, so replay stays deterministic.
        if floor > C_MAX_COUNTER:
            raise ValueError(f"revision floor {floor} is above {C_MAX_COUNTER}")
        if floor > self.st.revision:
            self.st.revision = floor
        return self.st.revision

    @property
    def time_ms(self):
        return self.st.time

    @property
    def next_session_id(self):
        return self.st.next_session

    @property
    def session_count(self):
        return self.st.ses_used

    @property
    def key_count(self):
        return self.st.key_used

    def next_deadline(self):
        """The earliest live session or wait deadline, or None."""
        with cython.critical_section(self):
            return _next_deadline(self)

    @property
    def waiter_count(self):
        """How many contenders wait (not granted)."""
        cdef uint32_t i
        cdef uint64_t n = 0
        for i in range(self.st.con_cap):
            if self.st.con[i].used and self.st.con[i].token == 0:
                n += 1
        return n

    def session_ids(self):
        """The ids of the live sessions, ascending (a new leader renews each of them)."""
        cdef uint32_t i
        cdef list ids = []
        with cython.critical_section(self):
            for i in range(self.st.ses_cap):
                if self.st.ses[i].used:
                    ids.append(self.st.ses[i].id)
        ids.sort()
        return ids

    def credential_matches(self, uint64_t session_id, digest):
        """True if ``session_id`` is live and opened with the credential whose digest is
        ``digest`` (CREDENTIAL_DIGEST_SIZE bytes). The comparison takes the same time
        wherever the bytes differ."""
        cdef const unsigned char[::1] view = digest
        cdef uint32_t si
        cdef unsigned char diff = 0, seen = 0
        cdef int i
        if view.shape[0] != CRED:
            return False
        with cython.critical_section(self):
            si = map_get(&self.st.ses_map, session_id) if session_id else NIL
            if si == NIL:
                return False
            for i in range(CRED):
                diff |= self.st.ses[si].cred[i] ^ view[i]
                seen |= self.st.ses[si].cred[i]
        return diff == 0 and seen != 0  # an all-zero digest: a session without credential

    def session(self, uint64_t session_id, uint64_t after=0, uint32_t limit=0xFFFFFFFF):
        """(id, ttl, deadline, [(key, contender)...], contender count) of a live session, or
        None: at most ``limit`` contenders, in ticket order, from the first ticket above
        ``after`` (a page: replies stay bounded whatever a session holds)."""
        with cython.critical_section(self):
            return _session(self, session_id, after, limit)

    def key_info(self, bytes key not None, uint32_t limit=0xFFFFFFFF):
        """(kind, permits, holders, waiters, holder count, waiter count) of a key in use,
        or None; at most ``limit`` holders and ``limit`` waiters."""
        with cython.critical_section(self):
            return _key_info(self, key, limit)

    def oldest_wait_ms(self, bytes key not None, now_ms=None):
        """How long (ms of batch time) the first waiter of ``key`` has waited: ``now_ms``
        (default: the last batch's time; never taken below it) minus its arrival's batch
        time. None if the key is unused or has no waiter, or if that waiter was restored
        from a snapshot (which keeps no such times). One lookup: bounded. Not state."""
        cdef uint64_t now
        with cython.critical_section(self):
            now = self.st.time
            if now_ms is not None and <uint64_t>now_ms > now:
                now = <uint64_t>now_ms
            return _oldest_wait(self, key, now)

    def scan_keys(self, bytes prefix not None, uint64_t cursor, uint32_t count):
        """One page of the keys in use that start with ``prefix``: ``(next cursor, keys)``,
        unordered; cursor 0 starts, a next cursor of 0 says the scan is over. As Redis's
        SCAN: a key in use for the whole scan comes back exactly once (a key keeps its
        slot while it exists), one added or removed meanwhile may or may not. A page
        looks at no more than ``8 * count`` slots, so its cost is bounded too."""
        cdef list out = []
        cdef uint64_t i = cursor
        cdef uint64_t budget = <uint64_t>count * 8 if count else 8
        cdef uint32_t plen = <uint32_t>len(prefix)
        cdef const unsigned char *pp = <const unsigned char *>PyBytes_AS_STRING(prefix)
        with cython.critical_section(self):
            while i < self.st.key_cap and budget and <uint32_t>len(out) < count:
                if self.st.keys[i].used and self.st.keys[i].klen >= plen \
                        and memcmp(self.st.keys[i].key, pp, plen) == 0:
                    out.append(PyBytes_FromStringAndSize(<char *>self.st.keys[i].key, self.st.keys[i].klen))
                i += 1
                budget -= 1
            return (i if i < self.st.key_cap else 0, out)

    def contender_count(self, uint64_t session_id):
        """How many holds and waits a live session has, pool leases and waits included
        (0 if none or no such session): what the service bounds per session."""
        cdef uint32_t si
        with cython.critical_section(self):
            si = map_get(&self.st.ses_map, session_id) if session_id else NIL
            return 0 if si == NIL else self.st.ses[si].c_count + len(self.pl.by_sess.get(session_id, ()))

    def keys(self, bytes prefix not None):
        """The keys in use that start with ``prefix``, sorted."""
        with cython.critical_section(self):
            return _keys(self, prefix)

    def pool_info(self, bytes name not None):
        """(capacity, grace, patience, tenants, leases, waits) of a pool, or None: tenants
        (name, weight, minimum, maximum, band, held) in name order, leases (session,
        tenant, units, ticket, token, give-back deadline) in token order, waits (session,
        tenant, units, ticket, wait deadline, passes) in ticket order."""
        with cython.critical_section(self):
            return _pool_info(self, name)

    def pool_names(self):
        """The pools defined, sorted."""
        with cython.critical_section(self):
            return sorted(self.pl.pools)

    def pool_summary(self, bytes name not None):
        """(capacity, held, waiting requests, tenants) of a pool without its leases and
        waits, or None: tenants (name, weight, minimum, maximum, band, held, wanted
        units, waiting requests) in name order."""
        with cython.critical_section(self):
            return _pool_summary(self, name)

    def pool_totals(self):
        """(pools, capacity, held, waiting requests) over every pool, then (give-back
        requests, revocations) applied by this machine (replays included; not in
        snapshots)."""
        with cython.critical_section(self):
            return _pools_totals(self)

    def timings(self):
        """The wait and hold times observed by this object, as ``(bounds_ms, waits,
        holds)``: the buckets' upper bounds (ms), then for each kind ("exclusive",
        "shared", "semaphore", "election", "pool") ``(counts, sum_ms)``, counts per
        bucket (not cumulative) with one more at the end for times above the last bound.
        A wait is observed at each grant (0 for one granted at once), a hold at each
        end of a hold (release, close, expiry, withdrawal, revocation). Not state: not
        in snapshots, kept across :meth:`restore`, only ever growing (see
        :meth:`clear_timings`)."""
        with cython.critical_section(self):
            return _timings(self)

    def clear_timings(self):
        """Forget the observed times (a service calls it once its log is replayed, so
        that its metrics count what happened since it started serving)."""
        with cython.critical_section(self):
            memset(self.waits, 0, sizeof(self.waits))
            memset(self.holds, 0, sizeof(self.holds))

    def check_invariants(self):
        """Check the internal structures (AssertionError on violation). Debug builds run
        this after every batch; tests call it directly."""
        with cython.critical_section(self):
            _check_invariants(self)
