# cython: language_level=3, autotestdict=False, auto_pickle=False
"""The server's hot lock path in C: batch commands in, RESP replies out.

* :func:`encode_acquire` / :func:`encode_release` encode one ``ACQUIRE`` / ``RELEASE``
  command of a batch record (format version 1, documented in coordcore/locks/machine.py),
  byte for byte what :class:`~coordcore.locks.machine.BatchBuilder` appends, and
  :func:`assemble` joins encoded commands under a batch header, as ``BatchBuilder.build``.
* :func:`fast_reply` reads one packed result of ``LockMachine.apply_raw`` and, when it
  is ``OK``, returns its RESP reply (``:token`` or ``+OK``) without building a Python
  result object.
* :func:`filter_events` decodes only the packed events a lock service acts on when
  nobody watches: session ends, and grants/cancels of the tickets it has parked.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_FromUnsignedLongLong

from coordcore.errors import BadArgument

cdef extern from *:
    """
    #ifndef CC_DEBUG
    #define CC_DEBUG 0
    #endif
    #include <stdint.h>
    #include <string.h>
    #include "cc_endian.h"
    """
    const bint CC_DEBUG
    uint64_t cc_ld64(const unsigned char *p) nogil
    uint32_t cc_ld32(const unsigned char *p) nogil
    uint16_t cc_ld16(const unsigned char *p) nogil
    void cc_st64(unsigned char *p, uint64_t v) nogil
    void cc_st32(unsigned char *p, uint32_t v) nogil
    void cc_st16(unsigned char *p, uint16_t v) nogil

cdef enum:
    HEADER_SIZE = 20
    CMD_SIZE = 32
    RES_SIZE = 24
    EV_SIZE = 40
    MAX_KEY = 1024
    MAX_VALUE = 4096

from coordcore._native import lockmachine as _lm

cdef uint64_t MAX_TIME = _lm.MAX_TIME_MS
cdef Py_ssize_t _max_commands = _lm.MAX_BATCH_COMMANDS
if _lm.MAX_KEY_SIZE != MAX_KEY or _lm.MAX_VALUE_SIZE != MAX_VALUE or _lm.BATCH_FORMAT_VERSION != 1:
    raise ImportError("lockwire was built for another batch format than lockmachine's")

cdef uint64_t _u64(str name, object value, uint64_t lo) except? 0:
    if type(value) is not int:
        raise BadArgument(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or value > 0xFFFFFFFFFFFFFFFF:
        raise BadArgument(f"{name} must be in [{lo}, {0xFFFFFFFFFFFFFFFF}], got {value}")
    return <uint64_t>value


cdef bytes _command(uint8_t op, uint8_t flags, uint64_t session, uint64_t request_id, uint64_t arg,
                    bytes key, bytes value):
    cdef Py_ssize_t klen = PyBytes_GET_SIZE(key)
    cdef Py_ssize_t vlen = PyBytes_GET_SIZE(value)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, CMD_SIZE + klen + vlen)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    p[0] = op
    p[1] = flags
    cc_st16(p + 2, <uint16_t>klen)
    cc_st32(p + 4, <uint32_t>vlen)
    cc_st64(p + 8, session)
    cc_st64(p + 16, request_id)
    cc_st64(p + 24, arg)
    if klen:
        memcpy(p + CMD_SIZE, PyBytes_AS_STRING(key), <size_t>klen)
    if vlen:
        memcpy(p + CMD_SIZE + klen, PyBytes_AS_STRING(value), <size_t>vlen)
    return out


cdef bytes _key(object key):
    if type(key) is not bytes:
        raise BadArgument(f"key must be bytes, got {type(key).__name__}")
    if not 0 < PyBytes_GET_SIZE(key) <= MAX_KEY:
        raise BadArgument(f"key must be 1..{MAX_KEY} bytes, got {PyBytes_GET_SIZE(key)}")
    return <bytes>key


def encode_acquire(session, key, *, bint shared=False, bint wait=True, request_id=0, value=b""):
    """One ``ACQUIRE`` command, as ``BatchBuilder.acquire`` appends it."""
    cdef uint64_t s = _u64("session", session, 1)
    cdef uint64_t r = _u64("request_id", request_id, 0)
    cdef bytes k = _key(key)
    if type(value) is not bytes:
        raise BadArgument(f"value must be bytes, got {type(value).__name__}")
    if PyBytes_GET_SIZE(value) > MAX_VALUE:
        raise BadArgument(f"value must be at most {MAX_VALUE} bytes, got {PyBytes_GET_SIZE(value)}")
    return _command(4, (1 if shared else 0) | (2 if wait else 0), s, r, 0, k, <bytes>value)


def encode_release(session, key, token=0, request_id=0):
    """One ``RELEASE`` command, as ``BatchBuilder.release`` appends it."""
    cdef uint64_t s = _u64("session", session, 1)
    cdef uint64_t t = _u64("token", token, 0)
    cdef uint64_t r = _u64("request_id", request_id, 0)
    return _command(5, 0, s, r, t, _key(key), b"")


def assemble(time_ms, list parts, Py_ssize_t count):
    """A batch record: the header stamped with ``time_ms`` and ``count`` commands, then
    the encoded commands ``parts`` (each one or more whole commands), joined."""
    cdef uint64_t t = _u64("time_ms", time_ms, 0)
    cdef Py_ssize_t total = HEADER_SIZE
    cdef Py_ssize_t n
    cdef object part
    cdef bytes out
    cdef unsigned char *p
    if t > MAX_TIME:
        raise BadArgument(f"time_ms must be in [0, {MAX_TIME}], got {time_ms}")
    if count < 0 or count > _max_commands:
        raise BadArgument(f"a batch holds at most {_max_commands} commands")
    for part in parts:
        if type(part) is not bytes:
            raise BadArgument("parts must be bytes")
        total += PyBytes_GET_SIZE(part)
    out = PyBytes_FromStringAndSize(NULL, total)
    p = <unsigned char *>PyBytes_AS_STRING(out)
    memcpy(p, b"CCLB", 4)
    p[4] = 1
    p[5] = 0
    cc_st16(p + 6, 0)
    cc_st64(p + 8, t)
    cc_st32(p + 16, <uint32_t>count)
    p += HEADER_SIZE
    for part in parts:
        n = PyBytes_GET_SIZE(part)
        memcpy(p, PyBytes_AS_STRING(part), <size_t>n)
        p += n
    return out


cdef bytes _OK = b"+OK\r\n"


def fast_reply(bytes raw, Py_ssize_t index, int kind):
    """The RESP reply of packed result ``index`` if its status is OK, else None.
    ``kind`` 1: the result's value as an integer reply (an acquire's fencing token);
    2: ``+OK``."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef const unsigned char *p
    cdef char buf[32]
    cdef char *q
    cdef uint64_t v
    cdef Py_ssize_t i
    if index < 0 or (index + 1) * RES_SIZE > n:
        raise BadArgument(f"result {index} is out of range")
    p = <const unsigned char *>PyBytes_AS_STRING(raw) + index * RES_SIZE
    if p[1] != 0:
        return None
    if kind == 2:
        return _OK
    if kind != 1:
        raise BadArgument(f"unknown reply kind {kind}")
    v = cc_ld64(p + 8)
    q = buf + 32
    q -= 1; q[0] = b'\n'
    q -= 1; q[0] = b'\r'
    while True:
        q -= 1
        q[0] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    q -= 1; q[0] = b':'
    return PyBytes_FromStringAndSize(q, (buf + 32) - q)


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
        if kind == 5 or kind == 7:  # GRANT, CANCEL
            if not parked:
                continue
            ticket = PyLong_FromUnsignedLongLong(cc_ld64(p + 24))
            if ticket not in parked:
                continue
        elif kind != 2 and kind != 3:  # CLOSE, EXPIRE
            continue
        out.append(cls(PyLong_FromUnsignedLongLong(cc_ld64(p + 8)), kind, p[1],
                       PyLong_FromUnsignedLongLong(cc_ld64(p + 16)),
                       PyLong_FromUnsignedLongLong(cc_ld64(p + 24)),
                       PyLong_FromUnsignedLongLong(cc_ld64(p + 32)),
                       PyBytes_FromStringAndSize(<const char *>p + EV_SIZE, klen),
                       PyBytes_FromStringAndSize(<const char *>p + EV_SIZE + klen, vlen)))
    return out
