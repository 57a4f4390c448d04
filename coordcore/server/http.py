"""A small, strict HTTP/1.1 server on the event loop: the metrics port's transport.

It serves ``GET`` of a fixed set of paths, one request per connection (every reply
closes it), and nothing else. What a hostile client can make it hold is bounded:

* the request head (request line and headers) to :attr:`HttpServer.MAX_HEAD` bytes and
  :attr:`HttpServer.MAX_HEADERS` lines; a request with a body is refused (400);
* connections to :attr:`HttpServer.max_connections` (over it: ``503`` and close);
* time: a head not complete within :attr:`HttpServer.HEAD_TIMEOUT` seconds (slowloris)
  gets ``408`` and the connection is closed;
* methods other than GET get ``405``, unknown paths ``404``.

With ``authorize`` set (the server has users), a request needs ``Authorization: Basic``
(a user and password) or ``Bearer`` (the default user's password); failures are
answered ``401`` after the AUTH guard's delay, as failed AUTH commands are.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

from coordcore.server.log import StructLog

__all__ = ["HttpServer", "Response", "Route"]


class Response:
    """A reply: status, content type, body and extra headers."""

    __slots__ = ("status", "content_type", "body", "headers")

    def __init__(self, status: int, content_type: str, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body
        self.headers = headers


#: A path's handler: the query's parameters (each name's first value) -> the reply.
Route = Callable[[dict[str, str]], Response]
#: ``authorize(peer_host, user, password)`` -> whether the request may be served.
Authorize = Callable[[str, str, str], Awaitable[bool]]

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def _plain(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, "text/plain; charset=utf-8", (text + "\n").encode(), headers)


class _HttpConn(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.peer = ""
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is no asyncio.Transport subclass)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        srv = self.server
        if len(srv.conns) >= srv.max_connections:
            # Answered, then kept only while it drains (and as many more at most: past
            # that, dropped at once).
            if len(srv.refused) >= srv.max_connections:
                self.abort()
                return
            srv.refused.add(self)
            self.reply(_plain(503, "too many connections"))
            return
        srv.conns.add(self)
        self.timer = asyncio.get_running_loop().call_later(srv.HEAD_TIMEOUT, self.timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        self.server.refused.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def timed_out(self) -> None:
        self.timer = None
        self.reply(_plain(408, "request head not received in time"))

    def data_received(self, data: bytes) -> None:
        if self.done:
            return  # a reply is on its way (or sent): anything more is discarded
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > self.server.MAX_HEAD:
                self.reply(_plain(431, "request head too large"))
            return
        if end > self.server.MAX_HEAD:
            self.reply(_plain(431, "request head too large"))
            return
        head = bytes(self.buf[:end])
        self.buf.clear()
        reply = self.server.handle(head, self.peer)
        if isinstance(reply, Response):
            self.reply(reply)
        else:
            self.done = True
            task = asyncio.ensure_future(reply)
            task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Future[Response]) -> None:
        if task.cancelled():
            self.abort()
            return
        exc = task.exception()
        self.reply(task.result() if exc is None else _plain(503, "unavailable"))

    def eof_received(self) -> bool:
        if self.done and self.transport is not None:
            self.transport.close()  # the client has read and closed: no need to linger
        return False

    def reply(self, resp: Response) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        lines = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Error')}",
                 f"Content-Type: {resp.content_type}", f"Content-Length: {len(resp.body)}",
                 "Connection: close", "Cache-Control: no-store", "X-Content-Type-Options: nosniff"]
        lines += [f"{name}: {value}" for name, value in resp.headers]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + resp.body)
        # Closing with unread input (a body, the rest of a huge head) would send a RST that
        # can destroy the reply before the client reads it: end our side, discard what
        # still comes, and close when the client does, or after LINGER seconds.
        if transport.can_write_eof():
            transport.write_eof()
            self.timer = asyncio.get_running_loop().call_later(self.server.LINGER, transport.close)
        else:
            transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class HttpServer:
    """Serves ``routes`` (path -> handler) on ``host:port``: see the module docstring."""

    MAX_HEAD = 8192
    MAX_HEADERS = 64
    HEAD_TIMEOUT = 5.0
    #: Seconds a replied connection is kept to drain the client's unread bytes.
    LINGER = 2.0

    def __init__(self, routes: dict[str, Route], *, log: StructLog, authorize: Authorize | None = None,
                 max_connections: int = 64) -> None:
        self.routes = routes
        self.log = log
        self.authorize = authorize
        self.max_connections = max_connections
        self.conns: set[_HttpConn] = set()
        #: Connections over the bound, answered 503 and draining.
        self.refused: set[_HttpConn] = set()
        self.port = 0
        self._listener: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(lambda: _HttpConn(self), host, port, reuse_address=True,
                                                  backlog=128)
        self.port = self._listener.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for conn in [*self.conns, *self.refused]:
            conn.abort()
        if self._listener is not None:
            try:
                await asyncio.wait_for(self._listener.wait_closed(), 1.0)
            except (asyncio.TimeoutError, Exception):
                pass

    def handle(self, head: bytes, peer: str) -> Response | Awaitable[Response]:
        """The reply to a complete request head."""
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            return _plain(400, "bad request")
        lines = text.split("\r\n")
        if len(lines) > self.MAX_HEADERS + 1:
            return _plain(431, "too many header lines")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _plain(400, "bad request line")
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                return _plain(400, "bad header line")
            headers[name.lower()] = value.strip()
        if method != "GET":
            return _plain(405, "only GET is served", (("Allow", "GET"),))
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            return _plain(400, "a GET has no body")
        if not target.startswith("/"):
            return _plain(400, "bad request target")
        url = urlsplit(target)
        route = self.routes.get(url.path)
        if route is None:
            return _plain(404, "not found")
        try:
            query = {k: v[0] for k, v in parse_qs(url.query, max_num_fields=16, strict_parsing=False).items()}
        except ValueError:
            return _plain(400, "bad query")
        if self.authorize is None:
            return self._run(route, query)
        return self._authorized(route, query, headers.get("authorization", ""), peer)

    def _run(self, route: Route, query: dict[str, str]) -> Response:
        try:
            return route(query)
        except ValueError as exc:
            return _plain(400, str(exc))
        except Exception:  # a bug must not take the server down
            self.log.exception("HTTP handler failed")
            return _plain(503, "internal error")

    async def _authorized(self, route: Route, query: dict[str, str], header: str, peer: str) -> Response:
        user, password = _credentials(header)
        assert self.authorize is not None
        if user is not None and password is not None and await self.authorize(peer, user, password):
            return self._run(route, query)
        return _plain(401, "authentication required: Basic (user and password) or Bearer (password)",
                      (("WWW-Authenticate", 'Basic realm="coordcore", charset="UTF-8"'),))


def _credentials(header: str) -> tuple[str | None, str | None]:
    """``(user, password)`` of an Authorization header (Bearer: the default user).

    >>> _credentials("Basic " + base64.b64encode(b"ops:pw").decode())
    ('ops', 'pw')
    >>> _credentials("Bearer s3cret")
    ('default', 's3cret')
    >>> _credentials("Basic !!!")
    (None, None)
    """
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and value:
        return "default", value.strip()
    if scheme == "basic" and value:
        try:
            raw = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        user, sep, password = raw.partition(":")
        if sep:
            return user, password
    return None, None

