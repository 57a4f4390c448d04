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
import ssl as ssl_module
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import hiredis

from coordcore._holds import cancelled_on_loss
from coordcore.client._common import CapacityLease, IdRuns, LockInfo, WatchEvent, check_key, check_seconds, watch_event
from coordcore.client._core import ClientCore, ClientSettings, CommandQueue, ElectionState, IdStock, Pause, Proc, Send
from coordcore.client._core import Open, SessionState, Settle, Step, Wait, hello_args, pipeline_replies
from coordcore.client._wire import Arg, Endpoint, new_reader, pack
from coordcore.errors import ConnectionLost, CoordcoreError, NotLockHolder, ServiceClosed
from coordcore.types import Grant, Key, Leader

__all__ = ["AsyncClient", "AsyncElection", "AsyncIdBuffer", "AsyncPipeline", "AsyncSession", "AsyncWatch"]

T = TypeVar("T")


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


class AsyncClient(ClientSettings):
    """An asyncio client: ``async with AsyncClient(host, port) as client: ...``.

    ``retries`` reconnect attempts are made for commands that are safe to repeat
    (everything but the ones that create state); ``default_ttl`` is the TTL of the
    session that :meth:`lock` and friends open when not given one. The decisions are
    :class:`~coordcore.client._core.ClientCore`'s, shared with
    :class:`~coordcore.client.Client`; this class does the I/O. ``tracing`` and
    ``trace_keys``: OpenTelemetry spans, as :class:`~coordcore.client.Client` has them.
    """

    def __init__(self, host: str | Sequence[str] = "127.0.0.1", port: int = 7379, *, password: str | None = None,
                 connect_timeout: float = 5.0, retries: int = 3, retry_delay: float = 0.05,
                 default_ttl: float = 10.0, ssl: ssl_module.SSLContext | None = None,
                 username: str | None = None, tracing: object = False, trace_keys: bool = False) -> None:
        super().__init__(host, port, password=password, connect_timeout=connect_timeout, retries=retries,
                         retry_delay=retry_delay, default_ttl=default_ttl, ssl=ssl, username=username,
                         tracing=tracing, trace_keys=trace_keys)
        self._main: _Conn | None = None
        self._connecting: asyncio.Future[_Conn] | None = None
        self._idle: list[_Conn] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keeper: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._core: ClientCore[AsyncSession] = ClientCore(retries=retries, retry_delay=retry_delay,
                                                          default_ttl=default_ttl, new_session=self._new_session,
                                                          endpoints=self.endpoints)
        #: What this client holds, acquires and must settle, per (session, key).
        self._ledger = self._core.ledger

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- I/O: connections, and the ops of the core's procedures --------------------------

    async def _open(self, endpoint: Endpoint | None = None, on_push: Any = None) -> _Conn:
        if endpoint is not None:
            return await self._open_one(endpoint, on_push)
        conn: _Conn = await self._run(self.endpoints.connect(on_push))  # the leader as far as we know first
        return conn

    async def _open_one(self, ep: Endpoint, on_push: Any) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(on_push), ep.host, ep.port, ssl=self.ssl,
                                       server_hostname=ep.host if self.ssl is not None else None),
                self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to {ep}: {exc}") from exc
        try:
            await conn.request(pack(hello_args(self.password, self.username)), 1)[0]
        except BaseException:
            conn.abort()
            raise
        conn.endpoint = ep
        return conn

    async def connect(self) -> None:
        """Open the main connection now (otherwise the first command does)."""
        await self._main_conn()

    async def _main_conn(self) -> _Conn:
        if self._core.closed:
            raise ServiceClosed("client is closed")
        conn = self._main
        if conn is not None and conn.lost is None:
            if conn.endpoint == self.endpoints.current:
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
            if conn.lost is None and conn.endpoint == self.endpoints.current:
                return conn
            conn.close()
        return await self._open()

    def _give_back(self, conn: _Conn) -> None:
        if conn.lost is None and not self._core.closed and len(self._idle) < 8:
            self._idle.append(conn)
        else:
            conn.close()

    async def _run(self, proc: Proc[T]) -> T:
        """Drive one of the core's procedures to its end, doing each op it asks for."""
        step = Step(proc)
        while (op := step.next()) is not None:
            try:
                step.reply(await self._do(op))
            except BaseException as exc:
                step.fail(exc)
        return step.result

    async def _do(self, op: object) -> Any:
        if isinstance(op, Open):
            return await self._open_one(op.endpoint, op.on_push)
        if isinstance(op, Send):
            conn = await self._main_conn()
            tracer = self._tracer
            if tracer is None:
                return await asyncio.wait_for(conn.request(pack(op.args), 1)[0], op.timeout)
            return await tracer.acall(op.args, conn.endpoint or self.endpoint,
                                      lambda args: asyncio.wait_for(conn.request(pack(args), 1)[0], op.timeout))
        if isinstance(op, Wait):
            tracer = self._tracer
            if tracer is None:
                return await self.execute_blocking(*op.args)
            return await tracer.acall(op.args, self.endpoint, lambda args: self.execute_blocking(*args))
        if isinstance(op, Pause):
            return await asyncio.sleep(op.seconds)
        assert isinstance(op, Settle)
        return self._spawn(self._settle(op.session))

    async def close(self) -> None:
        """Close sessions this client opened (releasing their locks), then connections."""
        if self._core.closed:
            return
        for session in self._core.open_sessions():
            with contextlib.suppress(CoordcoreError, OSError):
                await session.close()
        self._core.closed = True
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

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- commands --------------------------------------------------------------------

    async def execute(self, *args: Arg, retry: bool = True, timeout: float | None = None) -> Any:
        """Send one command and return its reply (errors raise their coordcore class).
        ``timeout``: seconds to wait for the reply (None: no limit)."""
        return await self._run(self._core.execute(args, retry=retry, timeout=timeout))

    async def execute_blocking(self, *args: Arg) -> Any:
        """A command that may park server side, on a borrowed connection of its own."""
        conn = await self._borrow()
        try:
            reply = await conn.request(pack(args), 1)[0]
        except BaseException:
            conn.abort()  # withdraws the server-side wait (cancelled, or the stream is lost)
            raise
        self._give_back(conn)
        return reply

    def pipeline(self) -> AsyncPipeline:
        """Queue commands, send them in one write, get every reply: see AsyncPipeline."""
        return AsyncPipeline(self)

    async def ping(self) -> bool:
        return await self._run(self._core.ping())

    async def info(self) -> dict[str, str]:
        return await self._run(self._core.info())

    # --- IDs ------------------------------------------------------------------------

    async def next_id(self) -> int:
        """One ID from the server (``ID.NEXT``)."""
        return await self._run(self._core.next_id())

    async def id_range(self, n: int) -> IdRuns:
        """``n`` IDs as runs of consecutive integers (``ID.RANGE``)."""
        return await self._run(self._core.id_range(n))

    async def id_workers(self) -> list[Endpoint]:
        return await self._run(self._core.id_workers())

    def ids(self, *, batch: int = 4096, spread: bool = True) -> AsyncIdBuffer:
        """A local ID buffer that prefetches ``ID.RANGE`` runs (over every ID worker
        process of the server when ``spread``)."""
        return AsyncIdBuffer(self, batch=batch, spread=spread)

    # --- sessions ---------------------------------------------------------------------

    async def session(self, ttl: float | None = None, *, keepalive: bool = True,
                      max_lifetime: float | None = None) -> AsyncSession:
        """Open a session (a lease) with ``ttl`` seconds, kept alive in the background
        (see :class:`AsyncSession`); past ``max_lifetime`` seconds it is no longer kept alive."""
        return await self._run(self._core.open_session(ttl, keepalive, max_lifetime))

    def _new_session(self, sid: int, credential: bytes, ttl: float, keepalive: bool, sent: float) -> AsyncSession:
        session = AsyncSession(self, sid, credential, ttl, keepalive=keepalive, opened_at=sent)
        if keepalive:
            if self._keeper is None:
                self._keeper = self._spawn(self._keep_alive())
            self._wake.set()
        return session

    async def _keep_alive(self) -> None:
        while not self._core.closed:
            await asyncio.gather(*(self._run(self._core.keep_alive_round(s))
                                   for s in self._core.due_keepalives(time.monotonic())))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._core.keepalive_wait(time.monotonic()))
            self._wake.clear()

    async def _settle(self, session: SessionState) -> None:
        """Reconcile ``session``'s unsettled keys (see ClientCore.settle), after the
        broken acquire that asked for it has finished unwinding."""
        await asyncio.sleep(0)
        await self._run(self._core.settle(session))

    # --- locks, semaphores, elections --------------------------------------------------

    @contextlib.asynccontextmanager
    async def _holding(self, acquire: Callable[[], Awaitable[Grant]],
                       cancel_on_loss: bool = False) -> AsyncIterator[Grant]:
        grant = await acquire()
        session = self._core.session(grant.session) if cancel_on_loss else None
        if session is None:
            try:
                yield grant
            finally:
                await self.release(grant)
            return
        async with cancelled_on_loss(session.id, session.done):
            try:
                yield grant
            finally:
                if session.alive:
                    await self.release(grant)

    def lock(self, key: Key, *, ttl: float | None = None, session: AsyncSession | None = None,
             shared: bool = False, timeout: float | None = None, reentrant: bool = False,
             cancel_on_loss: bool = False) -> contextlib.AbstractAsyncContextManager[Grant]:
        """``async with client.lock("jobs/42", ttl=10) as grant:`` holds the lock;
        ``grant.token`` is its fencing token. Released on exit. ``ttl`` is the TTL of
        the client's session for that TTL (opened once, kept alive). With
        ``cancel_on_loss`` the body is cancelled if the session ends while it runs, and
        the block raises :class:`~coordcore.errors.SessionExpired`. See :meth:`acquire`."""
        return self._holding(lambda: self.acquire(key, ttl=ttl, session=session, shared=shared, timeout=timeout,
                                                  reentrant=reentrant), cancel_on_loss)

    async def acquire(self, key: Key, *, ttl: float | None = None, session: AsyncSession | None = None,
                      shared: bool = False, timeout: float | None = None, reentrant: bool = False) -> Grant:
        """Wait for lock ``key`` (``timeout`` seconds, None: forever) and return the grant.
        Raises LockTimeout, SessionExpired, and :class:`~coordcore.errors.AlreadyHeld` at
        once when the session already holds or waits for the lock and either claim is
        exclusive (no upgrade from shared). ``reentrant=True`` nests instead: the same
        grant, with a hold count, released when the count is back to zero (see
        :meth:`coordcore.client.Client.acquire`)."""
        return await self._run(self._core.acquire(key, ttl, session, shared, timeout, reentrant))

    async def try_acquire(self, key: Key, *, ttl: float | None = None,
                          session: AsyncSession | None = None, shared: bool = False,
                          reentrant: bool = False) -> Grant | None:
        """The lock if it can be granted now, else None (never waits)."""
        return await self._run(self._core.try_acquire(key, ttl, session, shared, reentrant))

    async def release(self, grant: Grant) -> None:
        """Release a lock, semaphore permit or leadership (by its token). If no answer
        comes, the key is settled once the server answers again."""
        await self._run(self._core.release(grant))

    async def lock_info(self, key: Key) -> LockInfo:
        """Holders and waiters of a lock, semaphore or election key."""
        return await self._run(self._core.lock_info(key))

    async def acquire_semaphore(self, name: Key, permits: int, *, ttl: float | None = None,
                                session: AsyncSession | None = None, timeout: float | None = None) -> Grant:
        return await self._run(self._core.acquire_semaphore(name, permits, ttl, session, timeout))

    def semaphore(self, name: Key, permits: int, *, ttl: float | None = None, session: AsyncSession | None = None,
                  timeout: float | None = None) -> contextlib.AbstractAsyncContextManager[Grant]:
        """Hold one of ``permits`` slots of the counting semaphore ``name`` (FIFO)."""
        return self._holding(lambda: self.acquire_semaphore(name, permits, ttl=ttl, session=session,
                                                            timeout=timeout))

    # --- quota pools -----------------------------------------------------------------

    async def acquire_capacity(self, pool: Key, units: int, *, tenant: Key, ttl: float | None = None,
                               session: AsyncSession | None = None, timeout: float | None = None) -> CapacityLease:
        """Lease ``units`` of quota pool ``pool`` for ``tenant`` (fair share between
        tenants, FIFO within one), waiting up to ``timeout`` s (None: until granted)."""
        return await self._run(self._core.pool_acquire(pool, units, tenant, ttl, session, timeout))

    async def release_capacity(self, lease: CapacityLease) -> None:
        await self._run(self._core.pool_release(lease))

    async def pool_info(self, pool: Key) -> dict[str, Any] | None:
        """``POOL.INFO``: capacity, tenants (held, fair share), leases, waiting count."""
        return await self._run(self._core.pool_info(pool))

    @contextlib.asynccontextmanager
    async def capacity(self, pool: Key, units: int, *, tenant: Key, ttl: float | None = None,
                       session: AsyncSession | None = None, timeout: float | None = None,
                       on_giveback: Callable[[CapacityLease], object] | None = None) -> AsyncIterator[CapacityLease]:
        """``async with client.capacity("gpu", 2, tenant="research") as lease:`` holds the
        units, given back on exit. ``on_giveback(lease)`` runs when a higher-priority
        request preempts the lease: give it back (leave the block) within the pool's
        grace, or it is revoked and its token goes stale."""
        watch = follow = None
        if on_giveback is not None:
            watch = await AsyncWatch(self, pool).start()  # subscribed before the lease exists
        lease = None
        try:
            lease = await self.acquire_capacity(pool, units, tenant=tenant, ttl=ttl, session=session, timeout=timeout)
            if watch is not None and on_giveback is not None:
                follow = asyncio.ensure_future(_giveback(watch, lease, on_giveback))
            yield lease
        finally:
            if follow is not None:
                follow.cancel()
            if watch is not None:
                watch.close()
            if lease is not None:
                try:
                    await self.release_capacity(lease)
                except NotLockHolder:
                    pass  # revoked meanwhile

    def election(self, name: Key, *, ttl: float | None = None,
                 session: AsyncSession | None = None) -> AsyncElection:
        """A leader election handle: ``await e.campaign(value)``, ``await e.leader()``."""
        return AsyncElection(self, name, ttl, session)

    # --- watches ---------------------------------------------------------------------

    def watch(self, prefix: Key = b"", *, timeout: float | None = None) -> AsyncWatch:
        """Every change under ``prefix``, in revision order, as an async iterator on a
        connection of its own (RESP3 pushes). ``async with client.watch(p) as events:``
        is subscribed when the block starts; a bare ``async for`` subscribes at its first
        step. ``timeout``: seconds without an event before ``TimeoutError``. Ends with
        ConnectionLost when the connection does."""
        check_key("prefix", prefix)
        if timeout is not None:
            check_seconds("timeout", timeout)
        return AsyncWatch(self, prefix, timeout)


async def _giveback(watch: AsyncWatch, lease: CapacityLease,
                    on_giveback: Callable[[CapacityLease], object]) -> None:
    async for ev in watch:
        if ev.key == lease.pool and ev.kind == "giveback" and ev.fields.get("token") == lease.token:
            on_giveback(lease)
            return


class AsyncWatch:
    """An async iterator of WatchEvent; see :meth:`AsyncClient.watch`."""

    def __init__(self, client: AsyncClient, prefix: Key, timeout: float | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
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
        event = None
        while event is None:
            item = await asyncio.wait_for(self._queue.get(), self.timeout)
            if item is None:
                raise ConnectionLost("watch connection lost")
            event = watch_event(item)
        return event

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    async def __aenter__(self) -> AsyncWatch:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncSession(SessionState):
    """A server-side session (lease); see :meth:`AsyncClient.session`. ``done`` resolves
    with the reason (``"closed"``, ``"expired"``) when it is closed or known to have
    expired, and ``on_lost`` callbacks run; the keep-alive timing is that of
    :class:`coordcore.client.Session`."""

    def __init__(self, client: AsyncClient, sid: int, credential: bytes, ttl: float, *, keepalive: bool,
                 opened_at: float) -> None:
        super().__init__(sid, credential, ttl, keepalive=keepalive, opened_at=opened_at)
        self.client = client
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def ended(self, reason: str) -> None:
        super().ended(reason)
        if not self.done.done():
            self.done.set_result(reason)

    async def keepalive(self) -> None:
        """Reset the lease to the TTL from now (the client does it every ttl/3 in the
        background)."""
        await self.client._run(self.client._core.keepalive(self))

    async def close(self) -> None:
        """Close the session, releasing everything it holds and waits for. Idempotent."""
        await self.client._run(self.client._core.close_session(self))

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncElection(ElectionState[AsyncSession]):
    """A leader election: ``grant = await e.campaign(value)`` waits to lead (FIFO
    succession); ``proclaim``, ``resign``, ``leader()``, ``observe()``."""

    def __init__(self, client: AsyncClient, name: Key, ttl: float | None,
                 session: AsyncSession | None) -> None:
        super().__init__(name, ttl, session)
        self.client = client

    async def campaign(self, value: Key, *, timeout: float | None = None) -> Grant:
        return await self.client._run(self.client._core.campaign(self, value, timeout))

    async def proclaim(self, value: Key) -> int:
        """Publish a new value as leader; returns the revision of the proclamation."""
        return await self.client._run(self.client._core.proclaim(self, value))

    async def resign(self) -> None:
        await self.client._run(self.client._core.resign(self))

    async def leader(self) -> Leader | None:
        return await self.client._run(self.client._core.leader(self.name))

    async def observe(self, *, timeout: float | None = None) -> AsyncIterator[Leader | None]:
        """The leader now, then after every change of leader or value (``timeout``:
        seconds without a change before ``TimeoutError``)."""
        async with self.client.watch(self.name, timeout=timeout) as events:
            current = await self.leader()
            yield current
            async for event in events:
                now = await self.leader() if self.concerns(event) else current
                if now != current:
                    current = now
                    yield current


class AsyncPipeline(CommandQueue):
    """Commands queued locally and sent in one write: ``replies = await pipe.execute()``::

        pipe = client.pipeline()
        for _ in range(3):
            pipe.command("ID.NEXT")
        three_ids = await pipe.execute()
    """

    def __init__(self, client: AsyncClient) -> None:
        super().__init__()
        self.client = client

    async def execute(self, *, raise_on_error: bool = True) -> list[Any]:
        """Every reply, in order (see :meth:`Pipeline.execute`)."""
        if not self.commands:
            return []
        conn = await self.client._main_conn()
        commands = self.take()
        tracer = self.client._tracer
        if tracer is None:
            futs = conn.request(b"".join(pack(c) for c in commands), len(commands))
            return pipeline_replies(await asyncio.gather(*futs, return_exceptions=True), raise_on_error)
        # A span per command, each sent with its own TRACEPARENT prefix.
        started = [tracer.begin(c, conn.endpoint or self.client.endpoint) for c in commands]
        try:
            futs = conn.request(b"".join(pack(args) for _, args in started), len(commands))
        except BaseException as exc:
            for span, _ in started:
                tracer.end(span, exc)
            raise
        replies = await asyncio.gather(*futs, return_exceptions=True)
        for (span, _), reply in zip(started, replies):
            tracer.end(span, reply if isinstance(reply, BaseException) else None)
        return pipeline_replies(replies, raise_on_error)


class AsyncIdBuffer:
    """IDs served from a local buffer of ``ID.RANGE`` runs, refilled ahead of need.

    ``await buf.next_id()`` is a local pop while the buffer has IDs; when it runs
    below half a batch a refill is already in flight.
    """

    def __init__(self, client: AsyncClient, *, batch: int, spread: bool) -> None:
        self._stock = IdStock(batch)
        self.client = client
        self.batch = batch
        self.spread = spread
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
        self._stock.add(reply)

    def _start_refill(self) -> None:
        if self._refill is None or self._refill.done():
            self._refill = asyncio.ensure_future(self._fetch())

    async def next_id(self) -> int:
        while self._stock.available == 0:
            self._start_refill()
            assert self._refill is not None
            await asyncio.shield(self._refill)
        value = self._stock.take()
        if self._stock.low:
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
