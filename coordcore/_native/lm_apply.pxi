# The commands of a batch record, and applying a whole record (validated before any of
# it is applied).
# Included by lockmachine.pyx: functions of the LockMachine it defines.

# --- commands -----------------------------------------------------------------

cdef int _session_has_on_key(LockMachine self, uint32_t si, uint32_t k) noexcept:
    cdef uint32_t c = self.st.ses[si].c_head
    while c != NIL:
        if self.st.con[c].key == k:
            return 1
        c = self.st.con[c].snext
    return 0

cdef uint8_t _second_claim(LockMachine self, uint32_t si, uint32_t k, uint8_t mode) noexcept:
    """Why a session may not contend again for lock slot k (D_NONE: it may). Its own
    exclusive claim, or an exclusive one beside its shared hold, would wait for itself
    forever; shared beside shared is fine (several readers of one session)."""
    cdef uint32_t c = self.st.ses[si].c_head
    cdef uint8_t why = D_NONE
    while c != NIL:
        if self.st.con[c].key == k:
            if self.st.con[c].mode == M_EXCLUSIVE:
                return D_HELD
            if mode == M_EXCLUSIVE:
                why = D_UPGRADE
        c = self.st.con[c].snext
    return why

cdef int _acquire(LockMachine self, uint32_t si, uint64_t sid, uint8_t kind, uint8_t mode,
                  const unsigned char *k, uint32_t klen, const unsigned char *v,
                  uint32_t vlen, uint32_t permits, bint wait, uint64_t timeout,
                  unsigned char *res, bint v3=False) except -1:
    cdef uint64_t h = cc_xxh64(k, klen, HASH_SEED)
    cdef uint32_t ki = _key_find(self, k, klen, h)
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
        if kind == K_ELECTION and _session_has_on_key(self, si, ki):
            res[1] = ST_CONFLICT
            res[2] = D_ALREADY_CANDIDATE
            return 0
        if v3 and kind == K_LOCK:
            res[2] = _second_claim(self, si, ki, mode)
            if res[2] != D_NONE:
                res[1] = ST_HELD
                return 0
        grant = ks.w_count == 0 and _can_hold(self, ks, mode)
    if not grant and not wait:
        res[1] = ST_BUSY
        return 0
    if vlen:
        vcopy = <unsigned char *>cc_malloc(vlen)
        if vcopy == NULL:
            raise MemoryError()
        memcpy(vcopy, v, vlen)
    try:
        if ki == NIL:
            ki = _new_key(self, k, klen, h, kind, permits if kind == K_SEM else 0)
            created = True
        c = _new_contender(self)
    except MemoryError:
        cc_free(vcopy)
        if created:
            _free_key(self, ki, True)
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
    cp.since = self.st.time
    _link_key(self, c, grant)
    _link_session(self, c)
    if grant:
        _timed_grant(self, cp)
        _emit_contender(self, E_GRANT, c, rev)
        cc_st64(res + 8, rev)
    else:
        if timeout:
            _set_wait_deadline(self, c, self.st.time + timeout)
        _emit_contender(self, E_WAIT, c, rev)
        res[1] = ST_WAITING
    cc_st64(res + 16, rev)
    return 0

cdef uint32_t _find_hold(LockMachine self, uint32_t si, uint64_t sid, uint32_t ki, uint64_t token) noexcept:
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

cdef int _release(LockMachine self, uint32_t si, uint64_t sid, uint8_t kind, const unsigned char *k,
                  uint32_t klen, uint64_t token, unsigned char *res) except -1:
    cdef uint32_t ki = _key_find(self, k, klen, cc_xxh64(k, klen, HASH_SEED))
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
    c = _find_hold(self, si, sid, ki, token)
    if c == NIL:
        res[1] = err
        res[2] = why
        return 0
    cc_st64(res + 8, self.st.con[c].token)
    cc_st64(res + 16, self.st.con[c].ticket)
    _remove_contender(self, c)
    _promote(self, ki)
    _maybe_drop_key(self, ki)
    return 0

cdef int _cancel(LockMachine self, uint32_t si, uint64_t sid, const unsigned char *k, uint32_t klen,
                 uint64_t ticket, unsigned char *res) except -1:
    cdef uint32_t ki = _key_find(self, k, klen, cc_xxh64(k, klen, HASH_SEED))
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
    _remove_contender(self, c)
    _promote(self, ki)
    _maybe_drop_key(self, ki)
    return 0

cdef int _proclaim(LockMachine self, uint32_t si, uint64_t sid, const unsigned char *k, uint32_t klen,
                   uint64_t token, const unsigned char *v, uint32_t vlen,
                   unsigned char *res) except -1:
    cdef uint32_t ki = _key_find(self, k, klen, cc_xxh64(k, klen, HASH_SEED))
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
        vcopy = <unsigned char *>cc_malloc(vlen)
        if vcopy == NULL:
            raise MemoryError()
        memcpy(vcopy, v, vlen)
    cp = &self.st.con[c]
    cc_free(cp.value)
    cp.value = vcopy
    cp.vlen = vlen
    rev = self.st.revision + 1
    self.st.revision = rev
    _emit_contender(self, E_PROCLAIM, c, rev)
    cc_st64(res + 8, rev)
    cc_st64(res + 16, cp.token)
    return 0

cdef int _reattach(LockMachine self, uint64_t sid, uint64_t ticket, uint64_t timeout, unsigned char *res) except -1:
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
        _set_wait_deadline(self, c, self.st.time + timeout if timeout else 0)
    return 0

cdef int _apply_one(LockMachine self, const unsigned char *p, unsigned char *res, uint8_t version) except -1:
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
    cdef bint v2 = version >= 2
    memset(res, 0, RES_SIZE)
    res[0] = op
    if op >= OP_POOL_SET:
        return _pool_apply(self, op, flags, sid, req, arg, k, klen, v, vlen, res)
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
    elif op == OP_DETACH and version >= BATCH_VERSION_POOL_DETACH:
        allowed = F_DETACH_POOLS
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
        si = _new_session_slot(self)
        s = &self.st.ses[si]
        s.id = self.st.next_session
        s.ttl = arg
        s.deadline = self.st.time + arg
        if vlen == CRED:
            memcpy(s.cred, v, CRED)
        try:
            map_put(&self.st.ses_map, s.id, si)
            _heap_push(self, s.deadline, s.id)
        except MemoryError:
            map_del(&self.st.ses_map, self.st.ses[si].id)
            _free_session_slot(self, si)
            raise
        s = &self.st.ses[si]
        self.st.next_session += 1
        rev = self.st.revision + 1
        self.st.revision = rev
        _emit(self, E_OPEN, M_NONE, rev, s.id, 0, 0, NULL, 0, NULL, 0)
        cc_st64(res + 8, s.id)
        cc_st64(res + 16, s.deadline)
        return 0
    if op == OP_DETACH:
        rev = _detach(self, arg)
        if flags & F_DETACH_POOLS:
            rev += _pools_detach(self, arg)
        cc_st64(res + 8, rev)
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
            _heap_push(self, s.deadline, sid)
        cc_st64(res + 8, self.st.ses[si].deadline)
        cc_st64(res + 16, self.st.ses[si].deadline)
        return 0
    if op == OP_CLOSE:
        _end_sessions(self, &si, 1, E_CLOSE)
        return 0
    if req != 0:
        e = _req_find(self, &self.st.ses[si], req)
        if e != NULL:
            res[0] = e.op
            res[1] = e.status
            res[2] = e.detail
            res[3] = 1
            cc_st64(res + 8, e.value)
            cc_st64(res + 16, e.aux)
            if e.status == ST_WAITING and v2:
                _reattach(self, sid, e.aux, timeout, res)
            return 0
    if op == OP_ACQUIRE:
        _acquire(self, si, sid, K_LOCK, M_SHARED if flags & F_SHARED else M_EXCLUSIVE,
                      k, klen, v, vlen, 0, flags & F_WAIT, timeout, res, version >= 3)
    elif op == OP_SEM_ACQUIRE:
        _acquire(self, si, sid, K_SEM, M_SEM, k, klen, v, vlen, <uint32_t>low, flags & F_WAIT, timeout, res)
    elif op == OP_CAMPAIGN:
        _acquire(self, si, sid, K_ELECTION, M_ELECTION, k, klen, v, vlen, 0, flags & F_WAIT, timeout, res)
    elif op == OP_RELEASE:
        _release(self, si, sid, K_LOCK, k, klen, arg, res)
    elif op == OP_SEM_RELEASE:
        _release(self, si, sid, K_SEM, k, klen, arg, res)
    elif op == OP_RESIGN:
        _release(self, si, sid, K_ELECTION, k, klen, arg, res)
    elif op == OP_PROCLAIM:
        _proclaim(self, si, sid, k, klen, arg, v, vlen, res)
    else:  # OP_CANCEL
        _cancel(self, si, sid, k, klen, arg, res)
    if req != 0:
        _req_record(self, si, req, res)
    return 0

# --- the public, log-driven path ----------------------------------------------

cdef object _apply(LockMachine self, object batch):
    cdef const unsigned char[::1] view
    cdef const unsigned char *p
    cdef size_t n, pos
    cdef uint32_t count, i, klen, vlen
    cdef uint64_t t
    cdef uint8_t op, last_op
    cdef uint8_t version
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
    if memcmp(p, C_MAGIC, 4) != 0:
        raise BadArgument(f"malformed batch: bad magic {bytes(view[:4])!r}")
    version = p[4]
    if version < 1 or version > BATCH_VERSION_POOL_DETACH:
        raise BadArgument(f"malformed batch: unsupported format version {version}")
    last_op = OP_CAP_RESIZE if version >= BATCH_VERSION_POOLS else OP_DETACH if version >= 2 else OP_CANCEL
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
        _expire(self, self.st.time)
        _expire_waits(self, self.st.time)
        _pools_expire(self, self.st.time)
        pos = HDR_SIZE
        for i in range(count):
            _apply_one(self, p + pos, rp + <size_t>i * RES_SIZE, version)
            pos += CMD_SIZE + <size_t>cc_ld16(p + pos + 2) + cc_ld32(p + pos + 4)
    except MemoryError:
        self.broken = True
        raise
    if CC_DEBUG:
        _check_invariants(self)
    return results, PyBytes_FromStringAndSize(<char *>self.ev.data, <Py_ssize_t>self.ev.len)
