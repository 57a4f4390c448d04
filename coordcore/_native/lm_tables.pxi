# Small containers in C: growable buffers, u64 -> u32 hash maps, deadline heaps,
# comparators. Included by lockmachine.pyx.

cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    return cc_fmix64(x ^ 0x9E3779B97F4A7C15ULL)


cdef int buf_reserve(Buf *b, size_t extra) except -1:
    cdef size_t need = b.len + extra
    cdef size_t cap
    cdef unsigned char *p
    if need <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 4096
    while cap < need:
        cap *= 2
    p = <unsigned char *>cc_realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef int map_init(U64Map *m, uint32_t cap) except -1:
    m.keys = <uint64_t *>cc_malloc(cap * sizeof(uint64_t))
    m.vals = <uint32_t *>cc_malloc(cap * sizeof(uint32_t))
    if m.keys == NULL or m.vals == NULL:
        raise MemoryError()
    memset(m.keys, 0, cap * sizeof(uint64_t))
    m.cap = cap
    m.used = 0
    return 0


cdef void map_free(U64Map *m) noexcept:
    cc_free(m.keys)
    cc_free(m.vals)
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
        h = <HeapEntry *>cc_realloc(hp[0], cap * sizeof(HeapEntry))
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
