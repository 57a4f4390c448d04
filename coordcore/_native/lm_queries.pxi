# The read-only queries behind the machine's Python methods, and the invariant checks.
# Included by lockmachine.pyx: functions of the LockMachine it defines.

# --- read-only queries --------------------------------------------------------

cdef object _next_deadline(LockMachine self):
    # Not read-only: stale heap entries are dropped on the way.
    cdef object best = None
    while self.st.heap_len and _heap_top_stale(self):
        _heap_pop(self)
    if self.st.heap_len:
        best = self.st.heap[0].deadline
    if _wheap_live_top(self) != NIL and (best is None or self.st.wheap[0].deadline < best):
        best = self.st.wheap[0].deadline
    pool = _pools_next_deadline(self)
    if pool is not None and (best is None or pool < best):
        best = pool
    return best

cdef tuple _contender_tuple(LockMachine self, uint32_t c):
    cdef Contender *cp = &self.st.con[c]
    return (cp.session, cp.ticket, cp.token, cp.mode,
            PyBytes_FromStringAndSize(<char *>cp.value, cp.vlen) if cp.vlen else b"")

cdef object _session(LockMachine self, uint64_t session_id, uint64_t after, uint32_t limit):
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
        items.append((PyBytes_FromStringAndSize(<char *>ks.key, ks.klen), _contender_tuple(self, c)))
        c = self.st.con[c].snext
    return (self.st.ses[si].id, self.st.ses[si].ttl, self.st.ses[si].deadline, items,
            self.st.ses[si].c_count)

cdef object _key_info(LockMachine self, bytes key, uint32_t limit):
    cdef uint32_t klen = <uint32_t>len(key)
    cdef const unsigned char *k = <const unsigned char *>PyBytes_AS_STRING(key)
    cdef uint32_t ki, c
    cdef list holders = [], waiters = []
    if klen == 0 or klen > C_MAX_KEY:
        return None
    ki = _key_find(self, k, klen, cc_xxh64(k, klen, HASH_SEED))
    if ki == NIL:
        return None
    c = self.st.keys[ki].h_head
    while c != NIL and <uint32_t>len(holders) < limit:
        holders.append(_contender_tuple(self, c))
        c = self.st.con[c].knext
    c = self.st.keys[ki].w_head
    while c != NIL and <uint32_t>len(waiters) < limit:
        waiters.append(_contender_tuple(self, c))
        c = self.st.con[c].knext
    return (self.st.keys[ki].kind, self.st.keys[ki].permits, holders, waiters,
            self.st.keys[ki].h_count, self.st.keys[ki].w_count)

cdef object _oldest_wait(LockMachine self, bytes key, uint64_t now):
    # A key's first waiter is its oldest (FIFO), so one hash lookup bounds the read.
    cdef uint32_t klen = <uint32_t>len(key)
    cdef const unsigned char *k = <const unsigned char *>PyBytes_AS_STRING(key)
    cdef uint32_t ki, c
    cdef uint64_t since
    if klen == 0 or klen > C_MAX_KEY:
        return None
    ki = _key_find(self, k, klen, cc_xxh64(k, klen, HASH_SEED))
    if ki == NIL:
        return None
    c = self.st.keys[ki].w_head
    if c == NIL:
        return None
    since = self.st.con[c].since
    if since == C_NO_TIME:
        return None
    return now - since if now > since else 0

cdef object _keys(LockMachine self, bytes prefix):
    cdef list out = []
    cdef uint32_t i, plen = <uint32_t>len(prefix)
    cdef const unsigned char *pp = <const unsigned char *>PyBytes_AS_STRING(prefix)
    for i in range(self.st.key_cap):
        if self.st.keys[i].used and self.st.keys[i].klen >= plen \
                and memcmp(self.st.keys[i].key, pp, plen) == 0:
            out.append(PyBytes_FromStringAndSize(<char *>self.st.keys[i].key, self.st.keys[i].klen))
    out.sort()
    return out

cdef int _check_invariants(LockMachine self) except -1:
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
        assert _key_find(self, ks.key, ks.klen, ks.hash) == i, "key table out of sync"
        assert not _key_invalid(self, i), "lock rules violated"
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
    return _pools_check(self)
