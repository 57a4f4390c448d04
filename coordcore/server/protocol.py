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
(``max_buffered_bytes``, input plus output): over it, every connection holding more
than ``BUDGET_FLOOR`` stops reading until the server's sweep counts the total back
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
on: it was framed whole, so the stream is still in sync. Bytes that are not RESP at all
(or that hiredis refuses, such as a map keyed by an array) get ``-PROTO`` and a close;
no client bytes can raise inside the server.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import hiredis

from coordcore._native import require
from coordcore.errors import CoordcoreError, ProtocolError, RequestTooLarge
from coordcore.server import resp

if TYPE_CHECKING:
    from coordcore.server.server import Server

__all__ = ["Connection", "Handler", "Reply"]

_WireConn = require("lockwire").WireConn

#: What a command handler returns: the encoded reply, or an awaitable of it (parks).
Reply = bytes | Awaitable[bytes]
Handler = Callable[["Connection", list[bytes]], Reply]

_PAUSE_WRITE = 1
_PAUSE_HELD = 2
_PAUSE_BUDGET = 4
#: While the server is over its buffer budget, a connection holding more than this
#: (input + output) stops reading; smaller ones (a prober's PING) are still served.
BUDGET_FLOOR = 64 << 10


class Connection(asyncio.Protocol):
    """Server side of one client connection (one instance per connection)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.config = server.config
        #: The command table in force: the full one, or the pre-AUTH one.
        self.table, self.fallback = server.tables_for_new_connection()
        self.transport: asyncio.Transport | None = None
        #: The native wire state: request buffer and parser, hot commands in flight and
        #: their ready replies (see the module docstring).
        self.wire = _WireConn(self, server.config.max_args, server.config.max_request_bytes)
        if server.ids is not None:
            self.wire.id_next = server.ids.next_id
        self.resp3 = False
        self.authenticated = server.config.requirepass is None
        self.name = b""
        self.peer = "?"
        #: The client's address without its port (what AUTH failures are counted by).
        self.peer_host = "?"
        self.id = server.next_connection_id()
        self._pause = 0
        #: This connection's input + output bytes as last counted in Server.buffered.
        self.accounted = 0
        #: Loop time since which an incomplete request has sat at the head of the input
        #: (None: none does); see Server's idle sweep.
        self.partial_since: float | None = None
        #: Frames taken that are not requests (with commands_total: progress made).
        self._frames = 0
        self._closing = False
        #: Replies in request order: ready bytes, or tasks of commands in flight.
        self._slots: deque[bytes | asyncio.Future[bytes]] = deque()
        #: The blocking command this connection waits for (nothing more is parsed).
        self._parked: asyncio.Future[bytes] | None = None
        #: A lock-state read waiting for this connection's writes in flight to commit.
        self._deferred: list[bytes] | None = None
        self._barrier = False
        self._inflight_full = False
        self._flush_scheduled = False
        self._eof = False
        #: WATCH subscriptions of this connection: prefix -> (watch, forwarding task).
        self.watches: dict[bytes, Any] = {}
        #: Callbacks run when the connection goes (watch cancellation, ...).
        self.on_close: list[Callable[[], object]] = []
        #: Set while this connection has watches (RESP2 restricts it to watch commands).
        self.watching = 0
        #: The lock commands' reply encoders of this connection (made on first use).
        self.token_encoder: Callable[[Any], bytes] | None = None
        self.ok_encoder: Callable[[Any], bytes] | None = None
        #: The lock service's native command lane (None: no lock service here).
        self.lane = server.lane

    # --- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack alike.
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
            self.peer_host = str(peer[0])
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - a socket that went away already
                pass
        transport.set_write_buffer_limits(high=self.config.write_high_water)
        if not self.server.admit(self):
            self._closing = True
            transport.write(resp.encode_error("MAXCONN", "too many connections"))
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        # Hot commands in flight still commit; an acquire among them is withdrawn when
        # its batch finds the connection closed (the lane's ``other`` callback).
        self.wire.closed = True
        self.wire.conn = None
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
                self.server.log.exception("on_close callback failed", conn=self.id)
        self.on_close.clear()
        self.server.forget(self)

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
        if self._closing:
            return
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
        if self._parked is not None or self.wire.parked:
            return None
        if not self._slots and self._deferred is None and not self.wire.outstanding:
            return None
        self._eof = True
        return True

    # --- the read loop ----------------------------------------------------------

    def _holding(self) -> bool:
        """Nothing more may be parsed now: a blocking command is parked (a table one, or
        a hot acquire in flight), a read waits for writes in flight, too many commands
        are in flight, or the client is not reading its replies (writes paused)."""
        return (self._parked is not None or self.wire.parked or self._barrier or self._inflight_full
                or self._pause & _PAUSE_WRITE != 0)

    def _bound_input(self) -> None:
        """Pause reading while more than a request's worth of bytes waits unparsed (the
        whole buffer counts, so the bound holds across any number of holds)."""
        if self.wire.buffered > self.config.max_request_bytes:
            self._pause_reading(_PAUSE_HELD)
        elif self._pause & _PAUSE_HELD:
            self._resume_reading(_PAUSE_HELD)

    def _continue(self) -> None:
        """Parse what was buffered while holding, if nothing holds any more."""
        if not self._closing and not self._holding() and (self._pause & _PAUSE_HELD or self._deferred is not None
                                                          or self.wire.buffered):
            self._safe_drain()

    def _safe_drain(self) -> None:
        """:meth:`_drain`, then the bookkeeping after it: the input bound, the server's
        buffer budget and the idle clock of an incomplete request. A bug closes this
        connection with ``-ERR`` and a log line instead of escaping into the transport
        ("Fatal error on transport") or into the batch listener that flushes every
        connection."""
        progress = self.server.commands_total + self._frames
        try:
            self._drain()
        except Exception as exc:
            self.server.log.exception("read loop failed, closing", conn=self.id, peer=self.peer)
            self._closing = True
            self.wire.closed = True
            if self.transport is not None:
                with contextlib.suppress(Exception):
                    self.transport.write(resp.encode_error("ERR", f"internal error: {type(exc).__name__}"))
                self.transport.close()
            return
        if self._closing:
            return
        self._bound_input()
        self._account()
        if self.server.config.idle_timeout:
            # What is left unparsed when nothing holds is an incomplete request.
            if self.wire.buffered and not self._holding() and not self._pause:
                if self.partial_since is None or progress != self.server.commands_total + self._frames:
                    self.partial_since = self.server.loop_time()
                    self.server.partial[self] = self.partial_since
            elif self.partial_since is not None:
                self.partial_since = None
                self.server.partial.pop(self, None)

    def _account(self) -> None:
        """Count this connection's buffered bytes (unparsed input, unsent output) in the
        server's budget; over it, a connection holding more than BUDGET_FLOOR stops
        reading until the server's sweep finds the total back under the low mark."""
        transport = self.transport
        now = self.wire.buffered + (transport.get_write_buffer_size() if transport is not None else 0)
        self.server.account(self, now)
        if now > BUDGET_FLOOR and not self._pause & _PAUSE_BUDGET and self.server.over_budget():
            self._pause_reading(_PAUSE_BUDGET)
            self.server.budget_pause(self)

    def resume_budget(self) -> None:
        """The server is back under its buffer budget (its sweep calls this)."""
        if self._pause & _PAUSE_BUDGET:
            self._resume_reading(_PAUSE_BUDGET)
            self._continue()

    def idle_close(self, seconds: float) -> None:
        """An incomplete request sat unfinished for ``seconds`` (the server's sweep)."""
        self.partial_since = None
        if self._closing or self.transport is None:
            return
        self.server.log.warning("incomplete request idle, closing", conn=self.id, peer=self.peer,
                                seconds=round(seconds, 1), buffered=self.wire.buffered)
        self._close_after([resp.encode_error(ProtocolError.code,
                                             f"incomplete request idle for over {self.config.idle_timeout:g} s")])

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if self._pause & _PAUSE_WRITE:
            self._check_output()

    def _check_output(self) -> None:
        # Checked on every write while paused, not only when the pause began: the
        # replies of work already in flight keep arriving after it.
        transport = self.transport
        if transport is not None and not self._closing \
                and transport.get_write_buffer_size() > self.config.max_output_bytes:
            self.server.log.warning("output backlog over limit, closing", conn=self.id, peer=self.peer)
            self.abort()

    def _drain(self) -> None:
        """Handle every complete request in the buffer; write the ready replies at once."""
        out: list[bytes] = []
        wire = self.wire
        lane = self.lane
        slots = self._slots
        max_inflight = self.config.max_inflight
        high_water = self.config.write_high_water
        out_bytes = 0
        handled = 0
        while not self._closing:
            if self._deferred is not None:
                req: Any = self._deferred
                self._deferred = None
            else:
                if not slots and self.table is self.server.commands:
                    # The hot commands at the head of the buffer are handled natively:
                    # lock commands go to the lock service (a hot acquire parks:
                    # nothing after it is parsed), ID.NEXT is answered at once.
                    handled += wire.run_hot(lane, max_inflight - wire.outstanding)
                    if wire.parked:
                        break
                    if wire.outstanding >= max_inflight:
                        self._inflight_full = True
                        break
                    if not wire.outstanding and wire.has_output:
                        out.append(wire.take_output())  # in order with the table's replies
                try:
                    req = wire.next_request()
                    if req is None:
                        # Not the request grammar: one whole RESP frame, its headers
                        # bounded natively first, for hiredis to read.
                        if wire.outstanding:
                            self._barrier = True  # answer it once the hot replies are out
                            break
                        req = self._foreign_frame(out)
                        if req is None:
                            self._frames += 1
                            continue  # answered (-PROTO); the stream goes on
                except RequestTooLarge as exc:
                    self.server.log.warning("request over size limit, closing", conn=self.id, peer=self.peer)
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
                self._barrier = True
                break
            handled += 1
            handler: Handler | None = None
            for arg in req:
                if type(arg) is not bytes:
                    handler = _not_a_request
                    break
            else:
                handler = self.table.get(req[0])
                if handler is None:
                    handler = self._lookup(req[0])
            if slots and handler in self.server.barrier_handlers:
                # A read of lock state behind writes still in flight on this
                # connection: run it once they commit, so it sees them (as a pipeline
                # on Redis would).
                self._deferred = req
                self._barrier = True
                handled -= 1
                break
            try:
                reply: Reply = handler(self, req)
            except CoordcoreError as exc:
                reply = resp.encode_exception(exc)
            except Exception as exc:  # a bug must not take the server down
                self.server.log.exception("command failed", conn=self.id, command=_safe_name(req))
                reply = resp.encode_error("ERR", f"internal error: {type(exc).__name__}")
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
            self.server.track(task)
            task.add_done_callback(self._slot_done)
            if handler in self.server.blocking_handlers:
                # May wait for other clients: later requests stay unparsed until it is
                # answered (Redis blocking-command semantics).
                self._parked = task
                break
            if len(slots) >= max_inflight:
                self._inflight_full = True
                break
        self.server.commands_total += handled
        if out and self.transport is not None:  # (closing too: QUIT's +OK)
            self._write(b"".join(out) if len(out) > 1 else out[0])

    def _foreign_frame(self, out: list[bytes]) -> Any:
        """The frame at the head of the buffer when it is not a request of the grammar:
        a request (a list of bulk strings in another RESP spelling), False if it is not
        complete yet, or None once it got its ``-PROTO`` (valid RESP that is not a
        request: the stream is still in sync and goes on). Raises RequestTooLarge or
        ProtocolError (answered with a close) for what cannot be skipped safely."""
        frame = self.wire.take_frame()
        if frame is False:
            return False
        reader = hiredis.Reader()
        reader.feed(frame)
        try:
            req = reader.gets()
        except Exception as exc:  # hiredis refuses it (a map keyed by a list, too deep...)
            raise ProtocolError(f"protocol error: {exc}") from None
        if type(req) is not list or not req or any(type(a) is not bytes for a in req):
            error = resp.encode_error(ProtocolError.code, "expected an array of bulk strings")
            (self._slots.append if self._slots else out.append)(error)
            return None
        return req

    def _lookup(self, name: bytes) -> Handler:
        upper = name.upper()
        handler = self.table.get(upper)
        if handler is None:
            return self.fallback
        if name == name.lower():
            self.table[name] = handler  # memoise the lower-case spelling too
        return handler

    def _task_reply(self, task: asyncio.Future[bytes]) -> bytes:
        if task.cancelled():
            return resp.encode_error("UNAVAILABLE", "request cancelled: the server is shutting down")
        exc = task.exception()
        if exc is None:
            return task.result()
        if isinstance(exc, CoordcoreError):
            return resp.encode_exception(exc)
        self.server.log.error("command failed", conn=self.id, error=repr(exc))
        return resp.encode_error("ERR", f"internal error: {type(exc).__name__}")

    def mark_dirty(self) -> None:
        """A reply of this connection is ready: flush it after the current batch (the
        lock service's batch listener calls :meth:`Server.flush_dirty`)."""
        wire = self.wire
        if not wire.dirty:
            wire.dirty = True
            self.server.dirty.append(self)

    def park(self, fut: asyncio.Future[bytes]) -> None:
        """A hot acquire came back waiting: from now on it is a parked command like any
        other (its reply is ``fut``'s, in the slot after the replies ready now)."""
        self._parked = fut
        self._slots.append(fut)
        self.server.track(fut)
        fut.add_done_callback(self._slot_done)

    def _slot_done(self, task: asyncio.Future[bytes]) -> None:
        if self._closing or self.transport is None:
            if not task.cancelled():
                task.exception()  # retrieved: the client is gone, nobody reads this
            return
        if not self._slots and self._parked is None and not self._barrier and not self._inflight_full \
                and not self._eof:
            return  # flushed already, at the end of the batch (flush_dirty)
        # The commands of one batch complete in the same loop turn: flush once after
        # them all, so their replies leave in one write (one syscall) per connection.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        wire = self.wire
        wire.dirty = False
        if self._closing or self.transport is None:
            return
        # Hot replies first: a connection's table commands only start once its hot
        # commands are answered, and a parked hot acquire joins the slots behind them.
        ready = wire.take_output()
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
            if self._closing:
                return
        if self._parked is not None and self._parked.done():
            self._parked = None
        if self._barrier and not slots and not wire.outstanding:
            self._barrier = False
        if self._inflight_full and len(slots) + wire.outstanding <= self.config.max_inflight // 2:
            self._inflight_full = False
        if not self._holding() and (self._pause & _PAUSE_HELD or self._deferred is not None or wire.buffered):
            # Requests that arrived meanwhile are still buffered.
            self._safe_drain()
        else:
            self._account()
        if self._eof and not slots and self._parked is None and not wire.outstanding and not self._closing:
            self._closing = True
            self.transport.close()

    # --- helpers used by handlers --------------------------------------------------

    def close_after_reply(self) -> None:
        """Ask the read loop to close the connection once the current reply is written."""
        self._closing = True
        if self.transport is not None:
            asyncio.get_running_loop().call_soon(self._close_transport)

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def push(self, frame: bytes) -> None:
        """Write an out-of-band frame (a watch event) now, between replies."""
        if self._closing or self.transport is None:
            return
        self.transport.write(frame)
        self._check_output()

    def abort(self) -> None:
        self._closing = True
        self.wire.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _close_after(self, out: list[bytes]) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.write(b"".join(out))
            self.transport.close()

    def _pause_reading(self, reason: int) -> None:
        if not self._pause and self.transport is not None and not self._closing:
            self.transport.pause_reading()
        self._pause |= reason

    def _resume_reading(self, reason: int) -> None:
        was = self._pause
        self._pause &= ~reason
        if was and not self._pause and self.transport is not None and not self._closing:
            self.transport.resume_reading()


def _safe_name(req: list[Any]) -> str:
    name = req[0] if req else b""
    return name[:32].decode("ascii", "replace") if isinstance(name, bytes) else "?"


def _not_a_request(conn: Connection, req: list[bytes]) -> bytes:
    return resp.encode_error(ProtocolError.code, "expected an array of bulk strings")
