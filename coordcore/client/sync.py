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

import contextlib
import itertools
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
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

__all__ = ["Client", "IdBuffer", "Pipeline", "Session", "Watch"]


class _Conn:
    """One blocking socket connection with a hiredis reader."""

    def __init__(self, endpoint: Endpoint, *, timeout: float, password: str | None) -> None:
        self.endpoint = endpoint
        try:
            self.sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {endpoint}: {exc}") from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(None)
        self.reader = new_reader()
        self.broken = False
        hello: list[Arg] = ["HELLO", 3]
        if password is not None:
            hello += ["AUTH", "default", password]
        try:
            self.call(hello)
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


class Client:
    """A thread-safe blocking client: ``with Client(host, port) as client: ...``.

    A cluster: ``Client(["127.0.0.1:7001", "127.0.0.1:7002"])`` (or one string,
    comma-separated). The client follows ``-MOVED`` to the leader and, when a server
    cannot be reached, tries the others, for up to ``FAILOVER_WINDOW`` seconds; a
    blocking acquire carries its request id across, so it re-attaches to its wait on
    the new leader."""

    def __init__(self, host: str | Sequence[str] = "127.0.0.1", port: int = 7379, *, password: str | None = None,
                 connect_timeout: float = 5.0, retries: int = 3, retry_delay: float = 0.05,
                 default_ttl: float = 10.0, pool_size: int = 8) -> None:
        self._endpoints = Endpoints(endpoints_from(host, port))
        self.password = password
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.default_ttl = default_ttl
        self.pool_size = pool_size
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()
        self._closed = False
        self._sessions: dict[int, Session] = {}
        self._default_sessions: dict[float, Session] = {}
        self._keeper: threading.Thread | None = None
        self._wake = threading.Event()
        self._reqids = itertools.count(1)
        #: What this client holds, acquires and must settle, per (session, key).
        self._ledger = Ledger()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- connections ---------------------------------------------------------------

    @property
    def endpoint(self) -> Endpoint:
        """The server this client talks to (in a cluster: the leader, as far as it knows)."""
        return self._endpoints.current

    def _open(self, endpoint: Endpoint | None = None) -> _Conn:
        if endpoint is not None:
            return _Conn(endpoint, timeout=self.connect_timeout, password=self.password)
        error: ConnectionLost | None = None
        for ep in self._endpoints.order():
            try:
                conn = _Conn(ep, timeout=self.connect_timeout, password=self.password)
            except ConnectionLost as exc:
                error = exc
                continue
            self._endpoints.reached(ep)
            return conn
        assert error is not None
        raise error

    def _checkout(self) -> _Conn:
        if self._closed:
            raise ServiceClosed("client is closed")
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.broken and conn.endpoint == self._endpoints.current:
                    return conn
                conn.close()  # broken, or to a server that no longer leads
        return self._open()

    def _checkin(self, conn: _Conn) -> None:
        if conn.broken or self._closed:
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

    def close(self) -> None:
        """Close the sessions this client opened (releasing their locks), then connections."""
        if self._closed:
            return
        for session in list(self._sessions.values()):
            with contextlib.suppress(CoordcoreError, OSError):
                session.close()
        self._closed = True
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
        ``retry``: the command may be sent again after a lost connection (it carries a
        request id, or repeating it does no harm); ``-MOVED`` is followed either way."""
        since = time.monotonic()
        attempt = 0
        while True:
            try:
                with self.connection() as conn:
                    if timeout is not None:
                        conn.sock.settimeout(timeout)
                    try:
                        return conn.call(args)
                    finally:
                        if timeout is not None and not conn.broken:
                            conn.sock.settimeout(None)
            except (ConnectionLost, Moved, Unavailable) as exc:
                if isinstance(exc, Moved):
                    self._endpoints.moved(exc)
                delay = self._endpoints.retry_delay(exc, idempotent=retry, attempt=attempt, since=since,
                                                    now=time.monotonic(), retries=self.retries,
                                                    base=self.retry_delay)
                if delay is None or self._closed:
                    raise
                attempt += 1
                time.sleep(delay)

    def pipeline(self) -> Pipeline:
        return Pipeline(self)

    def ping(self) -> bool:
        return bool(self.execute("PING") == b"PONG")

    def info(self) -> dict[str, str]:
        text = self.execute("INFO").decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))

    # --- IDs --------------------------------------------------------------------------

    def next_id(self) -> int:
        return int(self.execute("ID.NEXT"))

    def id_range(self, n: int) -> IdRuns:
        return IdRuns.from_reply(self.execute("ID.RANGE", n))

    def id_workers(self) -> list[Endpoint]:
        return [parse_endpoint(x) for x in self.execute("ID.WORKERS")]

    def ids(self, *, batch: int = 4096, spread: bool = True) -> IdBuffer:
        """A local buffer of IDs prefetched with pipelined ``ID.RANGE`` requests."""
        return IdBuffer(self, batch=batch, spread=spread)

    # --- sessions ---------------------------------------------------------------------

    def session(self, ttl: float | None = None, *, keepalive: bool = True) -> Session:
        ttl = self.default_ttl if ttl is None else ttl
        sent = time.monotonic()
        credential = bytes(self.execute("SESSION.OPEN", ttl_arg(ttl), retry=False))
        sid = session_id_of(credential)
        session = Session(self, sid, credential, ttl, keepalive=keepalive, opened_at=sent)
        with self._lock:
            self._sessions[sid] = session
            if keepalive and self._keeper is None:
                self._keeper = threading.Thread(target=self._keep_alive, name="coordcore-keepalive",
                                                daemon=True)
                self._keeper.start()
        self._wake.set()
        return session

    def _default_session(self, ttl: float | None) -> Session:
        ttl = self.default_ttl if ttl is None else ttl
        with self._lock:
            session = self._default_sessions.get(ttl)
        if session is None or session.expired or session.closed:
            session = self.session(ttl)
            with self._lock:
                self._default_sessions[ttl] = session
        return session

    def _keep_alive(self) -> None:
        while not self._closed:
            now = time.monotonic()
            with self._lock:
                sessions = [s for s in self._sessions.values() if s.keepalive_enabled]
            wait = 1.0
            for s in sessions:
                if s.closed or s.expired:
                    continue
                due = s.last_keepalive + s.ttl / 3
                if due <= now:
                    try:
                        s.keepalive()
                    except SessionExpired:
                        pass
                    except (ConnectionLost, OSError, ServiceClosed):
                        pass  # retried next round; the server's TTL is the judge
                    else:
                        self._settle(s)
                    due = s.last_keepalive + s.ttl / 3
                wait = min(wait, max(0.01, due - time.monotonic()))
            self._wake.wait(wait)
            self._wake.clear()

    # --- locks, semaphores, elections --------------------------------------------------

    def _reqid(self) -> int:
        with self._lock:
            return next(self._reqids)

    def _blocking(self, args: Sequence[Arg], timeout: float | None) -> Any:
        for _ in range(len(self._endpoints.all) + 1):
            conn = self._checkout()
            try:
                # The server's TIMEOUT decides; the socket timeout is only a safety net.
                conn.sock.settimeout(None if timeout is None else timeout + 30.0)
                reply = conn.call(args)
                conn.sock.settimeout(None)
            except Moved as exc:
                self._checkin(conn)
                self._endpoints.moved(exc)  # nothing applied: send it to the leader
                continue
            except Unavailable as exc:
                self._checkin(conn)
                if self._endpoints.several:
                    # Between leaders: the caller's retry (same request id) waits for one.
                    raise ConnectionLost(f"no leader serving: {exc}") from exc
                raise
            except ConnectionLost:
                conn.close()
                raise
            except CoordcoreError:
                self._checkin(conn)
                raise
            except BaseException:
                conn.close()  # withdraws the server-side wait
                raise
            self._checkin(conn)
            return reply
        raise ConnectionLost(f"redirected in a circle; last to {self.endpoint}")

    def _contend(self, make_args: Callable[[float | None, int], list[Arg]], key: str | bytes, s: Session,
                 kind: GrantKind, timeout: float | None, shared: bool = False) -> Grant:
        """A blocking acquire on a connection of its own. If the connection breaks while
        it waits (a network fault, a server restart), it reconnects and retries with the
        same request id, which re-attaches to the wait on the server (see
        :class:`~coordcore.client._core.Reattach`); if it cannot, the key is settled
        later (:meth:`_settle`), so the caller never holds a lock it was not told about."""
        k = self._ledger.begin(s.id, key)
        attempt = Reattach(timeout=timeout, ttl=s.ttl, first_delay=self.retry_delay, reqid=self._reqid(),
                           now=time.monotonic())
        try:
            while True:
                left = attempt.left(time.monotonic())
                try:
                    token = int(self._blocking(make_args(left, attempt.reqid), left))
                    break
                except (ConnectionLost, OSError):
                    delay = attempt.after_break(time.monotonic(), self._closed or s.closed)
                    if delay is None:
                        raise
                    time.sleep(delay)
                except CoordcoreError as exc:
                    if not attempt.after_error(exc, self._reqid):
                        raise
        except (KeyboardInterrupt, ConnectionLost, OSError):
            self._ledger.broke_off(k, key, kind)
            self._settle(s)
            raise
        except BaseException:
            self._ledger.failed(k)
            raise
        self._ledger.granted(k, token)
        return Grant(key, token, s.id, shared=shared, kind=kind)

    def _settle(self, session: Session) -> None:
        """Release the holds and withdraw the waits of ``session`` on keys whose acquire
        broke off with its connection (a grant or wait the caller was never told of).
        Called at once and after each keep-alive, until the server could be asked."""
        for k, key, kind in self._ledger.unsettled(session.id):
            if self._ledger.busy(k):
                continue  # an acquire of ours on this key is in flight: do not guess
            try:
                info = parse_lock_info(self.execute(INFO_COMMAND[kind], key))
                for args in self._ledger.settle_commands(k, info, session.credential, kind, self._reqid):
                    self.execute(*args)
            except SessionExpired:
                pass  # the session took everything with it
            except (CoordcoreError, OSError):
                continue  # the next keep-alive tries again
            self._ledger.settled(k)

    def _session_for(self, session: Session | None, ttl: float | None) -> Session:
        return session if session is not None else self._default_session(ttl)

    @contextlib.contextmanager
    def lock(self, key: str | bytes, *, ttl: float | None = None, session: Session | None = None,
             shared: bool = False, timeout: float | None = None) -> Iterator[Grant]:
        """``with client.lock("jobs/42", ttl=10) as grant:`` holds the lock; ``grant.token``
        is its fencing token. Released on exit."""
        grant = self.acquire(key, ttl=ttl, session=session, shared=shared, timeout=timeout)
        try:
            yield grant
        finally:
            self.release(grant)

    def acquire(self, key: str | bytes, *, ttl: float | None = None, session: Session | None = None,
                shared: bool = False, timeout: float | None = None) -> Grant:
        s = self._session_for(session, ttl)
        return self._contend(lambda left, reqid: acquire_args("LOCK.ACQUIRE", key, s.credential, shared, left)
                             + ["REQID", reqid], key, s, "lock", timeout, shared)

    def try_acquire(self, key: str | bytes, *, ttl: float | None = None, session: Session | None = None,
                    shared: bool = False) -> Grant | None:
        s = self._session_for(session, ttl)
        args: list[Arg] = ["LOCK.TRY", key, s.credential]
        if shared:
            args.append("SHARED")
        token = self.execute(*args, "REQID", self._reqid())  # retried with the same REQID
        if token is None:
            return None
        self._ledger.hold(s.id, key, int(token))
        return Grant(key, int(token), s.id, shared=shared)

    def release(self, grant: Grant) -> None:
        """Release a lock, semaphore permit or leadership (by its token). If no answer
        comes (the connection broke past its retries: a server restart, say), the client
        settles the key once the server answers again (:meth:`_settle`), so the hold does
        not outlive the caller's intent while the session is kept alive."""
        try:
            # retried with the same REQID
            self.execute(*release_args(grant, self._credential(grant.session), self._reqid()))
        except (ConnectionLost, OSError):
            self._ledger.unsettle(grant.session, grant.key, grant.kind)
            raise
        finally:
            self._ledger.released(grant.session, grant.key, grant.token)

    def _credential(self, sid: int) -> bytes:
        with self._lock:
            session = self._sessions.get(sid)
        if session is None:
            raise SessionExpired(f"session {sid} is not open in this client (closed or expired)")
        return session.credential

    def lock_info(self, key: str | bytes) -> LockInfo:
        return parse_lock_info(self.execute("LOCK.INFO", key))

    def acquire_semaphore(self, name: str | bytes, permits: int, *, ttl: float | None = None,
                          session: Session | None = None, timeout: float | None = None) -> Grant:
        s = self._session_for(session, ttl)
        return self._contend(lambda left, reqid: sem_args(name, s.credential, permits, left) + ["REQID", reqid],
                             name, s, "semaphore", timeout)

    @contextlib.contextmanager
    def semaphore(self, name: str | bytes, permits: int, *, ttl: float | None = None,
                  session: Session | None = None, timeout: float | None = None) -> Iterator[Grant]:
        """Hold one of ``permits`` slots of the counting semaphore ``name`` (FIFO)."""
        grant = self.acquire_semaphore(name, permits, ttl=ttl, session=session, timeout=timeout)
        try:
            yield grant
        finally:
            self.release(grant)

    def election(self, name: str | bytes, *, ttl: float | None = None, session: Session | None = None) -> SyncElection:
        return SyncElection(self, name, ttl, session)

    # --- watches ---------------------------------------------------------------------

    def watch(self, prefix: str | bytes = b"", *, timeout: float | None = None) -> Watch:
        """Every change under ``prefix`` from now on (subscribed when this returns), in
        revision order, as an iterator on a connection of its own. ``timeout``: seconds
        without an event before ``TimeoutError``. Close it (or use ``with``) when done."""
        return Watch(self._open(), prefix, timeout)


class Watch:
    """An iterator of WatchEvent; see :meth:`Client.watch`."""

    def __init__(self, conn: _Conn, prefix: str | bytes, timeout: float | None) -> None:
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
        while True:
            item = self._conn.read(pushes=True)
            if isinstance(item, list) and item and item[0] == b"watch-error":
                raise error_from_reply(item[1].decode())
            event = parse_watch_event(item)
            if event is not None:
                return event

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session:
    """A server-side session (lease) kept alive by the client's background thread."""

    def __init__(self, client: Client, sid: int, credential: bytes, ttl: float, *, keepalive: bool,
                 opened_at: float | None = None) -> None:
        self.client = client
        self.id = sid
        #: ``b"<id>.<secret>"``: what acts for this session (the id alone is public).
        self.credential = credential
        self.ttl = ttl
        self.keepalive_enabled = keepalive
        self.expired = False
        self.closed = False
        #: time.monotonic() when the last confirmed open/keep-alive was *sent*: the server's
        #: deadline is at least this plus the TTL.
        self.last_keepalive = time.monotonic() if opened_at is None else opened_at

    def keepalive(self) -> None:
        sent = time.monotonic()
        try:
            self.client.execute("SESSION.KEEPALIVE", self.credential)
        except SessionExpired:
            self.expired = True
            raise
        self.last_keepalive = sent

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self.client._lock:
            self.client._sessions.pop(self.id, None)
        with contextlib.suppress(SessionExpired):
            self.client.execute("SESSION.CLOSE", self.credential)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncElection(Election):
    """A leader election: ``grant = e.campaign(value)`` blocks until this client leads."""

    def __init__(self, client: Client, name: str | bytes, ttl: float | None, session: Session | None) -> None:
        super().__init__(name)
        self.client = client
        self.ttl = ttl
        self.session = session
        self.grant: Grant | None = None

    def campaign(self, value: str | bytes, *, timeout: float | None = None) -> Grant:
        s = self.client._session_for(self.session, self.ttl)
        self.session = s
        self.grant = self.client._contend(
            lambda left, reqid: campaign_args(self.name, s.credential, value, left) + ["REQID", reqid],
            self.name, s, "election", timeout)
        return self.grant

    def _leadership(self) -> Grant:
        if self.grant is None:
            raise NotLeader("campaign first")
        return self.grant

    def proclaim(self, value: str | bytes) -> int:
        g = self._leadership()
        return int(self.client.execute("ELECT.PROCLAIM", self.name, self.client._credential(g.session), value,
                                       "TOKEN", g.token,
                                       "REQID", self.client._reqid()))

    def resign(self) -> None:
        g = self._leadership()
        self.grant = None
        self.client.release(g)

    def leader(self) -> Leader | None:
        return parse_leader(self.client.execute("ELECT.LEADER", self.name))


class Pipeline:
    """Commands sent in one write on one connection; ``execute()`` returns every reply."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.commands: list[Sequence[Arg]] = []

    def command(self, *args: Arg) -> Pipeline:
        self.commands.append(args)
        return self

    def execute(self, *, raise_on_error: bool = True) -> list[Any]:
        if not self.commands:
            return []
        commands, self.commands = self.commands, []
        with self.client.connection() as conn:
            conn.send(b"".join(pack(c) for c in commands))
            replies = [conn.read() for _ in commands]
        if raise_on_error:
            for r in replies:
                if isinstance(r, CoordcoreError):
                    raise r
        return replies


class IdBuffer:
    """IDs from a local buffer; the next ``ID.RANGE`` is sent (pipelined, not awaited)
    when the buffer falls below half a batch, and read when it is needed, so
    ``next_id()`` is an in-process pop almost always. Not shared between threads
    without a lock of your own (make one buffer per thread)."""

    def __init__(self, client: Client, *, batch: int, spread: bool) -> None:
        if not 1 <= batch <= 1 << 16:
            raise BadArgument(f"batch must be in [1, 65536], got {batch}")
        self.client = client
        self.batch = batch
        self.spread = spread
        self._runs: deque[list[int]] = deque()
        self._available = 0
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
        conn = self._inflight.popleft()
        reply = conn.read()
        if isinstance(reply, CoordcoreError):
            raise reply
        for first, count in reply:
            self._runs.append([int(first), int(first) + int(count)])
            self._available += int(count)

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
        if self._available == 0:
            self._refill()
        run = self._runs[0]
        value = run[0]
        run[0] = value + 1
        if run[0] == run[1]:
            self._runs.popleft()
        self._available -= 1
        if self._available < self.batch // 2 and not self._inflight:
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
