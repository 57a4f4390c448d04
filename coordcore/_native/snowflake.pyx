# The Snowflake ID generator core. Users import coordcore.ids, which subclasses Generator.
#
# State is one 64-bit word, the last issued (tick << sequence_bits | sequence), claimed
# with a compare-and-swap: many threads share one generator without a lock (and without
# the GIL on free-threaded builds), and a claim of n IDs is one CAS. Claiming past the end
# of a tick's sequence naturally carries into the next tick; whether that is allowed
# ahead of the wall clock is the clock policy's business.
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport int64_t, uint64_t
from posix.time cimport clock_gettime, nanosleep, timespec, CLOCK_REALTIME

cimport cython
cimport numpy as cnp
import numpy as np

from coordcore.errors import BadArgument

cnp.import_array()

cdef extern from *:
    """
    #ifndef CC_DEBUG
    #define CC_DEBUG 0
    #endif
    #define cc_load(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    /* A write that changes nothing (the compiler may not drop it): faults a page in. */
    #define cc_touch(p) ((void)__atomic_fetch_or((p), 0, __ATOMIC_RELAXED))
    #define cc_store(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    #define cc_cas(p, expected, desired) \
        __atomic_compare_exchange_n((p), (expected), (desired), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
    #if defined(__x86_64__) || defined(__i386__)
    #define cc_cpu_relax() __builtin_ia32_pause()
    #elif defined(__aarch64__)
    #define cc_cpu_relax() __asm__ __volatile__("yield")
    #else
    #define cc_cpu_relax() ((void)0)
    #endif
    #include <pthread.h>
    /* Bumped in every forked child: a generator created under another generation knows
       it is running in a child of the process that configured it. A C-level handler
       (pthread_atfork, as uvloop does) also covers a fork() that bypasses os.fork() and
       its Python handlers (a C library, ctypes), after which a child could otherwise
       go on issuing its parent's IDs. */
    static long cc_fork_generation = 0;
    static void cc_on_fork_child(void) { cc_fork_generation++; }
    static int cc_install_fork_handler(void) { return pthread_atfork(NULL, NULL, cc_on_fork_child); }
    /* The state of a generator that must issue nothing more. Not INT64_MAX: in a layout
       using all 63 bits, that is the state after issuing the very last ID. */
    #define CC_SEALED INT64_MIN
    #define CC_LAST_STATE INT64_MAX
    /* Clock arithmetic saturates: a test clock's offset (or a tick far from now) must
       not overflow int64, which is undefined and turned waits into near-endless ones. */
    static inline int64_t cc_sat_add(int64_t a, int64_t b) {
        int64_t r;
        if (__builtin_add_overflow(a, b, &r)) return b > 0 ? INT64_MAX : INT64_MIN;
        return r;
    }
    static inline int64_t cc_sat_sub(int64_t a, int64_t b) {
        int64_t r;
        if (__builtin_sub_overflow(a, b, &r)) return b < 0 ? INT64_MAX : INT64_MIN;
        return r;
    }
    static inline int64_t cc_sat_mul(int64_t a, int64_t b) {
        int64_t r;
        if (__builtin_mul_overflow(a, b, &r)) return (a < 0) != (b < 0) ? INT64_MIN : INT64_MAX;
        return r;
    }
    """
    const bint CC_DEBUG
    int64_t cc_load(int64_t* p) nogil
    void cc_touch(cnp.int64_t* p) nogil
    void cc_store(int64_t* p, int64_t v) nogil
    bint cc_cas(int64_t* p, int64_t* expected, int64_t desired) nogil
    void cc_cpu_relax() nogil
    long cc_fork_generation
    int cc_install_fork_handler() noexcept
    const int64_t SEALED "CC_SEALED"
    const int64_t LAST_STATE "CC_LAST_STATE"
    int64_t cc_sat_add(int64_t a, int64_t b) noexcept nogil
    int64_t cc_sat_sub(int64_t a, int64_t b) noexcept nogil
    int64_t cc_sat_mul(int64_t a, int64_t b) noexcept nogil


if cc_install_fork_handler() != 0:
    raise ImportError("coordcore._native.snowflake: pthread_atfork failed")

# Clock policies.
cdef enum:
    POLICY_WAIT = 0
    POLICY_RAISE = 1
    POLICY_LOGICAL = 2

# Outcomes of one claim attempt.
cdef enum:
    CLAIM_OK = 0
    CLAIM_NEXT_TICK = 1     # sequence of the current tick exhausted; wait for the clock
    CLAIM_BACKWARDS = 2     # wall clock is behind the last issued tick
    CLAIM_RESERVE = 3       # the state file's high-water mark must move first
    CLAIM_TOO_FAR_AHEAD = 4 # logical clock would run further ahead than allowed
    CLAIM_EXHAUSTED = 5     # the layout's timestamp field is full
    CLAIM_FORKED = 6        # running in a forked child
    CLAIM_REVOKED = 7       # sealed: the worker-ID lease was lost, or the generator closed

POLICIES = {"wait": POLICY_WAIT, "raise": POLICY_RAISE, "logical": POLICY_LOGICAL}

# Longest uninterrupted sleep of a wait (signals are checked between slices).
cdef int64_t WAIT_SLICE_NS = 50000000


cdef inline int64_t wall_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline void sleep_ns(int64_t ns) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = ns // 1000000000
    ts.tv_nsec = ns % 1000000000
    nanosleep(&ts, NULL)


cdef class SkewClock:
    """The wall clock shifted by ``offset_ns``: a test clock that can jump backwards.

    Time keeps flowing at the real rate, so a ``wait`` policy really catches up. Hand it
    to a generator with ``clock_source=``; the real path pays one pointer test for it.
    """
    cdef public int64_t offset_ns

    def __init__(self, int64_t offset_ns=0):
        self.offset_ns = offset_ns

    def jump(self, double ms):
        """Move the clock by ``ms`` milliseconds (negative: backwards)."""
        cdef double ns = ms * 1e6
        if ns != ns:
            raise BadArgument("cannot jump a clock by NaN ms")
        # Clamped before the cast: a double outside int64 converts to garbage (UB).
        if ns >= 9.2e18:
            ns = 9.2e18
        elif ns <= -9.2e18:
            ns = -9.2e18
        self.offset_ns = cc_sat_add(self.offset_ns, <int64_t>ns)

    def now_ms(self):
        """This clock's time in Unix milliseconds."""
        return cc_sat_add(wall_ns(), self.offset_ns) // 1000000


cdef class Generator:
    """Native core of :class:`coordcore.ids.Snowflake` (configure once, call many)."""

    # Layout, precomputed into shifts and masks (any field order works).
    cdef int64_t _epoch_ns, _unit_ns, _max_tick
    cdef int _seq_bits, _ts_shift, _seq_shift
    cdef int64_t _seq_mask, _node_bits
    cdef int _policy
    cdef int64_t _max_backward_ns, _max_ahead_ticks
    # Hot state: last issued packed (tick << seq_bits | seq). Written by CAS only.
    cdef int64_t _state
    # IDs issued, waits for the next tick (sequence exhausted, or too far ahead) and
    # clock regressions met: plain adds under the GIL, read by the server's metrics.
    cdef int64_t _n_issued, _n_waits, _n_backwards
    # Highest tick made durable in the state file (INT64_MAX without a state file).
    cdef int64_t _hwm_tick
    cdef long _fork_generation
    cdef SkewClock _skew

    def __cinit__(self):
        self._state = SEALED  # unusable until _configure
        self._hwm_tick = 0x7FFFFFFFFFFFFFFF
        self._unit_ns = 1000000

    def _configure(self, *, int64_t epoch_ms, int64_t unit_ms, int timestamp_bits, int sequence_bits,
                   int timestamp_shift, int sequence_shift, int64_t node_bits, str clock,
                   double max_backward_ms, max_ahead_ms, SkewClock clock_source):
        """Set the layout and policy (validated by the Python facade)."""
        self._epoch_ns = epoch_ms * 1000000
        self._unit_ns = unit_ms * 1000000
        self._max_tick = (<int64_t>1 << timestamp_bits) - 1
        self._seq_bits = sequence_bits
        self._seq_mask = (<int64_t>1 << sequence_bits) - 1
        self._ts_shift = timestamp_shift
        self._seq_shift = sequence_shift
        self._node_bits = node_bits
        self._policy = POLICIES[clock]
        self._max_backward_ns = <int64_t>(max_backward_ms * 1e6)
        cdef double ahead_ns = -1.0 if max_ahead_ms is None else max_ahead_ms * 1e6
        # None, inf or beyond int64 nanoseconds: no bound (the facade refuses NaN).
        self._max_ahead_ticks = (0x7FFFFFFFFFFFFFFF if not (0.0 <= ahead_ns < 9.2e18)
                                 else <int64_t>ahead_ns // self._unit_ns)
        self._skew = clock_source
        self._fork_generation = cc_fork_generation
        self._state = -1

    # -- state, for the facade (restarts, fork, leases) --------------------------------

    def _set_node_bits(self, int64_t node_bits):
        self._node_bits = node_bits
        self._fork_generation = cc_fork_generation

    def _resume_after_tick(self, int64_t tick):
        """Never issue an ID at or before ``tick`` (restored from a state file)."""
        cdef int64_t floor, cur
        if tick < 0:
            return
        if tick > self._max_tick:
            tick = self._max_tick
        # Not ((tick + 1) << seq_bits) - 1, which overflows for the last tick of a layout
        # using all 63 bits.
        floor = (tick << self._seq_bits) | self._seq_mask
        cur = cc_load(&self._state)
        while cur != SEALED and cur < floor and not cc_cas(&self._state, &cur, floor):
            pass

    @property
    def _forked(self):
        """Whether this generator was configured in another process (a forked parent)
        and has not been given a new worker ID here."""
        return self._fork_generation != cc_fork_generation

    def _set_hwm_tick(self, int64_t tick):
        cc_store(&self._hwm_tick, tick)

    def _seal(self):
        """Stop issuance for good (lease lost, generator closed): swap the state for SEALED
        atomically, so no claim in flight can land after it. Returns the last issued tick
        (-1 if none, or if already sealed)."""
        cdef int64_t last = cc_load(&self._state)
        while not cc_cas(&self._state, &last, SEALED):
            pass
        return -1 if last < 0 or last == SEALED else last >> self._seq_bits

    @property
    def _sealed(self):
        return cc_load(&self._state) == SEALED

    def _now_tick(self):
        """The clock's current tick (-1 before the epoch)."""
        return self._clock_tick()

    # -- the hot path ------------------------------------------------------------------

    cdef inline int64_t _clock_ns(self) noexcept nogil:
        """Nanoseconds since the layout's epoch on this generator's clock."""
        cdef int64_t ns = wall_ns() - self._epoch_ns
        if self._skew is not None:
            ns = cc_sat_add(ns, self._skew.offset_ns)
        return ns

    cdef inline int64_t _clock_tick(self) noexcept nogil:
        cdef int64_t ns = self._clock_ns()
        if ns < 0:
            return -1
        if self._unit_ns == 1000000:  # constant divisor: the compiler turns it into a multiply
            return ns // 1000000
        return ns // self._unit_ns

    cdef inline int64_t _tick_start_ns(self, int64_t tick) noexcept nogil:
        return cc_sat_mul(tick, self._unit_ns)

    cdef inline int _claim(self, int64_t want, int64_t* first, int64_t* count,
                           int64_t* info) noexcept nogil:
        """Claim up to ``want`` consecutive packed values within one tick. On success
        ``first``/``count`` hold the claim; otherwise ``info[0]`` is the tick to wait for (or
        to reserve) and ``info[1]`` the drift in ticks.

        The state is loaded *before* the clock is read: every claim made so far was made at
        a clock reading no later than ours, so a clock behind the last issued tick really
        went backwards (under wait/raise no claim runs ahead of its own clock reading)."""
        cdef int64_t last, last_tick, now, start, start_tick, avail, end
        if self._fork_generation != cc_fork_generation:
            return CLAIM_FORKED
        last = cc_load(&self._state)
        while True:
            if last == SEALED:
                return CLAIM_REVOKED
            now = self._clock_tick()
            last_tick = last >> self._seq_bits if last >= 0 else -1
            if now > last_tick:
                if now > self._max_tick:
                    # Checked before the shift: past the field's end, now << seq_bits can
                    # overflow into the sign bit (a layout using all 63 bits) and issue
                    # negative IDs, the same one again and again.
                    return CLAIM_EXHAUSTED
                start = now << self._seq_bits
            else:
                if last == LAST_STATE:
                    return CLAIM_EXHAUSTED  # the largest ID there is was issued: no last + 1
                start = last + 1
                if now < last_tick and self._policy != POLICY_LOGICAL:
                    info[0] = last_tick
                    info[1] = last_tick - now
                    return CLAIM_BACKWARDS
                if now < 0 and self._policy != POLICY_LOGICAL:
                    # The clock is before the layout's epoch and nothing was issued yet:
                    # that is a clock behind tick 0, bounded like any regression (it used
                    # to wait for the epoch, however far away, without a bound).
                    info[0] = 0
                    info[1] = 1 + cc_sat_sub(0, self._clock_ns()) // self._unit_ns
                    return CLAIM_BACKWARDS
                if (start & self._seq_mask) == 0 and self._policy != POLICY_LOGICAL:
                    info[0] = last_tick + 1
                    return CLAIM_NEXT_TICK
            start_tick = start >> self._seq_bits
            if start_tick > self._max_tick:
                return CLAIM_EXHAUSTED
            if start_tick > now and start_tick - now > self._max_ahead_ticks:
                info[0] = start_tick - self._max_ahead_ticks
                return CLAIM_TOO_FAR_AHEAD
            if start_tick > self._hwm_tick:
                info[0] = start_tick
                return CLAIM_RESERVE
            avail = self._seq_mask + 1 - (start & self._seq_mask)
            if want < avail:
                avail = want
            end = start + (avail - 1)  # not start + avail - 1: that passes 2**63 at the very last ID
            if cc_cas(&self._state, &last, end):
                if CC_DEBUG:
                    if not (end >= start and start > last):
                        with gil:
                            raise AssertionError("snowflake: sequence did not rise")
                first[0] = start
                count[0] = avail
                return CLAIM_OK
            # Lost the race: `last` now holds the winner's state; read the clock again.

    cdef inline int64_t _compose(self, int64_t packed) noexcept nogil:
        return (((packed >> self._seq_bits) << self._ts_shift)
                | ((packed & self._seq_mask) << self._seq_shift)
                | self._node_bits)

    cdef int _claim_blocking(self, int64_t want, int64_t* first, int64_t* count) except -1:
        """Claim, waiting, reserving or raising as the policy says. Holds the GIL on entry
        and exit; releases it while it waits."""
        cdef int64_t info[2]
        cdef int64_t backwards_since = -1
        cdef int rc
        while True:
            rc = self._claim(want, first, count, info)
            if rc == CLAIM_OK:
                return 0
            if rc == CLAIM_NEXT_TICK or rc == CLAIM_TOO_FAR_AHEAD:
                self._n_waits += 1
                self._wait_for_tick(info[0])
            elif rc == CLAIM_BACKWARDS:
                if backwards_since < 0:
                    self._n_backwards += 1
                    backwards_since = wall_ns()
                if (self._policy == POLICY_RAISE
                        or cc_sat_mul(info[1], self._unit_ns) > self._max_backward_ns
                        or wall_ns() - backwards_since > self._max_backward_ns):
                    self._on_backwards(<double>info[1] * <double>self._unit_ns / 1e6)
                self._wait_for_tick(info[0])
            elif rc == CLAIM_RESERVE:
                self._reserve(info[0])
            elif rc == CLAIM_FORKED:
                self._on_fork()
            elif rc == CLAIM_REVOKED:
                self._on_revoked()
            else:
                self._on_exhausted()

    cdef int _wait_for_tick(self, int64_t tick) except -1:
        """Until the clock reaches ``tick``: sleep through most of it, spin the last
        stretch (a plain sleep overshoots by the timer slack, costing IDs at the ceiling).
        A long wait (a clock regression, up to ``max_backward_ms``) sleeps in slices and
        checks for signals between them, so Ctrl-C interrupts it."""
        cdef int64_t left_ns
        while True:
            with nogil:
                left_ns = cc_sat_sub(self._tick_start_ns(tick), self._clock_ns())
                if left_ns > WAIT_SLICE_NS:
                    sleep_ns(WAIT_SLICE_NS)
                else:
                    while left_ns > 0:
                        if left_ns > 200000:
                            sleep_ns(left_ns - 100000)
                        else:
                            cc_cpu_relax()
                        left_ns = cc_sat_sub(self._tick_start_ns(tick), self._clock_ns())
            PyErr_CheckSignals()
            if left_ns <= 0:
                return 0

    # Rare paths, implemented by the facade in Python.
    def _on_backwards(self, drift_ms):
        raise NotImplementedError

    def _reserve(self, int64_t tick):
        raise NotImplementedError

    def _on_fork(self):
        raise NotImplementedError

    def _on_revoked(self):
        raise NotImplementedError

    def _on_exhausted(self):
        raise NotImplementedError

    # -- public calls --------------------------------------------------------------------

    def next_id(self):
        """The next ID, a Python int."""
        cdef int64_t first, count
        cdef int64_t info[2]
        # Fast path inline: one load, one clock read, one CAS.
        if self._claim(1, &first, &count, info) != CLAIM_OK:
            self._claim_blocking(1, &first, &count)
        self._n_issued += 1
        return self._compose(first)

    @property
    def _counters(self):
        """``(issued, waits, regressions)``: IDs issued, waits for the next tick (the
        sequence ran out, or the logical clock ran too far ahead) and clock regressions."""
        return self._n_issued, self._n_waits, self._n_backwards

    def next_run(self, int64_t max_count):
        """Claim up to ``max_count`` IDs that are consecutive integers, all from one tick:
        returns ``(first_id, count)``, count >= 1. Needs the sequence in the lowest bits."""
        cdef int64_t first, count
        if max_count < 1:
            raise ValueError("max_count must be >= 1")
        if self._seq_shift != 0:
            raise ValueError("next_run needs a layout whose sequence field is the lowest bits")
        self._claim_blocking(max_count, &first, &count)
        self._n_issued += count
        return self._compose(first), count

    @cython.boundscheck(False)
    def _fill(self, cnp.int64_t[::1] out):
        """Fill ``out`` with new IDs, a tick's run at a time."""
        cdef Py_ssize_t n = out.shape[0], i = 0, j
        cdef int64_t first, count, base
        cdef int64_t info[2]
        cdef Py_ssize_t ahead
        while i < n:
            if self._claim(n - i, &first, &count, info) != CLAIM_OK:
                self._claim_blocking(n - i, &first, &count)
            self._n_issued += count
            with nogil:
                if self._seq_shift == 0:
                    # Sequence in the low bits: a run is consecutive integers (vectorises).
                    base = self._compose(first)
                    for j in range(count):
                        out[i + j] = base + j
                else:
                    for j in range(count):
                        out[i + j] = self._compose(first + j)
                # Touch the pages the next run will fill (one write per 4 KiB) now, while
                # the next claim may wait for the clock: the page faults of a freshly
                # allocated array (numpy asks for 2 MiB huge pages, zeroed and perhaps
                # compacted on first touch) then fall in that idle time instead of
                # delaying the next tick's claim, which cost 2-4% of the 4096/ms ceiling.
                ahead = i + count + self._seq_mask + 1
                if ahead > n:
                    ahead = n
                for j in range(i + count, ahead, 512):
                    cc_touch(&out[j])
            i += count


@cython.boundscheck(False)
def decode_columns(const cnp.int64_t[::1] ids, int ts_shift, int dc_shift, int64_t dc_mask, int w_shift,
                   int64_t w_mask, int seq_shift, int64_t seq_mask, int64_t epoch_ms, int64_t unit_ms,
                   cnp.int64_t[::1] ts_out, cnp.int64_t[::1] dc_out, cnp.int64_t[::1] w_out,
                   cnp.int64_t[::1] seq_out):
    """Split each ID into its fields, in one pass. Returns the index of the first ID that
    cannot be decoded (negative, or a timestamp past int64 ms), or -1 if all can."""
    cdef Py_ssize_t n = ids.shape[0], i, bad = -1
    cdef int64_t v, tick
    cdef int64_t max_tick = (0x7FFFFFFFFFFFFFFF - epoch_ms) // unit_ms
    if ts_out.shape[0] < n or dc_out.shape[0] < n or w_out.shape[0] < n or seq_out.shape[0] < n:
        raise ValueError("output columns are shorter than ids")
    with nogil:
        for i in range(n):
            v = ids[i]
            tick = v >> ts_shift
            if v < 0 or tick > max_tick:
                bad = i
                break
            ts_out[i] = epoch_ms + tick * unit_ms
            dc_out[i] = (v >> dc_shift) & dc_mask
            w_out[i] = (v >> w_shift) & w_mask
            seq_out[i] = (v >> seq_shift) & seq_mask
    return bad
