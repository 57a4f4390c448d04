# The UUIDv7 (RFC 9562) and ULID generator core. Users import coordcore.uuids, which
# subclasses Generator.
#
# Both formats are a 48-bit Unix-ms timestamp on top of a counter, so one core serves
# both; `_v7` only changes how the counter and the random bits are laid out:
#
#   UUIDv7: unix_ts_ms:48 | ver=7:4 | counter[41:30]:12 | var=0b10:2 | counter[29:0]:30 | random:32
#           RFC 9562 section 6.2, Method 1 (fixed-length dedicated counter), with the
#           longest counter it allows (42 bits: rand_a and the top 30 bits of rand_b).
#   ULID:   unix_ts_ms:48 | counter:80 (the ULID spec's "randomness", incremented).
#
# The counter is seeded from the CSPRNG at each new millisecond (UUIDv7: its top bit
# zero, RFC 9562's rollover guard, leaving >= 2**41 IDs of headroom per ms) and goes up
# by one per ID within the ms. When the clock stands still or goes back, the last
# timestamp is kept and the counter keeps rising; when the counter overflows, the
# timestamp moves one ms ahead of the clock and the counter is re-seeded. So IDs never
# repeat and never decrease, whatever the clock does.
#
# The state (timestamp + up to 80 counter bits) does not fit one CAS word, so it sits
# behind a spinlock held for a few nanoseconds (one call) or for one batch. Random bytes
# come from getrandom(2) into a per-generator buffer, refilled in bulk.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.object cimport PyObject_GenericSetAttr
from libc.errno cimport errno
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME

import uuid as _uuid

from coordcore.errors import Unavailable

cdef extern from *:
    """
    #include <errno.h>
    #include <sched.h>
    #include <string.h>
    #include <sys/random.h>
    #include <pthread.h>
    #if defined(__x86_64__) || defined(__i386__)
    #define cc_u_relax() __builtin_ia32_pause()
    #elif defined(__aarch64__)
    #define cc_u_relax() __asm__ __volatile__("yield")
    #else
    #define cc_u_relax() ((void)0)
    #endif
    /* Bumped in every forked child (pthread_atfork also covers a fork() made from C,
       bypassing os.fork()): a child must not go on with its parent's random buffer. */
    static int64_t cc_u_fork_generation = 0;
    static void cc_u_on_fork_child(void) { cc_u_fork_generation++; }
    static int cc_u_install_fork_handler(void) { return pthread_atfork(NULL, NULL, cc_u_on_fork_child); }

    /* The lock word is 0 when free, else the fork generation of its holder plus one. A
       holder of another generation was a thread of a parent process, which does not
       exist in this one: its lock is taken over (by CAS, so by one thread only). */
    static inline void cc_u_lock(int64_t *lock) {
        const int64_t me = cc_u_fork_generation + 1;
        unsigned spins = 0;
        for (;;) {
            int64_t seen = 0;
            if (__atomic_compare_exchange_n(lock, &seen, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                return;
            if (seen != me
                    && __atomic_compare_exchange_n(lock, &seen, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                return;
            if (++spins % 64 != 0)
                cc_u_relax();
            else
                sched_yield();  /* a batch holds the lock for a while: let its holder run */
        }
    }
    static inline void cc_u_unlock(int64_t *lock) { __atomic_store_n(lock, 0, __ATOMIC_RELEASE); }

    /* 0, or -1 with errno set. getrandom(2) returns short counts for large requests
       interrupted by a signal, and EINTR before any byte. */
    static int cc_u_getrandom(uint8_t *buf, size_t n) {
        while (n > 0) {
            ssize_t got = getrandom(buf, n, 0);
            if (got < 0) {
                if (errno == EINTR) continue;
                return -1;
            }
            buf += got;
            n -= (size_t)got;
        }
        return 0;
    }

    static inline void cc_u_st64be(uint8_t *p, uint64_t v) {
    #if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        memcpy(p, &v, 8);
    }
    static inline uint64_t cc_u_ld64be(const uint8_t *p) {
        uint64_t v; memcpy(&v, p, 8);
    #if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        return v;
    }
    static inline uint64_t cc_u_ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
    static inline uint32_t cc_u_ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

    /* A Python int from 16 big-endian bytes. */
    static PyObject *cc_u_long_from_be16(const uint8_t *p) {
    #if PY_VERSION_HEX >= 0x030D0000
        return PyLong_FromUnsignedNativeBytes(p, 16, Py_ASNATIVEBYTES_BIG_ENDIAN);
    #else
        return _PyLong_FromByteArray(p, 16, 0, 0);
    #endif
    }
    /* A bare instance of a class without its __init__ (uuid.UUID's validates text and
       keyword arguments: most of its cost). */
    static PyObject *cc_u_alloc(PyObject *type) {
        PyTypeObject *t = (PyTypeObject *)type;
        return t->tp_alloc(t, 0);
    }

    static const char cc_u_hex[] = "0123456789abcdef";
    static const char cc_u_crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

    /* 8-4-4-4-12 lowercase hex, as str(uuid.UUID) writes it. */
    static void cc_u_uuid_text(const uint8_t *b, char *out) {
        int o = 0;
        for (int i = 0; i < 16; i++) {
            if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
            out[o++] = cc_u_hex[b[i] >> 4];
            out[o++] = cc_u_hex[b[i] & 15];
        }
    }
    /* 26 Crockford base32 characters: 128 bits padded to 130 on the left, 5 bits each. */
    static void cc_u_ulid_text(uint64_t hi, uint64_t lo, char *out) {
        for (int i = 25; i >= 0; i--) {
            out[i] = cc_u_crockford[lo & 31];
            lo = (lo >> 5) | (hi << 59);
            hi >>= 5;
        }
    }
    """
    int64_t cc_u_fork_generation
    int cc_u_install_fork_handler() noexcept
    void cc_u_lock(int64_t* lock) noexcept nogil
    void cc_u_unlock(int64_t* lock) noexcept nogil
    int cc_u_getrandom(uint8_t* buf, size_t n) noexcept nogil
    void cc_u_st64be(uint8_t* p, uint64_t v) noexcept nogil
    uint64_t cc_u_ld64(const uint8_t* p) noexcept nogil
    uint64_t cc_u_ld64be(const uint8_t* p) noexcept nogil
    uint32_t cc_u_ld32(const uint8_t* p) noexcept nogil
    object cc_u_long_from_be16(const uint8_t* p)
    object cc_u_alloc(object type)
    void cc_u_uuid_text(const uint8_t* b, char* out) noexcept nogil
    void cc_u_ulid_text(uint64_t hi, uint64_t lo, char* out) noexcept nogil

cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void* PyUnicode_DATA(object o)

if cc_u_install_fork_handler() != 0:
    raise ImportError("coordcore._native.uuidgen: pthread_atfork failed")

cdef enum:
    RND_SIZE = 16384    # random bytes fetched per getrandom(2) call
    RUN_MAX = 2048      # IDs per run of a batch: the clock is read again after each run
cdef uint64_t MAX_MS = (<uint64_t>1 << 48) - 1
cdef uint64_t V7_COUNTER_MAX = (<uint64_t>1 << 42) - 1
cdef uint64_t V7_SEED_MASK = (<uint64_t>1 << 41) - 1   # top counter bit zero: the rollover guard

# Outcomes of a claim.
cdef enum:
    CLAIM_OK = 0
    CLAIM_FULL = 1      # the 48-bit timestamp field is exhausted (year 10889)
    CLAIM_RANDOM = 2    # getrandom(2) failed (errno in _errno)

cdef object _UUID = _uuid.UUID
cdef object _SAFE_UNKNOWN = _uuid.SafeUUID.unknown


cdef inline int64_t wall_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef class Generator:
    """Native core of :class:`coordcore.uuids.UUIDv7` and :class:`coordcore.uuids.ULID`."""

    cdef int64_t _lock
    cdef int64_t _generation
    cdef bint _v7
    # Last issued: timestamp and counter (lo: its low 64 bits, hi: the bits above, ULID only).
    cdef uint64_t _ms, _hi, _lo
    cdef uint64_t _hi_max, _lo_max
    cdef int _errno
    cdef object _skew   # a test clock (coordcore.ids.SkewClock) or None
    cdef size_t _rpos
    cdef uint8_t _rnd[RND_SIZE]

    def __cinit__(self):
        self._generation = cc_u_fork_generation
        self._rpos = RND_SIZE  # empty: filled on first use
        self._set_kind(True)

    cdef void _set_kind(self, bint v7) noexcept:
        self._v7 = v7
        self._hi_max = 0 if v7 else 0xFFFF
        self._lo_max = V7_COUNTER_MAX if v7 else 0xFFFFFFFFFFFFFFFF

    def _configure(self, *, bint v7, clock_source):
        """Pick the format; ``clock_source`` is a SkewClock for tests, or None."""
        self._set_kind(v7)
        self._skew = clock_source

    # -- for tests -----------------------------------------------------------------------

    def _get_state(self):
        """(timestamp ms, counter) of the last issued ID."""
        cdef uint64_t ms, hi, lo
        cc_u_lock(&self._lock)
        ms, hi, lo = self._ms, self._hi, self._lo
        cc_u_unlock(&self._lock)
        return ms, (<object>hi << 64) | lo

    def _set_state(self, uint64_t ms, counter):
        """Pretend the last issued ID had this timestamp and counter."""
        cdef uint64_t hi = counter >> 64, lo = counter & 0xFFFFFFFFFFFFFFFF
        if ms > MAX_MS or hi > self._hi_max or (hi == self._hi_max and lo > self._lo_max):
            raise ValueError("state out of range")
        cc_u_lock(&self._lock)
        self._ms, self._hi, self._lo = ms, hi, lo
        cc_u_unlock(&self._lock)

    # -- under the lock ------------------------------------------------------------------

    cdef inline const uint8_t* _random(self, size_t n) noexcept nogil:
        """``n`` (<= RND_SIZE) bytes from the buffer, refilled when short; NULL on failure."""
        cdef const uint8_t* p
        if self._rpos + n > RND_SIZE:
            if cc_u_getrandom(self._rnd, RND_SIZE) != 0:
                self._errno = errno
                return NULL
            self._rpos = 0
        p = self._rnd + self._rpos
        self._rpos += n
        return p

    cdef inline int _seed(self) noexcept nogil:
        cdef const uint8_t* p = self._random(10)
        if p == NULL:
            return CLAIM_RANDOM
        if self._v7:
            self._hi = 0
            self._lo = cc_u_ld64(p) & V7_SEED_MASK
        else:
            self._hi = (<uint64_t>p[8] << 8 | p[9])
            self._lo = cc_u_ld64(p)
        return CLAIM_OK

    cdef inline int _bump(self, uint64_t k) noexcept nogil:
        """Counter += k; on overflow the timestamp moves a ms ahead and the counter is re-seeded."""
        cdef uint64_t lo = self._lo + k
        cdef uint64_t hi = self._hi + (1 if lo < self._lo else 0)
        if hi > self._hi_max or (hi == self._hi_max and lo > self._lo_max):
            if self._ms >= MAX_MS:
                return CLAIM_FULL
            self._ms += 1
            return self._seed()
        self._hi = hi
        self._lo = lo
        return CLAIM_OK

    cdef int _claim(self, int64_t now, uint64_t want, uint64_t* ms, uint64_t* hi, uint64_t* lo,
                    uint64_t* count) noexcept nogil:
        """Claim a run of up to ``want`` (>= 1) IDs with one timestamp and consecutive
        counters, starting at ``ms``/``hi``:``lo``. Holds the lock."""
        cdef int rc
        cdef uint64_t room, extra
        cdef const uint8_t* p
        if self._generation != cc_u_fork_generation:
            # A forked child: the buffer's bytes are also the parent's, so drop them, and
            # leap the counter by a random amount so that the child's IDs (still above
            # everything issued before the fork) do not walk the parent's counter values.
            self._generation = cc_u_fork_generation
            self._rpos = RND_SIZE
            p = self._random(4)
            if p == NULL:
                return CLAIM_RANDOM
            rc = self._bump(1 + <uint64_t>cc_u_ld32(p))
            if rc != CLAIM_OK:
                return rc
        if now > <int64_t>self._ms:
            if <uint64_t>now > MAX_MS:
                return CLAIM_FULL
            self._ms = <uint64_t>now
            rc = self._seed()
        else:
            rc = self._bump(1)
        if rc != CLAIM_OK:
            return rc
        ms[0], hi[0], lo[0] = self._ms, self._hi, self._lo
        room = self._lo_max - self._lo if self._hi == self._hi_max else 0xFFFFFFFFFFFFFFFF
        extra = want - 1
        if extra > room:
            extra = room
        if extra:
            self._bump(extra)  # cannot overflow: extra <= room
        count[0] = extra + 1
        return CLAIM_OK

    # -- composing -----------------------------------------------------------------------

    cdef inline int64_t _now(self) except? -1:
        if self._skew is not None:
            return self._skew.now_ms()
        return wall_ms()

    cdef inline void _store(self, uint8_t* p, uint64_t ms, uint64_t hi, uint64_t lo,
                            uint32_t rnd) noexcept nogil:
        if self._v7:
            cc_u_st64be(p, (ms << 16) | 0x7000 | (lo >> 30))
            cc_u_st64be(p + 8, (<uint64_t>1 << 63) | ((lo & 0x3FFFFFFF) << 32) | rnd)
        else:
            cc_u_st64be(p, (ms << 16) | hi)
            cc_u_st64be(p + 8, lo)

    cdef int _raise(self, int rc) except -1:
        if rc == CLAIM_FULL:
            raise Unavailable("the 48-bit millisecond timestamp field is exhausted")
        raise OSError(self._errno, "getrandom(2) failed")

    cdef int _fill16(self, uint8_t* out, Py_ssize_t n) except -1:
        """Write ``n`` new IDs, 16 bytes each, into ``out``."""
        cdef uint64_t ms, hi, lo, count, j, l
        cdef const uint8_t* rnd
        cdef int rc = CLAIM_OK
        cdef Py_ssize_t done = 0
        cdef int64_t now
        while done < n:
            now = self._now()
            cc_u_lock(&self._lock)
            rc = self._claim(now, min(<uint64_t>(n - done), <uint64_t>RUN_MAX), &ms, &hi, &lo, &count)
            if rc == CLAIM_OK and self._v7:
                rnd = self._random(4 * count)
                if rnd == NULL:
                    rc = CLAIM_RANDOM
            if rc == CLAIM_OK:
                if self._v7:
                    for j in range(count):
                        self._store(out + 16 * (done + <Py_ssize_t>j), ms, 0, lo + j, cc_u_ld32(rnd + 4 * j))
                else:
                    for j in range(count):
                        l = lo + j
                        self._store(out + 16 * (done + <Py_ssize_t>j), ms, hi + (1 if l < lo else 0), l, 0)
            cc_u_unlock(&self._lock)
            if rc != CLAIM_OK:
                self._raise(rc)
            done += <Py_ssize_t>count
        return 0

    cdef inline int _one(self, uint8_t* out) except -1:
        cdef uint64_t ms, hi, lo, count
        cdef uint32_t r = 0
        cdef const uint8_t* rnd
        cdef int64_t now = self._now()
        cc_u_lock(&self._lock)
        cdef int rc = self._claim(now, 1, &ms, &hi, &lo, &count)
        if rc == CLAIM_OK and self._v7:
            rnd = self._random(4)
            if rnd == NULL:
                rc = CLAIM_RANDOM
            else:
                r = cc_u_ld32(rnd)
        cc_u_unlock(&self._lock)
        if rc != CLAIM_OK:
            self._raise(rc)
        self._store(out, ms, hi, lo, r)
        return 0

    cdef inline object _text(self, const uint8_t* b):
        cdef object s
        if self._v7:
            s = PyUnicode_New(36, 127)
            cc_u_uuid_text(b, <char*>PyUnicode_DATA(s))
        else:
            s = PyUnicode_New(26, 127)
            cc_u_ulid_text(cc_u_ld64be(b), cc_u_ld64be(b + 8), <char*>PyUnicode_DATA(s))
        return s

    # -- public calls --------------------------------------------------------------------

    def next_bytes(self):
        """The next ID as 16 bytes (big-endian: the binary form of both formats)."""
        cdef object b = PyBytes_FromStringAndSize(NULL, 16)
        self._one(<uint8_t*>PyBytes_AS_STRING(b))
        return b

    def next_int(self):
        """The next ID as a 128-bit int."""
        cdef uint8_t b[16]
        self._one(b)
        return cc_u_long_from_be16(b)

    def next_uuid(self):
        """The next ID as a :class:`uuid.UUID`."""
        cdef uint8_t b[16]
        self._one(b)
        u = cc_u_alloc(_UUID)
        # object.__setattr__, as uuid itself does: UUID.__setattr__ refuses every write.
        PyObject_GenericSetAttr(u, "int", cc_u_long_from_be16(b))
        PyObject_GenericSetAttr(u, "is_safe", _SAFE_UNKNOWN)
        return u

    def next_str(self):
        """The next ID as text (UUIDv7: 36-char lowercase hex; ULID: 26-char Crockford base32)."""
        cdef uint8_t b[16]
        self._one(b)
        return self._text(b)

    def _fill(self, uint8_t[::1] out):
        """Fill ``out`` (16 bytes per ID) with new IDs, in rising order."""
        if out.shape[0] % 16:
            raise ValueError("out must hold a whole number of 16-byte IDs")
        if out.shape[0]:
            self._fill16(&out[0], out.shape[0] // 16)

    def next_strs(self, Py_ssize_t n):
        """``n`` new IDs as a list of text forms, in rising order."""
        cdef uint8_t buf[16 * 256]
        cdef Py_ssize_t done = 0, k, i
        if n < 0:
            raise ValueError("n must be >= 0")
        result = [None] * n
        while done < n:
            k = min(n - done, 256)
            self._fill16(buf, k)
            for i in range(k):
                result[done + i] = self._text(buf + 16 * i)
            done += k
        return result

