"""One client connection: an ``asyncio.Protocol`` speaking RESP.

The read path follows asyncpg's shape: ``data_received`` feeds the connection's
native wire state (:class:`coordcore._native.lockwire.WireConn`) and drains *every*
complete request in the buffer before writing all their replies with one
``transport.write`` (pipelining costs one syscall per read, not per request).

The hot lock commands (``LOCK.ACQUIRE key session [SHARED] [TIMEOUT ms] [REQID n]``,
``SEM.ACQUIRE key session permits [TIMEOUT ms] [REQID n]``, ``LOCK.RELEASE`` and
``SEM.RELEASE key session [TOKEN t] [REQID n]``) never become Python objects: the
native parser encodes them straight into the lock service's
:class:`~coordcore._native.lockwire.WireLane`, and the batch that commits them writes
their replies into the connection's native output buffer, which the batch's end flushes
(one write per connection per batch). ``ID.NEXT`` is answered the same way, at once,
from the ID generator. Every other request
reaches the command table as a list of bytes. A frame outside the request grammar
(``*N`` arrays of ``$len`` bulk strings) is framed natively
(:meth:`~coordcore._native.lockwire.WireConn.take_frame`, which checks every header
against the bounds first, so a header claiming 2**31 elements reaches no parser) and
that one whole frame is read by ``hiredis``, which knows all of RESP; the stream then
goes on in the grammar. To keep replies in request order a
connection never has both kinds in flight: a hot command waits (stays in the
buffer) while a table command's reply is pending, and a table command waits while
hot commands are in flight.

States: a connection is in one :class:`State` at a time (the shape of asyncpg's
``coreproto``), moved only along :data:`TRANSITIONS`: NEW, then READY (parsing), then
one hold at a time, PARKED (a blocking command), BARRIER (a request waits for the
replies in flight) or FULL (``max_inflight``), each left for READY by the flush that
answers what it waits for; ENDED after the client's EOF; CLOSING; CLOSED. Which
commands it serves is its gate, set by the command table's flags (before AUTH, while
a RESP2 connection watches). What it needs of the server is
:class:`~coordcore.server.core.ServerView`; what handlers see of it is
:class:`~coordcore.server.core.Client`.

Ordering: replies always come back in request order. A command that must commit
through the lock log (``LOCK.TRY``, ``LOCK.RELEASE``, ``SESSION.*``...) runs as a task
and its reply waits in a slot while the requests behind it keep being parsed and
submitted, so one pipelining connection fills a whole group-commit batch (requests
reach the lock service in request order, so they are applied in that order). A
*blocking* command (``LOCK.ACQUIRE``, ``SEM.ACQUIRE``, ``ELECT.CAMPAIGN``, which may
wait for other clients) *parks* the connection, as Redis does for its blocking
commands: the wait happens server side, other connections are served meanwhile, and
the requests pipelined behind it stay unparsed in the buffer (reading pauses) until
it is answered, so a pipelined ``LOCK.RELEASE`` can never overtake its
``LOCK.ACQUIRE``. A read of lock state (``LOCK.INFO``...) behind writes still in
flight on its connection waits for them to commit, so it sees them. At most
``max_inflight`` commands are in flight per connection (then reading pauses).

Back-pressure: ``pause_writing`` (the transport's write buffer is over its high mark)
pauses *reading* and *parsing*: nothing already buffered is started either, so a
client that does not read its replies stops being served and its output grows by at
most the replies of work already in flight (a pipeline of large replies is written as
it passes the high mark, so the pause comes in time). The unparsed input of a
connection is bounded as a whole: past ``max_request_bytes`` buffered (whatever holds
it: a parked command, a barrier, ``max_inflight``, paused writes) reading pauses until
the buffer drains. A connection whose output backlog passes ``max_output_bytes`` is
closed, checked on every write while writes are paused (pushes, watch events, cannot
be paused). Across connections, the server keeps a budget of buffered bytes
(``max_buffered_bytes``, input plus output; :mod:`coordcore.server.budget`): over it,
every connection holding more than its ``FLOOR`` stops reading until the server's sweep counts the total back
under 3/4 of the budget, while small ones (a prober's PING) go on; freed memory is
handed back to the system (``malloc_trim``) once enough was released.

Idle requests: an incomplete request that sits at the head of the input, unfinished,
for more than ``idle_timeout`` seconds (the client's fault: nothing holds it) gets
``-PROTO`` and a close, with a log line; idle connections between requests are fine.

Bounds: a request (or any frame) may be at most ``max_request_bytes`` and ``max_args``
elements per aggregate (and 32 levels deep), checked on the headers before anything is
allocated; past either the client gets ``-TOOBIG`` and the connection is closed,
because the rest of an oversized frame cannot be skipped safely. A frame that is valid
RESP but not a request (an integer, a nested array) gets ``-PROTO`` and the stream goes
on: it was framed whole, so the stream is still in sync. Bytes that are not RESP (or
that hiredis refuses, such as a map keyed by an array) get ``-PROTO`` and a close;
no client bytes can raise inside the server.

Inline requests: a request whose first byte starts no RESP frame is a line of words,
as Redis reads ``PING\r\n`` from telnet, nc or redis-benchmark's PING_INLINE
(:func:`split_inline`; at most ``INLINE_MAX`` bytes, else ``-TOOBIG`` and a close; an
unbalanced quote gets ``-PROTO`` and the stream goes on). It is looked at only once the
buffer has left the ``*`` grammar, so the hot path never sees it.
"""
from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import socket
import ssl
import time
from asyncio import sslproto
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis

from coordcore._native import require
from coordcore.errors import (
    AuthRequired,
    BadArgument,
    CoordcoreError,
    InternalError,
    NoPermission,
    ProtocolError,
    RequestTooLarge,
    TooManyConnections,
    Unavailable,
    UnknownCommand,
)
from coordcore.server import resp
from coordcore.server.acl import DEFAULT, User
from coordcore.server.budget import FLOOR
from coordcore.server.core import Client, Command, Flag, Reply, ServerView
from coordcore.tracing import parse_traceparent, parse_tracestate

__all__ = ["Connection", "State", "TlsAccept", "cert_names"]

_WireConn = require("lockwire").WireConn
_monotonic = time.monotonic


class State(enum.IntEnum):
    """Where a connection is (one at a time; see :data:`TRANSITIONS`). Ordered, so the
    read loop's "still open?" is one comparison: ``state < CLOSING``."""

    #: Made; the transport is not connected yet.
    NEW = 0
    #: Every complete request is parsed and started as it arrives.
    READY = 1
    #: A blocking command is in flight (a table one, or a hot acquire in the lane):
    #: the requests behind it stay unparsed until it is answered.
    PARKED = 2
    #: A request waits for this connection's replies in flight: a table request behind
    #: hot commands, or a read of lock state behind writes it must see.
    BARRIER = 3
    #: ``max_inflight`` commands are in flight: parsing resumes at half of it.
    FULL = 4
    #: The client sent EOF: what is in flight is answered, what it pipelined is parsed
    #: once nothing is, then the connection closes.
    ENDED = 5
    #: Closing (QUIT, a fatal frame, a limit, abort): nothing more is parsed or started.
    CLOSING = 6
    #: The transport is gone.
    CLOSED = 7


_NEW, _READY, _PARKED, _BARRIER, _FULL, _ENDED, _CLOSING, _CLOSED = State

#: The legal transitions. A hold (PARKED, BARRIER, FULL) is left for READY by the flush
#: that answers what it waits for, or for ENDED at EOF (not PARKED: a client that hangs
#: up on a blocking command closes at once). ENDED keeps its own rule (it holds while
#: anything is in flight) instead of entering the holds.
TRANSITIONS: dict[State, frozenset[State]] = {
    _NEW: frozenset({_READY, _CLOSING, _CLOSED}),
    _READY: frozenset({_PARKED, _BARRIER, _FULL, _ENDED, _CLOSING, _CLOSED}),
    _PARKED: frozenset({_READY, _CLOSING, _CLOSED}),
    _BARRIER: frozenset({_READY, _ENDED, _CLOSING, _CLOSED}),
    _FULL: frozenset({_READY, _ENDED, _CLOSING, _CLOSED}),
    _ENDED: frozenset({_CLOSING, _CLOSED}),
    _CLOSING: frozenset({_CLOSED}),
    _CLOSED: frozenset(),
}

#: Why the transport's reading is paused (any of them keeps it paused).
_PAUSE_WRITE = 1  # the transport's write buffer is over its high mark
_PAUSE_HELD = 2  # more than a request's worth of input waits unparsed
_PAUSE_BUDGET = 4  # the server is over its buffer budget

_PARKS = int(Flag.PARKS)
_READS = int(Flag.READS)
_NOAUTH = int(Flag.NOAUTH)
_WATCH = int(Flag.WATCH)


def _unknown_command(conn: Client, req: list[bytes]) -> bytes:
    name = req[0][:32].decode("ascii", "replace")
    return resp.encode_exception(UnknownCommand(f"unknown command '{name}'"))


def _auth_required(conn: Client, req: list[bytes]) -> bytes:
    return resp.encode_exception(AuthRequired("authentication required"))


def _not_a_request(conn: Client, req: list[bytes]) -> bytes:
    return resp.encode_exception(ProtocolError("expected an array of bulk strings"))


#: Longest inline request line (Redis's PROTO_INLINE_MAX_SIZE), within max_request_bytes.
INLINE_MAX = 64 << 10

#: The first words of HTTP request lines (an inline request starting so is refused).
_HTTP_WORDS = frozenset((b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE"))
_SPACE = frozenset(b" \t\r\n\v\f\0")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = frozenset(b"0123456789abcdefABCDEF")


def split_inline(line: bytes) -> list[bytes]:
    """An inline request's arguments, split as Redis splits them (``sdssplitargs``):
    on white space; ``"..."`` takes ``\\n \\r \\t \\b \\a \\xHH`` and ``\\<char>`` escapes,
    ``'...'`` only ``\\'``; a quote may open inside a word (``a"b c"`` is ``ab c``) but
    a closing quote must end it. An unbalanced quote raises ProtocolError.

    >>> split_inline(rb'ECHO "a b\\x41\\n" x')
    [b'ECHO', b'a bA\\n', b'x']
    >>> split_inline(rb"SET k 'it\\'s'")
    [b'SET', b'k', b"it's"]
    >>> split_inline(b'PING "x')
    Traceback (most recent call last):
    ...
    coordcore.errors.ProtocolError: unbalanced quotes in inline request
    """
    if 0x22 not in line and 0x27 not in line:
        # No quotes (PING, most typed lines): the same split, natively.
        return line.replace(b"\0", b" ").split()
    args: list[bytes] = []
    n = len(line)
    i = 0
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return args
        word = bytearray()
        quote = 0  # the open quote's byte, 0 outside quotes
        while True:
            if i >= n:
                if quote:
                    raise ProtocolError("unbalanced quotes in inline request")
                break
            c = line[i]
            if quote == 0x22:  # "
                if c == 0x5C and i + 3 < n and line[i + 1] == 0x78 and line[i + 2] in _HEX \
                        and line[i + 3] in _HEX:  # \xHH
                    word.append(int(line[i + 2:i + 4], 16))
                    i += 4
                    continue
                if c == 0x5C and i + 1 < n:
                    word.append(_ESCAPES.get(line[i + 1], line[i + 1]))
                    i += 2
                    continue
            elif quote == 0x27 and c == 0x5C and i + 1 < n and line[i + 1] == 0x27:  # \'
                word.append(0x27)
                i += 2
                continue
            if quote:
                i += 1
                if c == quote:
                    if i < n and line[i] not in _SPACE:
                        raise ProtocolError("unbalanced quotes in inline request (a closing quote must "
                                            "be followed by a space)")
                    break
                word.append(c)
            elif c in _SPACE:
                break
            elif c == 0x22 or c == 0x27:
                quote = c
                i += 1
            else:
                word.append(c)
                i += 1
        args.append(bytes(word))


#: What a request gets when the table has no entry for it in the connection's mode.
_UNKNOWN = Command(_unknown_command)
_AUTH_REQUIRED = Command(_auth_required)
_NOT_A_REQUEST = Command(_not_a_request)


class Connection(asyncio.Protocol):
    """Server side of one client connection (one instance per connection).

    Its :attr:`state` is one :class:`State`; the command table's entries carry the
    flags that move it (a PARKS command parks it, a READS one may wait at a barrier).
    Which entries it serves is its gate: before AUTH only NOAUTH ones, on RESP2 while
    watching only WATCH ones (the others get ``-NOAUTH`` / ``-UNKNOWN``)."""

    def __init__(self, server: ServerView) -> None:
        self._server = server
        config = self._config = server.config
        self._commands = server.commands
        self._budget = server.budget
        self._log = server.log
        #: The lock service's native command lane (None: no lock service here).
        self._lane = server.lane
        self.transport: asyncio.Transport | None = None
        #: The native wire state: request buffer and parser, hot commands in flight and
        #: their ready replies (see the module docstring).
        self.wire = _WireConn(self, config.max_args, config.max_request_bytes)
        ids = self._ids = server.ids
        if ids is not None:
            self.wire.id_next = ids.next_id
        self.state = _NEW
        self.resp3 = False
        #: The gate: the flags a command needs now, and what one without them gets.
        open_door = config.requirepass is None and config.acl_file is None
        self._need, self._refuse = (0, _UNKNOWN) if open_door else (_NOAUTH, _AUTH_REQUIRED)
        #: Who this connection acts for, and the user whose ACL each request is checked
        #: against (None: a user who may do everything, so no check runs).
        self.user: User = DEFAULT
        self._perm: User | None = None
        self._denials = 0
        self.name = b""
        self.laddr = "?"
        self.fd = -1
        self.created = self.last_read = _monotonic()
        self.last_cmd = b""
        self.readonly = False
        self.watching = False
        self.peer = "?"
        #: The client's address without its port (what AUTH failures are counted by).
        self.peer_host = "?"
        self.id = 0
        self._pause = 0
        #: This connection's input + output bytes as last counted in the budget.
        self._accounted = 0
        #: Loop time since which an incomplete request has sat at the head of the input
        #: (None: none does); see the budget's idle sweep.
        self._partial_since: float | None = None
        #: Requests handled and frames taken here (progress, for the idle clock).
        self._progress = 0
        #: Replies in request order: ready bytes, or tasks of commands in flight.
        self._slots: deque[bytes | asyncio.Future[bytes]] = deque()
        #: The blocking command this connection waits for (PARKED; or while ENDED).
        self._parked: asyncio.Future[bytes] | None = None
        #: A request waiting for this connection's replies in flight (BARRIER).
        self._deferred: list[bytes] | None = None
        self._flush_handle: asyncio.Handle | None = None
        #: Callbacks run when the connection goes (watch cancellation, ...).
        self.on_close: list[Callable[[], object]] = []
        #: What the lock commands keep per connection (see coordcore.server.lockcmds).
        self.lock_state: Any = None

    def _set_state(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"connection {self.id}: no transition from {self.state.name} to {new.name}")
        self.state = new

    def _hold(self, state: State) -> None:
        """Stop parsing for ``state``'s reason (ENDED holds by its own rule)."""
        if self.state is not _ENDED:
            self._set_state(state)

    @property
    def _closing(self) -> bool:
        return self.state >= _CLOSING

    def _begin_close(self) -> None:
        if self.state < _CLOSING:
            self._set_state(_CLOSING)

    # --- what handlers may ask (coordcore.server.core.Client) ------------------------

    @property
    def authenticated(self) -> bool:
        return not self._need & _NOAUTH

    def login(self, user: User) -> None:
        self._need, self._refuse = 0, _UNKNOWN
        if user is self.user and self._perm is None and user is DEFAULT:
            return  # --requirepass: nothing changes (today's fast path)
        self.user = user
        self._perm = None if user.unlimited else user
        wire = self.wire
        lane = self._lane
        owner = user.owner
        # The lane checks handles with this user's binding, and leaves keys outside the
        # user's lock prefixes to the table, which answers -NOPERM.
        verify = functools.partial(lane.verify, owner=owner) if owner and lane is not None \
            and lane.verify is not None else None
        wire.set_access(verify, None if user.lock == (b"",) else user.lock)
        ids = self._ids
        wire.id_next = ids.next_id if ids is not None and "ids" in user.groups else None

    def authenticate(self) -> None:
        self.login(DEFAULT)

    def _deny(self, req: list[bytes], why: str) -> bytes:
        self._denials += 1
        n = self._denials
        if n <= 10 or n % 1000 == 0:  # bounded: a client cannot flood the log
            self._log.warning("permission denied", audit="noperm", conn=self.id, peer=self.peer,
                              user=self.user.name, command=_safe_name(req), reason=why, denials=n)
        return resp.encode_exception(NoPermission(f"{why}; nothing was done"))

    @property
    def buffered(self) -> tuple[int, int]:
        transport = self.transport
        return self.wire.buffered, transport.get_write_buffer_size() if transport is not None else 0

    def watch_mode(self, watching: bool) -> None:
        self.watching = watching
        self._need, self._refuse = (_WATCH if watching else 0), _UNKNOWN

    # --- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack alike.
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
            self.peer_host = str(peer[0])
        local = transport.get_extra_info("sockname")
        if local:
            self.laddr = f"{local[0]}:{local[1]}" if isinstance(local, tuple) else str(local)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.fd = sock.fileno()
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - a socket that went away already
                pass
        transport.set_write_buffer_limits(high=self._config.write_high_water)
        ident = self._server.admit(self)
        if ident is None:
            self._set_state(_CLOSING)
            transport.write(resp.encode_exception(TooManyConnections("too many connections")))
            transport.close()
            return
        self.id = ident
        self._set_state(_READY)

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_state(_CLOSED)
        # Hot commands in flight still commit; an acquire among them is withdrawn when
        # its batch finds the connection closed (the lane's ``other`` callback).
        self.wire.close()
        parked = self._parked
        if parked is not None and not parked.done():
            # The client is gone: stop waiting on its behalf (the lock layer withdraws
            # the wait; a grant that raced with this is released there).
            parked.cancel()
        # Other commands in flight run to completion: they were sent, so they happen
        # (a vanished client cannot tell either way, as with any lost reply).
        self._slots.clear()
        for callback in self.on_close:
            try:
                callback()
            except Exception:  # pragma: no cover - defensive: never fail a close
                self._log.exception("on_close callback failed", conn=self.id)
        self.on_close.clear()
        self._budget.change(-self._accounted)
        self._accounted = 0
        self._budget.forget(self)
        self._server.forget(self)

    def pause_writing(self) -> None:
        # Stop reading *and* stop parsing what is buffered (see _holding): a client
        # that does not read its replies gets no more work done for it, so its output
        # grows by at most the replies of what is already in flight.
        self._pause_reading(_PAUSE_WRITE)
        self._check_output()

    def resume_writing(self) -> None:
        self._resume_reading(_PAUSE_WRITE)
        self._continue()

    def data_received(self, data: bytes) -> None:
        if self.state >= _CLOSING:
            return
        self.last_read = _monotonic()
        self.wire.feed(data)
        if self._holding():
            # Holding: keep the bytes buffered, unparsed. Reading goes on (so a client
            # that vanishes while it waits is noticed at once) until the buffer passes
            # the request bound; then reading pauses until we catch up.
            self._bound_input()
            self._account()
            return
        self._safe_drain()

    def eof_received(self) -> bool | None:
        # The client finished sending. Commands in flight are answered, then the
        # connection closes (``printf 'PING\r\n' | nc`` style use). But a client that
        # hangs up while parked on a blocking command is gone as far as that wait is
        # concerned (a full close looks the same from here): close now, which
        # withdraws the wait.
        state = self.state
        if state is _PARKED or state >= _CLOSING:
            return None
        if not self._slots and self._deferred is None and not self.wire.outstanding:
            return None
        self._set_state(_ENDED)
        return True

    # --- what the server asks -----------------------------------------------------

    def shutdown(self) -> None:
        """The server is stopping: read nothing more, and answer a parked wait now
        (-UNAVAILABLE), withdrawing it; commands already submitted finish with the
        batch they are in."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(Exception):
                transport.pause_reading()
        if self._parked is not None:
            self._parked.cancel()

    def close(self) -> None:
        """Close the transport (what is written still goes out)."""
        if self.transport is not None:
            self.transport.close()

    # --- the read loop ----------------------------------------------------------

    def _holding(self) -> bool:
        """Nothing more may be parsed now: the state holds (PARKED, BARRIER, FULL; ENDED
        while anything is in flight), or the client is not reading its replies."""
        state = self.state
        if state is _READY:
            return self._pause & _PAUSE_WRITE != 0
        if state is _ENDED:
            return bool(self._slots) or self.wire.outstanding > 0 or self._pause & _PAUSE_WRITE != 0
        return True

    def _bound_input(self) -> None:
        """Pause reading while more than a request's worth of bytes waits unparsed (the
        whole buffer counts, so the bound holds across any number of holds)."""
        if self.wire.buffered > self._config.max_request_bytes:
            self._pause_reading(_PAUSE_HELD)
        elif self._pause & _PAUSE_HELD:
            self._resume_reading(_PAUSE_HELD)

    def _continue(self) -> None:
        """Parse what was buffered while holding, if nothing holds any more."""
        if self.state < _CLOSING and not self._holding() and (self._pause & _PAUSE_HELD
                                                              or self._deferred is not None or self.wire.buffered):
            self._safe_drain()

    def _safe_drain(self) -> None:
        """:meth:`_drain`, then the bookkeeping after it: the input bound, the server's
        buffer budget and the idle clock of an incomplete request. A bug closes this
        connection with ``-ERR`` and a log line instead of escaping into the transport
        ("Fatal error on transport") or into the batch listener that flushes every
        connection."""
        progress = self._progress
        try:
            self._drain()
        except Exception as exc:
            self._log.exception("read loop failed, closing", conn=self.id, peer=self.peer)
            self._begin_close()
            self.wire.close()
            if self.transport is not None:
                with contextlib.suppress(Exception):
                    self.transport.write(resp.encode_exception(InternalError.about(exc)))
                self.transport.close()
            return
        if self.state >= _CLOSING:
            return
        self._bound_input()
        self._account()
        if self._config.idle_timeout:
            # What is left unparsed when nothing holds is an incomplete request.
            if self.wire.buffered and not self._holding() and not self._pause:
                if self._partial_since is None or progress != self._progress:
                    self._partial_since = self._budget.incomplete(self)
            elif self._partial_since is not None:
                self._partial_since = None
                self._budget.complete(self)

    def _account(self) -> None:
        """Count this connection's buffered bytes (unparsed input, unsent output) in the
        server's budget; over it, a connection holding more than the budget's FLOOR
        stops reading until the sweep finds the total back under the low mark."""
        transport = self.transport
        now: int = self.wire.buffered + (transport.get_write_buffer_size() if transport is not None else 0)
        if now != self._accounted:
            self._budget.change(now - self._accounted)
            self._accounted = now
        if now > FLOOR and not self._pause & _PAUSE_BUDGET and self._budget.over():
            self._pause_reading(_PAUSE_BUDGET)
            self._budget.pause(self)

    def recount(self) -> None:
        """Count the buffered bytes again (the budget's sweep: output shrinks unseen)."""
        transport = self.transport
        now: int = self.wire.buffered + (transport.get_write_buffer_size() if transport is not None else 0)
        if now != self._accounted:
            self._budget.change(now - self._accounted)
            self._accounted = now

    def resume_budget(self) -> None:
        """The server is back under its buffer budget (its sweep calls this)."""
        if self._pause & _PAUSE_BUDGET:
            self._resume_reading(_PAUSE_BUDGET)
            self._continue()

    def idle_close(self, seconds: float) -> None:
        """An incomplete request sat unfinished for ``seconds`` (the server's sweep)."""
        self._partial_since = None
        if self.state >= _CLOSING or self.transport is None:
            return
        self._log.warning("incomplete request idle, closing", conn=self.id, peer=self.peer,
                          seconds=round(seconds, 1), buffered=self.wire.buffered)
        self._close_after([resp.encode_exception(
            ProtocolError(f"incomplete request idle for over {self._config.idle_timeout:g} s"))])

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if self._pause & _PAUSE_WRITE:
            self._check_output()

    def _check_output(self) -> None:
        # Checked on every write while paused, not only when the pause began: the
        # replies of work already in flight keep arriving after it.
        transport = self.transport
        if transport is not None and self.state < _CLOSING \
                and transport.get_write_buffer_size() > self._config.max_output_bytes:
            self._log.warning("output backlog over limit, closing", conn=self.id, peer=self.peer)
            self.abort()

    def _drain(self) -> None:
        """Handle every complete request in the buffer; write the ready replies at once."""
        out: list[bytes] = []
        wire = self.wire
        lane = self._lane
        slots = self._slots
        commands = self._commands
        max_inflight = self._config.max_inflight
        high_water = self._config.write_high_water
        out_bytes = 0
        handled = 0
        while self.state < _CLOSING:
            if self._deferred is not None:
                req: Any = self._deferred
                self._deferred = None
            else:
                if not slots and not self._need:
                    # The hot commands at the head of the buffer are handled natively:
                    # lock commands go to the lock service (a hot acquire parks:
                    # nothing after it is parsed), ID.NEXT is answered at once.
                    handled += wire.run_hot(lane, max_inflight - wire.outstanding)
                    if wire.parked:
                        if self.state is not _ENDED:  # (_hold, inline: once per hot acquire)
                            self._set_state(_PARKED)
                        break
                    if wire.outstanding >= max_inflight:
                        self._hold(_FULL)
                        break
                    if not wire.outstanding and wire.has_output:
                        out.append(wire.take_output())  # in order with the table's replies
                try:
                    req = wire.next_request()
                    if req is None:
                        # Not the request grammar: one whole RESP frame, its headers
                        # bounded natively first, for hiredis to read.
                        if wire.outstanding:
                            self._hold(_BARRIER)  # answer it once the hot replies are out
                            break
                        req = self._foreign_frame(out)
                        if req is None:
                            self._progress += 1
                            continue  # answered (-PROTO); the stream goes on
                except RequestTooLarge as exc:
                    self._log.warning("request over size limit, closing", conn=self.id, peer=self.peer)
                    out.append(resp.encode_exception(exc))
                    self._close_after(out)
                    return
                except ProtocolError as exc:
                    out.append(resp.encode_exception(exc))
                    self._close_after(out)
                    return
                if req is False:
                    break
            if wire.outstanding:
                # Hot commands are in flight on this connection: their replies come
                # first, so this request waits until they are answered.
                self._deferred = req
                self._hold(_BARRIER)
                break
            handled += 1
            self.last_cmd = req[0]
            entry: Command | None
            for arg in req:
                if type(arg) is not bytes:
                    entry = _NOT_A_REQUEST
                    break
            else:
                entry = commands.get(req[0])
                if entry is None:
                    entry = self._lookup(req[0])
                    if entry is None and req[0].upper() == b"TRACEPARENT":
                        # Not in the table, so only requests that missed it pay for this.
                        entry, req = self._trace_prefix(req)
                need = self._need
                if entry is None or entry.flags & need != need:
                    entry = self._refuse
                elif self._perm is not None:
                    why = self._perm.denied(req)
                    if why is not None:
                        entry = Command(functools.partial(self._deny_request, why))
            flags = entry.flags
            if slots and flags & _READS:
                # A read of lock state behind writes still in flight on this
                # connection: run it once they commit, so it sees them (as a pipeline
                # on Redis would). (A traced one waits in its whole TRACEPARENT form.)
                self._deferred = req if type(req) is list else req.whole
                self._hold(_BARRIER)
                handled -= 1
                break
            try:
                reply: Reply = entry.handler(self, req)
            except CoordcoreError as exc:
                reply = resp.encode_exception(exc)
            except Exception as exc:  # a bug must not take the server down
                self._log.exception("command failed", conn=self.id, command=_safe_name(req))
                reply = resp.encode_exception(InternalError.about(exc))
            if type(reply) is bytes:
                if slots:
                    slots.append(reply)
                else:
                    out.append(reply)
                    out_bytes += len(reply)
                    if out_bytes > high_water:
                        # A pipeline of large replies: write them now, so a client that
                        # does not read pauses writes (and this loop) before more are made.
                        self._write(b"".join(out))
                        out.clear()
                        out_bytes = 0
                        if self._holding():
                            break
                continue
            assert not isinstance(reply, bytes)
            task: asyncio.Future[bytes] = asyncio.ensure_future(reply)
            slots.append(task)
            self._server.track(task)
            task.add_done_callback(self._slot_done)
            if flags & _PARKS:
                # May wait for other clients: later requests stay unparsed until it is
                # answered (Redis blocking-command semantics).
                self._parked = task
                self._hold(_PARKED)
                break
            if len(slots) >= max_inflight:
                self._hold(_FULL)
                break
        self._progress += handled
        self._server.commands_total += handled
        if out and self.transport is not None:  # (closing too: QUIT's +OK)
            self._write(b"".join(out) if len(out) > 1 else out[0])

    def _trace_prefix(self, req: list[bytes]) -> tuple[Command | None, list[bytes]]:
        """``TRACEPARENT traceparent [TRACESTATE tracestate] command [arg ...]``: the
        entry and arguments of the command it carries, its handler inside a server span
        when the server traces (see :mod:`coordcore.server.tracing`); an error entry for
        a bad prefix."""
        usage = "TRACEPARENT takes traceparent [TRACESTATE tracestate] command [arg ...]"
        if len(req) < 3:
            return _error_entry(BadArgument(usage)), req
        start = 2
        if req[2].upper() == b"TRACESTATE":  # no command has this name: a second prefix word
            if len(req) < 5:
                return _error_entry(BadArgument(usage)), req
            start = 4
        inner = _Traced(req[start:])
        inner.whole = req
        name = inner[0]
        if name.upper() in (b"TRACEPARENT", b"TRACESTATE"):
            return _error_entry(BadArgument(f"TRACEPARENT cannot carry another {name.upper().decode()}")), req
        try:
            parent = parse_traceparent(req[1])
            state = parse_tracestate(req[3]) if start == 4 else []
        except CoordcoreError as exc:
            return _error_entry(exc), req
        self.last_cmd = name
        entry = self._commands.get(name) or self._lookup(name)
        tracer = self._server.tracer
        if entry is None or tracer is None:
            return entry, inner
        return Command(tracer.wrap(entry.handler, name, parent, self.peer_host, state), Flag(entry.flags)), inner

    def _deny_request(self, why: str, conn: Client, req: list[bytes]) -> bytes:
        return self._deny(req, why)

    def _foreign_frame(self, out: list[bytes]) -> Any:
        """The frame at the head of the buffer when it is not a request of the grammar:
        a request (a list of bulk strings in another RESP spelling, or an inline line
        when the head byte starts no RESP frame), False if it is not
        complete yet, or None once it got its ``-PROTO`` (valid RESP that is not a
        request: the stream is still in sync and goes on). Raises RequestTooLarge or
        ProtocolError (answered with a close) for what cannot be skipped safely."""
        wire = self.wire
        line = wire.take_inline(min(INLINE_MAX, self._config.max_request_bytes))
        if line is not None:
            return self._inline(line, out)
        frame = wire.take_frame()
        if frame is False:
            return False
        reader = hiredis.Reader()
        reader.feed(frame)
        try:
            req = reader.gets()
        except Exception as exc:  # hiredis refuses it (a map keyed by a list, too deep...)
            raise ProtocolError(f"protocol error: {exc}") from None
        if type(req) is not list or not req or any(type(a) is not bytes for a in req):
            error = _not_a_request(self, [])
            (self._slots.append if self._slots else out.append)(error)
            return None
        return req

    def _inline(self, line: bytes | bool, out: list[bytes]) -> Any:
        """An inline request (Redis's telnet form) as ``_foreign_frame`` answers: its
        arguments, False if incomplete, None if there is nothing to run (an empty line,
        or it got its error: the line is consumed, so the stream is still in sync)."""
        if line is False:
            return False
        assert isinstance(line, bytes)
        error: CoordcoreError | None = None
        try:
            req = split_inline(line)
        except ProtocolError as exc:
            error = exc
        else:
            if not req:
                return None  # an empty line: Redis ignores it
            word = req[0].upper()
            if word in _HTTP_WORDS or word.endswith(b":"):
                # A web page can make a browser POST to a loopback port, and the body's
                # lines would run as inline commands: close at the request line or the
                # first header, as Redis does for POST and Host:.
                self._log.warning("HTTP request on the RESP port, closing", audit="http", conn=self.id,
                                  peer=self.peer)
                raise ProtocolError("this is a RESP port: HTTP requests are refused")
            if len(req) > self._config.max_args:
                error = ProtocolError(f"more than {self._config.max_args} arguments in an inline request")
        if error is not None:
            (self._slots.append if self._slots else out.append)(resp.encode_exception(error))
            return None
        return req

    def _lookup(self, name: bytes) -> Command | None:
        upper = name.upper()
        entry = self._commands.get(upper)
        if entry is not None and name == name.lower():
            self._commands[name] = entry  # memoise the lower-case spelling too
        return entry

    def _task_reply(self, task: asyncio.Future[bytes]) -> bytes:
        if task.cancelled():
            return resp.encode_exception(Unavailable("request cancelled: the server is shutting down"))
        exc = task.exception()
        if exc is None:
            return task.result()
        if isinstance(exc, CoordcoreError):
            return resp.encode_exception(exc)
        self._log.error("command failed", conn=self.id, error=repr(exc))
        return resp.encode_exception(InternalError.about(exc))

    def mark_dirty(self) -> None:
        """A reply of this connection is ready: flush it after the current batch (the
        lock service's batch listener calls :meth:`flush`). A connection without a lane
        (made while a cluster node followed) writes it when the command completes."""
        lane = self._lane
        if lane is not None:
            self.wire.mark_dirty(lane.dirty)

    def park(self, fut: asyncio.Future[bytes]) -> None:
        """A hot acquire came back waiting: from now on it is a parked command like any
        other (its reply is ``fut``'s, in the slot after the replies ready now)."""
        self._parked = fut
        self._slots.append(fut)
        self._server.track(fut)
        fut.add_done_callback(self._slot_done)

    def _slot_done(self, task: asyncio.Future[bytes]) -> None:
        state = self.state
        if state >= _CLOSING or self.transport is None:
            if not task.cancelled():
                task.exception()  # retrieved: the client is gone, nobody reads this
            return
        if not self._slots and (state is _READY or state is _PARKED and self._parked is None):
            return  # flushed already, at the end of the batch (flush)
        # The commands of one batch complete in the same loop turn: flush once after
        # them all, so their replies leave in one write (one syscall) per connection.
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush, False)

    def flush(self, batch_end: bool = True) -> None:
        """Write the replies ready: at a batch's end (the lock commands' batch listener),
        those the batch made ready, if it gave this connection any; else (a command of
        this connection completed) whatever is ready."""
        wire = self.wire
        if batch_end:
            if not wire.dirty:
                return
        else:
            self._flush_handle = None
        # Hot replies first: a connection's table commands only start once its hot
        # commands are answered, and a parked hot acquire joins the slots behind them.
        ready = wire.take_flush()
        if self.state >= _CLOSING or self.transport is None:
            return
        out: list[bytes] = [ready] if ready is not None else []
        slots = self._slots
        while slots:
            head = slots[0]
            if type(head) is bytes:
                out.append(head)
            elif head.done():  # type: ignore[union-attr]
                out.append(self._task_reply(head))  # type: ignore[arg-type]
            else:
                break
            slots.popleft()
        if out:
            self._write(b"".join(out) if len(out) > 1 else out[0])
            if self.state >= _CLOSING:
                return
        if self._parked is not None and self._parked.done():
            self._parked = None
        state = self.state
        if state is _PARKED:
            if self._parked is None and not wire.parked:
                self._set_state(_READY)
        elif state is _BARRIER:
            if not slots and not wire.outstanding:
                self._set_state(_READY)
        elif state is _FULL:
            if len(slots) + wire.outstanding <= self._config.max_inflight // 2:
                self._set_state(_READY)
        if not self._holding() and (self._pause & _PAUSE_HELD or self._deferred is not None or wire.buffered):
            # Requests that arrived meanwhile are still buffered.
            self._safe_drain()
        else:
            self._account()
        if self.state is _ENDED and not slots and self._parked is None and not wire.outstanding:
            self._set_state(_CLOSING)
            self.transport.close()

    # --- helpers used by handlers --------------------------------------------------

    def close_after_reply(self) -> None:
        """Ask the read loop to close the connection once the current reply is written."""
        self._begin_close()
        if self.transport is not None:
            asyncio.get_running_loop().call_soon(self._close_transport)

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def push(self, frame: bytes) -> None:
        """Write an out-of-band frame (a watch event) now, between replies."""
        if self.state >= _CLOSING or self.transport is None:
            return
        self.transport.write(frame)
        self._check_output()

    def abort(self) -> None:
        self._begin_close()
        self.wire.close()
        if self.transport is not None:
            self.transport.abort()

    def _close_after(self, out: list[bytes]) -> None:
        self._begin_close()
        if self.transport is not None:
            self.transport.write(b"".join(out))
            self.transport.close()

    def _pause_reading(self, reason: int) -> None:
        if not self._pause and self.transport is not None and self.state < _CLOSING:
            self.transport.pause_reading()
        self._pause |= reason

    def _resume_reading(self, reason: int) -> None:
        was = self._pause
        self._pause &= ~reason
        if was and not self._pause and self.transport is not None and self.state < _CLOSING:
            self.transport.resume_reading()


class _Traced(list[bytes]):
    """The arguments of a command that came with a TRACEPARENT prefix, and that whole
    request (what a deferred request is run again from)."""

    __slots__ = ("whole",)
    whole: list[bytes]


def _error_entry(exc: CoordcoreError) -> Command:
    reply = resp.encode_exception(exc)
    return Command(lambda conn, req: reply)


def _safe_name(req: list[Any]) -> str:
    name = req[0] if req else b""
    return name[:32].decode("ascii", "replace") if isinstance(name, bytes) else "?"


#: Seconds a TLS client has to finish its handshake.
TLS_HANDSHAKE_TIMEOUT = 10


class TlsAccept(asyncio.Protocol):
    """A TCP connection on a TLS port until its handshake is done, then a
    :class:`Connection` on the TLS transport.

    The handshake is made here rather than by the listener, which drops a failed one
    silently: a failure is logged, with the client's address (an audit line). The TLS
    layer (the loop's ``SSLProtocol``: uvloop's compiled one, 1.1-1.35x the requests per
    second of asyncio's pure-Python one here) is put under the socket in ``connection_made``
    itself, before any byte can arrive: ``loop.start_tls`` would install it a loop turn
    later, and uvloop hands a ClientHello that came in between to the plain protocol
    (the handshake then never completes). A verified client certificate may name the
    user (``login_by_cert``)."""

    def __init__(self, server: ServerView, context: ssl.SSLContext,
                 login_by_cert: Callable[[Connection, dict[str, Any]], None]) -> None:
        self._server = server
        self._context = context
        self._login_by_cert = login_by_cert
        self._peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if peer:
            self._peer = f"{peer[0]}:{peer[1]}"
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        tls = _ssl_protocol(loop)(loop, _TlsConnection(self._server, self._login_by_cert), self._context,
                                  done, server_side=True, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        transport.set_protocol(tls)
        tls.connection_made(transport)
        done.add_done_callback(self._handshake_done)

    def _handshake_done(self, fut: asyncio.Future[None]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            self._server.log.warning("TLS handshake failed", audit="tls", peer=self._peer,
                                     error=getattr(exc, "reason", None) or type(exc).__name__)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - the TLS layer reads
        raise AssertionError("TLS bytes reached the plain protocol")


def _ssl_protocol(loop: asyncio.AbstractEventLoop) -> Any:
    """The TLS layer of the loop's own kind: uvloop's (compiled) on a uvloop loop,
    asyncio's (pure Python) on any other."""
    if type(loop).__module__.startswith("uvloop"):
        import uvloop.loop

        return uvloop.loop.SSLProtocol  # type: ignore[attr-defined]  # compiled, not in its stubs
    return sslproto.SSLProtocol


class _TlsConnection(Connection):
    """A Connection on a TLS transport: a verified client certificate may log it in,
    before it reads its first request."""

    def __init__(self, server: ServerView, login_by_cert: Callable[[Connection, dict[str, Any]], None]) -> None:
        super().__init__(server)
        self._login_by_cert = login_by_cert

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        cert = transport.get_extra_info("peercert")
        if cert and self.state < _CLOSING:
            self._login_by_cert(self, cert)


def cert_names(cert: dict[str, Any]) -> list[str]:
    """The names a peer certificate (``getpeercert()``) carries: its subject's CN and
    its DNS, email and URI subject alternative names."""
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "email", "URI")]
    return names
