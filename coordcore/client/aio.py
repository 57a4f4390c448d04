"""``AsyncClient``: the asyncio client of a coordcore server.

One multiplexed connection carries every non-blocking command (many tasks share it,
pipelined: replies come back in order); a command that may wait server side
(``LOCK.ACQUIRE``, ``SEM.ACQUIRE``, ``ELECT.CAMPAIGN``) borrows a connection of its
own from a small pool, because the server answers a connection's requests in order
and a parked acquire would hold up everyone behind it. Cancelling a waiting acquire
closes its connection, which withdraws the wait server side; if the grant raced with
the cancel, the client releases it.

Sessions are kept alive in the background (every ttl/3); when the server says a
session is gone, ``session.expired`` is set and its grants are void.

>>> import asyncio, tempfile
>>> from pathlib import Path
>>> from coordcore.server import Server, ServerConfig
>>> async def demo() -> list[bool]:
...     config = ServerConfig(port=0, data_dir=Path(tempfile.mkdtemp()), worker_id=1, log_level="warning")
...     server = Server(config)
...     await server.start()
...     try:
...         async with AsyncClient(port=server.port) as client:
...             async with client.lock("jobs/42", ttl=10) as grant:
...                 held = grant.token > 0
...             ids = client.ids()
...             ordered = await ids.next_id() < await ids.next_id()
...             await ids.close()
...     finally:
...         await server.close()
...     return [held, ordered]
>>> asyncio.run(demo())
[True, True]
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections import deque
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import hiredis

from coordcore.client._common import (
    INFO_COMMAND,
    Election,
    Grant,
    GrantKind,
    IdRuns,
    Leader,
    LockInfo,
    WatchEvent,
    acquire_args,
    campaign_args,
    key_bytes as _kb,
    parse_leader,
    parse_lock_info,
    parse_watch_event,
    release_args,
    sem_args,
    session_id_of,
    ttl_arg,
)
from coordcore.client._core import Endpoints, Ledger, Reattach
from coordcore.client._wire import Arg, Endpoint, endpoints_from, error_from_reply, new_reader, pack, parse_endpoint
from coordcore.errors import (
    BadArgument,
    ConnectionLost,
    CoordcoreError,
    Moved,
    NotLeader,
    ServiceClosed,
    SessionExpired,
    Unavailable,
)

__all__ = ["AsyncClient", "AsyncElection", "AsyncIdBuffer", "AsyncPipeline", "AsyncSession", "AsyncWatch"]


class _Conn(asyncio.Protocol):
    """One connection: requests out, replies matched to futures in order."""

    def __init__(self, on_push: Any = None) -> None:
        self.reader = new_reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self.on_push = on_push
        self.closed = asyncio.get_running_loop().create_future()
        self.endpoint: Endpoint | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(ConnectionLost(f"protocol error from server: {exc}"))
                if self.transport is not None:
                    self.transport.abort()
                return
            if reply is False:
                return
            if type(reply) is hiredis.PushNotification:
                if self.on_push is not None:
                    self.on_push(reply)
                continue
            if not self.waiters:
                continue  # e.g. a reply to a request whose waiter was dropped on failure
            fut = self.waiters.popleft()
            if fut.done():
                continue
            if isinstance(reply, CoordcoreError):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionLost(f"connection to the server lost ({exc or 'closed'})"))
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_push is not None:
            self.on_push(None)

    def _fail(self, exc: BaseException) -> None:
        self.lost = exc
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    def request(self, data: bytes, count: int) -> list[asyncio.Future[Any]]:
        if self.lost is not None or self.transport is None or self.transport.is_closing():
            raise ConnectionLost("connection is closed")
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(count)]
        self.waiters.extend(futs)
        self.transport.write(data)
        return futs

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class AsyncClient:
    """An asyncio client: ``async with AsyncClient(host, port) as client: ...``.

    ``retries`` reconnect attempts are made for commands that are safe to repeat
    (everything but the ones that create state); ``default_ttl`` is the TTL of the
    session that :meth:`lock` and friends open when not given one.
    """

    def __init__(self, host: str | Sequence[str] = "127.0.0.1", port: int = 7379, *, password: str | None = None,
                 connect_timeout: float = 5.0, retries: int = 3, retry_delay: float = 0.05,
                 default_ttl: float = 10.0) -> None:
        # Several servers (a list or a comma-separated string of host:port): a cluster,
        # as with the sync Client: -MOVED is followed, unreachable servers handed over.
        self._endpoints = Endpoints(endpoints_from(host, port))
        self.password = password
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.default_ttl = default_ttl
        self._main: _Conn | None = None
        self._connecting: asyncio.Future[_Conn] | None = None
        self._idle: list[_Conn] = []
        self._sessions: dict[int, AsyncSession] = {}
        self._default_sessions: dict[float, AsyncSession] = {}
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reqids = itertools.count(1)
        #: What this client holds, acquires and must settle, per (session, key).
        self._ledger = Ledger()

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- connections ---------------------------------------------------------------

    @property
    def endpoint(self) -> Endpoint:
        """The server this client talks to (in a cluster: the leader, as far as it knows)."""
        return self._endpoints.current

    async def _open(self, endpoint: Endpoint | None = None, on_push: Any = None) -> _Conn:
        if endpoint is not None:
            return await self._open_one(endpoint, on_push)
        error: ConnectionLost | None = None
        for ep in self._endpoints.order():
            try:
                conn = await self._open_one(ep, on_push)
            except ConnectionLost as exc:
                error = exc
                continue
            self._endpoints.reached(ep)
            return conn
        assert error is not None
        raise error

    async def _open_one(self, ep: Endpoint, on_push: Any) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(on_push), ep.host, ep.port), self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to {ep}: {exc}") from exc
        hello: list[Arg] = ["HELLO", 3]
        if self.password is not None:
            hello += ["AUTH", "default", self.password]
        try:
            await conn.request(pack(hello), 1)[0]
        except BaseException:
            conn.abort()
            raise
        conn.endpoint = ep
        return conn

    async def connect(self) -> None:
        """Open the main connection now (otherwise the first command does)."""
        await self._main_conn()

    async def _main_conn(self) -> _Conn:
        if self._closed:
            raise ServiceClosed("client is closed")
        conn = self._main
        if conn is not None and conn.lost is None:
            if conn.endpoint == self._endpoints.current:
                return conn
            conn.close()  # to a server that no longer leads
            self._main = None
        if self._connecting is None:
            # One connect for every caller waiting on it: each awaits it shielded, so a
            # caller that is cancelled (a keep-alive stopped by Session.close, say) does
            # not cancel the connect under the others.
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, fut: asyncio.Future[_Conn]) -> None:
        self._connecting = None
        if not fut.cancelled() and fut.exception() is None:
            self._main = fut.result()

    async def _borrow(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if conn.lost is None and conn.endpoint == self._endpoints.current:
                return conn
            conn.close()
        return await self._open()

    def _give_back(self, conn: _Conn) -> None:
        if conn.lost is None and not self._closed and len(self._idle) < 8:
            self._idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        """Close sessions this client opened (releasing their locks), then connections."""
        if self._closed:
            return
        for session in list(self._sessions.values()):
            with contextlib.suppress(CoordcoreError, OSError):
                await session.close()
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        conns = [c for c in [self._main, *self._idle] if c is not None]
        self._idle.clear()
        self._main = None
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.closed, 1.0)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- commands --------------------------------------------------------------------

    async def execute(self, *args: Arg, retry: bool = True) -> Any:
        """Send one command and return its reply (errors raise their coordcore class).
        ``retry``: it may be sent again after a lost connection; ``-MOVED`` is followed
        either way (see :class:`~coordcore.client._core.Endpoints`)."""
        data = pack(args)
        loop = asyncio.get_running_loop()
        since = loop.time()
        attempt = 0
        while True:
            try:
                conn = await self._main_conn()
                return await conn.request(data, 1)[0]
            except (ConnectionLost, Moved, Unavailable) as exc:
                if isinstance(exc, Moved):
                    self._endpoints.moved(exc)
                delay = self._endpoints.retry_delay(exc, idempotent=retry, attempt=attempt, since=since,
                                                    now=loop.time(), retries=self.retries, base=self.retry_delay)
                if delay is None or self._closed:
                    raise
                attempt += 1
                await asyncio.sleep(delay)

    async def execute_blocking(self, *args: Arg) -> Any:
        """A command that may park server side, on a borrowed connection of its own."""
        for _ in range(len(self._endpoints.all) + 1):
            conn = await self._borrow()
            try:
                reply = await conn.request(pack(args), 1)[0]
            except Moved as exc:
                self._give_back(conn)
                self._endpoints.moved(exc)  # nothing applied: send it to the leader
                continue
            except Unavailable as exc:
                self._give_back(conn)
                if self._endpoints.several:
                    # Between leaders: the caller's retry (same request id) waits for one.
                    raise ConnectionLost(f"no leader serving: {exc}") from exc
                raise
            except asyncio.CancelledError:
                conn.abort()  # withdraws the server-side wait
                raise
            except BaseException:
                conn.abort()
                raise
            self._give_back(conn)
            return reply
        raise ConnectionLost(f"redirected in a circle; last to {self.endpoint}")

    def pipeline(self) -> AsyncPipeline:
        """Queue commands, send them in one write, get every reply: see AsyncPipeline."""
        return AsyncPipeline(self)

    async def ping(self) -> bool:
        return bool(await self.execute("PING") == b"PONG")

    async def info(self) -> dict[str, str]:
        text = (await self.execute("INFO")).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))

    # --- IDs ------------------------------------------------------------------------

    async def next_id(self) -> int:
        """One ID from the server (``ID.NEXT``)."""
        return int(await self.execute("ID.NEXT"))

    async def id_range(self, n: int) -> IdRuns:
        """``n`` IDs as runs of consecutive integers (``ID.RANGE``)."""
        return IdRuns.from_reply(await self.execute("ID.RANGE", n))

    async def id_workers(self) -> list[Endpoint]:
        return [parse_endpoint(x) for x in await self.execute("ID.WORKERS")]

    def ids(self, *, batch: int = 4096, spread: bool = True) -> AsyncIdBuffer:
        """A local ID buffer that prefetches ``ID.RANGE`` runs (over every ID worker
        process of the server when ``spread``)."""
        return AsyncIdBuffer(self, batch=batch, spread=spread)

    # --- sessions ---------------------------------------------------------------------

    async def session(self, ttl: float | None = None, *, keepalive: bool = True) -> AsyncSession:
        """Open a session (a lease) with ``ttl`` seconds, kept alive in the background."""
        ttl = self.default_ttl if ttl is None else ttl
        credential = bytes(await self.execute("SESSION.OPEN", ttl_arg(ttl), retry=False))
        sid = session_id_of(credential)
        session = AsyncSession(self, sid, credential, ttl)
        self._sessions[sid] = session
        if keepalive:
            session._keeper = self._spawn(session._keep_alive())
        return session

    async def _default_session(self, ttl: float | None) -> AsyncSession:
        ttl = self.default_ttl if ttl is None else ttl
        session = self._default_sessions.get(ttl)
        if session is None or session.expired or session.closed:
            session = await self.session(ttl)
            self._default_sessions[ttl] = session
        return session

    # --- locks, semaphores, elections --------------------------------------------------

    def _reqid(self) -> int:
        return next(self._reqids)

    async def _contend(self, make_args: Callable[[float | None, int], list[Arg]], key: str | bytes,
                       s: AsyncSession, kind: GrantKind, timeout: float | None, shared: bool = False) -> Grant:
        """A blocking acquire on a connection of its own. If its connection breaks while
        it waits (a network fault, a server restart), it reconnects and retries with the
        same request id, which re-attaches to the wait on the server (see
        :class:`~coordcore.client._core.Reattach`). If it is cancelled, or cannot get
        back, the server withdraws the wait, and what may still be held or queued for
        it is settled once the server can be reached (:meth:`_settle`), so the caller
        never holds a lock it was not told about."""
        loop = asyncio.get_running_loop()
        k = self._ledger.begin(s.id, key)
        attempt = Reattach(timeout=timeout, ttl=s.ttl, first_delay=self.retry_delay, reqid=self._reqid(),
                           now=loop.time())
        try:
            while True:
                try:
                    token = int(await self.execute_blocking(*make_args(attempt.left(loop.time()), attempt.reqid)))
                    break
                except (ConnectionLost, OSError):
                    delay = attempt.after_break(loop.time(), self._closed or s.closed)
                    if delay is None:
                        raise
                    await asyncio.sleep(delay)
                except CoordcoreError as exc:
                    if not attempt.after_error(exc, self._reqid):
                        raise
        except (asyncio.CancelledError, ConnectionLost, OSError):
            self._ledger.broke_off(k, key, kind)
            self._spawn(self._settle(s))
            raise
        except BaseException:
            self._ledger.failed(k)
            raise
        self._ledger.granted(k, token)
        return Grant(key, token, s.id, shared=shared, kind=kind)

    async def _settle(self, session: AsyncSession) -> None:
        """Release the holds and withdraw the waits of ``session`` on keys whose acquire
        broke off (a grant or wait the caller was never told of). Run at once and after
        each keep-alive, until the server could be asked."""
        await asyncio.sleep(0)
        for k, key, kind in self._ledger.unsettled(session.id):
            if self._ledger.busy(k):
                continue  # an acquire of ours on this key is in flight: do not guess
            try:
                info = parse_lock_info(await self.execute(INFO_COMMAND[kind], key))
                for args in self._ledger.settle_commands(k, info, session.credential, kind, self._reqid):
                    await self.execute(*args)
            except SessionExpired:
                pass  # the session took everything with it
            except (CoordcoreError, OSError):
                continue  # the next keep-alive tries again
            self._ledger.settled(k)

    def _credential(self, sid: int) -> bytes:
        session = self._sessions.get(sid)
        if session is None:
            raise SessionExpired(f"session {sid} is not open in this client (closed or expired)")
        return session.credential

    async def _session_for(self, session: AsyncSession | None, ttl: float | None) -> AsyncSession:
        return session if session is not None else await self._default_session(ttl)

    @contextlib.asynccontextmanager
    async def lock(self, key: str | bytes, *, ttl: float | None = None, session: AsyncSession | None = None,
                   shared: bool = False, timeout: float | None = None) -> AsyncIterator[Grant]:
        """``async with client.lock("jobs/42", ttl=10) as grant:`` holds the lock;
        ``grant.token`` is its fencing token. Released on exit. ``ttl`` is the TTL of
        the client's session for that TTL (opened once, kept alive)."""
        grant = await self.acquire(key, ttl=ttl, session=session, shared=shared, timeout=timeout)
        try:
            yield grant
        finally:
            await self.release(grant)

    async def acquire(self, key: str | bytes, *, ttl: float | None = None, session: AsyncSession | None = None,
                      shared: bool = False, timeout: float | None = None) -> Grant:
        """Wait for lock ``key`` (``timeout`` seconds, None: forever) and return the grant.
        Raises LockTimeout, SessionExpired..."""
        s = await self._session_for(session, ttl)
        return await self._contend(
            lambda left, reqid: acquire_args("LOCK.ACQUIRE", key, s.credential, shared, left) + ["REQID", reqid],
            key, s, "lock", timeout, shared)

    async def try_acquire(self, key: str | bytes, *, ttl: float | None = None,
                          session: AsyncSession | None = None, shared: bool = False) -> Grant | None:
        """The lock if it can be granted now, else None (never waits)."""
        s = await self._session_for(session, ttl)
        args: list[Arg] = ["LOCK.TRY", key, s.credential]
        if shared:
            args.append("SHARED")
        token = await self.execute(*args, "REQID", self._reqid())  # retried with the same REQID
        if token is None:
            return None
        self._ledger.hold(s.id, key, int(token))
        return Grant(key, int(token), s.id, shared=shared)

    async def release(self, grant: Grant) -> None:
        """Release a lock, semaphore permit or leadership (by its token). If no answer
        comes, the key is settled once the server answers again (see Client.release)."""
        try:
            # retried with the same REQID
            await self.execute(*release_args(grant, self._credential(grant.session), self._reqid()))
        except (ConnectionLost, OSError):
            self._ledger.unsettle(grant.session, grant.key, grant.kind)
            raise
        finally:
            self._ledger.released(grant.session, grant.key, grant.token)

    async def lock_info(self, key: str | bytes) -> LockInfo:
        """Holders and waiters of a lock, semaphore or election key."""
        return parse_lock_info(await self.execute("LOCK.INFO", key))

    async def acquire_semaphore(self, name: str | bytes, permits: int, *, ttl: float | None = None,
                                session: AsyncSession | None = None, timeout: float | None = None) -> Grant:
        s = await self._session_for(session, ttl)
        return await self._contend(
            lambda left, reqid: sem_args(name, s.credential, permits, left) + ["REQID", reqid],
            name, s, "semaphore", timeout)

    @contextlib.asynccontextmanager
    async def semaphore(self, name: str | bytes, permits: int, *, ttl: float | None = None,
                        session: AsyncSession | None = None, timeout: float | None = None) -> AsyncIterator[Grant]:
        """Hold one of ``permits`` slots of the counting semaphore ``name`` (FIFO)."""
        grant = await self.acquire_semaphore(name, permits, ttl=ttl, session=session, timeout=timeout)
        try:
            yield grant
        finally:
            await self.release(grant)

    def election(self, name: str | bytes, *, ttl: float | None = None,
                 session: AsyncSession | None = None) -> AsyncElection:
        """A leader election handle: ``await e.campaign(value)``, ``await e.leader()``."""
        return AsyncElection(self, name, ttl, session)

    # --- watches ---------------------------------------------------------------------

    def watch(self, prefix: str | bytes = b"") -> AsyncWatch:
        """Every change under ``prefix``, in revision order, as an async iterator on a
        connection of its own (RESP3 pushes). ``async with client.watch(p) as events:``
        is subscribed when the block starts; a bare ``async for`` subscribes at its first
        step. Ends with ConnectionLost when the connection does."""
        return AsyncWatch(self, prefix)


class AsyncWatch:
    """An async iterator of WatchEvent; see :meth:`AsyncClient.watch`."""

    def __init__(self, client: AsyncClient, prefix: str | bytes) -> None:
        self.client = client
        self.prefix = prefix
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._conn: _Conn | None = None

    async def start(self) -> AsyncWatch:
        if self._conn is None:
            conn = await self.client._open(on_push=self._queue.put_nowait)
            self._conn = conn
            try:
                await conn.request(pack(["WATCH", self.prefix]), 1)[0]
            except BaseException:
                self.close()
                raise
        return self

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        await self.start()
        while True:
            item = await self._queue.get()
            if item is None:
                raise ConnectionLost("watch connection lost")
            if item and item[0] == b"watch-error":
                raise error_from_reply(item[1].decode())
            event = parse_watch_event(item)
            if event is not None:
                return event

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    async def __aenter__(self) -> AsyncWatch:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncSession:
    """A server-side session (lease); see :meth:`AsyncClient.session`."""

    def __init__(self, client: AsyncClient, sid: int, credential: bytes, ttl: float) -> None:
        self.client = client
        self.id = sid
        #: ``b"<id>.<secret>"``: what acts for this session (the id alone is public).
        self.credential = credential
        self.ttl = ttl
        self.expired = False
        self.closed = False
        self.done = asyncio.get_running_loop().create_future()
        self._keeper: asyncio.Task[None] | None = None

    async def keepalive(self) -> None:
        try:
            await self.client.execute("SESSION.KEEPALIVE", self.credential)
        except SessionExpired:
            self._mark_expired()
            raise

    def _mark_expired(self) -> None:
        self.expired = True
        if not self.done.done():
            self.done.set_result(None)

    async def _keep_alive(self) -> None:
        while not (self.closed or self.expired):
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.keepalive()
            except SessionExpired:
                return
            except (ConnectionLost, OSError):
                continue  # the next round reconnects; the server's TTL is the judge
            await self.client._settle(self)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._keeper is not None:
            self._keeper.cancel()
        self.client._sessions.pop(self.id, None)
        try:
            await self.client.execute("SESSION.CLOSE", self.credential)
        except SessionExpired:
            pass
        if not self.done.done():
            self.done.set_result(None)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncElection(Election):
    """A leader election: ``grant = await e.campaign(value)`` waits to lead (FIFO
    succession); ``proclaim``, ``resign``, ``leader()``, ``observe()``."""

    def __init__(self, client: AsyncClient, name: str | bytes, ttl: float | None,
                 session: AsyncSession | None) -> None:
        super().__init__(name)
        self.client = client
        self.ttl = ttl
        self.session = session
        self.grant: Grant | None = None

    async def campaign(self, value: str | bytes, *, timeout: float | None = None) -> Grant:
        s = await self.client._session_for(self.session, self.ttl)
        self.session = s
        self.grant = await self.client._contend(
            lambda left, reqid: campaign_args(self.name, s.credential, value, left) + ["REQID", reqid],
            self.name, s, "election", timeout)
        return self.grant

    def _leadership(self) -> Grant:
        if self.grant is None:
            raise NotLeader("campaign first")
        return self.grant

    async def proclaim(self, value: str | bytes) -> int:
        """Publish a new value as leader; returns the revision of the proclamation."""
        g = self._leadership()
        return int(await self.client.execute("ELECT.PROCLAIM", self.name, self.client._credential(g.session), value,
                                             "TOKEN", g.token,
                                             "REQID", self.client._reqid()))

    async def resign(self) -> None:
        g = self._leadership()
        self.grant = None
        await self.client.release(g)

    async def leader(self) -> Leader | None:
        return parse_leader(await self.client.execute("ELECT.LEADER", self.name))

    async def observe(self) -> AsyncIterator[Leader | None]:
        """The leader now, then after every change of leader or value."""
        async with self.client.watch(self.name) as events:
            current = await self.leader()
            yield current
            async for event in events:
                if event.key != _kb(self.name):
                    continue
                now = await self.leader()
                if now != current:
                    current = now
                    yield current


class AsyncPipeline:
    """Commands queued locally and sent in one write: ``replies = await pipe.execute()``::

        pipe = client.pipeline()
        for _ in range(3):
            pipe.command("ID.NEXT")
        three_ids = await pipe.execute()
    """

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.commands: list[Sequence[Arg]] = []

    def command(self, *args: Arg) -> AsyncPipeline:
        self.commands.append(args)
        return self

    async def execute(self, *, raise_on_error: bool = True) -> list[Any]:
        """Every reply, in order; with ``raise_on_error`` the first error reply raises,
        otherwise error replies are returned as exception instances."""
        if not self.commands:
            return []
        data = b"".join(pack(c) for c in self.commands)
        conn = await self.client._main_conn()
        futs = conn.request(data, len(self.commands))
        self.commands = []
        results = await asyncio.gather(*futs, return_exceptions=True)
        for r in results:
            if isinstance(r, ConnectionLost):
                raise r
            if raise_on_error and isinstance(r, BaseException):
                raise r
        return list(results)


class AsyncIdBuffer:
    """IDs served from a local buffer of ``ID.RANGE`` runs, refilled ahead of need.

    ``await buf.next_id()`` is a local pop while the buffer has IDs; when it runs
    below half a batch a refill is already in flight.
    """

    def __init__(self, client: AsyncClient, *, batch: int, spread: bool) -> None:
        if not 1 <= batch <= 1 << 16:
            raise BadArgument(f"batch must be in [1, 65536], got {batch}")
        self.client = client
        self.batch = batch
        self.spread = spread
        self._runs: deque[list[int]] = deque()  # [next, end) per run
        self._available = 0
        self._refill: asyncio.Task[None] | None = None
        self._conns: list[_Conn] | None = None
        self._rr = itertools.count()

    async def _endpoint_conns(self) -> list[_Conn]:
        if self._conns is None or any(c.lost is not None for c in self._conns):
            eps = await self.client.id_workers() if self.spread else [self.client.endpoint]
            self._conns = [await self.client._open(ep) for ep in eps]
        return self._conns

    async def _fetch(self) -> None:
        for attempt in range(self.client.retries + 1):
            try:
                conns = await self._endpoint_conns()
                conn = conns[next(self._rr) % len(conns)]
                reply = await conn.request(pack(["ID.RANGE", self.batch]), 1)[0]
                break
            except ConnectionLost:
                self._conns = None
                if attempt >= self.client.retries:
                    raise
                await asyncio.sleep(self.client.retry_delay * (2 ** attempt))
        for first, count in reply:
            self._runs.append([int(first), int(first) + int(count)])
            self._available += int(count)

    def _start_refill(self) -> None:
        if self._refill is None or self._refill.done():
            self._refill = asyncio.ensure_future(self._fetch())

    async def next_id(self) -> int:
        while self._available == 0:
            self._start_refill()
            assert self._refill is not None
            await asyncio.shield(self._refill)
        run = self._runs[0]
        value = run[0]
        run[0] = value + 1
        if run[0] == run[1]:
            self._runs.popleft()
        self._available -= 1
        if self._available < self.batch // 2:
            self._start_refill()
        return value

    async def close(self) -> None:
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(BaseException):
                await self._refill
        for conn in self._conns or []:
            conn.close()
        self._conns = None
