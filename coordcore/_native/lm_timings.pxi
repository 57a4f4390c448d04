# How long contenders wait and hold, by mode, counted natively as the batches apply
# and read when metrics are scraped: a few integer operations per grant and per
# release, no Python call. Observations, not state: they live in the LockMachine object
# (not in State), so snapshots, replay and restore are unchanged; a restore keeps them
# (they only grow). Durations are batch-time differences, in ms.
# Included by lockmachine.pyx: functions of the LockMachine it defines.

cdef extern from *:
    int __builtin_clzll(unsigned long long x) nogil

cdef inline uint32_t _hist_bucket(uint64_t d) noexcept nogil:
    """The first bucket whose bound (2**i ms) is >= d; HIST_BOUNDS above the last."""
    cdef uint32_t i
    if d <= 1:
        return 0
    i = <uint32_t>(64 - __builtin_clzll(d - 1))  # bit length of d - 1: 2**i >= d
    return i if i < HIST_BOUNDS else HIST_BOUNDS

cdef inline void _hist_add(Histogram *h, uint64_t start, uint64_t end) noexcept nogil:
    """One observation of end - start. An unknown start (C_NO_TIME: restored from a
    snapshot, which has no such times) is skipped; an end before the start (batch time
    never goes back within one machine, but a guard costs nothing) counts as 0."""
    cdef uint64_t d
    if start == C_NO_TIME:
        return
    d = end - start if end > start else 0
    h.counts[_hist_bucket(d)] += 1
    h.sum_ms = h.sum_ms + d if d <= 0xFFFFFFFFFFFFFFFFULL - h.sum_ms else 0xFFFFFFFFFFFFFFFFULL

cdef inline void _timed_grant(LockMachine self, Contender *cp) noexcept:
    """A grant: one wait observation (since its arrival); its hold starts now."""
    _hist_add(&self.waits[cp.mode - 1], cp.since, self.st.time)
    cp.since = self.st.time

cdef inline void _timed_end(LockMachine self, Contender *cp) noexcept:
    """A holder's end (released, closed, expired, withdrawn): one hold observation."""
    _hist_add(&self.holds[cp.mode - 1], cp.since, self.st.time)

_HIST_KINDS = ("exclusive", "shared", "semaphore", "election", "pool")

cdef object _timings(LockMachine self):
    cdef int k, i
    cdef list waits = [], holds = []
    bounds = [1 << i for i in range(HIST_BOUNDS)]
    for k in range(HIST_KINDS):
        waits.append(([self.waits[k].counts[i] for i in range(HIST_BOUNDS + 1)], self.waits[k].sum_ms))
        holds.append(([self.holds[k].counts[i] for i in range(HIST_BOUNDS + 1)], self.holds[k].sum_ms))
    return bounds, dict(zip(_HIST_KINDS, waits)), dict(zip(_HIST_KINDS, holds))
