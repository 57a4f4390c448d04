# The lock rules: granting in FIFO order, session expiry, wait deadlines and detached
# waiters, and the per-session request table behind idempotent retries.
# Included by lockmachine.pyx: functions of the LockMachine it defines.

# --- granting -----------------------------------------------------------------

cdef inline bint _can_hold(LockMachine self, KeySlot *ks, uint8_t mode) noexcept:
    if ks.kind == K_LOCK:
        if ks.h_count == 0:
            return True
        return mode == M_SHARED and self.st.con[ks.h_head].mode == M_SHARED
    if ks.kind == K_SEM:
        return ks.h_count < ks.permits
    return ks.h_count == 0

cdef int _promote(LockMachine self, uint32_t k) except -1:
    cdef KeySlot *ks = &self.st.keys[k]
    cdef uint32_t c
    cdef uint64_t rev
    while ks.w_head != NIL:
        c = ks.w_head
        if not _can_hold(self, ks, self.st.con[c].mode):
            break
        _unlink_key(self, c)
        rev = self.st.revision + 1
        map_put(&self.st.rev_map, rev, c)
        self.st.revision = rev
        self.st.con[c].token = rev
        _timed_grant(self, &self.st.con[c])
        if not self.st.con[c].detached:
            self.st.con[c].wait_deadline = 0  # granted: its TIMEOUT is over
        _link_key(self, c, True)
        _emit_contender(self, E_GRANT, c, rev)
    return 0

cdef int _remove_contender(LockMachine self, uint32_t c) except -1:
    """Unlink, emit RELEASE (holder) or CANCEL (waiter), free. The key stays."""
    cdef Contender *cp = &self.st.con[c]
    cdef uint64_t rev = self.st.revision + 1
    self.st.revision = rev
    if cp.token != 0:
        _timed_end(self, cp)
    _emit_contender(self, E_RELEASE if cp.token != 0 else E_CANCEL, c, rev)
    cp = &self.st.con[c]
    _unlink_key(self, c)
    _unlink_session(self, c)
    map_del(&self.st.rev_map, cp.ticket)
    if cp.token != 0 and cp.token != cp.ticket:
        map_del(&self.st.rev_map, cp.token)
    _free_contender(self, c)
    return 0

cdef int _mark_affected(LockMachine self, uint32_t k) except -1:
    cdef uint32_t *p
    cdef uint32_t cap
    if self.st.keys[k].pending:
        return 0
    if self.aff_len == self.aff_cap:
        cap = self.aff_cap * 2 if self.aff_cap else 64
        p = <uint32_t *>cc_realloc(self.aff, cap * sizeof(uint32_t))
        if p == NULL:
            raise MemoryError()
        self.aff = p
        self.aff_cap = cap
    self.st.keys[k].pending = 1
    self.aff[self.aff_len] = k
    self.aff_len += 1
    return 0

cdef int _promote_affected(LockMachine self) except -1:
    """Grant the waiters of every key a removal pass marked, in first-touch order."""
    cdef uint32_t i, k
    for i in range(self.aff_len):
        k = self.aff[i]
        self.st.keys[k].pending = 0
        _promote(self, k)
        _maybe_drop_key(self, k)
    self.aff_len = 0
    return 0

cdef int _end_sessions(LockMachine self, uint32_t *slots, uint32_t n, uint8_t kind) except -1:
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
        _emit(self, kind, M_NONE, rev, self.st.ses[s].id, 0, 0, NULL, 0, NULL, 0)
        while self.st.ses[s].c_head != NIL:
            c = self.st.ses[s].c_head
            k = self.st.con[c].key
            _remove_contender(self, c)
            _mark_affected(self, k)
        _pools_end_session(self, self.st.ses[s].id)
        map_del(&self.st.ses_map, self.st.ses[s].id)
        _free_session_slot(self, s)
    _promote_affected(self)
    return _pools_settle_touched(self)

# --- expiry heap --------------------------------------------------------------

cdef int _heap_push(LockMachine self, uint64_t deadline, uint64_t sid) except -1:
    if self.st.heap_len == self.st.heap_cap and self.st.heap_len > 2 * self.st.ses_used + 64:
        _heap_rebuild(self)
    return heap_insert(&self.st.heap, &self.st.heap_len, &self.st.heap_cap, deadline, sid)

cdef void _heap_pop(LockMachine self) noexcept:
    heap_remove_top(self.st.heap, &self.st.heap_len)

cdef void _heap_rebuild(LockMachine self) noexcept:
    """Drop stale entries: one entry per live session (fits, as len > sessions)."""
    cdef uint32_t i, n = 0
    for i in range(self.st.ses_cap):
        if self.st.ses[i].used:
            self.st.heap[n].deadline = self.st.ses[i].deadline
            self.st.heap[n].id = self.st.ses[i].id
            n += 1
    self.st.heap_len = n
    heapify(self.st.heap, n)

cdef inline bint _heap_top_stale(LockMachine self) noexcept:
    cdef HeapEntry *e = &self.st.heap[0]
    cdef uint32_t s = map_get(&self.st.ses_map, e.id)
    return s == NIL or self.st.ses[s].deadline != e.deadline

cdef int _expire(LockMachine self, uint64_t now) except -1:
    cdef uint32_t s, cap
    cdef uint32_t *p
    cdef HeapEntry e
    self.dead_len = 0
    while self.st.heap_len and self.st.heap[0].deadline <= now:
        e = self.st.heap[0]
        _heap_pop(self)
        s = map_get(&self.st.ses_map, e.id)
        if s == NIL or self.st.ses[s].deadline != e.deadline or self.st.ses[s].dying:
            continue
        self.st.ses[s].dying = 1
        if self.dead_len == self.dead_cap:
            cap = self.dead_cap * 2 if self.dead_cap else 64
            p = <uint32_t *>cc_realloc(self.dead, cap * sizeof(uint32_t))
            if p == NULL:
                raise MemoryError()
            self.dead = p
            self.dead_cap = cap
        self.dead[self.dead_len] = s
        self.dead_len += 1
    if self.dead_len:
        _end_sessions(self, self.dead, self.dead_len, E_EXPIRE)
    return 0

# --- waiter deadlines ---------------------------------------------------------

cdef int _wheap_push(LockMachine self, uint64_t deadline, uint64_t ticket) except -1:
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

cdef int _set_wait_deadline(LockMachine self, uint32_t c, uint64_t deadline) except -1:
    self.st.con[c].wait_deadline = deadline
    if deadline:
        _wheap_push(self, deadline, self.st.con[c].ticket)
    return 0

cdef uint32_t _wheap_live_top(LockMachine self) noexcept:
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

cdef int _expire_waits(LockMachine self, uint64_t now) except -1:
    """Withdraw every contender whose wait deadline has come (a waiter's TIMEOUT, or a
    detached contender's grace), in (deadline, ticket) order; then grant the waiters
    this unblocked, so no grant goes to a contender withdrawn in the same pass."""
    cdef uint32_t c, k
    self.aff_len = 0
    while True:
        c = _wheap_live_top(self)
        if c == NIL or self.st.wheap[0].deadline > now:
            break
        heap_remove_top(self.st.wheap, &self.st.wheap_len)
        k = self.st.con[c].key
        _remove_contender(self, c)
        _mark_affected(self, k)
    return _promote_affected(self)

cdef uint64_t _detach(LockMachine self, uint64_t grace) except? 0xFFFFFFFFFFFFFFFF:
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
                _set_wait_deadline(self, i, deadline)
            n += 1
    return n

# --- request table ------------------------------------------------------------

cdef ReqEntry *_req_find(LockMachine self, Session *s, uint64_t req) noexcept:
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

cdef int _req_record(LockMachine self, uint32_t si, uint64_t req, unsigned char *res) except -1:
    cdef Session *s = &self.st.ses[si]
    cdef ReqEntry *p
    cdef ReqEntry *e
    cdef uint32_t cap
    if s.req_len < C_WINDOW:
        if s.req_len == s.req_cap:
            cap = s.req_cap * 2 if s.req_cap else 4
            p = <ReqEntry *>cc_realloc(s.reqs, cap * sizeof(ReqEntry))
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
