# The machine's storage: slot pools, the key table, the holder/waiter and session lists,
# and the event buffer. Everything above it changes state through these.
# Included by lockmachine.pyx: functions of the LockMachine it defines.

cdef void _free_state(LockMachine self, State *st) noexcept:
    cdef uint32_t i
    if st.con != NULL:
        for i in range(st.con_cap):
            if st.con[i].used:
                cc_free(st.con[i].value)
    if st.keys != NULL:
        for i in range(st.key_cap):
            if st.keys[i].used:
                cc_free(st.keys[i].key)
    if st.ses != NULL:
        for i in range(st.ses_cap):
            if st.ses[i].used:
                cc_free(st.ses[i].reqs)
    cc_free(st.con)
    cc_free(st.keys)
    cc_free(st.ses)
    cc_free(st.heap)
    cc_free(st.wheap)
    cc_free(st.ktab.slots)
    map_free(&st.ses_map)
    map_free(&st.rev_map)
    memset(st, 0, sizeof(State))

# --- pools --------------------------------------------------------------------

cdef uint32_t _new_contender(LockMachine self) except? 0xFFFFFFFF:
    cdef uint32_t i, cap
    cdef Contender *p
    if self.st.con_free == NIL:
        cap = self.st.con_cap * 2 if self.st.con_cap else 64
        if cap <= self.st.con_cap or cap >= NIL:
            raise MemoryError("too many contenders")
        p = <Contender *>cc_realloc(self.st.con, cap * sizeof(Contender))
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

cdef void _free_contender(LockMachine self, uint32_t i) noexcept:
    cdef Contender *c = &self.st.con[i]
    cc_free(c.value)
    c.value = NULL
    c.used = 0
    c.knext = self.st.con_free
    self.st.con_free = i
    self.st.con_used -= 1

cdef uint32_t _new_session_slot(LockMachine self) except? 0xFFFFFFFF:
    cdef uint32_t i, cap
    cdef Session *p
    if self.st.ses_free == NIL:
        cap = self.st.ses_cap * 2 if self.st.ses_cap else 16
        if cap <= self.st.ses_cap or cap >= NIL:
            raise MemoryError("too many sessions")
        p = <Session *>cc_realloc(self.st.ses, cap * sizeof(Session))
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

cdef void _free_session_slot(LockMachine self, uint32_t i) noexcept:
    cdef Session *s = &self.st.ses[i]
    cc_free(s.reqs)
    s.reqs = NULL
    s.used = 0
    s.next_free = self.st.ses_free
    self.st.ses_free = i
    self.st.ses_used -= 1

# --- key table ----------------------------------------------------------------

cdef uint32_t _key_find(LockMachine self, const unsigned char *k, uint32_t klen, uint64_t h) noexcept:
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

cdef int _ktab_insert(LockMachine self, uint32_t slot) except -1:
    cdef uint32_t mask, i, cap, j
    cdef uint32_t *old
    cdef uint32_t old_cap
    if (self.st.ktab.used + 1) * 2 > self.st.ktab.cap:
        old = self.st.ktab.slots
        old_cap = self.st.ktab.cap
        cap = old_cap * 2
        self.st.ktab.slots = <uint32_t *>cc_malloc(cap * sizeof(uint32_t))
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
        cc_free(old)
    mask = self.st.ktab.cap - 1
    i = <uint32_t>(self.st.keys[slot].hash & mask)
    while self.st.ktab.slots[i] != NIL:
        i = (i + 1) & mask
    self.st.ktab.slots[i] = slot
    self.st.ktab.used += 1
    return 0

cdef void _ktab_remove(LockMachine self, uint32_t slot) noexcept:
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

cdef uint32_t _new_key(LockMachine self, const unsigned char *k, uint32_t klen, uint64_t h,
                       uint8_t kind, uint32_t permits) except? 0xFFFFFFFF:
    cdef uint32_t i, cap
    cdef KeySlot *p
    cdef unsigned char *copy = <unsigned char *>cc_malloc(klen if klen else 1)
    if copy == NULL:
        raise MemoryError()
    memcpy(copy, k, klen)
    if self.st.key_free == NIL:
        cap = self.st.key_cap * 2 if self.st.key_cap else 64
        if cap <= self.st.key_cap or cap >= NIL:
            cc_free(copy)
            raise MemoryError("too many keys")
        p = <KeySlot *>cc_realloc(self.st.keys, cap * sizeof(KeySlot))
        if p == NULL:
            cc_free(copy)
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
        _ktab_insert(self, i)
    except MemoryError:
        _free_key(self, i, False)
        raise
    return i

cdef void _free_key(LockMachine self, uint32_t i, bint in_table) noexcept:
    cdef KeySlot *p = &self.st.keys[i]
    if in_table:
        _ktab_remove(self, i)
    cc_free(p.key)
    p.key = NULL
    p.used = 0
    p.next_free = self.st.key_free
    self.st.key_free = i
    self.st.key_used -= 1

cdef inline void _maybe_drop_key(LockMachine self, uint32_t k) noexcept:
    cdef KeySlot *ks = &self.st.keys[k]
    if ks.h_count == 0 and ks.w_count == 0:
        _free_key(self, k, True)

# --- lists --------------------------------------------------------------------

cdef void _link_key(LockMachine self, uint32_t c, bint holder) noexcept:
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

cdef void _unlink_key(LockMachine self, uint32_t c) noexcept:
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

cdef void _link_session(LockMachine self, uint32_t c) noexcept:
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

cdef void _unlink_session(LockMachine self, uint32_t c) noexcept:
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

# --- events -------------------------------------------------------------------

cdef int _emit(LockMachine self, uint8_t kind, uint8_t mode, uint64_t rev, uint64_t session,
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

cdef int _emit_contender(LockMachine self, uint8_t kind, uint32_t c, uint64_t rev) except -1:
    cdef Contender *cp = &self.st.con[c]
    cdef KeySlot *ks = &self.st.keys[cp.key]
    return _emit(self, kind, cp.mode, rev, cp.session, cp.ticket, cp.token,
                      ks.key, ks.klen, cp.value, cp.vlen)
