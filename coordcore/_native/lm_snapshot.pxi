# Snapshots: deterministic bytes out, and a restore that validates everything before it
# replaces the state.
# Included by lockmachine.pyx: functions of the LockMachine it defines.

# --- snapshot -----------------------------------------------------------------

cdef int _snap_key(LockMachine self, Buf *b, uint32_t ki) except -1:
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

cdef object _snapshot(LockMachine self):
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
        ids = <uint64_t *>cc_malloc((n + 1) * sizeof(uint64_t))
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
            _snap_key(self, &b, _key_find(self, <const unsigned char *>PyBytes_AS_STRING(name),
                                              <uint32_t>len(name),
                                              cc_xxh64(<const unsigned char *>PyBytes_AS_STRING(name),
                                                      len(name), HASH_SEED)))
        if self.pl.pools:
            # Version 3 adds the pool section; a machine without pools writes version 2
            # bytes exactly as before.
            b.data[4] = 3
            name = _pools_snapshot(self)
            buf_reserve(&b, len(name))
            memcpy(b.data + b.len, PyBytes_AS_STRING(name), len(name))
            b.len += len(name)
        crc = cc_crc32c(0, b.data, b.len)
        buf_reserve(&b, 4)
        cc_st32(b.data + b.len, crc)
        b.len += 4
        return PyBytes_FromStringAndSize(<char *>b.data, <Py_ssize_t>b.len)
    finally:
        cc_free(ids)
        cc_free(b.data)

cdef int _restore(LockMachine self, object data) except -1:
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
    _load(fresh, &view[0], <size_t>view.shape[0])
    tmp = self.st
    self.st = fresh.st
    fresh.st = tmp
    self.pl, fresh.pl = fresh.pl, self.pl
    self.broken = False
    return 0

cdef int _load(LockMachine self, const unsigned char *p, size_t n) except -1:
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
    if p[4] < 1 or p[4] > 3:
        raise LogCorrupted(f"unsupported snapshot version {p[4]}")
    v2 = p[4] >= 2
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
        si = _new_session_slot(self)
        s = &self.st.ses[si]
        s.id = sid
        s.ttl = ttl
        s.deadline = deadline
        map_put(&self.st.ses_map, sid, si)
        _heap_push(self, deadline, sid)
        if v2:
            r.need(CRED)
            memcpy(self.st.ses[si].cred, p + r.pos, CRED)
            r.pos += CRED
        if nreq:
            s = &self.st.ses[si]
            s.reqs = <ReqEntry *>cc_malloc(C_WINDOW * sizeof(ReqEntry))
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
                if e.req == 0 or not (OP_ACQUIRE <= e.op <= OP_CANCEL or OP_CAP_ACQUIRE <= e.op <= OP_CAP_RESIZE):
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
        ki = _new_key(self, kp, klen, cc_xxh64(kp, klen, HASH_SEED), kind, permits)
        last = 0
        for j in range(nh + nw):
            c = _new_contender(self)
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
            # A snapshot carries no arrival or grant times: a restored contender's wait
            # or hold is not observed (its later grant, then hold, are).
            cp.since = C_NO_TIME
            if cp.detached > 1 or (cp.wait_deadline != 0 and j < nh and not cp.detached):
                raise LogCorrupted("snapshot contender wait state out of range")
            if vlen > C_MAX_VALUE:
                raise LogCorrupted("snapshot value too long")
            r.need(vlen)
            if vlen:
                cp.value = <unsigned char *>cc_malloc(vlen)
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
            _link_key(self, c, j < nh)
            if cp.wait_deadline:
                _wheap_push(self, cp.wait_deadline, cp.ticket)
            total += 1
        if _key_invalid(self, ki):
            raise LogCorrupted("snapshot key state violates the lock rules")
    if p[4] == 3:
        r.pos += _pools_load(self, p + r.pos, r.n - r.pos)
    if r.pos != r.n:
        raise LogCorrupted("snapshot has trailing bytes")
    # Each session's contenders, in ticket order.
    refs = <TicketRef *>cc_malloc((total + 1) * sizeof(TicketRef))
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
            _link_session(self, refs[i].con)
    finally:
        cc_free(refs)
    for i in range(self.st.ses_cap):
        if self.st.ses[i].used and _election_dupes(self, i):
            raise LogCorrupted("snapshot has a session contending twice in one election")
    return 0

cdef bint _election_dupes(LockMachine self, uint32_t si) noexcept:
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

cdef bint _key_invalid(LockMachine self, uint32_t ki) noexcept:
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
    if ks.w_head != NIL and _can_hold(self, ks, self.st.con[ks.w_head].mode):
        return True
    return False
