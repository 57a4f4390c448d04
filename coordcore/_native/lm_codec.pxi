# Decoding the packed results and events, and the record pieces a service builds without
# a BatchBuilder: the batch header around encoded commands, and the events it acts on.
# Included by lockmachine.pyx.

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
    """CRC-32C (Castagnoli) of ``data``, continuing from ``value``: the checksum of the
    log's records and of snapshots."""
    return _crc32c(data, value, False)


def _crc32c_portable(data, uint32_t value=0):
    """:func:`crc32c` by the table, which machines without the CRC instruction use (for
    the tests: x86-64 machines take the instruction)."""
    return _crc32c(data, value, True)


cdef uint32_t _crc32c(object data, uint32_t value, bint portable) except? 0:
    cdef const unsigned char[::1] view
    try:
        if data is None:
            raise TypeError
        view = data
    except (TypeError, ValueError):
        raise WrongType(f"crc32c needs a contiguous bytes-like object, not {type(data).__name__}") from None
    if view.shape[0] == 0:
        return value
    if portable:
        return ~cc_crc32c_sw(~value, &view[0], <size_t>view.shape[0])
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


cdef uint64_t _u64(str name, object value, uint64_t lo) except? 0:
    if type(value) is not int:
        raise BadArgument(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or value > 0xFFFFFFFFFFFFFFFF:
        raise BadArgument(f"{name} must be in [{lo}, {0xFFFFFFFFFFFFFFFF}], got {value}")
    return <uint64_t>value


def assemble(time_ms, list parts, Py_ssize_t count):
    """A batch record: the header stamped with ``time_ms`` and ``count`` commands, then
    the encoded commands ``parts`` (each one or more whole commands, as the server's
    lane writes them), joined: what ``BatchBuilder.build`` gives for the same commands."""
    cdef uint64_t t = _u64("time_ms", time_ms, 0)
    cdef Py_ssize_t total = HDR_SIZE
    cdef Py_ssize_t n
    cdef object part
    cdef bytes out
    cdef unsigned char *p
    if t > C_MAX_TIME:
        raise BadArgument(f"time_ms must be in [0, {C_MAX_TIME}], got {time_ms}")
    if count < 0 or count > C_MAX_BATCH:
        raise BadArgument(f"a batch holds at most {C_MAX_BATCH} commands")
    for part in parts:
        if type(part) is not bytes:
            raise BadArgument("parts must be bytes")
        total += PyBytes_GET_SIZE(part)
    out = PyBytes_FromStringAndSize(NULL, total)
    p = <unsigned char *>PyBytes_AS_STRING(out)
    memcpy(p, C_MAGIC, 4)
    p[4] = BATCH_VERSION
    p[5] = 0
    cc_st16(p + 6, 0)
    cc_st64(p + 8, t)
    cc_st32(p + 16, <uint32_t>count)
    p += HDR_SIZE
    for part in parts:
        n = PyBytes_GET_SIZE(part)
        memcpy(p, PyBytes_AS_STRING(part), <size_t>n)
        p += n
    (<unsigned char *>PyBytes_AS_STRING(out))[4] = _record_version(
        <const unsigned char *>PyBytes_AS_STRING(out) + HDR_SIZE, <size_t>(total - HDR_SIZE))
    return out


cdef uint8_t _record_version(const unsigned char *p, size_t n) noexcept:
    """The format version of a record of the commands at p, as BatchBuilder decides it:
    5 with a DETACH of pool waits, 4 with a pool op, else 3. A malformed tail stops the
    scan: apply refuses it."""
    cdef size_t pos = 0
    cdef uint8_t version = BATCH_VERSION
    while n - pos >= CMD_SIZE:
        if p[pos] == OP_DETACH and p[pos + 1] & F_DETACH_POOLS:
            return BATCH_VERSION_POOL_DETACH
        if p[pos] >= OP_POOL_SET:
            version = BATCH_VERSION_POOLS
        pos += CMD_SIZE + <size_t>cc_ld16(p + pos + 2) + cc_ld32(p + pos + 4)
        if pos > n:
            break
    return version


def filter_events(bytes raw, cls, dict parked):
    """Decode (into ``cls(revision, kind, mode, session, ticket, token, key, value)``)
    only the packed events a service without watches acts on: ``CLOSE`` and ``EXPIRE``,
    and ``GRANT``/``CANCEL`` of a ticket in ``parked``. In order."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t pos = 0
    cdef const unsigned char *base = <const unsigned char *>PyBytes_AS_STRING(raw)
    cdef const unsigned char *p
    cdef uint32_t klen, vlen
    cdef uint8_t kind
    cdef list out = []
    cdef object ticket
    while pos < n:
        if n - pos < EV_SIZE:
            raise BadArgument("packed events are truncated")
        p = base + pos
        klen = cc_ld16(p + 2)
        vlen = cc_ld32(p + 4)
        if <size_t>(n - pos - EV_SIZE) < <size_t>klen + vlen:
            raise BadArgument("packed events are truncated")
        pos += EV_SIZE + <Py_ssize_t>klen + vlen
        kind = p[0]
        if kind == E_GRANT or kind == E_CANCEL:
            if not parked:
                continue
            ticket = PyLong_FromUnsignedLongLong(cc_ld64(p + 24))
            if ticket not in parked:
                continue
        elif kind != E_CLOSE and kind != E_EXPIRE:
            continue
        out.append(cls(PyLong_FromUnsignedLongLong(cc_ld64(p + 8)), kind, p[1],
                       PyLong_FromUnsignedLongLong(cc_ld64(p + 16)),
                       PyLong_FromUnsignedLongLong(cc_ld64(p + 24)),
                       PyLong_FromUnsignedLongLong(cc_ld64(p + 32)),
                       PyBytes_FromStringAndSize(<const char *>p + EV_SIZE, klen),
                       PyBytes_FromStringAndSize(<const char *>p + EV_SIZE + klen, vlen)))
    return out
