"""One client connection: an ``asyncio.Protocol`` speaking RESP.

The read path follows asyncpg's shape: ``data_received`` feeds a ``hiredis.Reader``
and drains *every* complete request in the buffer before writing all their replies
with one ``transport.write`` (pipelining costs one syscall per read, not per request).

Ordering: replies always come back in request order. A command that must commit
through the lock log (``LOCK.TRY``, ``LOCK.RELEASE``, ``SESSION.*``...) runs as a task
and its reply waits in a slot while the requests behind it keep being parsed and
submitted, so one pipelining connection fills a whole group-commit batch (requests
reach the lock service in request order, so they are applied in that order). A
*blocking* command (``LOCK.ACQUIRE``, ``SEM.ACQUIRE``, ``ELECT.CAMPAIGN``, which may
wait for other clients) *parks* the connection, as Redis does for its blocking
commands: the wait happens server side, other connections are served meanwhile, and
the requests pipelined behind it stay unparsed in the reader (reading pauses) until
it is answered, so a pipelined ``LOCK.RELEASE`` can never overtake its
``LOCK.ACQUIRE``. A read of lock state (``LOCK.INFO``...) behind writes still in
flight on its connection waits for them to commit, so it sees them. At most
``max_inflight`` commands are in flight per connection (then reading pauses).

Back-pressure: ``pause_writing`` (the transport's write buffer is over its high mark)
pauses *reading*, so a client that does not read its replies stops being served
instead of growing the server's memory. Pushes (watch events) cannot be paused, so a
connection whose output backlog passes ``max_output_bytes`` is closed.

Bounds: a request may be at most ``max_request_bytes`` (counted over the bytes fed
since the last complete request, so the bound is exceeded by at most one read) and
``max_args`` arguments; past either the client gets ``-TOOBIG`` and the connection is
closed, because the rest of an oversized frame cannot be skipped safely. A frame that
is valid RESP but not a request (an integer, a nested array) gets ``-PROTO`` and the
stream goes on: the reader is still in sync. Bytes that are not RESP at all get
``-PROTO`` and a close.
"""
from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import hiredis

from coordcore.errors import CoordcoreError, ProtocolError, RequestTooLarge
from coordcore.server import resp

if TYPE_CHECKING:
    from coordcore.server.server import Server

__all__ = ["Connection", "Handler", "Reply"]

#: What a command handler returns: the encoded reply, or an awaitable of it (parks).
Reply = bytes | Awaitable[bytes]
Handler = Callable[["Connection", list[bytes]], Reply]

_PAUSE_WRITE = 1
_PAUSE_HELD = 2


class Connection(asyncio.Protocol):
    """Server side of one client connection (one instance per connection)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.config = server.config
        #: The command table in force: the full one, or the pre-AUTH one.
        self.table, self.fallback = server.tables_for_new_connection()
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.resp3 = False
        self.authenticated = server.config.requirepass is None
        self.name = b""
        self.peer = "?"
        self.id = server.next_connection_id()
        #: Bytes fed since the last complete request: bounds a partial request.
        self._partial = 0
        #: Bytes received while holding (parked, barrier or in-flight bound).
        self._held = 0
        self._pause = 0
        self._closing = False
        #: Replies in request order: ready bytes, or tasks of commands in flight.
        self._slots: deque[bytes | asyncio.Task[bytes]] = deque()
        #: The blocking command this connection waits for (nothing more is parsed).
        self._parked: asyncio.Task[bytes] | None = None
        #: A lock-state read waiting for this connection's writes in flight to commit.
        self._deferred: list[bytes] | None = None
        self._barrier = False
        self._inflight_full = False
        self._flush_scheduled = False
        #: Set while this connection is in the server's list of connections to flush.
        self.dirty = False
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

    # --- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack alike.
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
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
        self._pause_reading(_PAUSE_WRITE)
        assert self.transport is not None
        if self.transport.get_write_buffer_size() > self.config.max_output_bytes:
            self.server.log.warning("output backlog over limit, closing", conn=self.id, peer=self.peer)
            self.abort()

    def resume_writing(self) -> None:
        self._resume_reading(_PAUSE_WRITE)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self.reader.feed(data)
        if self._parked is not None or self._barrier or self._inflight_full:
            # Holding: keep the bytes in the reader, unparsed. Reading goes on (so a
            # client that vanishes while it waits is noticed at once) until the held
            # bytes pass the request bound; then reading pauses until we catch up.
            self._held += len(data)
            if self._held > self.config.max_request_bytes:
                self._pause_reading(_PAUSE_HELD)
            return
        self._partial += len(data)
        self._drain()

    def eof_received(self) -> bool | None:
        # The client finished sending. Commands in flight are answered, then the
        # connection closes (``printf 'PING\r\n' | nc`` style use). But a client that
        # hangs up while parked on a blocking command is gone as far as that wait is
        # concerned (a full close looks the same from here): close now, which
        # withdraws the wait.
        if self._parked is not None:
            return None
        if not self._slots and self._deferred is None:
            return None
        self._eof = True
        return True

    # --- the read loop ----------------------------------------------------------

    def _drain(self) -> None:
        """Handle every complete request in the reader; write the ready replies at once."""
        out: list[bytes] = []
        reader = self.reader
        slots = self._slots
        handled = 0
        while not self._closing:
            if self._deferred is not None:
                req: Any = self._deferred
                self._deferred = None
            else:
                try:
                    req = reader.gets()
                except hiredis.ProtocolError as exc:
                    out.append(resp.encode_error(ProtocolError.code, f"protocol error: {exc}"))
                    self._close_after(out)
                    return
                except MemoryError:
                    out.append(resp.encode_error(RequestTooLarge.code, "request too large"))
                    self._close_after(out)
                    return
                if req is False:
                    break
                self._partial = 0
                if type(req) is not list or not req:
                    error = resp.encode_error(ProtocolError.code, "expected an array of bulk strings")
                    (slots.append if slots else out.append)(error)
                    continue
                if len(req) > self.config.max_args:
                    out.append(resp.encode_error(RequestTooLarge.code, f"more than {self.config.max_args} arguments"))
                    self._close_after(out)
                    return
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
                continue
            assert not isinstance(reply, bytes)
            task: asyncio.Task[bytes] = asyncio.ensure_future(reply)
            slots.append(task)
            self.server.track(task)
            task.add_done_callback(self._slot_done)
            if handler in self.server.blocking_handlers:
                # May wait for other clients: later requests stay unparsed until it is
                # answered (Redis blocking-command semantics).
                self._parked = task
                break
            if len(slots) >= self.config.max_inflight:
                self._inflight_full = True
                break
        self.server.commands_total += handled
        if out and self.transport is not None:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        if not self._closing:
            self._check_partial()

    def _lookup(self, name: bytes) -> Handler:
        upper = name.upper()
        handler = self.table.get(upper)
        if handler is None:
            return self.fallback
        if name == name.lower():
            self.table[name] = handler  # memoise the lower-case spelling too
        return handler

    def _check_partial(self) -> None:
        if self._partial > self.config.max_request_bytes:
            self.server.log.warning("request over size limit, closing", conn=self.id, peer=self.peer)
            self._close_after([resp.encode_error(RequestTooLarge.code,
                                                 f"request over {self.config.max_request_bytes} bytes")])

    def _task_reply(self, task: asyncio.Task[bytes]) -> bytes:
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
        if not self.dirty:
            self.dirty = True
            self.server.dirty.append(self)

    def wire_ready(self, fut: asyncio.Future[bytes]) -> None:
        """A lock command's reply future is about to get its (OK) reply, inside the batch
        that commits it: the connection is flushed at the end of that batch (marked
        dirty), so the future's done callbacks would be no-ops: drop them (two loop
        callbacks fewer per request on the hot path)."""
        fut.remove_done_callback(self._slot_done)  # type: ignore[arg-type]
        self.server.untrack(fut)
        if not self.dirty:
            self.dirty = True
            self.server.dirty.append(self)

    def _slot_done(self, task: asyncio.Task[bytes]) -> None:
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
        self.dirty = False
        if self._closing or self.transport is None:
            return
        slots = self._slots
        out: list[bytes] = []
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
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        resume = False
        if self._parked is not None and self._parked.done():
            self._parked = None
            resume = True
        if self._barrier and not slots:
            self._barrier = False
            resume = True
        if self._inflight_full and len(slots) <= self.config.max_inflight // 2:
            self._inflight_full = False
            resume = True
        if resume and self._parked is None and not self._barrier and not self._inflight_full:
            self._held = 0
            self._resume_reading(_PAUSE_HELD)
            # Requests that arrived meanwhile are still in the reader.
            self._drain()
        if self._eof and not slots and self._parked is None and not self._closing:
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
        if self.transport.get_write_buffer_size() > self.config.max_output_bytes:
            self.server.log.warning("output backlog over limit, closing", conn=self.id, peer=self.peer)
            self.abort()

    def abort(self) -> None:
        self._closing = True
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
