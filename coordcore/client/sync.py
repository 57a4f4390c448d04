"""``Client``: the blocking (threaded) client of a coordcore server.

Thread safe: each call checks a connection out of a small pool, so threads do not
wait on each other's round trips, and a thread waiting for a lock holds only its own
connection (the server answers a connection's requests in order; a parked acquire
would hold up the commands behind it). Sessions are kept alive by one background
thread (every ttl/3). Broken connections are replaced; commands that are safe to
repeat are retried ``retries`` times.

>>> import asyncio, tempfile, threading
>>> from pathlib import Path
>>> from coordcore.server import Server, ServerConfig
>>> loop = asyncio.new_event_loop()
>>> config = ServerConfig(port=0, data_dir=Path(tempfile.mkdtemp()), worker_id=1, log_level="warning")
>>> server = Server(config)
>>> loop.run_until_complete(server.start())
>>> thread = threading.Thread(target=loop.run_forever)
>>> thread.start()
>>> with Client(port=server.port) as client:
...     with client.lock("jobs/42", ttl=10) as grant:
...         print(grant.token > 0)
...     ids = client.ids()
...     print(ids.next_id() < ids.next_id())
...     ids.close()
True
True
>>> asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
>>> loop.call_soon_threadsafe(loop.stop)
<Handle ...>
>>> thread.join()
>>> loop.close()
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import socket
import ssl as ssl_module
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import hiredis

from coordcore.client._common import CapacityLease, IdRuns, LockInfo, WatchEvent, check_key, check_seconds, watch_event
from coordcore.client._core import ClientCore, ClientSettings, CommandQueue, ElectionState, IdStock, Pause, Proc, Send
from coordcore.client._core import Open, SessionState, Settle, Step, Wait, hello_args, pipeline_replies
from coordcore.client._tracing import CommandTracer
from coordcore.client._wire import Arg, Endpoint, new_reader, pack
from coordcore.errors import ConnectionLost, CoordcoreError, NotLockHolder, ServiceClosed
from coordcore.types import Grant, Key, Leader

__all__ = ["Client", "Election", "IdBuffer", "Pipeline", "Session", "SyncElection", "Watch"]

T = TypeVar("T")


class _Conn:
    """One blocking socket connection with a hiredis reader."""

    def __init__(self, endpoint: Endpoint, *, timeout: float, password: str | None,
                 ssl: ssl_module.SSLContext | None = None, username: str = "default") -> None:
        self.endpoint = endpoint
        try:
            self.sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
            if ssl is not None:
                self.sock = ssl.wrap_socket(self.sock, server_hostname=endpoint.host)
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {endpoint}: {exc}") from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(None)
        self.reader = new_reader()
        self.broken = False
        try:
            self.call(hello_args(password, username))
        except BaseException:
            self.close()
            raise

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.broken = True
            raise ConnectionLost(f"send failed: {exc}") from exc

    def read(self, *, pushes: bool = False) -> Any:
        """The next reply (error replies returned as exception instances)."""
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.broken = True
                raise ConnectionLost(f"protocol error from server: {exc}") from exc
            if reply is not False:
                if not pushes and type(reply) is hiredis.PushNotification:
                    continue
                return reply
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                raise
            except OSError as exc:
                self.broken = True
                raise ConnectionLost(f"receive failed: {exc}") from exc
            if not data:
                self.broken = True
                raise ConnectionLost("server closed the connection")
            self.reader.feed(data)

    def call(self, args: Sequence[Arg]) -> Any:
        self.send(pack(args))
        reply = self.read()
        if isinstance(reply, CoordcoreError):
            raise reply
        return reply

    def close(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError):
            self.sock.close()


class Client(ClientSettings):
    """A thread-safe blocking client: ``with Client(host, port) as client: ...``.

    ``retries`` reconnect attempts are made for commands that are safe to repeat;
    ``default_ttl`` is the TTL of the session that :meth:`lock` and friends open when
    not given one. What it decides is :class:`~coordcore.client._core.ClientCore`'s,
    shared with :class:`~coordcore.client.AsyncClient`; this class does the I/O.

    ``tracing``: an OpenTelemetry span per command (True: from the global tracer
    provider, or the ``TracerProvider`` given; needs ``coordcore[otel]``), its context
    sent to the server with the command; ``trace_keys`` adds the key to the spans.
    """

    def __init__(self, host: str | Sequence[str] = "127.0.0.1", port: int = 7379, *, password: str | None = None,
                 connect_timeout: float = 5.0, retries: int = 3, retry_delay: float = 0.05,
                 default_ttl: float = 10.0, pool_size: int = 8, ssl: ssl_module.SSLContext | None = None,
                 username: str | None = None, tracing: object = False, trace_keys: bool = False) -> None:
        super().__init__(host, port, password=password, connect_timeout=connect_timeout, retries=retries,
                         retry_delay=retry_delay, default_ttl=default_ttl, ssl=ssl, username=username,
                         tracing=tracing, trace_keys=trace_keys)
        self.pool_size = pool_size
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()
        self._keeper: threading.Thread | None = None
        self._wake = threading.Event()
        self._core: ClientCore[Session] = ClientCore(retries=retries, retry_delay=retry_delay,
                                                     default_ttl=default_ttl, new_session=self._new_session,
                                                     endpoints=self.endpoints)
        #: What this client holds, acquires and must settle, per (session, key).
        self._ledger = self._core.ledger

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- I/O: connections, and the ops of the core's procedures --------------------------

    def _open(self, endpoint: Endpoint | None = None) -> _Conn:
        if endpoint is not None:
            return _Conn(endpoint, timeout=self.connect_timeout, password=self.password, ssl=self.ssl,
                         username=self.username)
        conn: _Conn = self._run(self.endpoints.connect())  # the leader as far as we know first
        return conn

    def _checkout(self) -> _Conn:
        if self._core.closed:
            raise ServiceClosed("client is closed")
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.broken and conn.endpoint == self.endpoints.current:
                    return conn
                conn.close()  # broken, or to a server that no longer leads
        return self._open()

    def _checkin(self, conn: _Conn) -> None:
        if conn.broken or self._core.closed:
            conn.close()
            return
        with self._lock:
            if len(self._idle) < self.pool_size:
                self._idle.append(conn)
                return
        conn.close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[_Conn]:
        conn = self._checkout()
        try:
            yield conn
        except ConnectionLost:
            conn.close()
            raise
        except CoordcoreError:
            raise  # an error reply: the stream is intact
        except BaseException:
            # An interrupted round trip leaves the stream in an unknown place.
            conn.close()
            raise
        finally:
            self._checkin(conn)

    def _call(self, args: Sequence[Arg], timeout: float | None) -> Any:
        with self.connection() as conn:
            conn.sock.settimeout(timeout)
            try:
                return conn.call(args)
            finally:
                if not conn.broken:
                    conn.sock.settimeout(None)

    def _run(self, proc: Proc[T]) -> T:
        """Drive one of the core's procedures to its end, doing each op it asks for."""
        step = Step(proc)
        while (op := step.next()) is not None:
            try:
                step.reply(self._do(op))
            except BaseException as exc:
                step.fail(exc)
        return step.result

    def _do(self, op: object) -> Any:
        if isinstance(op, Open):
            return self._open(op.endpoint)
        if isinstance(op, Send):
            tracer = self._tracer
            if tracer is None:
                return self._call(op.args, op.timeout)
            return tracer.call(op.args, self.endpoint, lambda args: self._call(args, op.timeout))
        if isinstance(op, Wait):
            # The server's TIMEOUT decides; the socket timeout is only a safety net. A
            # broken or interrupted wait closes its connection, which withdraws it.
            timeout = None if op.timeout is None else op.timeout + 30.0
            tracer = self._tracer
            if tracer is None:
                return self._call(op.args, timeout)
            return tracer.call(op.args, self.endpoint, lambda args: self._call(args, timeout))
        if isinstance(op, Pause):
            return time.sleep(op.seconds)
        assert isinstance(op, Settle)
        return self._run(self._core.settle(op.session))

    def close(self) -> None:
        """Close the sessions this client opened (releasing their locks), then connections."""
        if self._core.closed:
            return
        for session in self._core.open_sessions():
            with contextlib.suppress(CoordcoreError, OSError):
                session.close()
        self._core.closed = True
        self._wake.set()
        if self._keeper is not None:
            self._keeper.join(5)
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # --- commands --------------------------------------------------------------------

    def execute(self, *args: Arg, retry: bool = True, timeout: float | None = None) -> Any:
        """Send one command, return its reply; error replies raise their coordcore class.
        ``timeout``: seconds to wait for the reply (None: no limit)."""
        return self._run(self._core.execute(args, retry=retry, timeout=timeout))

    def pipeline(self) -> Pipeline:
        return Pipeline(self)

    def ping(self) -> bool:
        return self._run(self._core.ping())

    def info(self) -> dict[str, str]:
        return self._run(self._core.info())

    # --- IDs --------------------------------------------------------------------------

    def next_id(self) -> int:
        return self._run(self._core.next_id())

    def id_range(self, n: int) -> IdRuns:
        return self._run(self._core.id_range(n))

    def id_workers(self) -> list[Endpoint]:
        return self._run(self._core.id_workers())

    def ids(self, *, batch: int = 4096, spread: bool = True) -> IdBuffer:
        """A local buffer of IDs prefetched with pipelined ``ID.RANGE`` requests."""
        return IdBuffer(self, batch=batch, spread=spread)

    # --- sessions ---------------------------------------------------------------------

    def session(self, ttl: float | None = None, *, keepalive: bool = True,
                max_lifetime: float | None = None) -> Session:
        """Open a session (a lease) of ``ttl`` seconds, kept alive by a background thread
        (see :class:`Session`); past ``max_lifetime`` seconds it is no longer kept alive."""
        return self._run(self._core.open_session(ttl, keepalive, max_lifetime))

    def _new_session(self, sid: int, credential: bytes, ttl: float, keepalive: bool, sent: float) -> Session:
        session = Session(self, sid, credential, ttl, keepalive=keepalive, opened_at=sent)
        if keepalive:
            with self._lock:
                if self._keeper is None:
                    self._keeper = threading.Thread(target=self._keep_alive, name="coordcore-keepalive",
                                                    daemon=True)
                    self._keeper.start()
            self._wake.set()
        return session

    def _keep_alive(self) -> None:
        while not self._core.closed:
            for s in self._core.due_keepalives(time.monotonic()):
                self._run(self._core.keep_alive_round(s))
            self._wake.wait(self._core.keepalive_wait(time.monotonic()))
            self._wake.clear()

    def _settle(self, session: SessionState) -> None:
        """Reconcile ``session``'s unsettled keys now (see ClientCore.settle)."""
        self._run(self._core.settle(session))

    # --- locks, semaphores, elections --------------------------------------------------

    @contextlib.contextmanager
    def _holding(self, acquire: Callable[[], Grant]) -> Iterator[Grant]:
        grant = acquire()
        try:
            yield grant
        finally:
            self.release(grant)

    def lock(self, key: Key, *, ttl: float | None = None, session: Session | None = None,
             shared: bool = False, timeout: float | None = None,
             reentrant: bool = False) -> contextlib.AbstractContextManager[Grant]:
        """``with client.lock("jobs/42", ttl=10) as grant:`` holds the lock; ``grant.token``
        is its fencing token. Released on exit. See :meth:`acquire`."""
        return self._holding(lambda: self.acquire(key, ttl=ttl, session=session, shared=shared, timeout=timeout,
                                                  reentrant=reentrant))

    def acquire(self, key: Key, *, ttl: float | None = None, session: Session | None = None,
                shared: bool = False, timeout: float | None = None, reentrant: bool = False) -> Grant:
        """Wait for lock ``key`` (``timeout`` seconds, None: forever) and return the grant.

        A session that already holds or waits for the lock, when either claim is
        exclusive, gets :class:`~coordcore.errors.AlreadyHeld` at once (waiting would
        wait for itself), also for a shared hold asked to become exclusive: there is no
        upgrade. With ``reentrant=True`` a nested acquire of a lock the session holds
        through a reentrant acquire returns the same grant and counts a hold; it is
        released when the count is back to zero. The session is the owner: threads that
        must exclude each other need sessions of their own (``client.session()``)."""
        return self._run(self._core.acquire(key, ttl, session, shared, timeout, reentrant))

    def try_acquire(self, key: Key, *, ttl: float | None = None, session: Session | None = None,
                    shared: bool = False, reentrant: bool = False) -> Grant | None:
        """The lock if it can be granted now, else None (never waits)."""
        return self._run(self._core.try_acquire(key, ttl, session, shared, reentrant))

    def release(self, grant: Grant) -> None:
        """Release a lock, semaphore permit or leadership (by its token)."""
        self._run(self._core.release(grant))

    def lock_info(self, key: Key) -> LockInfo:
        """Holders and waiters of a lock, semaphore or election key."""
        return self._run(self._core.lock_info(key))

    def acquire_semaphore(self, name: Key, permits: int, *, ttl: float | None = None,
                          session: Session | None = None, timeout: float | None = None) -> Grant:
        return self._run(self._core.acquire_semaphore(name, permits, ttl, session, timeout))

    def semaphore(self, name: Key, permits: int, *, ttl: float | None = None, session: Session | None = None,
                  timeout: float | None = None) -> contextlib.AbstractContextManager[Grant]:
        """Hold one of ``permits`` slots of the counting semaphore ``name`` (FIFO)."""
        return self._holding(lambda: self.acquire_semaphore(name, permits, ttl=ttl, session=session,
                                                            timeout=timeout))

    # --- quota pools -----------------------------------------------------------------

    def acquire_capacity(self, pool: Key, units: int, *, tenant: Key, ttl: float | None = None,
                         session: Session | None = None, timeout: float | None = None) -> CapacityLease:
        """Lease ``units`` of quota pool ``pool`` for ``tenant``, waiting up to ``timeout``
        s (None: until granted). A preempted lease's give-back request arrives as a
        ``giveback`` event of ``client.watch(pool)``."""
        return self._run(self._core.pool_acquire(pool, units, tenant, ttl, session, timeout))

    def release_capacity(self, lease: CapacityLease) -> None:
        self._run(self._core.pool_release(lease))

    def pool_info(self, pool: Key) -> dict[str, Any] | None:
        return self._run(self._core.pool_info(pool))

    @contextlib.contextmanager
    def capacity(self, pool: Key, units: int, *, tenant: Key, ttl: float | None = None,
                 session: Session | None = None, timeout: float | None = None,
                 on_giveback: Callable[[CapacityLease], object] | None = None) -> Iterator[CapacityLease]:
        """``with client.capacity("gpu", 2, tenant="research") as lease:`` holds the units,
        given back on exit. ``on_giveback(lease)`` runs (on a thread of its own) when a
        higher-priority request preempts the lease: leave the block within the pool's
        grace, or the lease is revoked and its token goes stale."""
        watch = self.watch(pool) if on_giveback is not None else None  # subscribed before the lease exists
        follow = None
        lease = None
        try:
            lease = self.acquire_capacity(pool, units, tenant=tenant, ttl=ttl, session=session, timeout=timeout)
            if watch is not None and on_giveback is not None:
                follow = threading.Thread(target=_giveback, args=(watch, lease, on_giveback), daemon=True,
                                          name="coordcore-giveback")
                follow.start()
            yield lease
        finally:
            if watch is not None:
                watch.close()  # ends the thread's read
            if follow is not None:
                follow.join(5)
            if lease is not None:
                try:
                    self.release_capacity(lease)
                except NotLockHolder:
                    pass  # revoked meanwhile

    def election(self, name: Key, *, ttl: float | None = None, session: Session | None = None) -> Election:
        """A leader election handle: ``e.campaign(value)``, ``e.leader()``, ``e.observe()``."""
        return Election(self, name, ttl, session)

    # --- watches ---------------------------------------------------------------------

    def watch(self, prefix: Key = b"", *, timeout: float | None = None) -> Watch:
        """Every change under ``prefix`` from now on (subscribed when this returns), in
        revision order, as an iterator on a connection of its own. ``timeout``: seconds
        without an event before ``TimeoutError``. Close it (or use ``with``) when done."""
        check_key("prefix", prefix)
        if timeout is not None:
            check_seconds("timeout", timeout)
        return Watch(self._open(), prefix, timeout)


def _giveback(watch: Watch, lease: CapacityLease, on_giveback: Callable[[CapacityLease], object]) -> None:
    try:
        for ev in watch:
            if ev.key == lease.pool and ev.kind == "giveback" and ev.fields.get("token") == lease.token:
                on_giveback(lease)
                return
    except (OSError, CoordcoreError):
        return  # the watch was closed: the block ended


class Watch:
    """An iterator of WatchEvent; see :meth:`Client.watch`."""

    def __init__(self, conn: _Conn, prefix: Key, timeout: float | None) -> None:
        self._conn = conn
        try:
            conn.call(["WATCH", prefix])
        except BaseException:
            conn.close()
            raise
        conn.sock.settimeout(timeout)

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> WatchEvent:
        while (event := watch_event(self._conn.read(pushes=True))) is None:
            pass
        return event

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session(SessionState):
    """A server-side session (lease) kept alive by the client's background thread (see
    :meth:`Client.session`).

    The thread sends a keep-alive every ttl/3 after the last one was *sent*; each
    resets the lease to the TTL from when the server applies it (it never adds). If
    keep-alives fail (the server is unreachable), nothing is lost while the lease
    lasts; once ``lease_deadline`` passes unconfirmed, a session kept alive in the
    background counts as expired here (the server expires it then, if not already): ``done`` resolves with the
    reason (``"expired"`` or ``"closed"``), ``on_lost`` callbacks run (on the
    keep-alive thread) and :meth:`holds` answers False."""

    def __init__(self, client: Client, sid: int, credential: bytes, ttl: float, *, keepalive: bool,
                 opened_at: float) -> None:
        super().__init__(sid, credential, ttl, keepalive=keepalive, opened_at=opened_at)
        self.client = client
        self.done: concurrent.futures.Future[str] = concurrent.futures.Future()

    def ended(self, reason: str) -> None:
        super().ended(reason)
        if not self.done.done():
            self.done.set_result(reason)

    def keepalive(self) -> None:
        """Reset the lease to the TTL from now (the background thread does it every
        ttl/3). :class:`~coordcore.errors.SessionExpired` if it ended, or is past its
        max lifetime."""
        self.client._run(self.client._core.keepalive(self))

    def close(self) -> None:
        """Close the session, releasing everything it holds and waits for. Idempotent."""
        self.client._run(self.client._core.close_session(self))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Election(ElectionState[Session]):
    """A leader election: ``grant = e.campaign(value)`` blocks until this client leads
    (FIFO succession); ``proclaim``, ``resign``, ``leader()``, ``observe()``."""

    def __init__(self, client: Client, name: Key, ttl: float | None, session: Session | None) -> None:
        super().__init__(name, ttl, session)
        self.client = client

    def campaign(self, value: Key, *, timeout: float | None = None) -> Grant:
        return self.client._run(self.client._core.campaign(self, value, timeout))

    def proclaim(self, value: Key) -> int:
        """Publish a new value as leader; returns the revision of the proclamation."""
        return self.client._run(self.client._core.proclaim(self, value))

    def resign(self) -> None:
        self.client._run(self.client._core.resign(self))

    def leader(self) -> Leader | None:
        return self.client._run(self.client._core.leader(self.name))

    def observe(self, *, timeout: float | None = None) -> Iterator[Leader | None]:
        """The leader now, then after every change of leader or value (``timeout``:
        seconds without a change before ``TimeoutError``)."""
        with self.client.watch(self.name, timeout=timeout) as events:
            yield (current := self.leader())
            for event in events:
                if self.concerns(event) and (now := self.leader()) != current:
                    yield (current := now)


#: The name this class had before the clients' names were made consistent.
SyncElection = Election


class Pipeline(CommandQueue):
    """Commands sent in one write on one connection; ``execute()`` returns every reply."""

    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client

    def execute(self, *, raise_on_error: bool = True) -> list[Any]:
        """Every reply, in order; with ``raise_on_error`` the first error reply raises,
        otherwise error replies are returned as exception instances."""
        commands = self.take()
        if not commands:
            return []
        tracer = self.client._tracer
        if tracer is not None:
            return self._traced(tracer, commands, raise_on_error)
        with self.client.connection() as conn:
            conn.send(b"".join(pack(c) for c in commands))
            replies = [conn.read() for _ in commands]
        return pipeline_replies(replies, raise_on_error)

    def _traced(self, tracer: CommandTracer, commands: list[Sequence[Arg]], raise_on_error: bool) -> list[Any]:
        """A span per command, each sent with its own TRACEPARENT prefix."""
        started = [tracer.begin(c, self.client.endpoint) for c in commands]
        replies: list[Any] = []
        try:
            with self.client.connection() as conn:
                conn.send(b"".join(pack(args) for _, args in started))
                for span, _ in started:
                    reply = conn.read()
                    tracer.end(span, reply if isinstance(reply, CoordcoreError) else None)
                    replies.append(reply)
        except BaseException as exc:
            for span, _ in started[len(replies):]:
                tracer.end(span, exc)
            raise
        return pipeline_replies(replies, raise_on_error)


class IdBuffer:
    """IDs from a local buffer; the next ``ID.RANGE`` is sent (pipelined, not awaited)
    when the buffer falls below half a batch, and read when it is needed, so
    ``next_id()`` is an in-process pop almost always. Not shared between threads
    without a lock of your own (make one buffer per thread)."""

    def __init__(self, client: Client, *, batch: int, spread: bool) -> None:
        self._stock = IdStock(batch)
        self.client = client
        self.batch = batch
        self.spread = spread
        self._conns: list[_Conn] | None = None
        self._inflight: deque[_Conn] = deque()
        self._rr = itertools.count()

    def _endpoint_conns(self) -> list[_Conn]:
        if self._conns is None:
            eps = self.client.id_workers() if self.spread else [self.client.endpoint]
            self._conns = [self.client._open(ep) for ep in eps]
        return self._conns

    def _request(self) -> None:
        conns = self._endpoint_conns()
        conn = conns[next(self._rr) % len(conns)]
        conn.send(pack(["ID.RANGE", self.batch]))
        self._inflight.append(conn)

    def _collect(self) -> None:
        reply = self._inflight.popleft().read()
        if isinstance(reply, CoordcoreError):
            raise reply
        self._stock.add(reply)

    def _refill(self) -> None:
        for attempt in range(self.client.retries + 1):
            try:
                if not self._inflight:
                    self._request()
                self._collect()
                return
            except ConnectionLost:
                self._reset()
                if attempt >= self.client.retries:
                    raise
                time.sleep(self.client.retry_delay * (2 ** attempt))

    def _reset(self) -> None:
        for conn in self._conns or []:
            conn.close()
        self._conns = None
        self._inflight.clear()

    def next_id(self) -> int:
        if self._stock.available == 0:
            self._refill()
        value = self._stock.take()
        if self._stock.low and not self._inflight:
            try:
                self._request()
            except ConnectionLost:
                self._reset()
        return value

    def __iter__(self) -> Iterator[int]:
        while True:
            yield self.next_id()

    def close(self) -> None:
        self._reset()
