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
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort, realloc
from libc.string cimport memcmp, memcpy, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize
from cpython.long cimport PyLong_FromUnsignedLongLong
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_SET_ITEM

import os

from coordcore.errors import BadArgument, LogCorrupted, UnknownCommand, WrongType

cdef extern from *:
    """
    #ifndef CC_DEBUG
    #define CC_DEBUG 0
    #endif
    #include <stdint.h>
    #include <string.h>
    #include "cc_endian.h"
    static inline uint64_t cc_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
    static inline uint64_t cc_fmix(uint64_t k) {
        k ^= k >> 33; k *= 0xff51afd7ed558ccdULL;
        k ^= k >> 33; k *= 0xc4ceb9fe1a85ec53ULL;
        k ^= k >> 33; return k;
    }
    /* A seeded 64-bit hash of key bytes: 8 bytes per round, murmur-style mixing. */
    static inline uint64_t cc_hash(const unsigned char *p, size_t n, uint64_t seed) {
        uint64_t h = seed ^ ((uint64_t)n * 0x9E3779B97F4A7C15ULL);
        while (n >= 8) {
            uint64_t w = cc_ld64(p) * 0x87c37b91114253d5ULL;
            h ^= cc_rotl(w, 31) * 0x4cf5ad432745937fULL;
            h = cc_rotl(h, 27) * 5 + 0x52dce729;
            p += 8; n -= 8;
        }
        if (n) {
            uint64_t w = 0;
            for (size_t i = 0; i < n; i++) w |= (uint64_t)p[i] << (8 * i);
            w *= 0x87c37b91114253d5ULL;
            h ^= cc_rotl(w, 31) * 0x4cf5ad432745937fULL;
        }
        return cc_fmix(h);
    }
    /* An empty instance of a tuple subclass with n slots (what tuple.__new__ does
       for subclasses, without building an intermediate tuple). */
    static PyObject *cc_tuple_alloc(PyObject *cls, Py_ssize_t n) {
        PyTypeObject *t = (PyTypeObject *)cls;
        return t->tp_alloc(t, n);
    }
    static uint32_t cc_crc32c_table[256];
    static void cc_crc32c_init(void) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            cc_crc32c_table[i] = c;
        }
    }
    static uint32_t cc_crc32c(uint32_t crc, const unsigned char *p, size_t n) {
        crc = ~crc;
        while (n--) crc = cc_crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
        return ~crc;
    }
    """
    const bint CC_DEBUG
    uint64_t cc_ld64(const unsigned char *p) noexcept nogil
    uint32_t cc_ld32(const unsigned char *p) noexcept nogil
    uint16_t cc_ld16(const unsigned char *p) noexcept nogil
    void cc_st64(unsigned char *p, uint64_t v) noexcept nogil
    void cc_st32(unsigned char *p, uint32_t v) noexcept nogil
    void cc_st16(unsigned char *p, uint16_t v) noexcept nogil
    uint64_t cc_fmix(uint64_t k) noexcept nogil
    uint64_t cc_hash(const unsigned char *p, size_t n, uint64_t seed) noexcept nogil
    void cc_crc32c_init() noexcept nogil
    uint32_t cc_crc32c(uint32_t crc, const unsigned char *p, size_t n) noexcept nogil
    object cc_tuple_alloc(object cls, Py_ssize_t n)

cc_crc32c_init()

# --- the contract's constants (mirrored in coordcore/locks/machine.py) --------------

BATCH_FORMAT_VERSION = 2
SNAPSHOT_VERSION = 2
CREDENTIAL_DIGEST_SIZE = 32
MAX_KEY_SIZE = 1024
MAX_VALUE_SIZE = 4096
MIN_TTL_MS = 1
MAX_TTL_MS = 30 * 86_400_000
MAX_PERMITS = 1_000_000
MAX_TIME_MS = 2**62
MAX_BATCH_COMMANDS = 1 << 20
REQUEST_WINDOW = 128

cdef enum:
    NIL = 0xFFFFFFFF
    C_MAX_KEY = 1024
    C_MAX_VALUE = 4096
    C_MAX_PERMITS = 1000000
    C_MAX_BATCH = 1048576  # 1 << 20 (a literal: Cython 3.3 crashes on shifts in enums under overflowcheck)
    C_WINDOW = 128
    HDR_SIZE = 20
    CMD_SIZE = 32
    RES_SIZE = 24
    EV_SIZE = 40
    REQ_REC = 32
    SNAP_CON = 32
    SNAP_CON2 = 40  # version 2 adds the wait deadline
    CRED = 32       # a session credential's digest (SHA-256)

cdef uint64_t C_MIN_TTL = 1
cdef uint64_t C_MAX_TTL = 30 * 86_400_000ULL
cdef uint64_t C_MAX_TIME = 1ULL << 62
# Largest revision and session counter a snapshot may carry: far from 2**64, so the
# counters can never wrap (a wrapped counter would reuse tokens and hand out session 0,
# the hash maps' empty marker).
cdef uint64_t C_MAX_COUNTER = 1ULL << 62

cdef enum:  # ops
    OP_OPEN = 1
    OP_KEEPALIVE = 2
    OP_CLOSE = 3
    OP_ACQUIRE = 4
    OP_RELEASE = 5
    OP_SEM_ACQUIRE = 6
    OP_SEM_RELEASE = 7
    OP_CAMPAIGN = 8
    OP_PROCLAIM = 9
    OP_RESIGN = 10
    OP_CANCEL = 11
    OP_DETACH = 12  # format version 2

cdef enum:  # command flags
    F_SHARED = 1
    F_WAIT = 2

cdef enum:  # statuses
    ST_OK = 0
    ST_WAITING = 1
    ST_BUSY = 2
    ST_NOSESSION = 10
    ST_NOTHOLDER = 11
    ST_CONFLICT = 12
    ST_NOTLEADER = 13
    ST_BADARG = 14
    ST_WRONGTYPE = 15
    ST_NOTFOUND = 16

cdef enum:  # details
    D_NONE = 0
    D_FLAGS = 1
    D_KEY = 2
    D_VALUE = 3
    D_TTL = 4
    D_PERMITS = 5
    D_PERMITS_MISMATCH = 6
    D_SESSION = 7
    D_ARG = 8
    D_NO_SUCH_SESSION = 9
    D_NO_SUCH_HOLD = 10
    D_NOT_LEADER = 11
    D_NO_SUCH_CONTENDER = 12
    D_ALREADY_CANDIDATE = 13
    D_KIND = 14
    D_TIMEOUT = 15
    D_WAIT_ENDED = 16

cdef enum:  # key kinds
    K_LOCK = 1
    K_SEM = 2
    K_ELECTION = 3

cdef enum:  # contender modes
    M_NONE = 0
    M_EXCLUSIVE = 1
    M_SHARED = 2
    M_SEM = 3
    M_ELECTION = 4

cdef enum:  # event kinds
    E_OPEN = 1
    E_CLOSE = 2
    E_EXPIRE = 3
    E_WAIT = 4
    E_GRANT = 5
    E_RELEASE = 6
    E_CANCEL = 7
    E_PROCLAIM = 8

# --- data structures -----------------------------------------------------------------

ctypedef struct Contender:
    uint64_t session      # session id
    uint64_t ticket       # revision at arrival
    uint64_t token        # revision at grant; 0 while waiting
    uint32_t key          # key slot
    uint32_t sess         # session slot
    uint32_t kprev, knext  # key's holders or waiters list (knext doubles as free link)
    uint32_t sprev, snext  # session's list, ticket order
    uint32_t vlen
    uint8_t mode
    uint8_t used
    uint8_t detached      # a waiter at a restart: withdrawn at wait_deadline unless its client re-attaches
    uint64_t wait_deadline  # withdrawn at the first batch at or after it (0: never)
    unsigned char *value

ctypedef struct KeySlot:
    unsigned char *key
    uint64_t hash
    uint32_t klen
    uint32_t permits
    uint32_t h_head, h_tail, h_count
    uint32_t w_head, w_tail, w_count
    uint32_t next_free
    uint8_t kind
    uint8_t used
    uint8_t pending       # in the affected list of a session teardown

ctypedef struct ReqEntry:
    uint64_t req
    uint64_t value
    uint64_t aux
    uint8_t op
    uint8_t status
    uint8_t detail

ctypedef struct Session:
    uint64_t id
    uint64_t ttl
    uint64_t deadline
    uint64_t req_max      # upper bound of the request ids in the table (fast miss)
    ReqEntry *reqs        # ring buffer; wraps only once it holds C_WINDOW entries
    uint32_t req_cap, req_len, req_start
    uint32_t c_head, c_tail, c_count
    uint32_t next_free
    uint8_t used
    uint8_t dying         # collected by the current expiry pass
    unsigned char cred[CRED]  # digest of the opener's credential (all zero: none, a version 1 session)

ctypedef struct U64Map:   # u64 (non-zero) -> u32
    uint64_t *keys
    uint32_t *vals
    uint32_t cap, used

ctypedef struct KeyTab:   # key bytes -> key slot
    uint32_t *slots
    uint32_t cap, used

ctypedef struct HeapEntry:
    uint64_t deadline
    uint64_t id

ctypedef struct Buf:
    unsigned char *data
    size_t len, cap

ctypedef struct TicketRef:
    uint64_t ticket
    uint32_t con

ctypedef struct State:
    uint64_t time
    uint64_t revision
    uint64_t next_session
    Contender *con
    uint32_t con_cap, con_free, con_used
    KeySlot *keys
    uint32_t key_cap, key_free, key_used
    Session *ses
    uint32_t ses_cap, ses_free, ses_used
    U64Map ses_map
    U64Map rev_map
    KeyTab ktab
    HeapEntry *heap       # (deadline, session id)
    uint32_t heap_len, heap_cap
    HeapEntry *wheap      # (wait deadline, ticket)
    uint32_t wheap_len, wheap_cap

cdef uint64_t HASH_SEED = <uint64_t>int.from_bytes(os.urandom(8), "little")

# --- small helpers -------------------------------------------------------------------

cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    return cc_fmix(x ^ 0x9E3779B97F4A7C15ULL)


cdef int buf_reserve(Buf *b, size_t extra) except -1:
    cdef size_t need = b.len + extra
    cdef size_t cap
    cdef unsigned char *p
    if need <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 4096
    while cap < need:
        cap *= 2
    p = <unsigned char *>realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef int map_init(U64Map *m, uint32_t cap) except -1:
    m.keys = <uint64_t *>malloc(cap * sizeof(uint64_t))
    m.vals = <uint32_t *>malloc(cap * sizeof(uint32_t))
    if m.keys == NULL or m.vals == NULL:
        raise MemoryError()
    memset(m.keys, 0, cap * sizeof(uint64_t))
    m.cap = cap
    m.used = 0
    return 0


cdef void map_free(U64Map *m) noexcept:
    free(m.keys)
    free(m.vals)
    m.keys = NULL
    m.vals = NULL
    m.cap = 0
    m.used = 0


cdef inline uint32_t map_get(const U64Map *m, uint64_t k) noexcept nogil:
    cdef uint32_t mask = m.cap - 1
    cdef uint32_t i = <uint32_t>(mix64(k) & mask)
    cdef uint64_t kk
    if k == 0:
        return NIL  # 0 marks an empty slot: it would "match" one and return its stale value
    while True:
        kk = m.keys[i]
        if kk == k:
            return m.vals[i]
        if kk == 0:
            return NIL
        i = (i + 1) & mask


cdef int map_grow(U64Map *m) except -1:
    cdef U64Map old = m[0]
    cdef uint32_t i, j, mask
    map_init(m, old.cap * 2)
    mask = m.cap - 1
    for i in range(old.cap):
        if old.keys[i] != 0:
            j = <uint32_t>(mix64(old.keys[i]) & mask)
            while m.keys[j] != 0:
                j = (j + 1) & mask
            m.keys[j] = old.keys[i]
            m.vals[j] = old.vals[i]
    m.used = old.used
    map_free(&old)
    return 0


cdef int map_put(U64Map *m, uint64_t k, uint32_t v) except -1:
    """Insert k -> v; returns 1 (and changes nothing) if k is already present."""
    cdef uint32_t mask, i
    if (m.used + 1) * 2 > m.cap:
        map_grow(m)
    mask = m.cap - 1
    i = <uint32_t>(mix64(k) & mask)
    while m.keys[i] != 0:
        if m.keys[i] == k:
            return 1
        i = (i + 1) & mask
    m.keys[i] = k
    m.vals[i] = v
    m.used += 1
    return 0


cdef void map_del(U64Map *m, uint64_t k) noexcept nogil:
    cdef uint32_t mask = m.cap - 1
    cdef uint32_t i = <uint32_t>(mix64(k) & mask)
    cdef uint32_t j, ideal
    while m.keys[i] != k:
        if m.keys[i] == 0:
            return
        i = (i + 1) & mask
    # Backward-shift deletion keeps probe chains intact without tombstones.
    j = i
    while True:
        j = (j + 1) & mask
        if m.keys[j] == 0:
            break
        ideal = <uint32_t>(mix64(m.keys[j]) & mask)
        if (i <= j and (ideal <= i or ideal > j)) or (i > j and ideal <= i and ideal > j):
            m.keys[i] = m.keys[j]
            m.vals[i] = m.vals[j]
            i = j
    m.keys[i] = 0
    m.used -= 1


cdef int heap_cmp_lt(const HeapEntry *a, const HeapEntry *b) noexcept nogil:
    return a.deadline < b.deadline or (a.deadline == b.deadline and a.id < b.id)


# Min-heaps of (deadline, id) with lazy deletion: one of sessions (id: session id) and
# one of timed waiters (id: ticket). (deadline, id) is a total order, so the order of
# pops never depends on the order of pushes.

cdef int heap_insert(HeapEntry **hp, uint32_t *lenp, uint32_t *capp, uint64_t deadline,
                     uint64_t id) except -1:
    cdef uint32_t i, parent, cap
    cdef HeapEntry e
    cdef HeapEntry *h
    if lenp[0] == capp[0]:
        cap = capp[0] * 2 if capp[0] else 64
        if cap <= capp[0]:
            raise MemoryError("deadline heap too large")
        h = <HeapEntry *>realloc(hp[0], cap * sizeof(HeapEntry))
        if h == NULL:
            raise MemoryError()
        hp[0] = h
        capp[0] = cap
    h = hp[0]
    e.deadline = deadline
    e.id = id
    i = lenp[0]
    lenp[0] += 1
    while i > 0:
        parent = (i - 1) >> 1
        if not heap_cmp_lt(&e, &h[parent]):
            break
        h[i] = h[parent]
        i = parent
    h[i] = e
    return 0


cdef void heap_sift_down(HeapEntry *h, uint32_t n, uint32_t i) noexcept:
    cdef uint32_t l, r, m
    cdef HeapEntry e = h[i]
    while True:
        l = 2 * i + 1
        if l >= n:
            break
        r = l + 1
        m = r if r < n and heap_cmp_lt(&h[r], &h[l]) else l
        if not heap_cmp_lt(&h[m], &e):
            break
        h[i] = h[m]
        i = m
    h[i] = e


cdef void heap_remove_top(HeapEntry *h, uint32_t *lenp) noexcept:
    lenp[0] -= 1
    if lenp[0]:
        h[0] = h[lenp[0]]
        heap_sift_down(h, lenp[0], 0)


cdef void heapify(HeapEntry *h, uint32_t n) noexcept:
    cdef uint32_t i
    if n > 1:
        i = (n - 2) // 2 + 1
        while i > 0:
            i -= 1
            heap_sift_down(h, n, i)


cdef int cmp_u64(const void *a, const void *b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t *>a)[0]
    cdef uint64_t y = (<const uint64_t *>b)[0]
    return (x > y) - (x < y)


cdef int cmp_ticketref(const void *a, const void *b) noexcept nogil:
    cdef uint64_t x = (<const TicketRef *>a).ticket
    cdef uint64_t y = (<const TicketRef *>b).ticket
    return (x > y) - (x < y)


cdef inline bint mode_bad_lock(uint8_t mode) noexcept:
    return mode != M_EXCLUSIVE and mode != M_SHARED


cdef class _Reader:
    """Bounds-checked sequential reads of a snapshot; every failure is LogCorrupted."""
    cdef const unsigned char *p
    cdef size_t n, pos

    cdef int need(self, size_t k) except -1:
        if self.n - self.pos < k:
            raise LogCorrupted(f"snapshot truncated at byte {self.pos}")
        return 0

    cdef uint64_t u64(self) except? 0xFFFFFFFFFFFFFFFF:
        self.need(8)
        self.pos += 8
        return cc_ld64(self.p + self.pos - 8)

    cdef uint32_t u32(self) except? 0xFFFFFFFF:
        self.need(4)
        self.pos += 4
        return cc_ld32(self.p + self.pos - 4)

    cdef uint16_t u16(self) except? 0xFFFF:
        self.need(2)
        self.pos += 2
        return cc_ld16(self.p + self.pos - 2)

    cdef uint8_t u8(self) except? 0xFF:
        self.need(1)
        self.pos += 1
        return self.p[self.pos - 1]


def crc32c(data, uint32_t value=0):
    """CRC-32C (Castagnoli) of ``data``, continuing from ``value``."""
    cdef const unsigned char[::1] view
    try:
        if data is None:
            raise TypeError
        view = data
    except (TypeError, ValueError):
        raise WrongType(f"crc32c needs a contiguous bytes-like object, not {type(data).__name__}") from None
    if view.shape[0] == 0:
        return value
    return cc_crc32c(value, &view[0], <size_t>view.shape[0])


cdef inline void _put(object t, Py_ssize_t i, object v):
    Py_INCREF(v)
    PyTuple_SET_ITEM(t, i, v)


cdef int _check_tuple_class(object cls, Py_ssize_t n) except -1:
    if not (isinstance(cls, type) and issubclass(cls, tuple)) or len(getattr(cls, "_fields", ())) != n:
        raise WrongType(f"cls must be a tuple subclass with {n} fields")
    return 0


def decode_results(raw, cls):
    """Packed results -> [cls(op, status, detail, flags, value, aux), ...]."""
    cdef const unsigned char[::1] view = raw
    cdef size_t n = <size_t>view.shape[0]
    cdef size_t pos
    cdef const unsigned char *p
    cdef list out = []
    cdef object t
    _check_tuple_class(cls, 6)
    if n % RES_SIZE:
        raise BadArgument("packed results must be a multiple of 24 bytes")
    pos = 0
    while pos < n:
        p = &view[pos]
        t = cc_tuple_alloc(cls, 6)
        _put(t, 0, p[0])
        _put(t, 1, p[1])
        _put(t, 2, p[2])
        _put(t, 3, p[3])
        _put(t, 4, PyLong_FromUnsignedLongLong(cc_ld64(p + 8)))
        _put(t, 5, PyLong_FromUnsignedLongLong(cc_ld64(p + 16)))
        out.append(t)
        pos += RES_SIZE
    return out


def decode_events(raw, cls):
    """Packed events -> [cls(revision, kind, mode, session, ticket, token, key, value), ...]."""
    cdef const unsigned char[::1] view = raw
    cdef size_t n = <size_t>view.shape[0]
    cdef size_t pos = 0
    cdef const unsigned char *p
    cdef uint32_t klen, vlen
    cdef list out = []
    cdef object t
    _check_tuple_class(cls, 8)
    while pos < n:
        if n - pos < EV_SIZE:
            raise BadArgument("packed events are truncated")
        p = &view[pos]
        klen = cc_ld16(p + 2)
        vlen = cc_ld32(p + 4)
        if n - pos - EV_SIZE < <size_t>klen + vlen:
            raise BadArgument("packed events are truncated")
        t = cc_tuple_alloc(cls, 8)
        _put(t, 0, PyLong_FromUnsignedLongLong(cc_ld64(p + 8)))
        _put(t, 1, p[0])
        _put(t, 2, p[1])
        _put(t, 3, PyLong_FromUnsignedLongLong(cc_ld64(p + 16)))
        _put(t, 4, PyLong_FromUnsignedLongLong(cc_ld64(p + 24)))
        _put(t, 5, PyLong_FromUnsignedLongLong(cc_ld64(p + 32)))
        _put(t, 6, PyBytes_FromStringAndSize(<const char *>p + EV_SIZE, klen) if klen else b"")
        _put(t, 7, PyBytes_FromStringAndSize(<const char *>p + EV_SIZE + klen, vlen) if vlen else b"")
        out.append(t)
        pos += EV_SIZE + <size_t>klen + vlen
    return out


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

    def __cinit__(self):
        memset(&self.st, 0, sizeof(State))
        memset(&self.ev, 0, sizeof(Buf))
        self.aff = NULL
        self.dead = NULL
        self.aff_len = self.aff_cap = self.dead_len = self.dead_cap = 0
        self.broken = False
        self.st.next_session = 1
        self.st.con_free = NIL
        self.st.key_free = NIL
        self.st.ses_free = NIL
        map_init(&self.st.ses_map, 16)
        map_init(&self.st.rev_map, 16)
        self.st.ktab.slots = <uint32_t *>malloc(16 * sizeof(uint32_t))
        if self.st.ktab.slots == NULL:
            raise MemoryError()
        memset(self.st.ktab.slots, 0xFF, 16 * sizeof(uint32_t))
        self.st.ktab.cap = 16

    def __dealloc__(self):
        self._free_state(&self.st)
        free(self.ev.data)
        free(self.aff)
        free(self.dead)

    cdef void _free_state(self, State *st) noexcept:
        cdef uint32_t i
        if st.con != NULL:
            for i in range(st.con_cap):
                if st.con[i].used:
                    free(st.con[i].value)
        if st.keys != NULL:
            for i in range(st.key_cap):
                if st.keys[i].used:
                    free(st.keys[i].key)
        if st.ses != NULL:
            for i in range(st.ses_cap):
                if st.ses[i].used:
                    free(st.ses[i].reqs)
        free(st.con)
        free(st.keys)
        free(st.ses)
        free(st.heap)
        free(st.wheap)
        free(st.ktab.slots)
        map_free(&st.ses_map)
        map_free(&st.rev_map)
        memset(st, 0, sizeof(State))

    # --- pools ---------------------------------------------------------------------

    cdef uint32_t _new_contender(self) except? 0xFFFFFFFF:
        cdef uint32_t i, cap
        cdef Contender *p
        if self.st.con_free == NIL:
            cap = self.st.con_cap * 2 if self.st.con_cap else 64
            if cap <= self.st.con_cap or cap >= NIL:
                raise MemoryError("too many contenders")
            p = <Contender *>realloc(self.st.con, cap * sizeof(Contender))
            if p == NULL:
                raise MemoryError()
            memset(p + self.st.con_cap, 0, (cap - self.st.con_cap) * sizeof(Contender))
            for i in range(self.st.con_cap, cap):
                p[i].knext = i + 1 if i + 1 < cap else NIL
            self.st.con_free = self.st.con_cap
            self.st.con = p
            self.st.con_cap = cap
        i = self.st.con_free
        self.st.con_free = self.st.con[i].knext
        memset(&self.st.con[i], 0, sizeof(Contender))
        self.st.con[i].used = 1
        self.st.con_used += 1
        return i

    cdef void _free_contender(self, uint32_t i) noexcept:
        cdef Contender *c = &self.st.con[i]
        free(c.value)
        c.value = NULL
        c.used = 0
        c.knext = self.st.con_free
        self.st.con_free = i
        self.st.con_used -= 1

    cdef uint32_t _new_session_slot(self) except? 0xFFFFFFFF:
        cdef uint32_t i, cap
        cdef Session *p
        if self.st.ses_free == NIL:
            cap = self.st.ses_cap * 2 if self.st.ses_cap else 16
            if cap <= self.st.ses_cap or cap >= NIL:
                raise MemoryError("too many sessions")
            p = <Session *>realloc(self.st.ses, cap * sizeof(Session))
            if p == NULL:
                raise MemoryError()
            memset(p + self.st.ses_cap, 0, (cap - self.st.ses_cap) * sizeof(Session))
            for i in range(self.st.ses_cap, cap):
                p[i].next_free = i + 1 if i + 1 < cap else NIL
            self.st.ses_free = self.st.ses_cap
            self.st.ses = p
            self.st.ses_cap = cap
        i = self.st.ses_free
        self.st.ses_free = self.st.ses[i].next_free
        memset(&self.st.ses[i], 0, sizeof(Session))
        self.st.ses[i].used = 1
        self.st.ses[i].c_head = NIL
        self.st.ses[i].c_tail = NIL
        self.st.ses_used += 1
        return i

    cdef void _free_session_slot(self, uint32_t i) noexcept:
        cdef Session *s = &self.st.ses[i]
        free(s.reqs)
        s.reqs = NULL
        s.used = 0
        s.next_free = self.st.ses_free
        self.st.ses_free = i
        self.st.ses_used -= 1

    # --- key table -----------------------------------------------------------------

    cdef uint32_t _key_find(self, const unsigned char *k, uint32_t klen, uint64_t h) noexcept:
        cdef uint32_t mask = self.st.ktab.cap - 1
        cdef uint32_t i = <uint32_t>(h & mask)
        cdef uint32_t s
        cdef KeySlot *ks
        while True:
            s = self.st.ktab.slots[i]
            if s == NIL:
                return NIL
            ks = &self.st.keys[s]
            if ks.hash == h and ks.klen == klen and memcmp(ks.key, k, klen) == 0:
                return s
            i = (i + 1) & mask

    cdef int _ktab_insert(self, uint32_t slot) except -1:
        cdef uint32_t mask, i, cap, j
        cdef uint32_t *old
        cdef uint32_t old_cap
        if (self.st.ktab.used + 1) * 2 > self.st.ktab.cap:
            old = self.st.ktab.slots
            old_cap = self.st.ktab.cap
            cap = old_cap * 2
            self.st.ktab.slots = <uint32_t *>malloc(cap * sizeof(uint32_t))
            if self.st.ktab.slots == NULL:
                self.st.ktab.slots = old
                raise MemoryError()
            memset(self.st.ktab.slots, 0xFF, cap * sizeof(uint32_t))
            self.st.ktab.cap = cap
            mask = cap - 1
            for j in range(old_cap):
                if old[j] != NIL:
                    i = <uint32_t>(self.st.keys[old[j]].hash & mask)
                    while self.st.ktab.slots[i] != NIL:
                        i = (i + 1) & mask
                    self.st.ktab.slots[i] = old[j]
            free(old)
        mask = self.st.ktab.cap - 1
        i = <uint32_t>(self.st.keys[slot].hash & mask)
        while self.st.ktab.slots[i] != NIL:
            i = (i + 1) & mask
        self.st.ktab.slots[i] = slot
        self.st.ktab.used += 1
        return 0

    cdef void _ktab_remove(self, uint32_t slot) noexcept:
        cdef uint32_t mask = self.st.ktab.cap - 1
        cdef uint32_t i = <uint32_t>(self.st.keys[slot].hash & mask)
        cdef uint32_t j, ideal
        while self.st.ktab.slots[i] != slot:
            i = (i + 1) & mask
        j = i
        while True:
            j = (j + 1) & mask
            if self.st.ktab.slots[j] == NIL:
                break
            ideal = <uint32_t>(self.st.keys[self.st.ktab.slots[j]].hash & mask)
            if (i <= j and (ideal <= i or ideal > j)) or (i > j and ideal <= i and ideal > j):
                self.st.ktab.slots[i] = self.st.ktab.slots[j]
                i = j
        self.st.ktab.slots[i] = NIL
        self.st.ktab.used -= 1

    cdef uint32_t _new_key(self, const unsigned char *k, uint32_t klen, uint64_t h,
                           uint8_t kind, uint32_t permits) except? 0xFFFFFFFF:
        cdef uint32_t i, cap
        cdef KeySlot *p
        cdef unsigned char *copy = <unsigned char *>malloc(klen if klen else 1)
        if copy == NULL:
            raise MemoryError()
        memcpy(copy, k, klen)
        if self.st.key_free == NIL:
            cap = self.st.key_cap * 2 if self.st.key_cap else 64
            if cap <= self.st.key_cap or cap >= NIL:
                free(copy)
                raise MemoryError("too many keys")
            p = <KeySlot *>realloc(self.st.keys, cap * sizeof(KeySlot))
            if p == NULL:
                free(copy)
                raise MemoryError()
            memset(p + self.st.key_cap, 0, (cap - self.st.key_cap) * sizeof(KeySlot))
            for i in range(self.st.key_cap, cap):
                p[i].next_free = i + 1 if i + 1 < cap else NIL
            self.st.key_free = self.st.key_cap
            self.st.keys = p
            self.st.key_cap = cap
        i = self.st.key_free
        self.st.key_free = self.st.keys[i].next_free
        p = &self.st.keys[i]
        memset(p, 0, sizeof(KeySlot))
        p.key = copy
        p.klen = klen
        p.hash = h
        p.kind = kind
        p.permits = permits
        p.h_head = p.h_tail = p.w_head = p.w_tail = NIL
        p.used = 1
        self.st.key_used += 1
        try:
            self._ktab_insert(i)
        except MemoryError:
            self._free_key(i, False)
            raise
        return i

    cdef void _free_key(self, uint32_t i, bint in_table) noexcept:
        cdef KeySlot *p = &self.st.keys[i]
        if in_table:
            self._ktab_remove(i)
        free(p.key)
        p.key = NULL
        p.used = 0
        p.next_free = self.st.key_free
        self.st.key_free = i
        self.st.key_used -= 1

    cdef inline void _maybe_drop_key(self, uint32_t k) noexcept:
        cdef KeySlot *ks = &self.st.keys[k]
        if ks.h_count == 0 and ks.w_count == 0:
            self._free_key(k, True)

    # --- lists ---------------------------------------------------------------------

    cdef void _link_key(self, uint32_t c, bint holder) noexcept:
        cdef Contender *cp = &self.st.con[c]
        cdef KeySlot *ks = &self.st.keys[cp.key]
        cp.knext = NIL
        if holder:
            cp.kprev = ks.h_tail
            if ks.h_tail != NIL:
                self.st.con[ks.h_tail].knext = c
            else:
                ks.h_head = c
            ks.h_tail = c
            ks.h_count += 1
        else:
            cp.kprev = ks.w_tail
            if ks.w_tail != NIL:
                self.st.con[ks.w_tail].knext = c
            else:
                ks.w_head = c
            ks.w_tail = c
            ks.w_count += 1

    cdef void _unlink_key(self, uint32_t c) noexcept:
        cdef Contender *cp = &self.st.con[c]
        cdef KeySlot *ks = &self.st.keys[cp.key]
        if cp.token != 0:
            if cp.kprev != NIL:
                self.st.con[cp.kprev].knext = cp.knext
            else:
                ks.h_head = cp.knext
            if cp.knext != NIL:
                self.st.con[cp.knext].kprev = cp.kprev
            else:
                ks.h_tail = cp.kprev
            ks.h_count -= 1
        else:
            if cp.kprev != NIL:
                self.st.con[cp.kprev].knext = cp.knext
            else:
                ks.w_head = cp.knext
            if cp.knext != NIL:
                self.st.con[cp.knext].kprev = cp.kprev
            else:
                ks.w_tail = cp.kprev
            ks.w_count -= 1

    cdef void _link_session(self, uint32_t c) noexcept:
        cdef Contender *cp = &self.st.con[c]
        cdef Session *s = &self.st.ses[cp.sess]
        cp.snext = NIL
        cp.sprev = s.c_tail
        if s.c_tail != NIL:
            self.st.con[s.c_tail].snext = c
        else:
            s.c_head = c
        s.c_tail = c
        s.c_count += 1

    cdef void _unlink_session(self, uint32_t c) noexcept:
        cdef Contender *cp = &self.st.con[c]
        cdef Session *s = &self.st.ses[cp.sess]
        if cp.sprev != NIL:
            self.st.con[cp.sprev].snext = cp.snext
        else:
            s.c_head = cp.snext
        if cp.snext != NIL:
            self.st.con[cp.snext].sprev = cp.sprev
        else:
            s.c_tail = cp.sprev
        s.c_count -= 1

    # --- events --------------------------------------------------------------------

    cdef int _emit(self, uint8_t kind, uint8_t mode, uint64_t rev, uint64_t session,
                   uint64_t ticket, uint64_t token, const unsigned char *k, uint32_t klen,
                   const unsigned char *v, uint32_t vlen) except -1:
        cdef unsigned char *p
        buf_reserve(&self.ev, EV_SIZE + klen + vlen)
        p = self.ev.data + self.ev.len
        p[0] = kind
        p[1] = mode
        cc_st16(p + 2, <uint16_t>klen)
        cc_st32(p + 4, vlen)
        cc_st64(p + 8, rev)
        cc_st64(p + 16, session)
        cc_st64(p + 24, ticket)
        cc_st64(p + 32, token)
        if klen:
            memcpy(p + EV_SIZE, k, klen)
        if vlen:
            memcpy(p + EV_SIZE + klen, v, vlen)
        self.ev.len += EV_SIZE + klen + vlen
        return 0

    cdef int _emit_contender(self, uint8_t kind, uint32_t c, uint64_t rev) except -1:
        cdef Contender *cp = &self.st.con[c]
        cdef KeySlot *ks = &self.st.keys[cp.key]
        return self._emit(kind, cp.mode, rev, cp.session, cp.ticket, cp.token,
                          ks.key, ks.klen, cp.value, cp.vlen)

    # --- granting ------------------------------------------------------------------

    cdef inline bint _can_hold(self, KeySlot *ks, uint8_t mode) noexcept:
        if ks.kind == K_LOCK:
            if ks.h_count == 0:
                return True
            return mode == M_SHARED and self.st.con[ks.h_head].mode == M_SHARED
        if ks.kind == K_SEM:
            return ks.h_count < ks.permits
        return ks.h_count == 0

    cdef int _promote(self, uint32_t k) except -1:
        cdef KeySlot *ks = &self.st.keys[k]
        cdef uint32_t c
        cdef uint64_t rev
        while ks.w_head != NIL:
            c = ks.w_head
            if not self._can_hold(ks, self.st.con[c].mode):
                break
            self._unlink_key(c)
            rev = self.st.revision + 1
            map_put(&self.st.rev_map, rev, c)
            self.st.revision = rev
            self.st.con[c].token = rev
            if not self.st.con[c].detached:
                self.st.con[c].wait_deadline = 0  # granted: its TIMEOUT is over
            self._link_key(c, True)
            self._emit_contender(E_GRANT, c, rev)
        return 0

    cdef int _remove_contender(self, uint32_t c) except -1:
        """Unlink, emit RELEASE (holder) or CANCEL (waiter), free. The key stays."""
        cdef Contender *cp = &self.st.con[c]
        cdef uint64_t rev = self.st.revision + 1
        self.st.revision = rev
        self._emit_contender(E_RELEASE if cp.token != 0 else E_CANCEL, c, rev)
        cp = &self.st.con[c]
        self._unlink_key(c)
        self._unlink_session(c)
        map_del(&self.st.rev_map, cp.ticket)
        if cp.token != 0 and cp.token != cp.ticket:
            map_del(&self.st.rev_map, cp.token)
        self._free_contender(c)
        return 0

    cdef int _mark_affected(self, uint32_t k) except -1:
        cdef uint32_t *p
        cdef uint32_t cap
        if self.st.keys[k].pending:
            return 0
        if self.aff_len == self.aff_cap:
            cap = self.aff_cap * 2 if self.aff_cap else 64
            p = <uint32_t *>realloc(self.aff, cap * sizeof(uint32_t))
            if p == NULL:
                raise MemoryError()
            self.aff = p
            self.aff_cap = cap
        self.st.keys[k].pending = 1
        self.aff[self.aff_len] = k
        self.aff_len += 1
        return 0

    cdef int _promote_affected(self) except -1:
        """Grant the waiters of every key a removal pass marked, in first-touch order."""
        cdef uint32_t i, k
        for i in range(self.aff_len):
            k = self.aff[i]
            self.st.keys[k].pending = 0
            self._promote(k)
            self._maybe_drop_key(k)
        self.aff_len = 0
        return 0

    cdef int _end_sessions(self, uint32_t *slots, uint32_t n, uint8_t kind) except -1:
        """Close or expire sessions: for each, its event then one RELEASE/CANCEL per
        contender in ticket order; only then grant the waiters this unblocked, so no
        grant goes to a session ending in the same step."""
        cdef uint32_t i, s, c, k
        cdef uint64_t rev
        self.aff_len = 0
        for i in range(n):
            s = slots[i]
            rev = self.st.revision + 1
            self.st.revision = rev
            self._emit(kind, M_NONE, rev, self.st.ses[s].id, 0, 0, NULL, 0, NULL, 0)
            while self.st.ses[s].c_head != NIL:
                c = self.st.ses[s].c_head
                k = self.st.con[c].key
                self._remove_contender(c)
                self._mark_affected(k)
            map_del(&self.st.ses_map, self.st.ses[s].id)
            self._free_session_slot(s)
        return self._promote_affected()

    # --- expiry heap ---------------------------------------------------------------

    cdef int _heap_push(self, uint64_t deadline, uint64_t sid) except -1:
        if self.st.heap_len == self.st.heap_cap and self.st.heap_len > 2 * self.st.ses_used + 64:
            self._heap_rebuild()
        return heap_insert(&self.st.heap, &self.st.heap_len, &self.st.heap_cap, deadline, sid)

    cdef void _heap_pop(self) noexcept:
        heap_remove_top(self.st.heap, &self.st.heap_len)

    cdef void _heap_rebuild(self) noexcept:
        """Drop stale entries: one entry per live session (fits, as len > sessions)."""
        cdef uint32_t i, n = 0
        for i in range(self.st.ses_cap):
            if self.st.ses[i].used:
                self.st.heap[n].deadline = self.st.ses[i].deadline
                self.st.heap[n].id = self.st.ses[i].id
                n += 1
        self.st.heap_len = n
        heapify(self.st.heap, n)

    cdef inline bint _heap_top_stale(self) noexcept:
        cdef HeapEntry *e = &self.st.heap[0]
        cdef uint32_t s = map_get(&self.st.ses_map, e.id)
        return s == NIL or self.st.ses[s].deadline != e.deadline

    cdef int _expire(self, uint64_t now) except -1:
        cdef uint32_t s, cap
        cdef uint32_t *p
        cdef HeapEntry e
        self.dead_len = 0
        while self.st.heap_len and self.st.heap[0].deadline <= now:
            e = self.st.heap[0]
            self._heap_pop()
            s = map_get(&self.st.ses_map, e.id)
            if s == NIL or self.st.ses[s].deadline != e.deadline or self.st.ses[s].dying:
                continue
            self.st.ses[s].dying = 1
            if self.dead_len == self.dead_cap:
                cap = self.dead_cap * 2 if self.dead_cap else 64
                p = <uint32_t *>realloc(self.dead, cap * sizeof(uint32_t))
                if p == NULL:
                    raise MemoryError()
                self.dead = p
                self.dead_cap = cap
            self.dead[self.dead_len] = s
            self.dead_len += 1
        if self.dead_len:
            self._end_sessions(self.dead, self.dead_len, E_EXPIRE)
        return 0

    # --- waiter deadlines ------------------------------------------------------------

    cdef int _wheap_push(self, uint64_t deadline, uint64_t ticket) except -1:
        cdef uint32_t i, n = 0
        if self.st.wheap_len == self.st.wheap_cap and self.st.wheap_len > 2 * self.st.con_used + 64:
            # Mostly stale entries: rebuild from the contenders (fits, as len > contenders).
            for i in range(self.st.con_cap):
                if self.st.con[i].used and self.st.con[i].wait_deadline:
                    self.st.wheap[n].deadline = self.st.con[i].wait_deadline
                    self.st.wheap[n].id = self.st.con[i].ticket
                    n += 1
            self.st.wheap_len = n
            heapify(self.st.wheap, n)
        return heap_insert(&self.st.wheap, &self.st.wheap_len, &self.st.wheap_cap, deadline, ticket)

    cdef int _set_wait_deadline(self, uint32_t c, uint64_t deadline) except -1:
        self.st.con[c].wait_deadline = deadline
        if deadline:
            self._wheap_push(deadline, self.st.con[c].ticket)
        return 0

    cdef uint32_t _wheap_live_top(self) noexcept:
        """The contender of the earliest live wait deadline (stale entries dropped), or NIL."""
        cdef HeapEntry *e
        cdef uint32_t c
        while self.st.wheap_len:
            e = &self.st.wheap[0]
            c = map_get(&self.st.rev_map, e.id)
            if c != NIL and self.st.con[c].ticket == e.id and self.st.con[c].wait_deadline == e.deadline:
                return c
            heap_remove_top(self.st.wheap, &self.st.wheap_len)
        return NIL

    cdef int _expire_waits(self, uint64_t now) except -1:
        """Withdraw every contender whose wait deadline has come (a waiter's TIMEOUT, or a
        detached contender's grace), in (deadline, ticket) order; then grant the waiters
        this unblocked, so no grant goes to a contender withdrawn in the same pass."""
        cdef uint32_t c, k
        self.aff_len = 0
        while True:
            c = self._wheap_live_top()
            if c == NIL or self.st.wheap[0].deadline > now:
                break
            heap_remove_top(self.st.wheap, &self.st.wheap_len)
            k = self.st.con[c].key
            self._remove_contender(c)
            self._mark_affected(k)
        return self._promote_affected()

    cdef uint64_t _detach(self, uint64_t grace) except? 0xFFFFFFFFFFFFFFFF:
        """Every waiter gets at most ``grace`` ms more, then is withdrawn (released, if it
        was granted meanwhile) unless its client re-attaches: the service says this when
        it starts, as no waiter has a connection any more. Returns how many."""
        cdef uint32_t i
        cdef uint64_t n = 0
        cdef uint64_t deadline = self.st.time + grace
        cdef Contender *cp
        for i in range(self.st.con_cap):
            cp = &self.st.con[i]
            if cp.used and cp.token == 0:
                cp.detached = 1
                if cp.wait_deadline == 0 or cp.wait_deadline > deadline:
                    self._set_wait_deadline(i, deadline)
                n += 1
        return n

    # --- request table -------------------------------------------------------------

    cdef ReqEntry *_req_find(self, Session *s, uint64_t req) noexcept:
        cdef uint32_t i, j
        if req > s.req_max or s.req_len == 0:
            return NULL
        i = s.req_len
        while i > 0:
            i -= 1
            j = (s.req_start + i) % s.req_cap
            if s.reqs[j].req == req:
                return &s.reqs[j]
        return NULL

    cdef int _req_record(self, uint32_t si, uint64_t req, unsigned char *res) except -1:
        cdef Session *s = &self.st.ses[si]
        cdef ReqEntry *p
        cdef ReqEntry *e
        cdef uint32_t cap
        if s.req_len < C_WINDOW:
            if s.req_len == s.req_cap:
                cap = s.req_cap * 2 if s.req_cap else 4
                p = <ReqEntry *>realloc(s.reqs, cap * sizeof(ReqEntry))
                if p == NULL:
                    raise MemoryError()
                s.reqs = p
                s.req_cap = cap
            e = &s.reqs[s.req_len]   # no wrap before the window is full
            s.req_len += 1
        else:
            e = &s.reqs[s.req_start]
            s.req_start = (s.req_start + 1) % C_WINDOW
        e.req = req
        e.op = res[0]
        e.status = res[1]
        e.detail = res[2]
        e.value = cc_ld64(res + 8)
        e.aux = cc_ld64(res + 16)
        if req > s.req_max:
            s.req_max = req
        return 0

    # --- commands ------------------------------------------------------------------

    cdef int _session_has_on_key(self, uint32_t si, uint32_t k) noexcept:
        cdef uint32_t c = self.st.ses[si].c_head
        while c != NIL:
            if self.st.con[c].key == k:
                return 1
            c = self.st.con[c].snext
        return 0

    cdef int _acquire(self, uint32_t si, uint64_t sid, uint8_t kind, uint8_t mode,
                      const unsigned char *k, uint32_t klen, const unsigned char *v,
                      uint32_t vlen, uint32_t permits, bint wait, uint64_t timeout,
                      unsigned char *res) except -1:
        cdef uint64_t h = cc_hash(k, klen, HASH_SEED)
        cdef uint32_t ki = self._key_find(k, klen, h)
        cdef KeySlot *ks
        cdef bint grant = True
        cdef bint created = False
        cdef uint32_t c
        cdef uint64_t rev
        cdef unsigned char *vcopy = NULL
        cdef Contender *cp
        if ki != NIL:
            ks = &self.st.keys[ki]
            if ks.kind != kind:
                res[1] = ST_WRONGTYPE
                res[2] = D_KIND
                cc_st64(res + 8, ks.kind)
                return 0
            if kind == K_SEM and ks.permits != permits:
                res[1] = ST_BADARG
                res[2] = D_PERMITS_MISMATCH
                cc_st64(res + 8, ks.permits)
                return 0
            if kind == K_ELECTION and self._session_has_on_key(si, ki):
                res[1] = ST_CONFLICT
                res[2] = D_ALREADY_CANDIDATE
                return 0
            grant = ks.w_count == 0 and self._can_hold(ks, mode)
        if not grant and not wait:
            res[1] = ST_BUSY
            return 0
        if vlen:
            vcopy = <unsigned char *>malloc(vlen)
            if vcopy == NULL:
                raise MemoryError()
            memcpy(vcopy, v, vlen)
        try:
            if ki == NIL:
                ki = self._new_key(k, klen, h, kind, permits if kind == K_SEM else 0)
                created = True
            c = self._new_contender()
        except MemoryError:
            free(vcopy)
            if created:
                self._free_key(ki, True)
            raise
        rev = self.st.revision + 1
        map_put(&self.st.rev_map, rev, c)
        self.st.revision = rev
        cp = &self.st.con[c]
        cp.session = sid
        cp.ticket = rev
        cp.token = rev if grant else 0
        cp.key = ki
        cp.sess = si
        cp.mode = mode
        cp.value = vcopy
        cp.vlen = vlen
        self._link_key(c, grant)
        self._link_session(c)
        if grant:
            self._emit_contender(E_GRANT, c, rev)
            cc_st64(res + 8, rev)
        else:
            if timeout:
                self._set_wait_deadline(c, self.st.time + timeout)
            self._emit_contender(E_WAIT, c, rev)
            res[1] = ST_WAITING
        cc_st64(res + 16, rev)
        return 0

    cdef uint32_t _find_hold(self, uint32_t si, uint64_t sid, uint32_t ki, uint64_t token) noexcept:
        """The session's hold with ``token`` on key slot ki (0: its lowest token), or NIL."""
        cdef uint32_t c, best = NIL
        if token != 0:
            c = map_get(&self.st.rev_map, token)
            if c == NIL:
                return NIL
            if self.st.con[c].token != token or self.st.con[c].key != ki or self.st.con[c].session != sid:
                return NIL
            return c
        c = self.st.ses[si].c_head
        while c != NIL:
            if self.st.con[c].key == ki and self.st.con[c].token != 0:
                if best == NIL or self.st.con[c].token < self.st.con[best].token:
                    best = c
            c = self.st.con[c].snext
        return best

    cdef int _release(self, uint32_t si, uint64_t sid, uint8_t kind, const unsigned char *k,
                      uint32_t klen, uint64_t token, unsigned char *res) except -1:
        cdef uint32_t ki = self._key_find(k, klen, cc_hash(k, klen, HASH_SEED))
        cdef uint32_t c
        cdef uint8_t err = ST_NOTLEADER if kind == K_ELECTION else ST_NOTHOLDER
        cdef uint8_t why = D_NOT_LEADER if kind == K_ELECTION else D_NO_SUCH_HOLD
        if ki == NIL:
            res[1] = err
            res[2] = why
            return 0
        if self.st.keys[ki].kind != kind:
            res[1] = ST_WRONGTYPE
            res[2] = D_KIND
            cc_st64(res + 8, self.st.keys[ki].kind)
            return 0
        c = self._find_hold(si, sid, ki, token)
        if c == NIL:
            res[1] = err
            res[2] = why
            return 0
        cc_st64(res + 8, self.st.con[c].token)
        cc_st64(res + 16, self.st.con[c].ticket)
        self._remove_contender(c)
        self._promote(ki)
        self._maybe_drop_key(ki)
        return 0

    cdef int _cancel(self, uint32_t si, uint64_t sid, const unsigned char *k, uint32_t klen,
                     uint64_t ticket, unsigned char *res) except -1:
        cdef uint32_t ki = self._key_find(k, klen, cc_hash(k, klen, HASH_SEED))
        cdef uint32_t c = NIL
        if ki != NIL:
            c = map_get(&self.st.rev_map, ticket)
        if ki == NIL or c == NIL or self.st.con[c].ticket != ticket or self.st.con[c].key != ki \
                or self.st.con[c].session != sid:
            res[1] = ST_NOTFOUND
            res[2] = D_NO_SUCH_CONTENDER
            return 0
        cc_st64(res + 8, self.st.con[c].token)
        cc_st64(res + 16, ticket)
        self._remove_contender(c)
        self._promote(ki)
        self._maybe_drop_key(ki)
        return 0

    cdef int _proclaim(self, uint32_t si, uint64_t sid, const unsigned char *k, uint32_t klen,
                       uint64_t token, const unsigned char *v, uint32_t vlen,
                       unsigned char *res) except -1:
        cdef uint32_t ki = self._key_find(k, klen, cc_hash(k, klen, HASH_SEED))
        cdef uint32_t c
        cdef Contender *cp
        cdef unsigned char *vcopy = NULL
        cdef uint64_t rev
        if ki == NIL:
            res[1] = ST_NOTLEADER
            res[2] = D_NOT_LEADER
            return 0
        if self.st.keys[ki].kind != K_ELECTION:
            res[1] = ST_WRONGTYPE
            res[2] = D_KIND
            cc_st64(res + 8, self.st.keys[ki].kind)
            return 0
        c = self.st.keys[ki].h_head
        if c == NIL or self.st.con[c].session != sid or (token != 0 and self.st.con[c].token != token):
            res[1] = ST_NOTLEADER
            res[2] = D_NOT_LEADER
            return 0
        if vlen:
            vcopy = <unsigned char *>malloc(vlen)
            if vcopy == NULL:
                raise MemoryError()
            memcpy(vcopy, v, vlen)
        cp = &self.st.con[c]
        free(cp.value)
        cp.value = vcopy
        cp.vlen = vlen
        rev = self.st.revision + 1
        self.st.revision = rev
        self._emit_contender(E_PROCLAIM, c, rev)
        cc_st64(res + 8, rev)
        cc_st64(res + 16, cp.token)
        return 0

    cdef int _reattach(self, uint64_t sid, uint64_t ticket, uint64_t timeout, unsigned char *res) except -1:
        """A retried acquire whose first answer was WAITING: its client is back. The
        contender is re-attached (no longer withdrawn at a detach grace) and the retry
        learns where it stands now: granted (OK, token), still waiting (WAITING, with the
        retry's TIMEOUT from now) or gone (NOTFOUND: timed out, withdrawn or released)."""
        cdef uint32_t c = map_get(&self.st.rev_map, ticket)
        cdef Contender *cp
        if c == NIL or self.st.con[c].ticket != ticket or self.st.con[c].session != sid:
            res[1] = ST_NOTFOUND
            res[2] = D_WAIT_ENDED
            cc_st64(res + 8, 0)
            return 0
        cp = &self.st.con[c]
        cp.detached = 0
        if cp.token != 0:
            cp.wait_deadline = 0
            res[1] = ST_OK
            cc_st64(res + 8, cp.token)
        else:
            self._set_wait_deadline(c, self.st.time + timeout if timeout else 0)
        return 0

    cdef int _apply_one(self, const unsigned char *p, unsigned char *res, bint v2) except -1:
        cdef uint8_t op = p[0]
        cdef uint8_t flags = p[1]
        cdef uint32_t klen = cc_ld16(p + 2)
        cdef uint32_t vlen = cc_ld32(p + 4)
        cdef uint64_t sid = cc_ld64(p + 8)
        cdef uint64_t req = cc_ld64(p + 16)
        cdef uint64_t arg = cc_ld64(p + 24)
        cdef const unsigned char *k = p + CMD_SIZE
        cdef const unsigned char *v = k + klen
        cdef uint8_t allowed, detail = D_NONE
        cdef bint takes_key, takes_value
        cdef uint32_t si
        cdef Session *s
        cdef ReqEntry *e
        cdef uint64_t rev
        cdef uint64_t timeout = 0
        cdef uint64_t low = arg
        memset(res, 0, RES_SIZE)
        res[0] = op
        if v2 and (op == OP_ACQUIRE or op == OP_SEM_ACQUIRE or op == OP_CAMPAIGN):
            # Format version 2: an acquire's arg carries its wait TIMEOUT (ms) in the
            # high 32 bits, the semaphore size (or 0) in the low 32.
            timeout = arg >> 32
            low = arg & 0xFFFFFFFFULL
        # Argument checks, in the documented order (the reference model mirrors it).
        if op == OP_ACQUIRE:
            allowed = F_SHARED | F_WAIT
        elif op == OP_SEM_ACQUIRE or op == OP_CAMPAIGN:
            allowed = F_WAIT
        else:
            allowed = 0
        takes_key = op > OP_CLOSE and op != OP_DETACH
        takes_value = op == OP_ACQUIRE or op == OP_SEM_ACQUIRE or op == OP_CAMPAIGN or op == OP_PROCLAIM
        if flags & ~allowed:
            detail = D_FLAGS
        elif (takes_key and (klen == 0 or klen > C_MAX_KEY)) or (not takes_key and klen != 0):
            detail = D_KEY
        elif (takes_value and vlen > C_MAX_VALUE) or (v2 and op == OP_OPEN and vlen != 0 and vlen != CRED) \
                or (not takes_value and vlen != 0 and not (v2 and op == OP_OPEN)):
            detail = D_VALUE
        elif op == OP_OPEN:
            if arg < C_MIN_TTL or arg > C_MAX_TTL:
                detail = D_TTL
            elif sid != 0:
                detail = D_SESSION
        elif op == OP_DETACH:
            if arg > C_MAX_TTL:
                detail = D_ARG
            elif sid != 0:
                detail = D_SESSION
        elif op == OP_SEM_ACQUIRE and (low < 1 or low > C_MAX_PERMITS):
            detail = D_PERMITS
        elif timeout > C_MAX_TTL or (timeout != 0 and not (flags & F_WAIT)):
            detail = D_TIMEOUT
        elif (op == OP_CANCEL and arg == 0) or ((op == OP_KEEPALIVE or op == OP_CLOSE) and arg != 0) \
                or ((op == OP_ACQUIRE or op == OP_CAMPAIGN) and low != 0):
            detail = D_ARG
        elif sid == 0:
            detail = D_SESSION
        if detail != D_NONE:
            res[1] = ST_BADARG
            res[2] = detail
            return 0
        if op == OP_OPEN:
            si = self._new_session_slot()
            s = &self.st.ses[si]
            s.id = self.st.next_session
            s.ttl = arg
            s.deadline = self.st.time + arg
            if vlen == CRED:
                memcpy(s.cred, v, CRED)
            try:
                map_put(&self.st.ses_map, s.id, si)
                self._heap_push(s.deadline, s.id)
            except MemoryError:
                map_del(&self.st.ses_map, self.st.ses[si].id)
                self._free_session_slot(si)
                raise
            s = &self.st.ses[si]
            self.st.next_session += 1
            rev = self.st.revision + 1
            self.st.revision = rev
            self._emit(E_OPEN, M_NONE, rev, s.id, 0, 0, NULL, 0, NULL, 0)
            cc_st64(res + 8, s.id)
            cc_st64(res + 16, s.deadline)
            return 0
        if op == OP_DETACH:
            cc_st64(res + 8, self._detach(arg))
            return 0
        si = map_get(&self.st.ses_map, sid)
        if si == NIL:
            res[1] = ST_NOSESSION
            res[2] = D_NO_SUCH_SESSION
            return 0
        if op == OP_KEEPALIVE:
            s = &self.st.ses[si]
            if self.st.time + s.ttl != s.deadline:
                s.deadline = self.st.time + s.ttl
                self._heap_push(s.deadline, sid)
            cc_st64(res + 8, self.st.ses[si].deadline)
            cc_st64(res + 16, self.st.ses[si].deadline)
            return 0
        if op == OP_CLOSE:
            self._end_sessions(&si, 1, E_CLOSE)
            return 0
        if req != 0:
            e = self._req_find(&self.st.ses[si], req)
            if e != NULL:
                res[0] = e.op
                res[1] = e.status
                res[2] = e.detail
                res[3] = 1
                cc_st64(res + 8, e.value)
                cc_st64(res + 16, e.aux)
                if e.status == ST_WAITING and v2:
                    self._reattach(sid, e.aux, timeout, res)
                return 0
        if op == OP_ACQUIRE:
            self._acquire(si, sid, K_LOCK, M_SHARED if flags & F_SHARED else M_EXCLUSIVE,
                          k, klen, v, vlen, 0, flags & F_WAIT, timeout, res)
        elif op == OP_SEM_ACQUIRE:
            self._acquire(si, sid, K_SEM, M_SEM, k, klen, v, vlen, <uint32_t>low, flags & F_WAIT, timeout, res)
        elif op == OP_CAMPAIGN:
            self._acquire(si, sid, K_ELECTION, M_ELECTION, k, klen, v, vlen, 0, flags & F_WAIT, timeout, res)
        elif op == OP_RELEASE:
            self._release(si, sid, K_LOCK, k, klen, arg, res)
        elif op == OP_SEM_RELEASE:
            self._release(si, sid, K_SEM, k, klen, arg, res)
        elif op == OP_RESIGN:
            self._release(si, sid, K_ELECTION, k, klen, arg, res)
        elif op == OP_PROCLAIM:
            self._proclaim(si, sid, k, klen, arg, v, vlen, res)
        else:  # OP_CANCEL
            self._cancel(si, sid, k, klen, arg, res)
        if req != 0:
            self._req_record(si, req, res)
        return 0

    # --- the public, log-driven path -----------------------------------------------

    # Every public method runs in a critical section on the machine: a no-op with the GIL;
    # on free-threaded builds (this module declares itself safe there) it turns a misuse
    # the facade documents (calls from several threads) into serialised calls instead of
    # torn C structures.

    def apply(self, batch):
        """Apply one batch record; returns (packed results, packed events)."""
        with cython.critical_section(self):
            return self._apply(batch)

    cdef object _apply(self, object batch):
        cdef const unsigned char[::1] view
        cdef const unsigned char *p
        cdef size_t n, pos
        cdef uint32_t count, i, klen, vlen
        cdef uint64_t t
        cdef uint8_t op, last_op
        cdef bint v2
        cdef bytes results
        cdef unsigned char *rp
        if self.broken:
            raise RuntimeError("this LockMachine ran out of memory mid-batch and must be discarded")
        try:
            if batch is None:
                raise TypeError
            view = batch
        except (TypeError, ValueError):
            raise WrongType(f"batch must be a contiguous bytes-like object, not {type(batch).__name__}") from None
        n = <size_t>view.shape[0]
        if n < HDR_SIZE:
            raise BadArgument(f"malformed batch: {n} bytes is shorter than the header")
        if not PyBytes_CheckExact(batch):
            # Pass 2 trusts the lengths pass 1 checked: work on an immutable copy, so no
            # other thread can change a mutable buffer between the passes.
            batch = PyBytes_FromStringAndSize(<const char *>&view[0], <Py_ssize_t>n)
            view = batch
        p = &view[0]
        if memcmp(p, b"CCLB", 4) != 0:
            raise BadArgument(f"malformed batch: bad magic {bytes(view[:4])!r}")
        if p[4] != 1 and p[4] != 2:
            raise BadArgument(f"malformed batch: unsupported format version {p[4]}")
        v2 = p[4] == 2
        last_op = OP_DETACH if v2 else OP_CANCEL
        if p[5] != 0 or cc_ld16(p + 6) != 0:
            raise BadArgument("malformed batch: reserved header bits set")
        t = cc_ld64(p + 8)
        count = cc_ld32(p + 16)
        if t > C_MAX_TIME:
            raise BadArgument(f"malformed batch: time {t} is beyond {C_MAX_TIME}")
        if count > C_MAX_BATCH:
            raise BadArgument(f"malformed batch: {count} commands (at most {C_MAX_BATCH})")
        # Pass 1: the whole record's structure, before anything changes.
        pos = HDR_SIZE
        for i in range(count):
            if n - pos < CMD_SIZE:
                raise BadArgument(f"malformed batch: command {i} is truncated")
            op = p[pos]
            if op < OP_OPEN or op > last_op:
                raise UnknownCommand(f"malformed batch: command {i} has unknown op {op}")
            if p[pos + 1] & ~(F_SHARED | F_WAIT):
                raise BadArgument(f"malformed batch: command {i} has unknown flags {p[pos + 1]:#x}")
            klen = cc_ld16(p + pos + 2)
            vlen = cc_ld32(p + pos + 4)
            pos += CMD_SIZE
            if n - pos < <size_t>klen + vlen:
                raise BadArgument(f"malformed batch: command {i} is truncated")
            pos += <size_t>klen + vlen
        if pos != n:
            raise BadArgument(f"malformed batch: {n - pos} trailing bytes")
        # Pass 2: apply.
        results = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>count * RES_SIZE)
        rp = <unsigned char *>PyBytes_AS_STRING(results)
        self.ev.len = 0
        try:
            if t > self.st.time:
                self.st.time = t
            self._expire(self.st.time)
            self._expire_waits(self.st.time)
            pos = HDR_SIZE
            for i in range(count):
                self._apply_one(p + pos, rp + <size_t>i * RES_SIZE, v2)
                pos += CMD_SIZE + <size_t>cc_ld16(p + pos + 2) + cc_ld32(p + pos + 4)
        except MemoryError:
            self.broken = True
            raise
        if CC_DEBUG:
            self._check_invariants()
        return results, PyBytes_FromStringAndSize(<char *>self.ev.data, <Py_ssize_t>self.ev.len)

    # --- snapshot ------------------------------------------------------------------

    cdef int _snap_key(self, Buf *b, uint32_t ki) except -1:
        cdef KeySlot *ks = &self.st.keys[ki]
        cdef unsigned char *q
        cdef Contender *cp
        cdef uint32_t c, pass_
        buf_reserve(b, 16 + ks.klen)
        q = b.data + b.len
        cc_st16(q, <uint16_t>ks.klen)
        q[2] = ks.kind
        q[3] = 0
        cc_st32(q + 4, ks.permits)
        cc_st32(q + 8, ks.h_count)
        cc_st32(q + 12, ks.w_count)
        memcpy(q + 16, ks.key, ks.klen)
        b.len += 16 + ks.klen
        for pass_ in range(2):
            c = ks.h_head if pass_ == 0 else ks.w_head
            while c != NIL:
                cp = &self.st.con[c]
                buf_reserve(b, SNAP_CON2 + cp.vlen)
                q = b.data + b.len
                cc_st64(q, cp.session)
                cc_st64(q + 8, cp.ticket)
                cc_st64(q + 16, cp.token)
                q[24] = cp.mode
                q[25] = cp.detached
                cc_st16(q + 26, 0)
                cc_st32(q + 28, cp.vlen)
                cc_st64(q + 32, cp.wait_deadline)
                if cp.vlen:
                    memcpy(q + SNAP_CON2, cp.value, cp.vlen)
                b.len += SNAP_CON2 + cp.vlen
                c = cp.knext
        return 0

    def snapshot(self):
        """The whole state as deterministic, checksummed bytes (format in machine.py)."""
        with cython.critical_section(self):
            return self._snapshot()

    cdef object _snapshot(self):
        cdef Buf b
        cdef unsigned char *q
        cdef uint64_t *ids = NULL
        cdef uint32_t i, n, j, si
        cdef Session *s
        cdef ReqEntry *e
        cdef list names
        cdef bytes name
        cdef uint32_t crc
        memset(&b, 0, sizeof(Buf))
        try:
            buf_reserve(&b, 40)
            q = b.data
            memcpy(q, b"CCLS", 4)
            q[4] = 2
            q[5] = 0
            cc_st16(q + 6, 0)
            cc_st64(q + 8, self.st.time)
            cc_st64(q + 16, self.st.revision)
            cc_st64(q + 24, self.st.next_session)
            cc_st32(q + 32, self.st.ses_used)
            b.len = 36
            n = self.st.ses_used
            ids = <uint64_t *>malloc((n + 1) * sizeof(uint64_t))
            if ids == NULL:
                raise MemoryError()
            j = 0
            for i in range(self.st.ses_cap):
                if self.st.ses[i].used:
                    ids[j] = self.st.ses[i].id
                    j += 1
            qsort(ids, n, sizeof(uint64_t), cmp_u64)
            for j in range(n):
                si = map_get(&self.st.ses_map, ids[j])
                s = &self.st.ses[si]
                buf_reserve(&b, 28 + CRED + <size_t>s.req_len * REQ_REC)
                q = b.data + b.len
                cc_st64(q, s.id)
                cc_st64(q + 8, s.ttl)
                cc_st64(q + 16, s.deadline)
                cc_st32(q + 24, s.req_len)
                memcpy(q + 28, s.cred, CRED)
                q += 28 + CRED
                for i in range(s.req_len):
                    e = &s.reqs[(s.req_start + i) % s.req_cap]
                    cc_st64(q, e.req)
                    q[8] = e.op
                    q[9] = e.status
                    q[10] = e.detail
                    q[11] = 0
                    cc_st32(q + 12, 0)
                    cc_st64(q + 16, e.value)
                    cc_st64(q + 24, e.aux)
                    q += REQ_REC
                b.len += 28 + CRED + <size_t>s.req_len * REQ_REC
            # Keys in bytes order (snapshots are not a hot path: let Python sort).
            names = []
            for i in range(self.st.key_cap):
                if self.st.keys[i].used:
                    names.append(PyBytes_FromStringAndSize(<char *>self.st.keys[i].key, self.st.keys[i].klen))
            names.sort()
            buf_reserve(&b, 4)
            cc_st32(b.data + b.len, <uint32_t>len(names))
            b.len += 4
            for name in names:
                self._snap_key(&b, self._key_find(<const unsigned char *>PyBytes_AS_STRING(name),
                                                  <uint32_t>len(name),
                                                  cc_hash(<const unsigned char *>PyBytes_AS_STRING(name),
                                                          len(name), HASH_SEED)))
            crc = cc_crc32c(0, b.data, b.len)
            buf_reserve(&b, 4)
            cc_st32(b.data + b.len, crc)
            b.len += 4
            return PyBytes_FromStringAndSize(<char *>b.data, <Py_ssize_t>b.len)
        finally:
            free(ids)
            free(b.data)

    def restore(self, data):
        """Replace the whole state by a snapshot's; validated before anything changes."""
        with cython.critical_section(self):
            self._restore(data)

    cdef int _restore(self, object data) except -1:
        cdef const unsigned char[::1] view
        cdef LockMachine fresh
        cdef State tmp
        try:
            if data is None:
                raise TypeError
            view = data
        except (TypeError, ValueError):
            raise WrongType(f"snapshot must be a contiguous bytes-like object, not {type(data).__name__}") from None
        fresh = LockMachine()
        if view.shape[0] == 0:
            raise LogCorrupted("snapshot is empty")
        fresh._load(&view[0], <size_t>view.shape[0])
        tmp = self.st
        self.st = fresh.st
        fresh.st = tmp
        self.broken = False
        return 0

    cdef int _load(self, const unsigned char *p, size_t n) except -1:
        cdef _Reader r = _Reader()
        cdef uint32_t nses, nkeys, i, j, nreq, nh, nw, si, ki, c, total = 0
        cdef uint64_t sid, prev_sid = 0, ttl, deadline, maxrev
        cdef uint16_t klen
        cdef uint8_t kind, mode
        cdef uint32_t permits, vlen
        cdef Session *s
        cdef ReqEntry *e
        cdef Contender *cp
        cdef const unsigned char *kp
        cdef const unsigned char *prev_key = NULL
        cdef uint32_t prev_klen = 0
        cdef uint64_t last
        cdef TicketRef *refs = NULL
        cdef int cmpv
        cdef bint v2
        if n < 40 or memcmp(p, b"CCLS", 4) != 0:
            raise LogCorrupted("not a lock machine snapshot (bad magic or too short)")
        if p[4] != 1 and p[4] != 2:
            raise LogCorrupted(f"unsupported snapshot version {p[4]}")
        v2 = p[4] == 2
        if cc_ld32(p + n - 4) != cc_crc32c(0, p, n - 4):
            raise LogCorrupted("snapshot checksum mismatch")
        r.p = p
        r.n = n - 4
        r.pos = 8
        self.st.time = r.u64()
        self.st.revision = maxrev = r.u64()
        self.st.next_session = r.u64()
        if self.st.time > C_MAX_TIME or self.st.next_session == 0 \
                or self.st.next_session > C_MAX_COUNTER or maxrev > C_MAX_COUNTER:
            raise LogCorrupted("snapshot header out of range")
        nses = r.u32()
        for i in range(nses):
            sid = r.u64()
            ttl = r.u64()
            deadline = r.u64()
            nreq = r.u32()
            if sid <= prev_sid or sid >= self.st.next_session:
                raise LogCorrupted("snapshot sessions out of order or beyond the id counter")
            if ttl < C_MIN_TTL or ttl > C_MAX_TTL or deadline > self.st.time + ttl \
                    or deadline <= self.st.time or nreq > C_WINDOW:
                raise LogCorrupted(f"snapshot session {sid} out of range")
            prev_sid = sid
            si = self._new_session_slot()
            s = &self.st.ses[si]
            s.id = sid
            s.ttl = ttl
            s.deadline = deadline
            map_put(&self.st.ses_map, sid, si)
            self._heap_push(deadline, sid)
            if v2:
                r.need(CRED)
                memcpy(self.st.ses[si].cred, p + r.pos, CRED)
                r.pos += CRED
            if nreq:
                s = &self.st.ses[si]
                s.reqs = <ReqEntry *>malloc(C_WINDOW * sizeof(ReqEntry))
                if s.reqs == NULL:
                    raise MemoryError()
                s.req_cap = C_WINDOW
                s.req_len = nreq
                for j in range(nreq):
                    e = &s.reqs[j]
                    e.req = r.u64()
                    e.op = r.u8()
                    e.status = r.u8()
                    e.detail = r.u8()
                    r.u8()
                    r.u32()
                    e.value = r.u64()
                    e.aux = r.u64()
                    if e.req == 0 or e.op < OP_ACQUIRE or e.op > OP_CANCEL:
                        raise LogCorrupted(f"snapshot request table of session {sid} is damaged")
                    if e.req > s.req_max:
                        s.req_max = e.req
        nkeys = r.u32()
        for i in range(nkeys):
            klen = r.u16()
            kind = r.u8()
            r.u8()
            permits = r.u32()
            nh = r.u32()
            nw = r.u32()
            r.need(klen)
            kp = p + r.pos
            r.pos += klen
            # nw > max - nh rather than a wrapped nh + nw < nh: debug builds' overflowcheck
            # raises OverflowError on the wrap, not LogCorrupted.
            if klen == 0 or klen > C_MAX_KEY or kind < K_LOCK or kind > K_ELECTION \
                    or (nh == 0 and nw == 0) or nw > 0xFFFFFFFF - nh:
                raise LogCorrupted("snapshot key record out of range")
            if (kind == K_SEM) != (permits != 0) or permits > C_MAX_PERMITS:
                raise LogCorrupted("snapshot semaphore size out of range")
            if prev_key != NULL:
                cmpv = memcmp(prev_key, kp, prev_klen if prev_klen < klen else klen)
                if cmpv > 0 or (cmpv == 0 and prev_klen >= klen):
                    raise LogCorrupted("snapshot keys out of order")
            prev_key = kp
            prev_klen = klen
            ki = self._new_key(kp, klen, cc_hash(kp, klen, HASH_SEED), kind, permits)
            last = 0
            for j in range(nh + nw):
                c = self._new_contender()
                cp = &self.st.con[c]
                cp.session = r.u64()
                cp.ticket = r.u64()
                cp.token = r.u64()
                cp.mode = r.u8()
                cp.detached = r.u8() if v2 else 0
                r.u16()
                vlen = r.u32()
                if v2:
                    cp.wait_deadline = r.u64()
                cp.key = ki
                if cp.detached > 1 or (cp.wait_deadline != 0 and j < nh and not cp.detached):
                    raise LogCorrupted("snapshot contender wait state out of range")
                if vlen > C_MAX_VALUE:
                    raise LogCorrupted("snapshot value too long")
                r.need(vlen)
                if vlen:
                    cp.value = <unsigned char *>malloc(vlen)
                    if cp.value == NULL:
                        raise MemoryError()
                    memcpy(cp.value, p + r.pos, vlen)
                    cp.vlen = vlen
                r.pos += vlen
                si = map_get(&self.st.ses_map, cp.session)
                if si == NIL:
                    raise LogCorrupted("snapshot contender of an unknown session")
                cp.sess = si
                if j < nh:
                    if cp.token < cp.ticket or cp.token > maxrev or (j > 0 and cp.token <= last):
                        raise LogCorrupted("snapshot holders out of order or out of range")
                    last = cp.token
                else:
                    if cp.token != 0 or cp.ticket > maxrev or (j > nh and cp.ticket <= last):
                        raise LogCorrupted("snapshot waiters out of order or out of range")
                    last = cp.ticket
                if cp.ticket == 0 or (kind == K_LOCK and mode_bad_lock(cp.mode)) \
                        or (kind == K_SEM and cp.mode != M_SEM) or (kind == K_ELECTION and cp.mode != M_ELECTION):
                    raise LogCorrupted("snapshot contender mode or ticket out of range")
                if map_put(&self.st.rev_map, cp.ticket, c):
                    raise LogCorrupted("snapshot reuses a revision")
                if cp.token != 0 and cp.token != cp.ticket and map_put(&self.st.rev_map, cp.token, c):
                    raise LogCorrupted("snapshot reuses a revision")
                self._link_key(c, j < nh)
                if cp.wait_deadline:
                    self._wheap_push(cp.wait_deadline, cp.ticket)
                total += 1
            if self._key_invalid(ki):
                raise LogCorrupted("snapshot key state violates the lock rules")
        if r.pos != r.n:
            raise LogCorrupted("snapshot has trailing bytes")
        # Each session's contenders, in ticket order.
        refs = <TicketRef *>malloc((total + 1) * sizeof(TicketRef))
        if refs == NULL:
            raise MemoryError()
        try:
            j = 0
            for c in range(self.st.con_cap):
                if self.st.con[c].used:
                    refs[j].ticket = self.st.con[c].ticket
                    refs[j].con = c
                    j += 1
            qsort(refs, j, sizeof(TicketRef), cmp_ticketref)
            for i in range(j):
                self._link_session(refs[i].con)
        finally:
            free(refs)
        for i in range(self.st.ses_cap):
            if self.st.ses[i].used and self._election_dupes(i):
                raise LogCorrupted("snapshot has a session contending twice in one election")
        return 0

    cdef bint _election_dupes(self, uint32_t si) noexcept:
        cdef uint32_t a = self.st.ses[si].c_head
        cdef uint32_t b
        while a != NIL:
            if self.st.keys[self.st.con[a].key].kind == K_ELECTION:
                b = self.st.con[a].snext
                while b != NIL:
                    if self.st.con[b].key == self.st.con[a].key:
                        return True
                    b = self.st.con[b].snext
            a = self.st.con[a].snext
        return False

    cdef bint _key_invalid(self, uint32_t ki) noexcept:
        """Holders compatible with each other, and the head waiter not grantable."""
        cdef KeySlot *ks = &self.st.keys[ki]
        cdef uint32_t c
        cdef uint8_t m
        if ks.kind == K_LOCK and ks.h_count > 0:
            m = self.st.con[ks.h_head].mode
            if m == M_EXCLUSIVE and ks.h_count != 1:
                return True
            c = ks.h_head
            while c != NIL:
                if self.st.con[c].mode != m:
                    return True
                c = self.st.con[c].knext
        elif ks.kind == K_SEM and ks.h_count > ks.permits:
            return True
        elif ks.kind == K_ELECTION and ks.h_count > 1:
            return True
        if ks.w_head != NIL and self._can_hold(ks, self.st.con[ks.w_head].mode):
            return True
        return False

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
            return self._next_deadline()

    cdef object _next_deadline(self):
        # Not read-only: stale heap entries are dropped on the way.
        cdef object best = None
        while self.st.heap_len and self._heap_top_stale():
            self._heap_pop()
        if self.st.heap_len:
            best = self.st.heap[0].deadline
        if self._wheap_live_top() != NIL and (best is None or self.st.wheap[0].deadline < best):
            best = self.st.wheap[0].deadline
        return best

    @property
    def waiter_count(self):
        """How many contenders wait (not granted)."""
        cdef uint32_t i
        cdef uint64_t n = 0
        for i in range(self.st.con_cap):
            if self.st.con[i].used and self.st.con[i].token == 0:
                n += 1
        return n

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

    cdef tuple _contender_tuple(self, uint32_t c):
        cdef Contender *cp = &self.st.con[c]
        return (cp.session, cp.ticket, cp.token, cp.mode,
                PyBytes_FromStringAndSize(<char *>cp.value, cp.vlen) if cp.vlen else b"")

    def session(self, uint64_t session_id, uint64_t after=0, uint32_t limit=0xFFFFFFFF):
        """(id, ttl, deadline, [(key, contender)...], contender count) of a live session, or
        None: at most ``limit`` contenders, in ticket order, from the first ticket above
        ``after`` (a page: replies stay bounded whatever a session holds)."""
        with cython.critical_section(self):
            return self._session(session_id, after, limit)

    cdef object _session(self, uint64_t session_id, uint64_t after, uint32_t limit):
        cdef uint32_t si = map_get(&self.st.ses_map, session_id) if session_id else NIL
        cdef uint32_t c
        cdef list items = []
        cdef KeySlot *ks
        if si == NIL:
            return None
        c = self.st.ses[si].c_head
        while c != NIL and self.st.con[c].ticket <= after:
            c = self.st.con[c].snext
        while c != NIL and <uint32_t>len(items) < limit:
            ks = &self.st.keys[self.st.con[c].key]
            items.append((PyBytes_FromStringAndSize(<char *>ks.key, ks.klen), self._contender_tuple(c)))
            c = self.st.con[c].snext
        return (self.st.ses[si].id, self.st.ses[si].ttl, self.st.ses[si].deadline, items,
                self.st.ses[si].c_count)

    def key_info(self, bytes key not None, uint32_t limit=0xFFFFFFFF):
        """(kind, permits, holders, waiters, holder count, waiter count) of a key in use,
        or None; at most ``limit`` holders and ``limit`` waiters."""
        with cython.critical_section(self):
            return self._key_info(key, limit)

    cdef object _key_info(self, bytes key, uint32_t limit):
        cdef uint32_t klen = <uint32_t>len(key)
        cdef const unsigned char *k = <const unsigned char *>PyBytes_AS_STRING(key)
        cdef uint32_t ki, c
        cdef list holders = [], waiters = []
        if klen == 0 or klen > C_MAX_KEY:
            return None
        ki = self._key_find(k, klen, cc_hash(k, klen, HASH_SEED))
        if ki == NIL:
            return None
        c = self.st.keys[ki].h_head
        while c != NIL and <uint32_t>len(holders) < limit:
            holders.append(self._contender_tuple(c))
            c = self.st.con[c].knext
        c = self.st.keys[ki].w_head
        while c != NIL and <uint32_t>len(waiters) < limit:
            waiters.append(self._contender_tuple(c))
            c = self.st.con[c].knext
        return (self.st.keys[ki].kind, self.st.keys[ki].permits, holders, waiters,
                self.st.keys[ki].h_count, self.st.keys[ki].w_count)

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
        """How many holds and waits a live session has (0 if none or no such session)."""
        cdef uint32_t si
        with cython.critical_section(self):
            si = map_get(&self.st.ses_map, session_id) if session_id else NIL
            return 0 if si == NIL else self.st.ses[si].c_count

    def keys(self, bytes prefix not None):
        """The keys in use that start with ``prefix``, sorted."""
        with cython.critical_section(self):
            return self._keys(prefix)

    cdef object _keys(self, bytes prefix):
        cdef list out = []
        cdef uint32_t i, plen = <uint32_t>len(prefix)
        cdef const unsigned char *pp = <const unsigned char *>PyBytes_AS_STRING(prefix)
        for i in range(self.st.key_cap):
            if self.st.keys[i].used and self.st.keys[i].klen >= plen \
                    and memcmp(self.st.keys[i].key, pp, plen) == 0:
                out.append(PyBytes_FromStringAndSize(<char *>self.st.keys[i].key, self.st.keys[i].klen))
        out.sort()
        return out

    def check_invariants(self):
        """Check the internal structures (AssertionError on violation). Debug builds run
        this after every batch; tests call it directly."""
        with cython.critical_section(self):
            self._check_invariants()

    cdef int _check_invariants(self) except -1:
        cdef uint32_t i, c, n, hs, ws, cons = 0, keys = 0
        cdef uint64_t last
        cdef KeySlot *ks
        cdef Session *s
        for i in range(self.st.key_cap):
            ks = &self.st.keys[i]
            if not ks.used:
                continue
            keys += 1
            assert ks.h_count + ks.w_count > 0, "empty key kept"
            assert ks.pending == 0, "key left pending"
            assert self._key_find(ks.key, ks.klen, ks.hash) == i, "key table out of sync"
            assert not self._key_invalid(i), "lock rules violated"
            hs = 0
            last = 0
            c = ks.h_head
            while c != NIL:
                assert self.st.con[c].used and self.st.con[c].key == i and self.st.con[c].token > last
                assert self.st.con[c].ticket <= self.st.con[c].token <= self.st.revision
                assert map_get(&self.st.rev_map, self.st.con[c].token) == c
                last = self.st.con[c].token
                hs += 1
                c = self.st.con[c].knext
            ws = 0
            last = 0
            c = ks.w_head
            while c != NIL:
                assert self.st.con[c].used and self.st.con[c].key == i and self.st.con[c].token == 0
                assert last < self.st.con[c].ticket <= self.st.revision
                last = self.st.con[c].ticket
                ws += 1
                c = self.st.con[c].knext
            assert hs == ks.h_count and ws == ks.w_count, "key list counts"
            cons += hs + ws
        assert keys == self.st.key_used == self.st.ktab.used, "key counts"
        assert cons == self.st.con_used, "contender count"
        n = 0
        for i in range(self.st.ses_cap):
            s = &self.st.ses[i]
            if not s.used:
                continue
            n += 1
            assert map_get(&self.st.ses_map, s.id) == i, "session map out of sync"
            assert 0 < s.id < self.st.next_session
            last = 0
            hs = 0
            c = s.c_head
            while c != NIL:
                assert self.st.con[c].used and self.st.con[c].sess == i and self.st.con[c].session == s.id
                assert self.st.con[c].ticket > last, "session list not in ticket order"
                assert map_get(&self.st.rev_map, self.st.con[c].ticket) == c
                last = self.st.con[c].ticket
                hs += 1
                c = self.st.con[c].snext
            assert hs == s.c_count
        assert n == self.st.ses_used == self.st.ses_map.used, "session counts"
        return 0

