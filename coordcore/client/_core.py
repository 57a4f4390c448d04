"""The sans-I/O core of both clients: every decision a client makes, with no I/O.

:class:`~coordcore.client.Client` (threads, blocking sockets) and
:class:`~coordcore.client.AsyncClient` (asyncio) are two transports over one
:class:`ClientCore`: it encodes the commands, decodes the replies into the value types
of :mod:`coordcore.types`, keeps the ledger of held and in-flight grants
(:class:`Ledger`), times keep-alives, and decides when to retry, re-attach
(:class:`Reattach`) and reconcile. Each operation is a *procedure*, a generator that
yields the I/O it needs (:class:`Send`, :class:`Wait`, :class:`Pause`, :class:`Settle`)
and gets the outcome back, so a rule is written once and both clients follow it.

>>> ledger = Ledger()
>>> k = ledger.begin(7, b"jobs/1")
>>> ledger.broke_off(k, "jobs/1", "lock")           # its connection went mid-wait
>>> [(key, kind) for _, key, kind in ledger.unsettled(7)]
[('jobs/1', 'lock')]
>>> attempt = Reattach(timeout=None, ttl=10.0, first_delay=0.05, reqid=1, now=100.0)
>>> attempt.after_break(now=100.0, closing=False)   # wait this long, then retry (same REQID)
0.05
>>> attempt.reqid
1

A procedure, driven by hand the way a transport drives it:

>>> core = ClientCore(retries=1, retry_delay=0.05, default_ttl=10.0, new_session=None)  # no sessions here
>>> step = Step(core.next_id())
>>> step.next()
Send(args=['ID.NEXT'], timeout=None)
>>> step.fail(ConnectionLost("gone"))               # the connection broke: back off, resend
>>> step.next(), step.next()
(Pause(seconds=0.05), Send(args=['ID.NEXT'], timeout=None))
>>> step.reply(b"42")
>>> step.next() is None, step.result
(True, 42)
"""
from __future__ import annotations

import ssl as ssl_module

import dataclasses
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from typing import Any, Generic, Literal, Self, TypeVar

from coordcore._holds import HoldCounts, LostCallbacks
from coordcore.client._common import (
    INFO_COMMAND,
    RELEASE_COMMAND,
    CapacityLease,
    IdRuns,
    LockInfo,
    WatchEvent,
    acquire_args,
    campaign_args,
    check_bool,
    check_key,
    check_seconds,
    parse_leader,
    parse_lock_info,
    release_args,
    sem_args,
    session_id_of,
    stray_holds,
    stray_waiters,
    ttl_arg,
)
from coordcore.client._tracing import tracer_for
from coordcore.client._wire import Arg, Endpoint, endpoints_from, parse_endpoint, to_dict
from coordcore.errors import (
    BadArgument,
    ConnectionLost,
    CoordcoreError,
    Moved,
    NotLeader,
    ServiceClosed,
    SessionExpired,
    Unavailable,
    WrongType,
)
from coordcore.types import Grant, GrantKind, Key, Leader, key_bytes

__all__ = ["FAILOVER_WINDOW", "REATTACH_WINDOW", "ClientCore", "Endpoints", "ClientSettings", "CommandQueue", "ElectionState", "IdStock", "Ledger", "Pause", "Reattach", "SessionState",
           "Send", "Settle", "Step", "Wait"]

T = TypeVar("T")
logger = logging.getLogger("coordcore.client")

#: After a connection breaks under a waiting acquire, how long (seconds, at least) the
#: client keeps reconnecting to re-attach to the wait (a server restart takes about a
#: second; the server keeps a detached wait for a few).
REATTACH_WINDOW = 5.0
#: The longest pause between two reconnects.
MAX_RETRY_DELAY = 0.5

#: With several servers: how long (seconds) a command keeps trying them while the
#: cluster is between leaders (a dead leader's etcd lease runs out first).
FAILOVER_WINDOW = 15.0

#: What the ledger settles: a grant of the lock machine's keys, or a quota pool's lease
#: (pools have names of their own: a pool and a lock may share one).
SettleKind = GrantKind | Literal["pool"]
#: (session id, key or pool name, whether it is a pool)
LedgerKey = tuple[int, bytes, bool]


class Endpoints:
    """The servers a client was given and the one it talks to: the leader, as far as it
    knows (``-MOVED`` says where it is; a server that cannot be reached hands over to
    the next one). Plain state, no I/O; the driver's clock is passed in.

    >>> eps = Endpoints([Endpoint("a", 1), Endpoint("b", 2)])
    >>> eps.moved(Moved("b:2")); str(eps.current), [str(e) for e in eps.order()]
    ('b:2', ['b:2', 'a:1'])
    >>> eps.retry_delay(ConnectionLost("x"), idempotent=True, attempt=0, since=0.0, now=1.0, retries=3,
    ...                 base=0.05)
    0.05
    >>> eps.retry_delay(ConnectionLost("x"), idempotent=False, attempt=0, since=0.0, now=1.0, retries=3,
    ...                 base=0.05) is None
    True
    """

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.all = list(endpoints)
        self.current = self.all[0]

    @property
    def several(self) -> bool:
        return len(self.all) > 1

    def order(self) -> list[Endpoint]:
        """Whom to connect to: the current server first, then the others in turn."""
        i = self.all.index(self.current) if self.current in self.all else 0
        return self.all[i:] + self.all[:i]

    def skip(self) -> None:
        """Talk to the next server from now on."""
        order = self.order()
        self.current = order[1 % len(order)]

    def reached(self, endpoint: Endpoint) -> None:
        self.current = endpoint

    def connect(self, on_push: Any = None) -> Proc[Any]:
        """Open a connection to the first server that answers, the current one first:
        an :class:`Open` for each until one does; returns that connection."""
        error: ConnectionLost | None = None
        for ep in self.order():
            try:
                conn = yield Open(ep, on_push)
            except ConnectionLost as exc:
                error = exc
                continue
            self.reached(ep)
            return conn
        assert error is not None
        raise error

    def moved(self, exc: Moved) -> None:
        ep = parse_endpoint(exc.address)
        if ep not in self.all:
            self.all.append(ep)
        self.current = ep

    def retry_delay(self, exc: BaseException, *, idempotent: bool, attempt: int, since: float, now: float,
                    retries: int, base: float) -> float | None:
        """Seconds to wait before sending a command again after ``exc`` (its ``attempt``-th
        failure, the first at ``since``), or None to raise it. ``MOVED`` is always safe
        to follow (the follower applied nothing), at once the first time; a lost
        connection (outcome unknown) only for ``idempotent`` commands; ``UNAVAILABLE``
        (between leaders) only with several servers, and then for every command: the
        one that is not idempotent, ``SESSION.OPEN``, can at worst leave an unused
        session behind, which expires. One server: ``retries`` times; several: for
        :data:`FAILOVER_WINDOW` seconds."""
        if isinstance(exc, Moved):
            self.moved(exc)
            if attempt == 0:
                return 0.0
        elif isinstance(exc, ConnectionLost):
            if not idempotent:
                return None
        elif isinstance(exc, Unavailable) and self.several:
            self.skip()  # this one may be cut off from etcd: ask the next
        else:
            return None
        if self.several:
            if now - since > FAILOVER_WINDOW:
                return None
        elif attempt >= retries:
            return None
        delay: float = base * 2.0 ** attempt
        return min(delay, MAX_RETRY_DELAY) if self.several else delay


class Ledger:
    """Per (session id, key): the tokens this client holds, how many of its acquires are
    in flight, and the keys whose acquire broke off with its connection ("unsettled":
    the server may hold or queue something for us that the caller was never told of).
    Thread-safe (one short lock), so the threaded and the asyncio client share it."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held: dict[LedgerKey, set[int]] = {}
        self._inflight: dict[LedgerKey, int] = {}
        self._unsettled: dict[LedgerKey, tuple[str | bytes, SettleKind]] = {}

    def begin(self, sid: int, key: str | bytes, kind: SettleKind = "lock") -> LedgerKey:
        """An acquire of ``key`` for session ``sid`` is on its way."""
        k = (sid, key_bytes(key), kind == "pool")
        with self._mutex:
            self._inflight[k] = self._inflight.get(k, 0) + 1
        return k

    def granted(self, k: LedgerKey, token: int) -> None:
        with self._mutex:
            self._inflight[k] -= 1
            self._held.setdefault(k, set()).add(token)

    def failed(self, k: LedgerKey) -> None:
        """It ended with an answer (an error): nothing is held or queued for it."""
        with self._mutex:
            self._inflight[k] -= 1

    def broke_off(self, k: LedgerKey, key: str | bytes, kind: SettleKind) -> None:
        """It ended without an answer: settle the key once the server can be asked."""
        with self._mutex:
            self._inflight[k] -= 1
            self._unsettled[k] = (key, kind)

    def unsettle(self, sid: int, key: str | bytes, kind: SettleKind) -> None:
        """A release went unanswered: settle the key too (its hold, no longer known,
        is released then if the release never arrived)."""
        with self._mutex:
            self._unsettled[(sid, key_bytes(key), kind == "pool")] = (key, kind)

    def hold(self, sid: int, key: str | bytes, token: int, kind: SettleKind = "lock") -> None:
        """A grant that did not wait (a try)."""
        with self._mutex:
            self._held.setdefault((sid, key_bytes(key), kind == "pool"), set()).add(token)

    def released(self, sid: int, key: str | bytes, token: int, kind: SettleKind = "lock") -> None:
        with self._mutex:
            self._held.get((sid, key_bytes(key), kind == "pool"), set()).discard(token)

    def known(self, k: LedgerKey) -> set[int]:
        """The tokens the client was told of (held, not released) on ``k``."""
        with self._mutex:
            return set(self._held.get(k, set()))

    def unsettled(self, sid: int) -> list[tuple[LedgerKey, str | bytes, SettleKind]]:
        with self._mutex:
            return [(k, key, kind) for k, (key, kind) in self._unsettled.items() if k[0] == sid]

    def busy(self, k: LedgerKey) -> bool:
        """Another acquire of ours on this key is in flight: its outcome cannot be told
        from a stray one, so settling waits."""
        with self._mutex:
            return bool(self._inflight.get(k))

    def settle_commands(self, k: LedgerKey, info: LockInfo, credential: bytes, kind: GrantKind,
                        reqid: Callable[[], int]) -> list[list[Arg]]:
        """What to send, given the key's ``LOCK.INFO``, so the session holds and waits
        for nothing on it that the client does not know of: release the stray holds,
        withdraw the stray waits. Then call :meth:`settled`."""
        sid = k[0]
        key = k[1]
        known = self.known(k)
        out: list[list[Arg]] = [[RELEASE_COMMAND[kind], key, credential, "TOKEN", token, "REQID", reqid()]
                                for token in stray_holds(info, sid, known)]
        out += [["LOCK.CANCEL", key, credential, "TICKET", ticket, "REQID", reqid()]
                for ticket in stray_waiters(info, sid)]
        return out

    def pool_settle_commands(self, k: LedgerKey, info: dict[str, Any] | None, credential: bytes,
                             reqid: Callable[[], int]) -> list[list[Arg]]:
        """:meth:`settle_commands` for a pool, given its ``POOL.INFO pool SESSION id``
        (None: no such pool any more). A wait withdrawn by its ticket that was granted
        meanwhile answers NOTHOLDER: the key stays unsettled, and the next round releases
        the lease it became."""
        if info is None:
            return []
        known = self.known(k)
        pool = k[1]
        out: list[list[Arg]] = [["POOL.RELEASE", pool, credential, token, "REQID", reqid()]
                                for token in (int(to_dict(x)["token"]) for x in info["leases"]) if token not in known]
        out += [["POOL.RELEASE", pool, credential, int(to_dict(x)["ticket"]), "REQID", reqid()] for x in info["waits"]]
        return out

    def settled(self, k: LedgerKey) -> None:
        with self._mutex:
            self._unsettled.pop(k, None)


class Reattach:
    """The retry policy of one blocking acquire. Its request id stays the same across
    reconnects, so the server re-attaches the retry to the wait it already queued
    (and answers the token if that wait was granted meanwhile). Times are the driver's
    monotonic clock, in seconds."""

    def __init__(self, *, timeout: float | None, ttl: float, first_delay: float, reqid: int,
                 now: float) -> None:
        self.reqid = reqid
        self._deadline = None if timeout is None else now + timeout
        self._ttl = ttl
        self._delay = first_delay
        self._give_up: float | None = None
        self._retried = False

    def left(self, now: float) -> float | None:
        """The TIMEOUT to send now (what is left of the caller's), None: wait forever."""
        return None if self._deadline is None else max(0.0, self._deadline - now)

    def after_break(self, now: float, closing: bool) -> float | None:
        """The connection broke: seconds to pause before the retry, or None to give up
        (the client or session is closing, the caller's timeout or the window is over).
        The window is the session's TTL at least: past it the session is gone anyway."""
        if self._give_up is None:
            self._give_up = now + max(self._ttl, REATTACH_WINDOW)
        delay = self._delay
        if closing or now + delay > self._give_up or (self._deadline is not None and now + delay >= self._deadline):
            return None
        self._delay = min(delay * 2, MAX_RETRY_DELAY)
        self._retried = True
        return delay

    def after_error(self, exc: CoordcoreError, new_reqid: Callable[[], int]) -> bool:
        """An error reply: True to queue again with a new request id (the wait ended
        while we were away: ``NOTFOUND`` to a retry), False to raise it."""
        if not (self._retried and exc.code == "NOTFOUND"):
            return False
        self.reqid = new_reqid()
        self._retried = False
        return True


# --- the procedures both transports drive ------------------------------------------------
#
# A procedure is a generator: it yields what it needs done (an Op), and the transport
# does it and sends back the reply, or throws the exception in. The blocking client does
# each op with sockets and sleeps, the asyncio client with awaits; the decisions (what
# to send, when to retry, what to reconcile) are written once, here.


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """One command on the client's shared connection(s); the reply comes back (an error
    reply is thrown in as its coordcore exception). ``timeout``: seconds, None: no limit."""

    args: Sequence[Arg]
    timeout: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Wait:
    """A command that may park server side (an acquire), on a connection of its own, so
    it holds up nobody; ``timeout`` is the server-side wait's (None: forever)."""

    args: list[Arg]
    timeout: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class Pause:
    seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class Settle:
    """Reconcile the session's unsettled keys (:meth:`ClientCore.settle`) without making
    the caller wait for it where the transport can (asyncio: a task of its own)."""

    session: SessionState


@dataclasses.dataclass(frozen=True, slots=True)
class Open:
    """A connection to ``endpoint`` (``on_push``: where an asyncio client's pushes go)."""

    endpoint: Endpoint
    on_push: Any = None


Op = Send | Wait | Pause | Settle | Open
Proc = Generator[Op, Any, T]


class Step(Generic[T]):
    """One run of a procedure: :meth:`next` is the op to do (None: finished, see
    ``result``), then :meth:`reply` or :meth:`fail` tells it how the op went."""

    __slots__ = ("_proc", "_outcome", "_failed", "result")

    def __init__(self, proc: Proc[T]) -> None:
        self._proc = proc
        self._outcome: Any = None
        self._failed = False

    def next(self) -> Op | None:
        try:
            if self._failed:
                self._failed = False
                return self._proc.throw(self._outcome)
            return self._proc.send(self._outcome)
        except StopIteration as done:
            self.result: T = done.value
            return None
        finally:
            self._outcome = None  # no reference cycle through a held exception

    def reply(self, value: Any) -> None:
        self._outcome = value

    def fail(self, exc: BaseException) -> None:
        self._outcome, self._failed = exc, True


def answered(exc: BaseException) -> bool:
    """True for an error reply from the server: it ended the request, so nothing is held
    or queued for it. Anything else (a broken connection, a socket timeout, an
    interrupt, a cancellation) may have left a grant or a wait behind on the server."""
    return isinstance(exc, CoordcoreError) and not isinstance(exc, OSError)


class SessionState:
    """What a client knows of one of its sessions; the blocking and the asyncio
    client's session classes add their methods on top."""

    def __init__(self, sid: int, credential: bytes, ttl: float, *, keepalive: bool, opened_at: float,
                 max_lifetime: float | None = None) -> None:
        self.id = sid
        #: ``b"<id>.<secret>"``: what acts for this session (the id alone is public).
        self.credential = credential
        self.ttl = ttl
        self.keepalive_enabled = keepalive
        self.expired = False
        self.closed = False
        #: Monotonic time when the last confirmed open or keep-alive was *sent*: the
        #: server's deadline is at least this plus the TTL.
        self.last_keepalive = opened_at
        self.opened_at = opened_at
        #: Seconds after opening past which keep-alives are refused (None: no limit).
        self.max_lifetime = max_lifetime
        #: Why the session ended (``"closed"``, ``"expired"``), None while alive.
        self.reason: str | None = None
        self._lost = LostCallbacks()

    @property
    def alive(self) -> bool:
        """Not closed or expired, as far as this client has seen."""
        return not (self.closed or self.expired)

    @property
    def lease_deadline(self) -> float:
        """The monotonic time until which the server surely keeps the session: the
        last confirmed open or keep-alive's *send* time plus the TTL (the server's own
        deadline is later by the request's trip)."""
        return self.last_keepalive + self.ttl

    def holds(self, grant: Grant) -> bool:
        """Whether ``grant`` (one of this session's) is surely still held: the session
        is alive and its lease deadline, as this client knows it, has not passed. A
        False is final once the session ended; before that, it means "not sure"."""
        return grant.session == self.id and self.alive and time.monotonic() < self.lease_deadline

    def on_lost(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(reason)`` once when the session ends for any reason (closed,
        expired: the server said so, or its lease deadline passed unconfirmed); at once
        if it already has. Returns a function that unregisters it."""
        return self._lost.add(callback)

    def ended(self, reason: str) -> None:
        """Called when the session is closed or known to have expired (once counts)."""
        if self.reason is not None:
            return
        self.reason = reason
        self._lost.fire(reason, self.id)

    def lapsed(self, now: float) -> bool:
        """End the session as expired if its lease deadline passed unconfirmed (the
        server expired it, or will before it could hear from us): True if it did."""
        if self.alive and now >= self.lease_deadline:
            self.expired = True
            self.ended("expired")
            return True
        return False

    def past_lifetime(self, now: float) -> bool:
        return self.max_lifetime is not None and now >= self.opened_at + self.max_lifetime

    def keepalive_due(self) -> float:
        """When the next keep-alive is due: every ttl/3 from the last one *sent*, so a
        slow answer does not push it late; past the max lifetime, none is: the keeper
        wakes at the lease deadline to end the session."""
        due = self.last_keepalive + self.ttl / 3
        return self.lease_deadline if self.past_lifetime(due) else due

    def __repr__(self) -> str:
        state = "expired" if self.expired else "closed" if self.closed else "alive"
        return f"<{type(self).__name__} {self.id} ttl={self.ttl}s {state}>"


S = TypeVar("S", bound=SessionState)


class ElectionState(Generic[S]):
    """An election handle's state: the name, the session it campaigns with, and the
    leadership it holds."""

    def __init__(self, name: Key, ttl: float | None, session: S | None) -> None:
        self.name = name
        self.ttl = ttl
        self.session = session
        self.grant: Grant | None = None

    def leadership(self) -> Grant:
        if self.grant is None:
            raise NotLeader("campaign first")
        return self.grant

    def concerns(self, event: WatchEvent) -> bool:
        """Whether a watch event under the name is about this election itself."""
        return event.key == key_bytes(self.name)


class ClientSettings:
    """How a client (either) reaches its server and how patient it is."""

    def __init__(self, host: str | Sequence[str], port: int, *, password: str | None, connect_timeout: float,
                 retries: int, retry_delay: float, default_ttl: float, ssl: ssl_module.SSLContext | None = None,
                 username: str | None = None, tracing: object = False, trace_keys: bool = False) -> None:
        # A URL (redis://, rediss:// for TLS) may carry the user, password, host and port.
        url_tls = False
        if isinstance(host, str) and "://" in host:
            host, port, url_user, url_password, url_tls = parse_url(host, port)
            username, password = username or url_user, password or url_password
        #: Several servers (a list or a comma-separated string of host:port): a cluster.
        self.endpoints = Endpoints(endpoints_from(host, port))
        self.password = password
        #: The ACL user the password is for.
        self.username = username or "default"
        #: TLS to the server (a rediss:// URL without a context: the system's CAs).
        self.ssl = ssl if ssl is not None or not url_tls else ssl_module.create_default_context()
        self.connect_timeout = connect_timeout
        #: Reconnect attempts for a command that is safe to repeat, and the first pause.
        self.retries = retries
        self.retry_delay = retry_delay
        #: The TTL of the session the client opens for a lock taken without one.
        self.default_ttl = default_ttl
        #: A span per command (None: tracing off, the one test a command pays for it).
        self._tracer = tracer_for(tracing, trace_keys)

    @property
    def endpoint(self) -> Endpoint:
        """The server this client talks to (in a cluster: the leader, as far as it knows)."""
        return self.endpoints.current


MakeArgs = Callable[[float | None, int], list[Arg]]


class ClientCore(Generic[S]):
    """The client's state and decisions, with no I/O: sessions, the ledger, request ids,
    retries and keep-alive timing. ``new_session`` makes the transport's session object
    (and starts keeping it alive if asked). Thread safe where the blocking client's
    threads meet (the session tables, the ledger, request ids)."""

    def __init__(self, *, retries: int, retry_delay: float, default_ttl: float,
                 new_session: Callable[[int, bytes, float, bool, float], S],
                 clock: Callable[[], float] = time.monotonic, endpoints: Endpoints | None = None) -> None:
        #: Where the transports connect; this core moves it on -MOVED and failures.
        self.endpoints = endpoints if endpoints is not None else Endpoints([Endpoint("127.0.0.1", 7379)])
        self.retries = retries
        self.retry_delay = retry_delay
        self.default_ttl = default_ttl
        self.clock = clock
        self.closed = False
        #: What this client holds, acquires and must settle, per (session, key).
        self.ledger = Ledger()
        #: Hold counts of reentrant locks.
        self.holds = HoldCounts()
        self._new_session = new_session
        self._mutex = threading.Lock()
        self._sessions: dict[int, S] = {}
        self._defaults: dict[float, S] = {}
        self._reqids = itertools.count(1)

    def reqid(self) -> int:
        with self._mutex:
            return next(self._reqids)

    def open_sessions(self) -> list[S]:
        with self._mutex:
            return list(self._sessions.values())

    def session(self, sid: int) -> S | None:
        """This client's live session ``sid``, or None."""
        with self._mutex:
            return self._sessions.get(sid)

    def credential(self, sid: int) -> bytes:
        with self._mutex:
            session = self._sessions.get(sid)
        if session is None:
            raise SessionExpired(f"session {sid} is not open in this client (closed or expired)")
        return session.credential

    # --- commands ------------------------------------------------------------------

    def execute(self, args: Sequence[Arg], *, retry: bool = True, timeout: float | None = None) -> Proc[Any]:
        """One command; on a lost connection it is sent again (``retries`` times, with
        backoff; with several servers, through a failover) if ``retry``: for commands
        that are safe to repeat. ``-MOVED`` is followed either way (see
        :meth:`Endpoints.retry_delay`)."""
        since = self.clock()
        attempt = 0
        unknown: ConnectionLost | None = None  # an attempt whose outcome nobody told us
        while True:
            try:
                return (yield Send(args, timeout))
            except (ConnectionLost, Moved, Unavailable) as exc:
                delay = self.endpoints.retry_delay(exc, idempotent=retry, attempt=attempt, since=since,
                                                   now=self.clock(), retries=self.retries, base=self.retry_delay)
                if delay is None or self.closed:
                    if unknown is not None and not isinstance(exc, ConnectionLost):
                        # The last server applied nothing, but an earlier attempt may have
                        # been: say the outcome is unknown, not that it failed.
                        raise ConnectionLost(f"{unknown} (then, until giving up: {exc}); whether "
                                             f"{str(args[0])} was applied is unknown") from exc
                    raise
                if isinstance(exc, ConnectionLost):
                    unknown = exc
                attempt += 1
                if delay:
                    yield Pause(delay)

    def ping(self) -> Proc[bool]:
        return bool((yield from self.execute(["PING"])) == b"PONG")

    def info(self) -> Proc[dict[str, str]]:
        text = (yield from self.execute(["INFO"])).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))

    def next_id(self) -> Proc[int]:
        return int((yield from self.execute(["ID.NEXT"])))

    def id_range(self, n: int) -> Proc[IdRuns]:
        return IdRuns.from_reply((yield from self.execute(["ID.RANGE", n])))

    def id_workers(self) -> Proc[list[Endpoint]]:
        return [parse_endpoint(x) for x in (yield from self.execute(["ID.WORKERS"]))]

    # --- sessions ------------------------------------------------------------------

    def open_session(self, ttl: float | None, keepalive: bool, max_lifetime: float | None = None) -> Proc[S]:
        ttl = self.default_ttl if ttl is None else ttl
        check_bool("keepalive", keepalive)
        if max_lifetime is not None and not check_seconds("max_lifetime", max_lifetime) > 0:
            raise BadArgument(f"max_lifetime must be > 0 seconds, got {max_lifetime}")
        sent = self.clock()
        credential = bytes((yield from self.execute(["SESSION.OPEN", ttl_arg(ttl)], retry=False)))
        session = self._new_session(session_id_of(credential), credential, ttl, keepalive, sent)
        session.max_lifetime = max_lifetime
        session.on_lost(lambda _: self.holds.forget(session.id))
        with self._mutex:
            self._sessions[session.id] = session
        return session

    def session_for(self, session: S | None, ttl: float | None) -> Proc[S]:
        """The caller's session, or the client's own for that TTL (opened once)."""
        if session is not None:
            if not isinstance(session, SessionState):
                raise WrongType(f"session must be a session of this client, not {type(session).__name__}")
            return session
        if ttl is not None:
            check_seconds("ttl", ttl)
        ttl = self.default_ttl if ttl is None else ttl
        with self._mutex:
            found = self._defaults.get(ttl)
        if found is None or not found.alive:
            found = yield from self.open_session(ttl, True)
            with self._mutex:
                self._defaults[ttl] = found
        return found

    def keepalive(self, s: SessionState) -> Proc[None]:
        """Reset the lease to the TTL from now (never adds to what is left)."""
        sent = self.clock()
        if s.past_lifetime(sent):
            # Refused here: the lease then runs out at most a TTL past the max lifetime.
            raise SessionExpired(f"session {s.id} is past its max lifetime of {s.max_lifetime} s: "
                                 "it is not kept alive any more")
        try:
            yield from self.execute(["SESSION.KEEPALIVE", s.credential])
        except SessionExpired:
            s.expired = True
            s.ended("expired")
            raise
        s.last_keepalive = sent

    def keep_alive_round(self, s: SessionState) -> Proc[None]:
        """The background keep-alive of one session; once it went through, settle what
        is unsettled (the server answers again)."""
        try:
            yield from self.keepalive(s)
        except SessionExpired:
            return
        except (OSError, ServiceClosed):
            return  # tried again next round; the server's TTL is the judge
        yield from self.settle(s)

    def due_keepalives(self, now: float) -> list[S]:
        """The sessions to keep alive now, after ending those whose lease ran out (a
        keep-alive later than the lease deadline cannot save it: the server may have
        expired it and released its locks already)."""
        for s in self.open_sessions():
            if s.keepalive_enabled and s.lapsed(now):
                self.forget(s)
        return [s for s in self.open_sessions() if s.keepalive_enabled and s.alive and s.keepalive_due() <= now]

    def forget(self, s: SessionState) -> None:
        with self._mutex:
            self._sessions.pop(s.id, None)

    def keepalive_wait(self, now: float) -> float:
        """Seconds the keeper may sleep: until the next keep-alive is due (at most a
        second, at least 10 ms so a failing one is not retried in a busy loop)."""
        due = [s.keepalive_due() for s in self.open_sessions() if s.keepalive_enabled and s.alive]
        return max(0.01, min([1.0, *(t - now for t in due)]))

    def close_session(self, s: SessionState) -> Proc[None]:
        if s.closed:
            return
        s.closed = True
        with self._mutex:
            self._sessions.pop(s.id, None)
        try:
            yield from self.execute(["SESSION.CLOSE", s.credential])
        except SessionExpired:
            pass
        s.ended("closed")

    # --- locks, semaphores, elections --------------------------------------------------

    def contend(self, make_args: MakeArgs, key: Key, s: SessionState, kind: GrantKind, timeout: float | None,
                shared: bool = False) -> Proc[Grant]:
        """A blocking acquire. If its connection breaks while it waits (a network fault,
        a server restart), it reconnects and retries with the same request id, which
        re-attaches to the wait on the server (see :class:`Reattach`). If it ends
        without an answer (it cannot get back, it is interrupted or cancelled), what may
        still be held or queued for it is settled once the server can be reached
        (:meth:`settle`), so the caller never holds a lock it was not told about."""
        token = yield from self.tracked(make_args, key, s, kind, timeout)
        return Grant(key_bytes(key), token, s.id, kind, shared)

    def tracked(self, make_args: MakeArgs, key: Key, s: SessionState, kind: SettleKind,
                timeout: float | None) -> Proc[int]:
        """:meth:`reattached`, kept in the ledger: an acquire that ends without an answer
        has its key settled (see :meth:`contend`); returns the token."""
        k = self.ledger.begin(s.id, key, kind)
        try:
            token = yield from self.reattached(make_args, s, timeout)
        except BaseException as exc:
            if answered(exc):
                self.ledger.failed(k)
            else:
                self.ledger.broke_off(k, key, kind)
                yield Settle(s)
            raise
        self.ledger.granted(k, token)
        return token

    def reattached(self, make_args: MakeArgs, s: SessionState, timeout: float | None) -> Proc[int]:
        """The retry loop of a blocking acquire (:meth:`contend`, :meth:`pool_acquire`): the
        same request id across reconnects (see :class:`Reattach`); returns the token."""
        attempt = Reattach(timeout=timeout, ttl=s.ttl, first_delay=self.retry_delay, reqid=self.reqid(),
                           now=self.clock())
        redirects = 0
        while True:
            left = attempt.left(self.clock())
            try:
                try:
                    return int((yield Wait(make_args(left, attempt.reqid), left)))
                except Moved as exc:
                    self.endpoints.moved(exc)
                    redirects += 1
                    if redirects <= len(self.endpoints.all):
                        continue  # nothing applied there: to the leader at once, same REQID
                    raise ConnectionLost(f"redirected in a circle, last to {exc.address}") from exc
                except Unavailable as exc:
                    if not self.endpoints.several:
                        raise
                    self.endpoints.skip()
                    # Between leaders: wait for one as for a broken connection.
                    raise ConnectionLost(f"no leader serving: {exc}") from exc
            except OSError:  # ConnectionLost too
                redirects = 0
                delay = attempt.after_break(self.clock(), self.closed or s.closed)
                if delay is None:
                    raise
                yield Pause(delay)
            except CoordcoreError as exc:
                if not attempt.after_error(exc, self.reqid):
                    raise

    def settle(self, s: SessionState) -> Proc[None]:
        """Release the holds and withdraw the waits of session ``s`` on keys whose
        acquire broke off (a grant or wait the caller was never told of). Run at once and
        after each keep-alive, until the server could be asked."""
        for k, key, kind in self.ledger.unsettled(s.id):
            if self.ledger.busy(k):
                continue  # an acquire of ours on this key is in flight: do not guess
            try:
                if kind == "pool":
                    reply = yield from self.execute(["POOL.INFO", key, "SESSION", s.id])
                    commands = self.ledger.pool_settle_commands(k, None if reply is None else to_dict(reply),
                                                                s.credential, self.reqid)
                else:
                    info = parse_lock_info((yield from self.execute([INFO_COMMAND[kind], key])))
                    commands = self.ledger.settle_commands(k, info, s.credential, kind, self.reqid)
                for args in commands:
                    yield from self.execute(args)
            except SessionExpired:
                pass  # the session took everything with it
            except (CoordcoreError, OSError):
                continue  # the next keep-alive tries again
            self.ledger.settled(k)

    def acquire(self, key: Key, ttl: float | None, session: S | None, shared: bool,
                timeout: float | None, reentrant: bool = False) -> Proc[Grant]:
        check_key("key", key)
        check_bool("shared", shared)
        check_bool("reentrant", reentrant)
        if timeout is not None:
            check_seconds("timeout", timeout)
        s = yield from self.session_for(session, ttl)
        if reentrant and (again := self.holds.enter(s.id, key, shared=shared)) is not None:
            return again
        grant = yield from self.contend(
            lambda left, reqid: acquire_args("LOCK.ACQUIRE", key, s.credential, shared, left) + ["REQID", reqid],
            key, s, "lock", timeout, shared)
        if reentrant:
            self.holds.add(grant)
        return grant

    def try_acquire(self, key: Key, ttl: float | None, session: S | None, shared: bool,
                    reentrant: bool = False) -> Proc[Grant | None]:
        check_key("key", key)
        check_bool("shared", shared)
        check_bool("reentrant", reentrant)
        s = yield from self.session_for(session, ttl)
        if reentrant and (again := self.holds.enter(s.id, key, shared=shared)) is not None:
            return again
        args: list[Arg] = ["LOCK.TRY", key, s.credential]
        if shared:
            args.append("SHARED")
        token = yield from self.execute([*args, "REQID", self.reqid()])  # retried with the same REQID
        if token is None:
            return None
        self.ledger.hold(s.id, key, int(token))
        grant = Grant(key_bytes(key), int(token), s.id, "lock", shared)
        if reentrant:
            self.holds.add(grant)
        return grant

    def release(self, grant: Grant) -> Proc[None]:
        """Release by token (a reentrant grant: once its hold count is back to zero). If
        no answer comes (the connection broke past its retries: a server restart, say),
        the key is settled once the server answers again, so the hold does not outlive
        the caller's intent while the session is kept alive."""
        if not isinstance(grant, Grant):
            raise WrongType(f"release takes a Grant, not {type(grant).__name__}")
        if not self.holds.leave(grant):
            return
        try:
            # retried with the same REQID
            yield from self.execute(release_args(grant, self.credential(grant.session), self.reqid()))
        except OSError:  # ConnectionLost too
            self.ledger.unsettle(grant.session, grant.key, grant.kind)
            raise
        finally:
            self.ledger.released(grant.session, grant.key, grant.token)

    def lock_info(self, key: Key) -> Proc[LockInfo]:
        return parse_lock_info((yield from self.execute(["LOCK.INFO", key])))

    # --- quota pools (POOL.*) -------------------------------------------------------------

    def pool_acquire(self, pool: Key, units: int, tenant: Key, ttl: float | None, session: S | None,
                     timeout: float | None) -> Proc[CapacityLease]:
        check_key("pool", pool)
        check_key("tenant", tenant)
        if isinstance(units, bool) or not isinstance(units, int):
            raise WrongType(f"units must be an int, not {type(units).__name__}")
        if timeout is not None:
            check_seconds("timeout", timeout)
        s = yield from self.session_for(session, ttl)

        def make_args(left: float | None, reqid: int) -> list[Arg]:
            args: list[Arg] = ["POOL.ACQUIRE", pool, s.credential, tenant, units]
            if left is not None:
                args += ["TIMEOUT", int(left * 1000)]
            return args + ["REQID", reqid]

        # On a connection of its own (it may park); on a lost connection retried with the
        # same REQID, which answers the lease the first attempt got (the units are held
        # once) or takes its wait over. If it gives up without an answer (its timeout, a
        # cancellation, the retries abandoned), the pool is settled: a lease granted
        # meanwhile is released, a wait left behind withdrawn.
        token = yield from self.tracked(make_args, pool, s, "pool", timeout)
        return CapacityLease(key_bytes(pool), key_bytes(tenant), units, token, s.id)

    def pool_release(self, lease: CapacityLease) -> Proc[None]:
        if not isinstance(lease, CapacityLease):
            raise WrongType(f"pool_release takes a CapacityLease, not {type(lease).__name__}")
        try:
            # retried with the same REQID: a release applied before the reply was lost answers OK
            yield from self.execute(["POOL.RELEASE", lease.pool, self.credential(lease.session), lease.token,
                                     "REQID", self.reqid()])
        except OSError:  # ConnectionLost too: settled once the server answers again
            self.ledger.unsettle(lease.session, lease.pool, "pool")
            raise
        finally:
            self.ledger.released(lease.session, lease.pool, lease.token, "pool")

    def pool_info(self, pool: Key) -> Proc[dict[str, Any] | None]:
        check_key("pool", pool)
        reply = yield from self.execute(["POOL.INFO", pool])
        if reply is None:
            return None
        info = to_dict(reply)
        for part in ("tenants", "leases"):
            info[part] = [to_dict(x) for x in info[part]]
        return info

    def acquire_semaphore(self, name: Key, permits: int, ttl: float | None, session: S | None,
                          timeout: float | None) -> Proc[Grant]:
        check_key("name", name)
        if isinstance(permits, bool) or not isinstance(permits, int):
            raise WrongType(f"permits must be an int, not {type(permits).__name__}")
        if timeout is not None:
            check_seconds("timeout", timeout)
        s = yield from self.session_for(session, ttl)
        return (yield from self.contend(
            lambda left, reqid: sem_args(name, s.credential, permits, left) + ["REQID", reqid],
            name, s, "semaphore", timeout))

    def campaign(self, e: ElectionState[S], value: Key, timeout: float | None) -> Proc[Grant]:
        check_key("name", e.name)
        check_key("value", value)
        if timeout is not None:
            check_seconds("timeout", timeout)
        s = yield from self.session_for(e.session, e.ttl)
        e.session = s
        e.grant = yield from self.contend(
            lambda left, reqid: campaign_args(e.name, s.credential, value, left) + ["REQID", reqid],
            e.name, s, "election", timeout)
        return e.grant

    def proclaim(self, e: ElectionState[S], value: Key) -> Proc[int]:
        g = e.leadership()
        return int((yield from self.execute(["ELECT.PROCLAIM", e.name, self.credential(g.session), value,
                                             "TOKEN", g.token, "REQID", self.reqid()])))

    def resign(self, e: ElectionState[S]) -> Proc[None]:
        g = e.leadership()
        e.grant = None
        yield from self.release(g)

    def leader(self, name: Key) -> Proc[Leader | None]:
        return parse_leader((yield from self.execute(["ELECT.LEADER", name])))


def hello_args(password: str | None, username: str = "default") -> list[Arg]:
    """The first command on every connection: RESP3, and the password if there is one."""
    return ["HELLO", 3] if password is None else ["HELLO", 3, "AUTH", username, password]


def parse_url(url: str, port: int) -> tuple[str, int, str | None, str | None, bool]:
    """``(host, port, user, password, tls)`` of a ``redis://`` or ``rediss://`` URL.

    >>> parse_url("rediss://alice:pw@db.example:7380", 7379)
    ('db.example', 7380, 'alice', 'pw', True)
    """
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "coordcore", "coordcores"):
        raise ValueError(f"unknown URL scheme {parts.scheme!r} (redis:// or rediss://)")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname or "127.0.0.1", parts.port or port, user, password, parts.scheme.endswith("s")


class CommandQueue:
    """A pipeline's commands, queued until they go out in one write."""

    def __init__(self) -> None:
        self.commands: list[Sequence[Arg]] = []

    def command(self, *args: Arg) -> Self:
        self.commands.append(args)
        return self

    def take(self) -> list[Sequence[Arg]]:
        commands, self.commands = self.commands, []
        return commands


def pipeline_replies(replies: list[Any], raise_on_error: bool) -> list[Any]:
    """A pipeline's replies, in order; a lost connection always raises, the first error
    reply with ``raise_on_error`` (else error replies stay in the list as exceptions)."""
    for r in replies:
        if isinstance(r, ConnectionLost) or (raise_on_error and isinstance(r, BaseException)):
            raise r
    return replies


class IdStock:
    """The IDs an ID buffer holds, as runs ``[next, end)``; the transports fetch them."""

    def __init__(self, batch: int) -> None:
        if not 1 <= batch <= 1 << 16:
            raise BadArgument(f"batch must be in [1, 65536], got {batch}")
        self.batch = batch
        self.available = 0
        self._runs: deque[list[int]] = deque()

    def add(self, reply: Any) -> None:
        """An ``ID.RANGE`` reply: runs ``(first, count)``."""
        for first, count in reply:
            self._runs.append([int(first), int(first) + int(count)])
            self.available += int(count)

    def take(self) -> int:
        run = self._runs[0]
        value = run[0]
        run[0] = value + 1
        if run[0] == run[1]:
            self._runs.popleft()
        self.available -= 1
        return value

    @property
    def low(self) -> bool:
        """Below half a batch: time to fetch the next one."""
        return self.available < self.batch // 2
