# cython: language_level=3, autotestdict=False, auto_pickle=False
"""The server's hot lock path in C: request bytes in, batch commands, RESP replies out.

* :class:`WireConn` is one connection's native wire state. It buffers the request
  bytes and parses the request grammar (``*N`` arrays of ``$len`` bulk strings) itself.
  :meth:`WireConn.run_hot` takes the hot commands at the head of the buffer,
  ``LOCK.ACQUIRE key session [SHARED] [TIMEOUT ms] [REQID n]``, ``SEM.ACQUIRE key session
  permits [TIMEOUT ms] [REQID n]`` and their ``*.RELEASE key session [TOKEN t] [REQID n]``
  (what coordcore's clients send for locks and semaphores), straight into
  the :class:`WireLane` (no Python object per request); :meth:`WireConn.next_request`
  gives any other request as a list of bytes for the server's command table, and
  ``None`` when the bytes leave the request grammar (the server then hands the rest of
  the stream to ``hiredis``, which knows all of RESP). Size bounds are checked on the
  headers, before anything is allocated.
* :class:`WireLane` collects the encoded hot commands of every connection for the lock
  service's next batch; :meth:`WireLane.cut` takes them out as a :class:`WireBatch`,
  whose :meth:`WireBatch.resolve` turns each packed result into its connection's reply
  (``:token`` / ``+OK``) in that connection's output buffer, in request order, and calls
  back into Python only for the others (errors, waits, vanished connections).
* The lane writes each command byte for byte as
  :class:`~coordcore.locks.machine.BatchBuilder` appends it (the batch record format,
  declared in lockformat.pxd); ``assemble`` and ``filter_events``, which build a batch
  record around such commands and read its events, are the lock machine's
  (:mod:`coordcore._native.lockmachine`).

Single-threaded by design: every object here belongs to the event loop's thread.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy, memmove
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_Append, PyList_GET_ITEM, PyList_GET_SIZE
from cpython.pyport cimport PY_SSIZE_T_MAX

from coordcore._native.cc cimport (cc_ld16, cc_ld64, cc_live_blocks, cc_pymem_free, cc_pymem_malloc,
    cc_pymem_realloc, cc_st16, cc_st32, cc_st64)
from coordcore._native.lockformat cimport (CMD_SIZE, C_MAX_KEY, C_MAX_PERMITS, F_SHARED, F_WAIT, OP_ACQUIRE,
    OP_RELEASE, OP_SEM_ACQUIRE, OP_SEM_RELEASE, RES_SIZE)

from coordcore.errors import BadArgument, ProtocolError, RequestTooLarge

cdef enum:
    # what a hot command answers
    KIND_ACQUIRE = 1
    KIND_RELEASE = 2
    # the spans of a request's first arguments that the hot path looks at
    HOT_SPANS = 10
    # a session handle: decimal id (at most 19 digits), '.', 32 lowercase hex digits
    SECRET_HEX = 32
    MAX_HANDLE = 52
    # how deep take_frame follows nested RESP aggregates
    FRAME_DEPTH = 32
    # hot commands on a remembered handle before the lock service is asked again (it
    # also bounds a session's holds and waits: so the bound is passed by at most this
    # many per connection)
    HANDLE_USES = 64

#: The reply kinds of hot commands (``WireBatch.entry``): an acquire answers with its
#: token, a release with ``+OK``.
ACQUIRE = KIND_ACQUIRE
RELEASE = KIND_RELEASE

from coordcore._native import lockmachine as _lm

# ID.NEXT requests answered natively in this process (read by the server's metrics at
# scrape time: counting costs one add, no Python call).
cdef unsigned long long _hot_ids = 0


def hot_ids_issued():
    """How many ``ID.NEXT`` requests the hot path of this process has answered."""
    return _hot_ids


cdef uint64_t _U63 = 0x7FFFFFFFFFFFFFFF
#: The longest TIMEOUT the server takes (the lock machine's, as the command table's).
cdef uint64_t MAX_TIMEOUT_MS = _lm.MAX_TIMEOUT_MS


# --- batch commands ---------------------------------------------------------------------

cdef inline void _put_command(unsigned char *p, uint8_t op, uint8_t flags, uint64_t session,
                              uint64_t request_id, uint64_t arg, const char *key, Py_ssize_t klen) noexcept:
    """Write one batch command with no value at ``p`` (``CMD_SIZE + klen`` bytes)."""
    p[0] = op
    p[1] = flags
    cc_st16(p + 2, <uint16_t>klen)
    cc_st32(p + 4, 0)
    cc_st64(p + 8, session)
    cc_st64(p + 16, request_id)
    cc_st64(p + 24, arg)
    memcpy(p + CMD_SIZE, key, <size_t>klen)


# --- growable byte buffers ------------------------------------------------------------------

cdef struct Buf:
    unsigned char *data
    Py_ssize_t start   # consumed up to here (input buffers)
    Py_ssize_t end     # filled up to here
    Py_ssize_t cap


cdef int _reserve(Buf *b, Py_ssize_t extra) except -1:
    """Make room for ``extra`` more bytes after ``b.end`` (dropping consumed bytes first)."""
    cdef Py_ssize_t live, want
    cdef unsigned char *grown
    if b.start and (b.start == b.end or b.end + extra > b.cap):
        live = b.end - b.start
        if live:
            memmove(b.data, b.data + b.start, <size_t>live)
        b.start = 0
        b.end = live
    if b.end + extra <= b.cap:
        return 0
    if extra > (<Py_ssize_t>1 << 40) - b.end:
        raise MemoryError("wire buffer over 1 TiB")
    want = b.cap * 2 if b.cap else 256
    while want < b.end + extra:
        want *= 2
    grown = <unsigned char *>cc_pymem_realloc(b.data, <size_t>want)
    if grown == NULL:
        raise MemoryError()
    b.data = grown
    b.cap = want
    return 0


cdef inline int _append(Buf *b, const void *src, Py_ssize_t n) except -1:
    if n == 0:  # an empty buffer has no memory yet, and memcpy to NULL is undefined even for 0 bytes (UBSan)
        return 0
    if b.end + n > b.cap:
        _reserve(b, n)
    memcpy(b.data + b.end, src, <size_t>n)
    b.end += n
    return 0


cdef int _append_token_reply(Buf *b, uint64_t v) except -1:
    """``:v\\r\\n``."""
    # Filled from the end, by index: under overflowcheck (debug builds) Cython 3.3 emits
    # a pointer difference as integers, which does not compile.
    cdef char tmp[24]
    cdef Py_ssize_t i = 22
    tmp[22] = b'\r'
    tmp[23] = b'\n'
    while True:
        i -= 1
        tmp[i] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    i -= 1
    tmp[i] = b':'
    return _append(b, tmp + i, 24 - i)


cdef bytes _take(Buf *b):
    """The buffered bytes (None if there are none), and empty the buffer."""
    cdef Py_ssize_t n = b.end - b.start
    if n == 0:
        return None
    out = PyBytes_FromStringAndSize(<char *>b.data + b.start, n)
    b.start = 0
    b.end = 0
    if b.cap > 65536:  # a burst is over: give the memory back
        cc_pymem_free(b.data)
        b.data = NULL
        b.cap = 0
    return out


# --- request parsing -------------------------------------------------------------------------

cdef enum:
    SCAN_INCOMPLETE = 0
    SCAN_FOREIGN = -1   # not the request grammar: hiredis takes over
    SCAN_TOO_MANY = -2  # more arguments than allowed
    SCAN_TOO_BIG = -3   # a bulk string or the whole request over the byte bound

cdef struct Span:
    Py_ssize_t off
    Py_ssize_t len


cdef inline Py_ssize_t _number(const unsigned char *p, Py_ssize_t avail, Py_ssize_t *value) noexcept:
    """Parse ``digits\\r\\n`` at ``p``: the bytes used, 0 if incomplete, SCAN_FOREIGN if it is
    not that, SCAN_TOO_BIG past 18 digits (larger than any bound)."""
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t v = 0
    cdef unsigned char c
    while True:
        if i >= avail:
            return SCAN_INCOMPLETE
        c = p[i]
        if c == b'\r':
            break
        if c < b'0' or c > b'9':
            return SCAN_FOREIGN
        if i >= 18:
            return SCAN_TOO_BIG
        v = v * 10 + (c - 48)
        i += 1
    if i == 0:
        return SCAN_FOREIGN
    if i + 1 >= avail:
        return SCAN_INCOMPLETE
    if p[i + 1] != b'\n':
        return SCAN_FOREIGN
    value[0] = v
    return i + 2


cdef inline bint _is_word(const unsigned char *p, Py_ssize_t n, const char *lower, Py_ssize_t wn) noexcept:
    """``p[:n]`` equals the lower-case ASCII word ``lower``, ignoring ASCII case."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if n != wn:
        return False
    for i in range(n):
        c = p[i]
        if b'A' <= c <= b'Z':
            c += 32
        if c != <unsigned char>lower[i]:
            return False
    return True


cdef inline bint _decimal(const unsigned char *p, Py_ssize_t n, uint64_t lo, uint64_t *out) noexcept:
    """Plain decimal digits in [lo, 2**63 - 1] (what ``parse_int`` accepts, minus the
    spellings ``int()`` also takes: those go the general way)."""
    cdef uint64_t v = 0
    cdef Py_ssize_t i
    if n < 1 or n > 19:
        return False
    for i in range(n):
        if p[i] < b'0' or p[i] > b'9':
            return False
        v = v * 10 + (p[i] - 48)
    if v < lo or v > _U63:
        return False
    out[0] = v
    return True


cdef inline bint _handle(const unsigned char *p, Py_ssize_t n, uint64_t *sid) noexcept:
    """``p[:n]`` has the shape of a session handle (``<id>.<32 lowercase hex digits>``):
    its id in ``sid``. Only the shape: the lock service checks the secret."""
    cdef Py_ssize_t dot = n - SECRET_HEX - 1
    cdef Py_ssize_t i
    if dot < 1 or n > MAX_HANDLE or p[dot] != b'.':
        return False
    for i in range(dot + 1, n):
        if not (b'0' <= p[i] <= b'9' or b'a' <= p[i] <= b'f'):
            return False
    return _decimal(p, dot, 1, sid)


cdef bint _hot_options(const unsigned char *base, const Span *spans, Py_ssize_t i, Py_ssize_t argc,
                       uint8_t kind, bint allow_shared, uint8_t *flags, uint64_t *token, uint64_t *request_id,
                       uint32_t *timeout_ms) noexcept:
    """The options of a hot command (``spans[i:argc]``): an acquire's ``SHARED`` (a
    lock's only), ``TIMEOUT ms`` (1 ms to 30 days; 0 is a try, the table's) and ``REQID
    n``, a release's ``TOKEN t`` and ``REQID n``, each at most once. False for anything
    else (the command table answers it)."""
    cdef const unsigned char *word
    cdef uint64_t ms
    cdef bint seen_shared = False, seen_token = False, seen_reqid = False, seen_timeout = False
    flags[0] = F_WAIT if kind == KIND_ACQUIRE else 0
    token[0] = 0
    request_id[0] = 0
    timeout_ms[0] = 0
    while i < argc:
        word = base + spans[i].off
        if allow_shared and not seen_shared and _is_word(word, spans[i].len, b"shared", 6):
            seen_shared = True
            flags[0] |= F_SHARED
            i += 1
            continue
        if i + 1 >= argc:
            return False
        if not seen_reqid and _is_word(word, spans[i].len, b"reqid", 5):
            seen_reqid = True
            if not _decimal(base + spans[i + 1].off, spans[i + 1].len, 1, request_id):
                return False
        elif kind == KIND_RELEASE and not seen_token and _is_word(word, spans[i].len, b"token", 5):
            seen_token = True
            if not _decimal(base + spans[i + 1].off, spans[i + 1].len, 0, token):
                return False
        elif kind == KIND_ACQUIRE and not seen_timeout and _is_word(word, spans[i].len, b"timeout", 7):
            seen_timeout = True
            if not _decimal(base + spans[i + 1].off, spans[i + 1].len, 1, &ms) or ms > MAX_TIMEOUT_MS:
                return False
            timeout_ms[0] = <uint32_t>ms
        else:
            return False
        i += 2
    return True


cdef class WireConn:
    """One connection's native wire state: its unparsed request bytes, its hot commands
    in flight (:attr:`outstanding`; :attr:`parked` while a hot acquire is among them:
    nothing after it may be parsed until it is answered) and the replies to them, ready
    to write (:meth:`take_output`). ``conn`` is what :meth:`WireBatch.resolve` lists
    for a flush (the server's connection object).

    ``max_args`` and ``max_request_bytes`` bound a request; past either,
    :meth:`next_request` raises :class:`~coordcore.errors.RequestTooLarge` as soon as
    the header says so."""

    cdef Buf inp
    cdef Buf out
    cdef Py_ssize_t max_args
    cdef Py_ssize_t max_request
    # conn, outstanding, parked, dirty and closed are written here only: the Python
    # side reads them and asks for changes through close(), mark_dirty() and
    # take_flush(), so each field has one writer.
    cdef readonly object conn
    #: Called (no arguments) for the integer reply to ``ID.NEXT`` (None: not hot).
    cdef public object id_next
    cdef readonly Py_ssize_t outstanding
    cdef readonly bint parked
    cdef readonly bint dirty
    cdef readonly bint closed
    # The last session handle the lock service accepted on this connection: a client
    # names one session on every hot command, so this spares a digest per command.
    cdef unsigned char handle[MAX_HANDLE]
    cdef Py_ssize_t handle_len
    cdef uint64_t handle_sid
    cdef Py_ssize_t handle_uses
    # What this connection's user may do on the hot path (set_access): its own handle
    # check, and the key prefixes it may lock (None: every key, today's path untouched).
    cdef object verify
    cdef tuple lock_prefixes

    def __init__(self, conn, Py_ssize_t max_args, Py_ssize_t max_request_bytes):
        if max_args < 1 or max_request_bytes < 1:
            raise BadArgument("max_args and max_request_bytes must be >= 1")
        self.conn = conn
        self.max_args = max_args
        self.max_request = max_request_bytes

    def __dealloc__(self):
        cc_pymem_free(self.inp.data)
        cc_pymem_free(self.out.data)

    @property
    def buffered(self):
        """Request bytes received and not parsed yet."""
        return self.inp.end - self.inp.start

    def feed(self, data):
        """Append received bytes (``bytes``, ``bytearray`` or ``memoryview``)."""
        cdef const unsigned char[::1] view
        if type(data) is bytes:
            _append(&self.inp, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            return
        view = data
        if view.shape[0]:
            _append(&self.inp, &view[0], view.shape[0])

    def take_input(self):
        """Every unparsed byte (None if none), leaving the buffer empty: for the parser
        that takes over when the stream leaves the request grammar."""
        return _take(&self.inp)

    def take_output(self):
        """The replies ready to write, in request order (None if none)."""
        return _take(&self.out)

    @property
    def has_output(self):
        """Replies are ready to write."""
        return self.out.end > self.out.start

    def close(self):
        """The connection has gone (or is going): its hot commands in flight still
        commit, but their replies are dropped, it is listed for no flush, and an
        acquire among them is the lane's ``other`` callback's to withdraw."""
        self.closed = True
        self.conn = None

    def mark_dirty(self, list dirty not None):
        """List :attr:`conn` in ``dirty`` for the flush at the end of the current batch
        (once: until :meth:`take_flush`), unless closed."""
        if not self.dirty and not self.closed:
            self.dirty = True
            PyList_Append(dirty, self.conn)

    def set_access(self, verify, lock_prefixes):
        """The connection's user changed (AUTH): ``verify(handle) -> session id or 0``
        replaces the lane's check (None: the lane's), and hot commands on keys outside
        ``lock_prefixes`` (a tuple of bytes; None: no limit) are left to the command
        table, which refuses them. The handle accepted for the previous user is forgotten."""
        if lock_prefixes is not None:
            lock_prefixes = tuple(lock_prefixes)
            for prefix in lock_prefixes:
                if type(prefix) is not bytes:
                    raise BadArgument("lock_prefixes must be bytes")
        self.verify = verify
        self.lock_prefixes = lock_prefixes
        self.handle_len = 0
        self.handle_uses = 0

    cdef bint _may_lock(self, const unsigned char *key, Py_ssize_t n) noexcept:
        cdef object prefix
        cdef Py_ssize_t plen
        for prefix in self.lock_prefixes:
            plen = PyBytes_GET_SIZE(prefix)
            if plen <= n and memcmp(PyBytes_AS_STRING(prefix), key, <size_t>plen) == 0:
                return True
        return False

    def take_flush(self):
        """:meth:`take_output` for the flush: the connection leaves the flush list."""
        self.dirty = False
        return _take(&self.out)

    cdef Py_ssize_t _scan(self, Span *spans, Py_ssize_t *argc) noexcept:
        """Frame the request at the head of the buffer: its length, or a SCAN_ status.
        Records the spans of up to HOT_SPANS first arguments."""
        cdef const unsigned char *base = self.inp.data + self.inp.start
        cdef Py_ssize_t avail = self.inp.end - self.inp.start
        cdef Py_ssize_t pos, used, n, i, count
        if avail == 0:
            return SCAN_INCOMPLETE
        if base[0] != b'*':
            return SCAN_FOREIGN
        used = _number(base + 1, avail - 1, &count)
        if used <= 0:
            return self._short(used, avail)
        if count == 0:
            return SCAN_FOREIGN  # an empty array: hiredis answers it
        if count > self.max_args:
            return SCAN_TOO_MANY
        pos = 1 + used
        for i in range(count):
            if pos >= avail:
                return self._short(SCAN_INCOMPLETE, avail)
            if base[pos] != b'$':
                return SCAN_FOREIGN
            used = _number(base + pos + 1, avail - pos - 1, &n)
            if used <= 0:
                return self._short(used, avail)
            pos += 1 + used
            if n > self.max_request - pos - 2:  # the request would pass the bound
                return SCAN_TOO_BIG
            if avail - pos < n + 2:
                return self._short(SCAN_INCOMPLETE, avail)
            if base[pos + n] != b'\r' or base[pos + n + 1] != b'\n':
                return SCAN_FOREIGN
            if i < HOT_SPANS:
                spans[i].off = pos
                spans[i].len = n
            pos += n + 2
        argc[0] = count
        return pos

    cdef inline Py_ssize_t _short(self, Py_ssize_t status, Py_ssize_t avail) noexcept:
        # An incomplete request may not grow past the bound (counted over the bytes
        # received for it, so it is exceeded by at most one read).
        if status == SCAN_INCOMPLETE and avail > self.max_request:
            return SCAN_TOO_BIG
        return status

    def next_request(self):
        """The next request as a list of its arguments (bytes); ``False`` if none is
        complete; ``None`` if the bytes at the head are not a request of the grammar
        (``*N`` then N ``$len`` bulk strings) and a general RESP parser must take over.
        Raises :class:`~coordcore.errors.RequestTooLarge` when a request is over a bound."""
        cdef Span spans[HOT_SPANS]
        cdef Py_ssize_t argc = 0
        cdef Py_ssize_t r = self._scan(spans, &argc)
        cdef Py_ssize_t pos, i, used
        cdef Py_ssize_t n = 0
        cdef const unsigned char *base
        cdef list out
        if r == SCAN_INCOMPLETE:
            return False
        if r == SCAN_FOREIGN:
            return None
        if r == SCAN_TOO_MANY:
            raise RequestTooLarge(f"more than {self.max_args} arguments")
        if r == SCAN_TOO_BIG:
            raise RequestTooLarge(f"request over {self.max_request} bytes")
        base = self.inp.data + self.inp.start
        out = []
        pos = 1 + _number(base + 1, r, &n)
        for i in range(argc):
            used = _number(base + pos + 1, r - pos - 1, &n)
            pos += 1 + used
            PyList_Append(out, PyBytes_FromStringAndSize(<char *>base + pos, n))
            pos += n + 2
        self.inp.start += r
        return out

    cdef bint _session(self, WireLane lane, const unsigned char *p, Py_ssize_t n, uint64_t *sid) except -1:
        """The session a hot command names by its handle, if the lock service accepts the
        handle (``lane.verify(handle) -> session id or 0``); False leaves the command
        to the command table, which answers why."""
        cdef uint64_t parsed
        cdef unsigned char diff = 0
        cdef Py_ssize_t i
        if not _handle(p, n, &parsed):
            return False
        if n == self.handle_len and parsed == self.handle_sid and self.handle_uses < HANDLE_USES:
            for i in range(n):  # the same time wherever the bytes differ
                diff |= p[i] ^ self.handle[i]
            if diff == 0:
                self.handle_uses += 1
                sid[0] = parsed
                return True
        verify = self.verify if self.verify is not None else lane.verify
        if verify is None or verify(PyBytes_FromStringAndSize(<const char *>p, n)) != parsed:
            return False
        memcpy(self.handle, p, <size_t>n)
        self.handle_len = n
        self.handle_sid = parsed
        self.handle_uses = 0
        sid[0] = parsed
        return True

    def take_frame(self):
        """The next whole RESP frame (RESP2 or RESP3, any type, nested) at the head of
        the buffer, as bytes, for a general parser to read: what a stream that left the
        request grammar sends. False if it is not complete yet. Every header is checked
        against the bounds before anything else sees it, so a header that claims 2**31
        elements never reaches a parser that would reserve room for them: an aggregate of
        more than ``max_args`` elements, a length or a frame over ``max_request_bytes``
        or nesting deeper than 32 raise :class:`~coordcore.errors.RequestTooLarge`; bytes
        that are not RESP raise :class:`~coordcore.errors.ProtocolError`."""
        cdef const unsigned char *base = self.inp.data + self.inp.start
        cdef Py_ssize_t avail = self.inp.end - self.inp.start
        cdef Py_ssize_t pos = 0, used, n, line
        cdef Py_ssize_t pending[FRAME_DEPTH]  # elements still to read, per open aggregate
        cdef int depth = 0
        cdef unsigned char t
        cdef bint negative
        while True:
            if pos >= avail:
                return self._frame_short(avail)
            t = base[pos]
            if t == b'+' or t == b'-' or t == b':' or t == b'_' or t == b',' or t == b'#' or t == b'(':
                line = pos + 1
                while line < avail and base[line] != b'\n':
                    line += 1
                if line >= avail:
                    if avail - pos > self.max_request:
                        raise RequestTooLarge(f"a RESP line over {self.max_request} bytes")
                    return self._frame_short(avail)
                if base[line - 1] != b'\r':
                    raise ProtocolError("a RESP line must end with CRLF")
                pos = line + 1
            elif t == b'$' or t == b'!' or t == b'=' or t == b'*' or t == b'~' or t == b'>' or t == b'%' \
                    or t == b'|':
                negative = pos + 1 < avail and base[pos + 1] == b'-'
                if negative:  # "$-1" and "*-1": RESP2's null bulk string and array
                    if t != b'$' and t != b'*':
                        raise ProtocolError("only $ and * take a negative length")
                    if avail - pos < 5:
                        return self._frame_short(avail)
                    if base[pos + 2] != b'1' or base[pos + 3] != b'\r' or base[pos + 4] != b'\n':
                        raise ProtocolError("a negative length must be -1")
                    pos += 5
                    n = -1
                else:
                    used = _number(base + pos + 1, avail - pos - 1, &n)
                    if used == SCAN_INCOMPLETE:
                        return self._frame_short(avail)
                    if used == SCAN_TOO_BIG:
                        raise RequestTooLarge("a RESP length of over 18 digits")
                    if used < 0:
                        raise ProtocolError(f"bad RESP length after {chr(t)!r}")
                    pos += 1 + used
                if t == b'$' or t == b'!' or t == b'=':
                    if n >= 0:
                        if n > self.max_request:
                            raise RequestTooLarge(f"a RESP string of {n} bytes (at most {self.max_request})")
                        if avail - pos < n + 2:
                            return self._frame_short(avail)
                        if base[pos + n] != b'\r' or base[pos + n + 1] != b'\n':
                            raise ProtocolError("a RESP string must end with CRLF")
                        pos += n + 2
                elif n > 0:
                    if t == b'%' or t == b'|':
                        n *= 2  # maps and attributes: key and value per entry
                    if n > self.max_args:
                        raise RequestTooLarge(f"a RESP aggregate of {n} elements (at most {self.max_args})")
                    if t == b'|':
                        n += 1  # an attribute comes before the value it describes
                    if depth == FRAME_DEPTH:
                        raise RequestTooLarge(f"RESP nested deeper than {FRAME_DEPTH}")
                    pending[depth] = n
                    depth += 1
                    continue  # its first element is next
            else:
                raise ProtocolError(f"not RESP: a frame cannot start with {bytes([t])!r}")
            # One element done: close every aggregate it completes.
            while depth and pending[depth - 1] == 1:
                depth -= 1
            if depth == 0:
                break
            pending[depth - 1] -= 1
            if pos > self.max_request:
                raise RequestTooLarge(f"a RESP frame over {self.max_request} bytes")
        if pos > self.max_request:
            raise RequestTooLarge(f"a RESP frame over {self.max_request} bytes")
        out = PyBytes_FromStringAndSize(<const char *>base, pos)
        self.inp.start += pos
        return out

    def take_inline(self, Py_ssize_t limit):
        """Redis's inline form (``PING\\r\\n``: what telnet, nc and redis-benchmark's
        PING_INLINE send): the line at the head of the buffer, without its ``\\n`` or
        ``\\r\\n``, as bytes. None if the head starts a RESP frame instead (a RESP type
        byte: :meth:`take_frame`'s), False if its newline has not arrived. A line of over
        ``limit`` bytes raises :class:`~coordcore.errors.RequestTooLarge`. Only called
        once the buffer has left the request grammar, so the hot path never sees it."""
        cdef const unsigned char *base = self.inp.data + self.inp.start
        cdef Py_ssize_t avail = self.inp.end - self.inp.start
        cdef const unsigned char *nl
        cdef Py_ssize_t n
        cdef unsigned char t
        if avail == 0:
            return False
        t = base[0]
        if t == b'*' or t == b'$' or t == b'+' or t == b'-' or t == b':' or t == b'_' or t == b',' \
                or t == b'#' or t == b'(' or t == b'!' or t == b'=' or t == b'~' or t == b'>' or t == b'%' \
                or t == b'|':
            return None
        nl = <const unsigned char *>memchr(base, b'\n', <size_t>(avail if avail <= limit else limit + 1))
        if nl == NULL:
            if avail > limit:
                raise RequestTooLarge(f"an inline request over {limit} bytes")
            return False
        n = <Py_ssize_t>(<size_t>nl - <size_t>base)  # as integers: overflowcheck cannot subtract pointers
        self.inp.start += n + 1
        if n and base[n - 1] == b'\r':
            n -= 1
        return PyBytes_FromStringAndSize(<const char *>base, n)

    cdef inline object _frame_short(self, Py_ssize_t avail):
        # An incomplete frame may not grow past the bound either.
        if avail > self.max_request:
            raise RequestTooLarge(f"a RESP frame over {self.max_request} bytes")
        return False

    def run_hot(self, WireLane lane, Py_ssize_t limit):
        """Handle the hot commands at the head of the buffer (at most ``limit``; none
        once :attr:`parked`); stop at the first other request, which stays buffered.
        Returns how many it handled.

        * With a ``lane``: ``LOCK.ACQUIRE key session [SHARED] [TIMEOUT ms] [REQID n]``
          and ``SEM.ACQUIRE key session permits [TIMEOUT ms] [REQID n]`` (then parked),
          ``LOCK.RELEASE`` / ``SEM.RELEASE key session [TOKEN t] [REQID n]`` (options in
          any order, each at most once, plain decimal numbers in range, a valid key) go
          into the lane.
        * With :attr:`id_next` set and nothing in flight: ``ID.NEXT`` is answered at once
          (``id_next()``'s integer into the output buffer; an error leaves the request
          for the command table, which reports it)."""
        cdef Span spans[HOT_SPANS]
        cdef Py_ssize_t argc, r, first_option, handled = 0
        cdef const unsigned char *base
        cdef const unsigned char *name
        cdef uint64_t session, token, request_id, permits
        cdef uint32_t timeout_ms
        cdef uint64_t value
        cdef uint8_t kind, op, flags
        cdef bint locks = lane is not None and not lane.closed
        global _hot_ids
        if self.closed:
            return 0
        while handled < limit and not self.parked:
            argc = 0
            r = self._scan(spans, &argc)
            if r <= 0 or argc > HOT_SPANS:
                break
            base = self.inp.data + self.inp.start
            name = base + spans[0].off
            if argc == 1:
                if self.outstanding or self.id_next is None or not _is_word(name, spans[0].len, b"id.next", 7):
                    break
                try:
                    value = self.id_next()
                except Exception:
                    break
                _append_token_reply(&self.out, value)
                self.inp.start += r
                handled += 1
                _hot_ids += 1
                continue
            if not locks or argc < 3:
                break
            first_option = 3
            permits = 0
            if _is_word(name, spans[0].len, b"lock.acquire", 12):
                kind, op = KIND_ACQUIRE, OP_ACQUIRE
            elif _is_word(name, spans[0].len, b"lock.release", 12):
                kind, op = KIND_RELEASE, OP_RELEASE
            elif _is_word(name, spans[0].len, b"sem.acquire", 11):
                kind, op = KIND_ACQUIRE, OP_SEM_ACQUIRE
                if argc < 4 or not _decimal(base + spans[3].off, spans[3].len, 1, &permits) \
                        or permits > C_MAX_PERMITS:
                    break
                first_option = 4
            elif _is_word(name, spans[0].len, b"sem.release", 11):
                kind, op = KIND_RELEASE, OP_SEM_RELEASE
            else:
                break
            if spans[1].len < 1 or spans[1].len > C_MAX_KEY:
                break
            if self.lock_prefixes is not None and not self._may_lock(base + spans[1].off, spans[1].len):
                break
            if not self._session(lane, base + spans[2].off, spans[2].len, &session):
                break
            if not _hot_options(base, spans, first_option, argc, kind, op == OP_ACQUIRE, &flags, &token,
                                &request_id, &timeout_ms):
                break
            lane._push(self, kind, op, flags, session, permits if op == OP_SEM_ACQUIRE else token,
                       request_id, timeout_ms, <const char *>base + spans[1].off, spans[1].len)
            self.inp.start += r
            self.outstanding += 1
            handled += 1
            if kind == KIND_ACQUIRE:
                self.parked = True
        return handled


cdef struct Entry:
    Py_ssize_t offset    # of the command in the lane's (or batch's) bytes
    uint8_t kind         # KIND_ACQUIRE / KIND_RELEASE
    uint32_t timeout_ms  # an acquire's TIMEOUT (0: none)
    double submitted     # CLOCK_MONOTONIC seconds when it entered the lane (with a timeout)


cdef inline double _monotonic() noexcept nogil:
    """What Python's ``time.monotonic()`` reads (CLOCK_MONOTONIC, seconds)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class WireLane:
    """The hot commands of every connection waiting for the lock service's next batch.

    ``wake()`` is called when the lane gets its first command (to wake the batch
    writer); ``other(batch, i, owner, error)`` is called by :meth:`WireBatch.resolve`
    for each command whose reply is not a plain success (and by :meth:`WireBatch.fail`
    for every command) and returns the reply to queue, or None; ``dirty`` lists the
    ``conn`` of each connection a batch gave replies to (each once: its ``dirty`` flag)."""

    cdef Buf cmds
    cdef list owners
    cdef Entry *entries
    cdef Py_ssize_t count
    cdef Py_ssize_t slots
    cdef public object wake
    cdef public object other
    #: ``verify(handle bytes) -> session id`` (0: not a live session's handle).
    cdef public object verify
    cdef readonly list dirty
    cdef public bint closed
    # Hot commands answered, by op (OP_ACQUIRE .. OP_SEM_RELEASE: see _op_slot) and
    # outcome (0: OK, 1: anything else), read by the server's metrics at scrape time.
    cdef unsigned long long answered[4][2]

    def __cinit__(self, *args, **kwargs):
        self.owners = []
        self.dirty = []

    def __init__(self, wake, other, list dirty not None):
        self.wake = wake
        self.other = other
        self.dirty = dirty

    def __dealloc__(self):
        cc_pymem_free(self.cmds.data)
        cc_pymem_free(self.entries)

    def __len__(self):
        return self.count

    cdef int _push(self, WireConn owner, uint8_t kind, uint8_t op, uint8_t flags, uint64_t session,
                   uint64_t arg, uint64_t request_id, uint32_t timeout_ms, const char *key,
                   Py_ssize_t klen) except -1:
        cdef Py_ssize_t n
        cdef Entry *entries
        cdef Entry *e
        if self.count == self.slots:
            n = self.slots * 2 if self.slots else 64
            entries = <Entry *>cc_pymem_realloc(self.entries, <size_t>n * sizeof(Entry))
            if entries == NULL:
                raise MemoryError()
            self.entries = entries
            self.slots = n
        if kind == KIND_ACQUIRE:
            arg |= <uint64_t>timeout_ms << 32  # format version 2: the wait TIMEOUT rides in the log
        _reserve(&self.cmds, CMD_SIZE + klen)
        _put_command(self.cmds.data + self.cmds.end, op, flags, session, request_id, arg, key, klen)
        e = &self.entries[self.count]
        e.offset = self.cmds.end
        e.kind = kind
        e.timeout_ms = timeout_ms
        e.submitted = _monotonic() if timeout_ms else 0.0
        self.cmds.end += CMD_SIZE + klen
        PyList_Append(self.owners, owner)
        self.count += 1
        if self.count == 1 and self.wake is not None:
            self.wake()
        return 0

    def counts(self):
        """Hot commands answered so far: ``{name: (ok, other)}`` (other: errors, waits
        that ended without a grant, commands of a batch that failed)."""
        return {name: (self.answered[i][0], self.answered[i][1])
                for i, name in enumerate(("LOCK.ACQUIRE", "LOCK.RELEASE", "SEM.ACQUIRE", "SEM.RELEASE"))}

    def cut(self, Py_ssize_t limit, Py_ssize_t max_bytes=PY_SSIZE_T_MAX):
        """Take out the first ``limit`` commands (all if fewer), together at most
        ``max_bytes`` long, as a :class:`WireBatch`, or None if there are none (or the
        first is longer)."""
        cdef Py_ssize_t n = min(self.count, limit)
        cdef Py_ssize_t nbytes, i
        cdef WireBatch batch
        while n > 0 and (self.entries[n].offset if n < self.count else self.cmds.end) > max_bytes:
            n -= 1  # a log with small records (etcd's): the rest waits for the next batch
        if n <= 0:
            return None
        nbytes = self.entries[n].offset if n < self.count else self.cmds.end
        batch = WireBatch.__new__(WireBatch)
        batch.lane = self
        batch.commands = PyBytes_FromStringAndSize(<char *>self.cmds.data, nbytes)
        batch.entries = <Entry *>cc_pymem_malloc(<size_t>n * sizeof(Entry))
        if batch.entries == NULL:
            raise MemoryError()
        memcpy(batch.entries, self.entries, <size_t>n * sizeof(Entry))
        batch.count = n
        if n == self.count:
            batch.owners = self.owners
            self.owners = []
            self.cmds.end = 0
        else:  # a flood: the rest waits for the next batch
            batch.owners = self.owners[:n]
            del self.owners[:n]
            memmove(self.cmds.data, self.cmds.data + nbytes, <size_t>(self.cmds.end - nbytes))
            self.cmds.end -= nbytes
            for i in range(self.count - n):
                self.entries[i] = self.entries[i + n]
                self.entries[i].offset -= nbytes
        self.count -= n
        return batch


cdef inline int _op_slot(uint8_t op) noexcept:
    if op == OP_ACQUIRE:
        return 0
    if op == OP_RELEASE:
        return 1
    if op == OP_SEM_ACQUIRE:
        return 2
    return 3


cdef class WireBatch:
    """Hot commands cut from a :class:`WireLane` into one batch: ``commands`` (their
    encoded bytes, to put in the batch record) and ``count``."""

    cdef WireLane lane
    cdef readonly bytes commands
    cdef readonly Py_ssize_t count
    cdef list owners
    cdef Entry *entries
    cdef bytes raw
    cdef Py_ssize_t base

    def __dealloc__(self):
        cc_pymem_free(self.entries)

    def __len__(self):
        return self.count

    def entry(self, Py_ssize_t i):
        """``(kind, session, key, what, timeout_ms, left)`` of command ``i``: kind
        ACQUIRE or RELEASE; what it contends for (``"lock"``, ``"shared"`` or
        ``"semaphore"``); an acquire's ``TIMEOUT`` as sent (0: none) and the seconds left
        of it now (None: no timeout; counted from when the command was read, as the
        command table counts it)."""
        cdef const unsigned char *p
        cdef Entry *e
        if i < 0 or i >= self.count:
            raise BadArgument(f"entry {i} is out of range")
        e = &self.entries[i]
        p = <const unsigned char *>PyBytes_AS_STRING(self.commands) + e.offset
        left = None
        if e.timeout_ms:
            left = e.timeout_ms / 1000.0 - (_monotonic() - e.submitted)
        if p[0] == OP_SEM_ACQUIRE or p[0] == OP_SEM_RELEASE:
            what = "semaphore"
        elif p[0] == OP_ACQUIRE and p[1] & F_SHARED:
            what = "shared"
        else:
            what = "lock"
        return (e.kind, cc_ld64(p + 8), PyBytes_FromStringAndSize(<const char *>p + CMD_SIZE, cc_ld16(p + 2)),
                what, e.timeout_ms, left)

    def result(self, Py_ssize_t i):
        """The packed result (RES_SIZE bytes) of command ``i`` (during :meth:`resolve`)."""
        if i < 0 or i >= self.count or self.raw is None:
            raise BadArgument(f"result {i} is not available")
        return self.raw[(self.base + i) * RES_SIZE:(self.base + i + 1) * RES_SIZE]

    cdef int _deliver(self, WireConn owner, bytes reply) except -1:
        if reply is not None and not owner.closed:
            _append(&owner.out, PyBytes_AS_STRING(reply), PyBytes_GET_SIZE(reply))
        if not owner.dirty and not owner.closed:
            owner.dirty = True
            PyList_Append(self.lane.dirty, owner.conn)
        return 0

    def resolve(self, bytes raw_results not None, Py_ssize_t base):
        """Answer every command from the packed results of the applied batch, where the
        first of them is result ``base``: a successful acquire gets ``:token``, a
        successful release ``+OK``, in each connection's output in request order; any
        other outcome (and an acquire of a connection that has gone) is the lane's
        ``other`` callback's to answer."""
        cdef const unsigned char *p
        cdef Py_ssize_t i
        cdef WireConn owner
        cdef unsigned char kind
        cdef const unsigned char *cmds = <const unsigned char *>PyBytes_AS_STRING(self.commands)
        cdef WireLane lane = self.lane
        if base < 0 or (base + self.count) * RES_SIZE > PyBytes_GET_SIZE(raw_results):
            raise BadArgument("the packed results do not cover this batch")
        self.raw = raw_results
        self.base = base
        other = self.lane.other
        for i in range(self.count):
            owner = <WireConn>PyList_GET_ITEM(self.owners, i)
            kind = self.entries[i].kind
            p = <const unsigned char *>PyBytes_AS_STRING(raw_results) + (base + i) * RES_SIZE
            lane.answered[_op_slot(cmds[self.entries[i].offset])][p[1] != 0] += 1
            owner.outstanding -= 1
            if kind == KIND_ACQUIRE:
                owner.parked = False
            if p[1] == 0 and not owner.closed:  # OK
                if kind == KIND_ACQUIRE:
                    _append_token_reply(&owner.out, cc_ld64(p + 8))
                else:
                    _append(&owner.out, b"+OK\r\n", 5)
                self._deliver(owner, None)
            elif p[1] != 0 or kind == KIND_ACQUIRE:
                self._deliver(owner, other(self, i, owner, None))
        self.raw = None

    def fail(self, error):
        """The batch did not commit: every command gets ``other(batch, i, owner, error)``."""
        cdef Py_ssize_t i
        cdef WireConn owner
        cdef const unsigned char *cmds = <const unsigned char *>PyBytes_AS_STRING(self.commands)
        other = self.lane.other
        for i in range(self.count):
            owner = <WireConn>PyList_GET_ITEM(self.owners, i)
            self.lane.answered[_op_slot(cmds[self.entries[i].offset])][1] += 1
            owner.outstanding -= 1
            if self.entries[i].kind == KIND_ACQUIRE:
                owner.parked = False
            self._deliver(owner, other(self, i, owner, error))


def live_blocks():
    """How many blocks this module's buffers hold now (a leak test reads it before and after)."""
    return cc_live_blocks()
