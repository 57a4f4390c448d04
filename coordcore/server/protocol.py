"""One client connection: an ``asyncio.Protocol`` speaking RESP.

The read path follows asyncpg's shape: ``data_received`` feeds a ``hiredis.Reader``
and drains *every* complete request in the buffer before writing all their replies
with one ``transport.write`` (pipelining costs one syscall per read, not per request).

Ordering and blocking commands follow Redis: a command whose handler has to wait
(``LOCK.ACQUIRE`` on a held lock, a campaign, ...) *parks* the connection. The wait
happens server side in a task, so other connections are served meanwhile; on this
connection, the requests pipelined behind it stay unparsed in the reader (and reading
pauses) until the parked reply is written, so replies always come back in request
order and a pipelined ``LOCK.RELEASE`` can never overtake its ``LOCK.ACQUIRE``.

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
_PAUSE_PARKED = 2


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
        self._pause = 0
        self._closing = False
        self._parked: asyncio.Task[bytes] | None = None
        self._eof = False
        #: Callbacks run when the connection goes (watch cancellation, ...).
        self.on_close: list[Callable[[], object]] = []
        #: Set while this connection has watches (RESP2 restricts it to watch commands).
        self.watching = 0

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
        if self._parked is not None and not self._parked.done():
            # The client is gone: stop waiting on its behalf (the lock layer withdraws
            # the waiting request; a grant that raced with this is released there).
            self._parked.cancel()
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
        self._partial += len(data)
        if self._pause & _PAUSE_PARKED:
            # Parked: keep the bytes in the reader; reading is paused already, but a
            # read may have been in flight. The bound still applies.
            self._check_partial()
            return
        self._drain()

    def eof_received(self) -> bool | None:
        # Half-close from the client: finish what is parked (and what it pipelined
        # behind it), then close.
        if self._parked is None:
            return None
        self._eof = True
        return True

    # --- the read loop ----------------------------------------------------------

    def _drain(self) -> None:
        """Handle every complete request in the reader; write their replies at once."""
        out: list[bytes] = []
        reader = self.reader
        handled = 0
        while not self._closing:
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
                out.append(resp.encode_error(ProtocolError.code, "expected an array of bulk strings"))
                continue
            if len(req) > self.config.max_args:
                out.append(resp.encode_error(RequestTooLarge.code, f"more than {self.config.max_args} arguments"))
                self._close_after(out)
                return
            handled += 1
            for arg in req:
                if type(arg) is not bytes:
                    handler = _not_a_request
                    break
            else:
                handler = self.table.get(req[0])
                if handler is None:
                    handler = self._lookup(req[0])
            try:
                reply = handler(self, req)
            except CoordcoreError as exc:
                reply = resp.encode_exception(exc)
            except Exception as exc:  # a bug must not take the server down
                self.server.log.exception("command failed", conn=self.id, command=_safe_name(req))
                reply = resp.encode_error("ERR", f"internal error: {type(exc).__name__}")
            if type(reply) is bytes:
                out.append(reply)
                continue
            assert not isinstance(reply, bytes)
            self._park(reply)
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

    def _park(self, awaitable: Awaitable[bytes]) -> None:
        self._pause_reading(_PAUSE_PARKED)
        task = asyncio.ensure_future(awaitable)
        self._parked = task
        task.add_done_callback(self._unpark)
        self.server.track(task)

    def _unpark(self, task: asyncio.Task[bytes]) -> None:
        self._parked = None
        if self._closing:
            if not task.cancelled():
                task.exception()  # retrieved: a cancelled wait of a gone client is fine
            return
        if task.cancelled():
            reply = resp.encode_error("CANCELLED", "request cancelled (server shutting down)")
        else:
            exc = task.exception()
            if exc is None:
                reply = task.result()
            elif isinstance(exc, CoordcoreError):
                reply = resp.encode_exception(exc)
            else:
                self.server.log.error("parked command failed", conn=self.id, error=repr(exc))
                reply = resp.encode_error("ERR", f"internal error: {type(exc).__name__}")
        assert self.transport is not None
        self.transport.write(reply)
        self._resume_reading(_PAUSE_PARKED)
        # Requests that arrived while parked are still in the reader.
        self._drain()
        if self._eof and self._parked is None and not self._closing:
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
