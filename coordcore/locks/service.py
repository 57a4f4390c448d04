"""The embedded lock service: asyncio, group commit, wake-on-commit, fencing tokens.

:class:`LockService` puts the deterministic :class:`~coordcore.locks.machine.LockMachine`
behind an asyncio API in the spirit of etcd's ``concurrency`` package, with kazoo's
conveniences (timeouts, cancellation, contenders)::

    async with LockService.open("/var/lib/app/locks") as svc:
        session = await svc.open_session(ttl=10)          # kept alive in the background
        async with svc.lock("jobs/42", session, timeout=5) as grant:
            storage.write("jobs/42", grant.token, data)   # fence writes with the token

How a request travels
---------------------
Every mutating call from any number of tasks becomes one command queued for **one
writer task** (:mod:`coordcore.locks.pipeline`). The writer drains *everything* queued
into one batch record (:class:`~coordcore.locks.machine.BatchBuilder`), appends it to
the log (:mod:`coordcore.locks.store`: for a directory one ``write`` and one
``fdatasync`` off the event loop, so the loop keeps serving and the next batch
accumulates meanwhile: group commit), applies it to the machine, and then answers every
request of the batch and dispatches the events: grants to parked blocking acquires,
session expiries (:mod:`coordcore.locks.sessions`), watch events
(:mod:`coordcore.locks.watches`). Nothing is acknowledged before its batch is durable.
Under load, batches grow by themselves while an append is in flight.

A blocked acquire is parked (no polling): it wakes when the batch that grants it
commits. A timeout or a cancelled task withdraws the waiter through the log (a CANCEL
command), so a timed-out acquire never ends up holding the lock, even if the grant won
the race. A periodic tick batch (only when some session's deadline has passed) expires
idle sessions; their locks go to the next waiters in the same batch.

Time
----
Each batch is stamped with the service's clock in ms: by default the wall clock at
start plus ``time.monotonic()`` since (immune to wall-clock steps while running), never
below the last batch's time (so never decreasing, across restarts too). Tests pass a
:class:`ManualClock`. By default the time the service was down counts: a session
opened before a restart has expired if the service was down for longer than its TTL
(right for embedded use, where its owner died with the process). With
``count_downtime=False`` the clock resumes at the last batch's time, so sessions keep the
TTL they had left (what a server whose clients reconnect wants; etcd also renews leases
when a new leader starts).

Durability
----------
``LockService.open(path)`` keeps a :class:`~coordcore.locks.log.BatchLog` in ``path``
(``LockService.open_store(store)`` takes any :class:`~coordcore.locks.store.LogStore`);
restart recovers the newest snapshot and replays the log (a torn last batch, never
acknowledged, is cut off; any other damage refuses to open until ``coordcore locks
repair`` cuts it off explicitly). A revision high-water mark beside the log keeps
fencing tokens unique even when records are lost (:mod:`coordcore.locks.recovery`).
Snapshots are taken automatically after
``snapshot_every_records`` batches or ``snapshot_every_bytes`` bytes, or on demand
with :meth:`LockService.snapshot`. ``LockService.in_memory()`` has no log.

>>> import asyncio
>>> async def demo() -> list[object]:
...     async with LockService.in_memory() as svc:
...         s1 = await svc.open_session(ttl=10)
...         s2 = await svc.open_session(ttl=10)
...         async with svc.lock("jobs/42", s1) as g1:
...             waiter = asyncio.ensure_future(svc.acquire("jobs/42", s2))
...             await asyncio.sleep(0.01)
...             queued = [c.session for c in svc.contenders("jobs/42")]
...         g2 = await waiter                      # granted when s1's release commits
...         await svc.release(g2)
...         busy = await svc.try_acquire("jobs/42", s1)
...         return [queued == [s1.id, s2.id], g2.token > g1.token, busy is not None]
>>> asyncio.run(demo())
[True, True, True]
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Generic, TypeVar

from coordcore._holds import HoldCounts, cancelled_on_loss
from coordcore.errors import (
    BadArgument,
    CoordcoreError,
    LimitExceeded,
    LockTimeout,
    LogCorrupted,
    NotLockHolder,
    ServiceClosed,
    SessionExpired,
    WrongType,
)
from coordcore.locks.log import DEFAULT_SEGMENT_BYTES, Durability, TornTail
from coordcore.locks.machine import (
    MAX_TIMEOUT_MS,
    MAX_TTL_MS,
    BatchBuilder,
    Contender,
    Event,
    EventKind,
    KeyInfo,
    LockMachine,
    Result,
    SessionInfo,
    Status,
    Timings,
)
from coordcore.locks.pipeline import BatchStats, CommitPipeline, write_snapshot
from coordcore.locks.pools import Lease, Pools
from coordcore.locks.sessions import Session, credential, new_secret, parse_credential
from coordcore.locks.store import FileStore, LogStore, SyncTimes, unwrap_snapshot
from coordcore.locks.watches import DEFAULT_WATCH_BUFFER, Watch, WatchHub
from coordcore.types import Grant, GrantKind, Leader

__all__ = [
    "BatchStats",
    "Grant",
    "Leader",
    "LockService",
    "ManualClock",
    "Session",
    "Watch",
]

logger = logging.getLogger("coordcore.locks.service")

T = TypeVar("T")
Key = str | bytes

#: Default bound of live sessions per service.
DEFAULT_MAX_SESSIONS: Final = 1_000_000
#: Seconds a waiter recovered from the log waits for its client to re-attach.
DEFAULT_WAITER_GRACE: Final = 5.0


class ManualClock:
    """A clock for tests and examples: seconds, moved only by :meth:`advance`.

    >>> c = ManualClock(100.0); c.advance(2.5); c()
    102.5
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if not seconds >= 0:
            raise BadArgument(f"a clock only moves forward, not by {seconds!r}")
        self._now += seconds


def _default_clock(start: float | None = None) -> Callable[[], float]:
    wall0, mono0 = time.time() if start is None else start, time.monotonic()
    return lambda: wall0 + (time.monotonic() - mono0)


class _GrantContext:
    """``async with svc.lock(...) as grant``: acquire on enter, release on exit (with
    ``cancel_on_loss``, the body is cancelled if the session ends meanwhile)."""

    def __init__(self, acquire: Callable[[], Coroutine[Any, Any, Grant]], service: LockService,
                 cancel_on_loss: bool = False) -> None:
        self._acquire = acquire
        self._service = service
        self._grant: Grant | None = None
        self._cancel_on_loss = cancel_on_loss
        self._watch: contextlib.AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> Grant:
        self._grant = await self._acquire()
        if self._cancel_on_loss:
            session = self._service.session(self._grant.session)
            self._watch = cancelled_on_loss(session.id, session.done)
            await self._watch.__aenter__()
        return self._grant

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            # Raises SessionExpired in place of the cancellation it caused: the session
            # took the lock with it, so there is nothing to release.
            await watch.__aexit__(exc_type, exc, tb)
        grant, self._grant = self._grant, None
        if grant is None:
            return
        # The release command is queued before release() first awaits, so even if
        # this task is cancelled while it waits, the release is still committed.
        try:
            await self._service.release(grant)
        except (NotLockHolder, SessionExpired, ServiceClosed):
            # The lock was lost while held (session expired or closed): the body ran
            # unprotected. Say so, unless the body is already raising something.
            if exc_type is None:
                raise


class _Starter(Generic[T]):
    """Returned by :meth:`LockService.open`: ``await`` it or use it with ``async with``."""

    def __init__(self, start: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._start = start
        self._value: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._start().__await__()

    async def __aenter__(self) -> T:
        self._value = await self._start()
        return self._value

    async def __aexit__(self, *exc: object) -> None:
        value, self._value = self._value, None
        if isinstance(value, LockService):
            await value.close()


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise WrongType(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if not (timeout >= 0 and math.isfinite(timeout)):
        raise BadArgument(f"timeout must be >= 0 seconds and finite, not {timeout!r}")
    return float(timeout)


def _seconds_ms(name: str, seconds: float) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise WrongType(f"{name} must be a number of seconds, not {type(seconds).__name__}")
    if not (0 <= seconds <= MAX_TIMEOUT_MS / 1000):
        raise BadArgument(f"{name} must be in [0, {MAX_TIMEOUT_MS // 1000}] seconds, not {seconds!r}")
    return math.ceil(seconds * 1000)


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise WrongType(f"{name} must be a bool, not {type(value).__name__}")
    return value


def _wait_ms(timeout: float | None) -> int:
    """The wait deadline an acquire carries into the log (0: none). Waits past the
    longest the log takes (30 days) are not cut: only the service's timer ends them."""
    if timeout is None:
        return 0
    return min(math.ceil(timeout * 1000), MAX_TIMEOUT_MS)


def _ttl_ms(ttl: float) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise WrongType(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    if not (ttl > 0 and math.isfinite(ttl)):
        raise BadArgument(f"ttl must be > 0 seconds and finite, not {ttl!r}")
    ms = max(1, round(ttl * 1000))
    if ms > MAX_TTL_MS:
        raise BadArgument(f"ttl must be at most {MAX_TTL_MS / 1000:.0f} seconds, not {ttl!r}")
    return ms


def _key_bytes(key: Key) -> bytes:
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    raise WrongType(f"key must be str or bytes, not {type(key).__name__}")


class LockService:
    """The embedded lock service. Create it with :meth:`open` (durable) or
    :meth:`in_memory`; see the module docstring for how it works.

    At a glance (``session`` is a :class:`Session` or a session id):

    * sessions: :meth:`open_session`, :meth:`session` (a handle by id), :meth:`keepalive`,
      :meth:`close_session`, :meth:`session_info`;
    * locks: :meth:`lock` (``async with``), :meth:`acquire`, :meth:`try_acquire`,
      :meth:`release` (a :class:`Grant`; ``Grant(key, 0, session_id)`` releases
      the session's oldest hold on ``key``), :meth:`contenders`, :meth:`info`, :meth:`keys`;
    * semaphores: :meth:`semaphore`, :meth:`acquire_semaphore`,
      :meth:`try_acquire_semaphore`, :meth:`release`;
    * elections: :meth:`campaign`, :meth:`proclaim`, :meth:`resign`, :meth:`leader`,
      :meth:`observe`;
    * events: :meth:`watch`; maintenance: :meth:`tick`, :meth:`snapshot`, :meth:`close`,
      :attr:`stats`, :attr:`revision`, :attr:`torn_tail`.

    Errors: :class:`~coordcore.errors.SessionExpired`, :class:`~coordcore.errors.LockTimeout`,
    :class:`~coordcore.errors.NotLockHolder`, :class:`~coordcore.errors.NotLeader`,
    :class:`~coordcore.errors.Cancelled`, :class:`~coordcore.errors.ServiceClosed`,
    :class:`~coordcore.errors.WatchLagged`, :class:`~coordcore.errors.LogCorrupted`,
    :class:`~coordcore.errors.BadArgument`, :class:`~coordcore.errors.WrongType`.

    All methods must be called from the event loop the service was started on.
    """

    def __init__(self, *, store: LogStore | None, machine: LockMachine, clock: Callable[[], float],
                 tick_interval: float, snapshot_every_records: int, snapshot_every_bytes: int) -> None:
        self._store = store
        self._machine = machine
        self._clock = clock
        self._sessions: dict[int, Session] = {}
        self._holds = HoldCounts()
        #: Bound checked where OPEN is accepted (not in the log, so replay never depends
        #: on it): see :meth:`set_limits`.
        self.max_sessions = DEFAULT_MAX_SESSIONS
        #: Sessions ended since the service opened, by why ("expired", "closed"): metrics.
        self.sessions_ended: dict[str, int] = {"expired": 0, "closed": 0}
        #: Called with (credential digest, owner) of each OPEN before it is queued (the
        #: audit trail records who opened a session: the log keeps only the digest).
        self.on_open: Callable[[bytes, bytes], None] | None = None
        self._close_started = False
        self._closed = asyncio.Event()
        self._pipe = CommitPipeline(
            store=store, machine=machine, clock=lambda: int(clock() * 1000), tick_interval=tick_interval,
            snapshot_every_records=snapshot_every_records, snapshot_every_bytes=snapshot_every_bytes,
            on_session_end=self._session_ended, on_stop=self._stopped)
        self._watches = WatchHub(self._set_event_sink)
        #: Quota pools: fair-share leases of capacity (coordcore.locks.pools).
        self.pools = Pools(self)

    # --- construction --------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "fsync",
        clock: Callable[[], float] | None = None,
        count_downtime: bool = True,
        tick_interval: float = 0.1,
        snapshot_every_records: int = 100_000,
        snapshot_every_bytes: int = 64 * 1024 * 1024,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        waiter_grace: float = DEFAULT_WAITER_GRACE,
        allow_empty_log: bool = False,
    ) -> _Starter[LockService]:
        """Open (recovering) the durable service whose log lives in directory ``path``
        (a :class:`~coordcore.locks.store.FileStore`; :meth:`open_store` takes any store).

        ``await LockService.open(path)`` or ``async with LockService.open(path) as svc``.
        ``durability="unsafe-no-fsync"`` skips fsync (tests and caches only).
        ``count_downtime=False`` resumes the clock where the last batch left it (see
        "Time" in the module docs); ``clock`` replaces the clock altogether (seconds).
        Waiters recovered from the log have lost their callers: they are detached
        (``DETACH``), so each is withdrawn ``waiter_grace`` seconds after the start
        (released, if it was granted meanwhile) unless its client retries the acquire
        with the same request id (a server's clients do when they reconnect). Pool
        waits too, except that one granted meanwhile stays a lease (a client learns its
        token on the retry, or settles it if it gave up; see coordcore.locks.machine).
        Raises :class:`~coordcore.errors.LogCorrupted` for a damaged log (other than a
        torn tail, which is cut off; ``coordcore locks repair`` cuts damage off explicitly)
        and a clear ``OSError`` for an unusable path. A log whose segments and snapshots are
        gone but whose revision mark is there refuses
        (:class:`~coordcore.locks.recovery.LockLogMissing`) unless ``allow_empty_log``:
        then it starts empty, its revision raised above every token issued before (see
        :mod:`coordcore.locks.recovery`).
        """
        cls._check_options(tick_interval, snapshot_every_records, snapshot_every_bytes)
        if durability not in ("fsync", "unsafe-no-fsync"):
            raise BadArgument(f"durability must be 'fsync' or 'unsafe-no-fsync', not {durability!r}")
        grace_ms = _seconds_ms("waiter_grace", waiter_grace)

        async def start() -> LockService:
            store = await FileStore.open(path, durability=durability, segment_bytes=segment_bytes,
                                         allow_empty_log=allow_empty_log)
            return await cls._start(store, clock, count_downtime, tick_interval, snapshot_every_records,
                                    snapshot_every_bytes, grace_ms)

        return _Starter(start)

    @classmethod
    def open_store(
        cls,
        store: LogStore,
        *,
        clock: Callable[[], float] | None = None,
        count_downtime: bool = True,
        tick_interval: float = 0.1,
        snapshot_every_records: int = 100_000,
        snapshot_every_bytes: int = 64 * 1024 * 1024,
        waiter_grace: float = DEFAULT_WAITER_GRACE,
    ) -> _Starter[LockService]:
        """:meth:`open` on any :class:`~coordcore.locks.store.LogStore` (the service
        closes it when it closes, or when recovery fails)."""
        cls._check_options(tick_interval, snapshot_every_records, snapshot_every_bytes)
        grace_ms = _seconds_ms("waiter_grace", waiter_grace)

        async def start() -> LockService:
            return await cls._start(store, clock, count_downtime, tick_interval, snapshot_every_records,
                                    snapshot_every_bytes, grace_ms)

        return _Starter(start)

    @classmethod
    async def _start(cls, store: LogStore, clock: Callable[[], float] | None, count_downtime: bool,
                     tick_interval: float, snapshot_every_records: int, snapshot_every_bytes: int,
                     grace_ms: int) -> LockService:
        try:
            machine = await _recover(store)
        except BaseException:
            await store.close()
            raise
        chosen = clock
        if chosen is None:
            resume = not count_downtime and machine.time_ms > 0
            chosen = _default_clock(machine.time_ms / 1000 if resume else None)
        svc = cls(store=store, machine=machine, clock=chosen, tick_interval=tick_interval,
                  snapshot_every_records=snapshot_every_records, snapshot_every_bytes=snapshot_every_bytes)
        # Pool waits too, and only when there are some: a log without pools keeps the
        # records it always had (a DETACH of pool waits is format version 5).
        pool_waits = machine.pool_totals()[3] > 0
        if machine.waiter_count or pool_waits:
            try:
                detached = await svc._pipe.call(lambda b: b.detach(grace_ms, pools=pool_waits))
            except BaseException:
                await svc.close()
                raise
            logger.info("%d waiters recovered without their callers: withdrawn in %.1f s unless "
                        "their clients retry", detached.value, grace_ms / 1000)
        return svc

    @classmethod
    def in_memory(cls, *, clock: Callable[[], float] | None = None,
                  tick_interval: float = 0.1) -> _Starter[LockService]:
        """A service without a log (state is lost when it closes): for tests and
        single-process coordination that need not survive a restart."""
        cls._check_options(tick_interval, 1, 1)

        async def start() -> LockService:
            return cls(store=None, machine=LockMachine(), clock=clock or _default_clock(),
                       tick_interval=tick_interval, snapshot_every_records=0, snapshot_every_bytes=0)

        return _Starter(start)

    @staticmethod
    def _check_options(tick_interval: float, records: int, nbytes: int) -> None:
        if isinstance(tick_interval, bool) or not isinstance(tick_interval, (int, float)) \
                or not (0 <= tick_interval < 3600):
            raise BadArgument(f"tick_interval must be in [0, 3600) seconds, not {tick_interval!r}")
        for name, value in (("snapshot_every_records", records), ("snapshot_every_bytes", nbytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadArgument(f"{name} must be an int >= 1, not {value!r}")

    async def __aenter__(self) -> LockService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- wiring ------------------------------------------------------------------------

    @property
    def pipeline(self) -> CommitPipeline:
        """The commit pipeline, for servers: commands encoded by the caller
        (:meth:`CommitPipeline.submit_command`), a native command source
        (:meth:`CommitPipeline.attach`), and a hook after each batch
        (:meth:`CommitPipeline.on_batch`)."""
        return self._pipe

    @property
    def stats(self) -> BatchStats:
        """Counters of the writer (batches, commands, fsyncs, snapshots, sizes)."""
        return self._pipe.stats

    def _session_ended(self, session_id: int, why: str) -> None:
        self.sessions_ended[why] = self.sessions_ended.get(why, 0) + 1
        if why == "expired":
            logger.info("session %d expired: its locks, permits and waits are released", session_id)
        else:
            logger.debug("session %d closed", session_id)
        self._holds.forget(session_id)
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session._end(why)

    def _stopped(self, error: BaseException) -> None:
        self._watches.fail_all(error)
        for session in self._sessions.values():
            session._end("service closed")
        self._sessions.clear()

    def _set_event_sink(self, sink: Callable[[list[Event]], None] | None) -> None:
        self._pipe.event_sink = sink

    def set_limits(self, *, max_sessions: int | None = None, max_contenders_per_session: int | None = None) -> None:
        """Bound the live sessions (an OPEN past it gets
        :class:`~coordcore.errors.LimitExceeded`) and the holds + waits of one session
        (an acquire, try or campaign past it likewise). They are checked when a command
        is accepted, so commands already queued may pass a bound by their number."""
        for name, value in (("max_sessions", max_sessions),
                            ("max_contenders_per_session", max_contenders_per_session)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise BadArgument(f"{name} must be an int >= 1, not {value!r}")
        if max_sessions is not None:
            self.max_sessions = max_sessions
        if max_contenders_per_session is not None:
            self._pipe.max_contenders_per_session = max_contenders_per_session

    @property
    def max_contenders_per_session(self) -> int:
        return self._pipe.max_contenders_per_session

    # --- sessions --------------------------------------------------------------------

    async def open_session(self, ttl: float = 10.0, *, keepalive: bool = True, owner: bytes = b"",
                           max_lifetime: float | None = None) -> Session:
        """Open a session (a lease of ``ttl`` seconds). With ``keepalive`` (the default) a
        background task extends it every ttl/3 until it is closed; its ``done`` future
        and ``on_lost`` callbacks tell when it ends. Past ``max_lifetime`` seconds (if
        given) it is no longer kept alive: it expires at most a TTL later. ``owner`` (a
        server user's name) is the only one whose credential checks accept it (see
        :meth:`verify_credential`)."""
        ttl_ms = _ttl_ms(ttl)
        if max_lifetime is not None and not _seconds_ms("max_lifetime", max_lifetime) > 0:
            raise BadArgument(f"max_lifetime must be > 0 seconds, not {max_lifetime!r}")
        if self._machine.session_count >= self.max_sessions:
            raise LimitExceeded(f"{self.max_sessions} sessions are open, the most this server takes")
        # The secret is chosen here, where the command is accepted; only its digest
        # goes into the log (and so into every replica), never the secret.
        secret, digest = new_secret(owner)
        if self.on_open is not None:
            self.on_open(digest, owner)
        result = await self._pipe.call(lambda b: b.open_session(ttl_ms, digest=digest))
        session = Session(self, result.session_id, ttl_ms / 1000.0, keepalive,
                          credential(result.session_id, secret), max_lifetime)
        self._sessions[session.id] = session
        logger.debug("session %d opened (ttl %.3f s)", session.id, ttl_ms / 1000.0)
        return session

    def verify_credential(self, credential: bytes, owner: bytes = b"") -> int:
        """The id of the live session ``credential`` (``b"<id>.<secret hex>"``, what
        :attr:`Session.credential` holds) belongs to, or 0: a wrong secret, a bare id, a
        closed or expired session, a session opened before credentials existed, or one
        opened by another ``owner``.

        Checking before a command is queued is enough: session ids are never reused,
        so a command checked against session ``n`` can only ever act on session ``n``."""
        parsed = parse_credential(credential, owner)
        if parsed is None:
            return 0
        sid, digest = parsed
        return sid if self._machine.credential_matches(sid, digest) else 0

    def admit_hot(self, credential: bytes, owner: bytes = b"") -> int:
        """:meth:`verify_credential` for a server's native lane, which asks again every
        few commands: 0 also when the session is at its bound of holds and waits (the
        command then takes the general path, which answers why)."""
        sid = self.verify_credential(credential, owner)
        return sid if sid and self._pipe.has_room(sid) else 0

    def session_for_credential(self, credential: bytes, owner: bytes = b"") -> int:
        """:meth:`verify_credential`, raising :class:`~coordcore.errors.SessionExpired`
        with the reason when it is not a live session's credential (for ``owner``)."""
        sid = self.verify_credential(credential, owner)
        if sid:
            return sid
        # Name the session by its public id only: never echo a secret.
        text = credential.partition(b".")[0][:20].decode("ascii", "replace")
        if credential.isdigit():
            raise SessionExpired(f"session {text} needs its credential: pass the handle SESSION.OPEN "
                                 "returned (<id>.<secret>), not the bare id")
        raise SessionExpired(f"no live session {text} with that credential (never opened, closed, "
                             "expired, a wrong secret, or opened by another user)")

    def session(self, session_id: int, *, keepalive: bool = False) -> Session:
        """A handle on an existing session by id (one opened before a restart, or by
        another component), or :class:`~coordcore.errors.SessionExpired`."""
        if isinstance(session_id, bool) or not isinstance(session_id, int):
            raise WrongType(f"session id must be an int, not {type(session_id).__name__}")
        found = self._sessions.get(session_id)
        if found is not None:
            return found
        info = self._machine.session(session_id) if session_id >= 0 else None
        if info is None:
            raise SessionExpired(f"no session {session_id} (never opened, closed or expired)")
        session = Session(self, session_id, info.ttl_ms / 1000.0, keepalive)
        self._sessions[session_id] = session
        return session

    def _sid(self, session: Session | int) -> int:
        if self._pipe.closing:
            raise self._pipe.closed_error()
        if isinstance(session, Session):
            if session._service is not self:
                raise BadArgument("that session belongs to another LockService")
            if session.done.done():
                raise SessionExpired(f"session {session.id} is {session.done.result()}")
            return session.id
        if isinstance(session, bool) or not isinstance(session, int):
            raise WrongType(f"session must be a Session or a session id, not {type(session).__name__}")
        return session

    async def keepalive(self, session: Session | int) -> int:
        """Reset a session's lease to now + TTL (never more); returns the new deadline (ms)."""
        sid = self._sid(session)
        if isinstance(session, Session) and session.past_lifetime():
            raise SessionExpired(f"session {sid} is past its max lifetime of {session.max_lifetime} s: "
                                 "it is not kept alive any more")
        return (await self._pipe.call(lambda b: b.keepalive(sid))).deadline_ms

    async def renew_sessions(self) -> int:
        """Keep every live session alive now (its deadline: now + its TTL), through the
        log: what a new cluster leader does before it serves, as etcd renews every lease
        at a leader change. Returns how many were renewed."""
        def renew(sid: int) -> Callable[[BatchBuilder], int]:
            return lambda b: b.keepalive(sid)

        ids = self._machine.session_ids()
        renewed = 0
        for i in range(0, len(ids), 4096):  # bounded batches of coroutines, in order
            done = await asyncio.gather(*(self._pipe.call(renew(sid)) for sid in ids[i:i + 4096]),
                                        return_exceptions=True)
            for r in done:
                if isinstance(r, SessionExpired):
                    continue  # expired meanwhile
                if isinstance(r, BaseException):
                    raise r
                renewed += 1
        return renewed

    async def close_session(self, session: Session | int) -> None:
        """Close a session: release everything it holds, cancel what it waits for."""
        sid = self._sid(session)
        await self._pipe.call(lambda b: b.close_session(sid))

    def session_info(self, session: Session | int, *, after: int = 0, limit: int = 2**32 - 1) -> SessionInfo | None:
        """The machine's view of a session (TTL, deadline, contenders), or None; at most
        ``limit`` contenders from the first ticket above ``after`` (pages)."""
        sid = session.id if isinstance(session, Session) else session
        return self._machine.session(sid, after=after, limit=limit)

    # --- acquiring ---------------------------------------------------------------------

    async def _contend(self, add: Callable[[BatchBuilder], int], key: Key, sid: int,
                       kind: GrantKind, timeout: float | None, shared: bool = False) -> Grant:
        """Submit an acquire-like command (wait=True) and wait up to ``timeout`` for its
        grant; on timeout or cancellation withdraw it through the log."""
        req = self._pipe.submit(add, parks=True, contends=sid)
        what = "shared" if shared else "leader" if kind == "election" else kind
        if timeout is not None:
            req.timeout_error = LockTimeout(f"{what} {key!r} not granted within {timeout} s")
        # The caller awaits the request's own future (one loop hop from commit to the
        # caller, which matters for batching); a timeout fails that future with
        # _TimedOut, a cancellation cancels it. Either way the request's committed
        # outcome stays in req.result / req.applied for withdraw_request.
        timer = None
        if timeout is not None:
            timer = asyncio.get_running_loop().call_later(timeout, _time_out, req.future)
        try:
            result = await req.future
        except _TimedOut:
            await self._pipe.withdraw_request(req, key, sid)
            raise LockTimeout(f"{what} {key!r} not granted within {timeout} s") from None
        except asyncio.CancelledError:
            # Cancelled while waiting, or granted in the same step as the cancellation:
            # withdraw in the background (a CANCEL also releases a grant that won).
            # Not when a retry of the same acquire took the wait over (_park).
            if not req.abandoned:
                self._pipe.track(asyncio.ensure_future(self._pipe.withdraw_request(req, key, sid)))
            raise
        finally:
            if timer is not None:
                timer.cancel()
        exc = result.exception()
        if exc is not None:
            raise exc
        return Grant(_key_bytes(key), result.token, sid, kind, shared, result.ticket)

    async def cancel(self, key: Key, session: Session | int, ticket: int, *, request_id: int = 0) -> None:
        """Withdraw the session's contender with ``ticket`` on ``key`` (a waiter leaves the
        queue, a holder releases). Raises :class:`~coordcore.errors.CoordcoreError` with
        code ``NOTFOUND`` if the session has no such contender."""
        sid = self._sid(session)
        await self._pipe.call(lambda b: b.cancel(sid, key, ticket, request_id=request_id))

    async def acquire(self, key: Key, session: Session | int, *, shared: bool = False,
                      timeout: float | None = None, label: str | bytes = b"",
                      request_id: int = 0, reentrant: bool = False) -> Grant:
        """Acquire lock ``key`` (exclusive, or ``shared`` for a reader), waiting up to
        ``timeout`` seconds (None: forever; 0: only if free now). Raises
        :class:`~coordcore.errors.LockTimeout`, :class:`~coordcore.errors.SessionExpired`
        (the session ended, also while waiting), :class:`~coordcore.errors.Cancelled`
        (the session was closed while waiting), and
        :class:`~coordcore.errors.AlreadyHeld` at once when the session already holds
        or waits for the lock and either claim is exclusive (waiting would wait for
        itself; a shared hold is not upgraded: release, then acquire). The session is
        the owner: tasks that must exclude each other need sessions of their own.
        ``reentrant=True`` nests instead: a lock the session holds through a
        reentrant acquire is returned again with its hold count raised, and
        :meth:`release` lets it go when the count is back to zero. ``label`` shows in
        :meth:`contenders`; ``request_id`` makes a retried request idempotent (servers)."""
        sid = self._sid(session)
        t = _check_timeout(timeout)
        if _bool("reentrant", reentrant):
            again = self._holds.enter(sid, key, shared=_bool("shared", shared))
            if again is not None:
                return again
            first = await self.acquire(key, session, shared=shared, timeout=timeout, label=label,
                                       request_id=request_id)
            self._holds.add(first)
            return first
        if t == 0:
            grant = await self._try(lambda b: b.acquire(sid, key, shared=shared, wait=False, value=label,
                                                        request_id=request_id), key, sid, "lock", shared)
            if grant is None:
                raise LockTimeout(f"lock {key!r} is held or contended (timeout=0)")
            return grant
        wait_ms = _wait_ms(t)
        return await self._contend(
            lambda b: b.acquire(sid, key, shared=shared, wait=True, value=label, request_id=request_id,
                                timeout_ms=wait_ms),
            key, sid, "lock", t, shared)

    async def _try(self, add: Callable[[BatchBuilder], int], key: Key, sid: int,
                   kind: GrantKind, shared: bool = False) -> Grant | None:
        result: Result = await self._pipe.submit(add, contends=sid).future
        if result.status == Status.BUSY:
            return None
        exc = result.exception()
        if exc is not None:
            raise exc
        return Grant(_key_bytes(key), result.token, sid, kind, shared, result.ticket)

    async def try_acquire(self, key: Key, session: Session | int, *, shared: bool = False,
                          label: str | bytes = b"", request_id: int = 0, reentrant: bool = False) -> Grant | None:
        """Acquire lock ``key`` only if it can be granted at once; None otherwise (see
        :meth:`acquire` for ``reentrant``)."""
        sid = self._sid(session)
        if _bool("reentrant", reentrant):
            again = self._holds.enter(sid, key, shared=_bool("shared", shared))
            if again is not None:
                return again
        grant = await self._try(lambda b: b.acquire(sid, key, shared=shared, wait=False, value=label,
                                                    request_id=request_id),
                                key, sid, "lock", shared)
        if reentrant and grant is not None:
            self._holds.add(grant)
        return grant

    def lock(self, key: Key, session: Session | int, *, shared: bool = False,
             timeout: float | None = None, label: str | bytes = b"", reentrant: bool = False,
             cancel_on_loss: bool = False) -> _GrantContext:
        """``async with svc.lock(key, session) as grant:`` acquire, then release on exit.

        If the lock was lost while the body ran (the session expired), leaving the block
        raises :class:`~coordcore.errors.SessionExpired` (or NotLockHolder), so the loss
        is not silent; with ``cancel_on_loss`` the body is cancelled at the loss and the
        block raises SessionExpired. See :meth:`acquire` for ``reentrant``."""
        return _GrantContext(lambda: self.acquire(key, session, shared=shared, timeout=timeout,
                                                  label=label, reentrant=reentrant), self,
                             _bool("cancel_on_loss", cancel_on_loss))

    async def release(self, grant: Grant, *, request_id: int = 0) -> None:
        """Release a lock, semaphore permit or leadership. Raises
        :class:`~coordcore.errors.NotLockHolder` if it is no longer held (released
        already, or lost with its session: then :class:`~coordcore.errors.SessionExpired`)."""
        if not isinstance(grant, Grant):
            raise WrongType(f"release takes a Grant, not {type(grant).__name__}")
        if not self._holds.leave(grant):
            return  # a reentrant lock still held by an outer acquire
        sid, key, token = grant.session, grant.key, grant.token
        if grant.kind == "semaphore":
            await self._pipe.call(lambda b: b.sem_release(sid, key, token, request_id=request_id))
        elif grant.kind == "election":
            await self._pipe.call(lambda b: b.resign(sid, key, token, request_id=request_id))
        else:
            await self._pipe.call(lambda b: b.release(sid, key, token, request_id=request_id))

    # --- semaphores --------------------------------------------------------------------

    async def acquire_semaphore(self, key: Key, session: Session | int, permits: int, *,
                                timeout: float | None = None, label: str | bytes = b"",
                                request_id: int = 0) -> Grant:
        """Take one of ``permits`` permits of semaphore ``key`` (FIFO), waiting up to
        ``timeout``. The first acquire fixes ``permits``; a different number later is
        :class:`~coordcore.errors.BadArgument`."""
        sid = self._sid(session)
        t = _check_timeout(timeout)
        if t == 0:
            grant = await self.try_acquire_semaphore(key, sid, permits, label=label, request_id=request_id)
            if grant is None:
                raise LockTimeout(f"semaphore {key!r} has no free permit (timeout=0)")
            return grant
        wait_ms = _wait_ms(t)
        return await self._contend(
            lambda b: b.sem_acquire(sid, key, permits, wait=True, value=label, request_id=request_id,
                                    timeout_ms=wait_ms),
            key, sid, "semaphore", t)

    async def try_acquire_semaphore(self, key: Key, session: Session | int, permits: int, *,
                                    label: str | bytes = b"", request_id: int = 0) -> Grant | None:
        """Take a permit only if one is free now; None otherwise."""
        sid = self._sid(session)
        return await self._try(lambda b: b.sem_acquire(sid, key, permits, wait=False, value=label,
                                                       request_id=request_id), key, sid, "semaphore")

    def semaphore(self, key: Key, session: Session | int, permits: int, *,
                  timeout: float | None = None, label: str | bytes = b"") -> _GrantContext:
        """``async with svc.semaphore(key, session, permits) as grant:``."""
        return _GrantContext(lambda: self.acquire_semaphore(key, session, permits, timeout=timeout,
                                                            label=label), self)

    def capacity(self, pool: Key, units: int, session: Session | int, *, tenant: Key, timeout: float | None = None,
                 on_giveback: Callable[[Lease], object] | None = None) -> contextlib.AbstractAsyncContextManager[Lease]:
        """``async with svc.capacity("gpu", 2, session, tenant="research") as lease:``: a
        lease of pool units (see :class:`~coordcore.locks.pools.Pools`), given back on exit."""
        return self.pools.capacity(pool, units, session, tenant=tenant, timeout=timeout, on_giveback=on_giveback)

    # --- elections ---------------------------------------------------------------------

    async def campaign(self, name: Key, session: Session | int, value: str | bytes, *,
                       timeout: float | None = None, request_id: int = 0) -> Grant:
        """Run for leader of election ``name`` with ``value``; returns when this session
        leads (FIFO succession), or raises LockTimeout after ``timeout``."""
        sid = self._sid(session)
        t = _check_timeout(timeout)
        if t == 0:
            grant = await self._try(lambda b: b.campaign(sid, name, value, wait=False, request_id=request_id),
                                    name, sid, "election")
            if grant is None:
                raise LockTimeout(f"election {name!r} has a leader (timeout=0)")
            return grant
        wait_ms = _wait_ms(t)
        return await self._contend(lambda b: b.campaign(sid, name, value, wait=True, request_id=request_id,
                                                        timeout_ms=wait_ms),
                                   name, sid, "election", t)

    async def proclaim(self, leadership: Grant, value: str | bytes, *, request_id: int = 0) -> int:
        """As leader, publish a new value; returns the revision of the proclamation.
        Raises :class:`~coordcore.errors.NotLeader` if leadership was lost."""
        if not isinstance(leadership, Grant) or leadership.kind != "election":
            raise WrongType("proclaim takes the Grant that campaign() returned")
        sid, name, token = leadership.session, leadership.key, leadership.token
        return (await self._pipe.call(lambda b: b.proclaim(sid, name, value, token,
                                                      request_id=request_id))).value

    async def resign(self, leadership: Grant, *, request_id: int = 0) -> None:
        """Give up leadership; the next candidate (if any) leads in the same batch."""
        if not isinstance(leadership, Grant) or leadership.kind != "election":
            raise WrongType("resign takes the Grant that campaign() returned")
        sid, name, token = leadership.session, leadership.key, leadership.token
        await self._pipe.call(lambda b: b.resign(sid, name, token, request_id=request_id))

    def leader(self, name: Key) -> Leader | None:
        """The current leader of election ``name`` (committed state), or None."""
        c = self._machine.leader(name)
        if c is None:
            return None
        return Leader(c.session, c.value, c.token)

    async def observe(self, name: Key, *, buffer: int = DEFAULT_WATCH_BUFFER) -> AsyncIterator[Leader | None]:
        """Yield the leader of ``name`` now, then every change (a new leader, a new
        proclaimed value, or None when the last candidate leaves)."""
        key = _key_bytes(name)
        watch = self.watch(key, buffer=buffer)
        try:
            current = self.leader(name)
            yield current
            async for ev in watch:
                if ev.key != key:
                    continue
                if ev.kind == EventKind.GRANT or ev.kind == EventKind.PROCLAIM:
                    current = Leader(ev.session, ev.value, ev.token)
                elif ev.kind == EventKind.RELEASE and current is not None and ev.token == current.token:
                    nxt = watch._peek()
                    if nxt is not None and nxt.key == key and nxt.kind == EventKind.GRANT:
                        continue  # a successor takes over in the same batch
                    current = None
                else:
                    continue
                yield current
        finally:
            watch.close()

    # --- reading state -------------------------------------------------------------------

    def contenders(self, key: Key) -> list[Contender]:
        """Holders (token order) then waiters (FIFO) of ``key``: committed state."""
        return self._machine.contenders(key)

    def info(self, key: Key, *, limit: int = 2**32 - 1) -> KeyInfo | None:
        """A key's kind, permits, holders and waiters (at most ``limit`` of each; the
        counts are whole), or None if unused."""
        return self._machine.info(key, limit=limit)

    def oldest_wait_ms(self, key: Key) -> int | None:
        """How long the oldest waiter of ``key`` has waited so far, in ms of batch time
        (until the time the next batch would carry), or None: no waiter, or one whose
        arrival is unknown (restored from a snapshot). See :meth:`LockMachine.oldest_wait_ms`."""
        return self._machine.oldest_wait_ms(key, now_ms=self._pipe.now_ms())

    def scan_keys(self, prefix: Key = b"", cursor: int = 0, count: int = 1000) -> tuple[int, list[bytes]]:
        """One page of the keys in use under ``prefix``: see :meth:`LockMachine.scan_keys`."""
        return self._machine.scan_keys(prefix, cursor, count)

    def keys(self, prefix: Key = b"") -> list[bytes]:
        """Keys in use that start with ``prefix``, sorted."""
        return self._machine.keys(prefix)

    @property
    def torn_tail(self) -> TornTail | None:
        """What recovery cut off the end of the log when it was opened (a batch that was
        being written when the previous process died, never acknowledged), or None."""
        return self._store.torn_tail if isinstance(self._store, FileStore) else None

    def gauges(self) -> dict[str, int]:
        """Live counts of the committed state, read natively (metrics, INFO): sessions
        live and ever opened, keys in use, waiters."""
        m = self._machine
        return {"sessions": m.session_count, "sessions_opened": m.next_session_id - 1,
                "keys": m.key_count, "waiters": m.waiter_count}

    def timings(self) -> Timings:
        """Wait and hold times of the committed batches since the service opened, read
        natively (metrics): see :meth:`LockMachine.timings`."""
        return self._machine.timings()

    @property
    def sync_times(self) -> SyncTimes | None:
        """The file log's fdatasync durations (None: no file log, or no fsync)."""
        store = self._store
        return store.sync_times if isinstance(store, FileStore) and store.syncs else None

    @property
    def log_path(self) -> Path | None:
        """The file log's directory (None: no file log)."""
        return self._store.path if isinstance(self._store, FileStore) else None

    @property
    def revision(self) -> int:
        """The revision of the last committed event."""
        return self._machine.revision

    @property
    def time_ms(self) -> int:
        """The time of the last committed batch (ms)."""
        return self._machine.time_ms

    @property
    def closed(self) -> bool:
        return self._pipe.closing

    def state_snapshot(self) -> bytes:
        """The machine's deterministic snapshot of the committed state (for checks)."""
        return self._machine.snapshot()

    def watch(self, prefix: Key = b"", *, buffer: int = DEFAULT_WATCH_BUFFER) -> Watch:
        """Watch every event on keys starting with ``prefix`` (``""``: everything,
        session events included), from the next committed revision on."""
        if self._pipe.closing:
            raise self._pipe.closed_error()
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise BadArgument(f"buffer must be an int >= 1, not {buffer!r}")
        if not isinstance(prefix, (str, bytes)):
            raise WrongType(f"prefix must be str or bytes, not {type(prefix).__name__}")
        return self._watches.add(_key_bytes(prefix), buffer, self._machine.revision)

    # --- maintenance -------------------------------------------------------------------

    async def tick(self) -> None:
        """Commit an empty batch now (expiring due sessions) and wait for it."""
        await self._pipe.tick()

    async def snapshot(self) -> None:
        """Write a snapshot of the committed state now and drop the log it covers
        (between two batches; also automatic, see :meth:`open`)."""
        await self._pipe.snapshot()

    async def close(self) -> None:
        """Finish the queued requests and the batch in flight, then fail waiters still
        parked (:class:`~coordcore.errors.ServiceClosed`), end sessions' keep-alives and
        watches, and close the log. Idempotent."""
        if self._closed.is_set():
            return
        if self._close_started:
            await self._closed.wait()
            return
        self._close_started = True
        self.pools.close()
        self._pipe.begin_close()
        try:
            for session in tuple(self._sessions.values()):
                if session._keepalive is not None:
                    session._keepalive.cancel()
            await self._pipe.close()
        finally:
            self._closed.set()

    def __repr__(self) -> str:
        where = "in-memory" if self._store is None else str(getattr(self._store, "path", self._store))
        state = "closed" if self._pipe.closing else f"revision={self.revision}"
        return f"<LockService {where} {state} sessions={self._machine.session_count}>"


class _TimedOut(Exception):
    pass


def _time_out(fut: asyncio.Future[Result]) -> None:
    if not fut.done():
        fut.set_exception(_TimedOut())


async def _recover(store: LogStore) -> LockMachine:
    """The machine a store's snapshot and records replay to (raised to the store's floor
    if it lost records, and snapshotted at once so replay stays deterministic)."""
    machine = LockMachine()

    def restore(index: int, payload: bytes) -> None:
        machine.restore(unwrap_snapshot(payload, index, store))

    def apply(index: int, payload: bytes) -> None:
        try:
            machine.apply_raw(payload)
        except CoordcoreError as exc:
            raise LogCorrupted(
                f"lock log {store}: record {index} passed its checksum but the lock machine "
                f"refuses it ({exc}); written by an incompatible version?") from exc

    floor = await store.replay(restore, apply)
    if floor > machine.revision:
        # Not a log record: snapshot at once so replay reaches the same state.
        machine.raise_revision(floor)
        await write_snapshot(store, machine)
        logger.warning("lock log %s: revision raised to %d (records were lost), so no fencing "
                       "token is issued twice; snapshot written", store, floor)
    store.applied(machine.revision)
    # The replayed history was observed by an earlier process: metrics count from here.
    machine.clear_timings()
    return machine
