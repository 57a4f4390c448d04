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
writer task**. The writer drains *everything* queued into one batch record
(:class:`~coordcore.locks.machine.BatchBuilder`), appends it to the durable log with one
``write`` and one ``fdatasync`` in a worker thread (so the event loop keeps serving and
the next batch accumulates meanwhile: group commit), applies it to the machine, and
then answers every request of the batch and dispatches the events: grants to parked
blocking acquires, session expiries, watch events. Nothing is acknowledged before its
batch is on disk. Under load, batches grow by themselves while an fsync is in flight.

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
``LockService.open(path)`` keeps a :class:`~coordcore.locks.log.BatchLog` in ``path``;
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
import collections
import concurrent.futures
import hashlib
import logging
import math
import os
import secrets
import struct
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from coordcore.errors import (
    BadArgument,
    Cancelled,
    CoordcoreError,
    LimitExceeded,
    LockTimeout,
    LogCorrupted,
    NotLockHolder,
    ServiceClosed,
    SessionExpired,
    WatchLagged,
    WrongType,
)
from coordcore.locks import recovery
from coordcore.locks.log import DEFAULT_SEGMENT_BYTES, BatchLog, Durability, TornTail
from coordcore.locks.recovery import RevisionMark
from coordcore._native import require
from coordcore.locks.machine import (
    BATCH_HEADER_SIZE,
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
    decode_events,
    decode_results,
)
from coordcore.types import Grant, GrantKind, Leader

_lw = require("lockwire")
_SyncWriter = require("syncwrite").SyncWriter

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

#: The most requests one batch record carries (a flood is cut into several batches).
MAX_BATCH: Final = 16_384
#: How many events a watch buffers for a slow reader before it is stopped (WatchLagged).
DEFAULT_WATCH_BUFFER: Final = 10_000
#: Default bounds: live sessions per service, and holds + waits per session.
DEFAULT_MAX_SESSIONS: Final = 1_000_000
DEFAULT_MAX_CONTENDERS_PER_SESSION: Final = 100_000
#: Seconds a waiter recovered from the log waits for its client to re-attach.
DEFAULT_WAITER_GRACE: Final = 5.0
#: Bytes of a session credential's secret (from ``secrets``).
SECRET_BYTES: Final = 16
_HEX: Final = frozenset(b"0123456789abcdef")

_WAITING: Final = int(Status.WAITING)

_SNAP_MAGIC: Final = b"CCSVCSNP"
_SNAP_HEAD = struct.Struct("<8sIIQQQ")  # magic, version, reserved, log index, revision, time_ms


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


@dataclass(slots=True)
class BatchStats:
    """Counters of the writer: batches written, commands in them, fsyncs, bytes, and
    the batch-size distribution (commands per batch, in power-of-two buckets)."""

    batches: int = 0
    commands: int = 0
    ticks: int = 0
    fsyncs: int = 0
    bytes: int = 0
    snapshots: int = 0
    #: batches by command count, bucketed by powers of two (0: ticks, 1, 2 (2-3), 4 (4-7) ...)
    sizes: collections.Counter[int] = field(default_factory=collections.Counter)

    def bucket_counts(self) -> dict[str, int]:
        """``{"1": n, "2-3": n, "4-7": n, ...}``: batches by command count."""
        out: dict[str, int] = {}
        for b in sorted(self.sizes):
            label = "0" if b == 0 else str(b) if b == 1 else f"{b}-{2 * b - 1}"
            out[label] = self.sizes[b]
        return out


class _Request:
    """One command waiting for its batch. ``add`` puts it in the builder.

    ``future`` gets the committed :class:`Result`, or ``encode(result)`` when the
    request came through :meth:`LockService.submit_encoded` (a server's reply bytes).
    """

    __slots__ = ("add", "future", "parks", "abandoned", "result", "applied", "encode", "service", "key", "sid",
                 "timer", "timeout_error", "counted")

    def __init__(self, add: Callable[[BatchBuilder], int] | None, parks: bool,
                 future: asyncio.Future[Any], encode: Callable[[Result], Any] | None = None) -> None:
        #: How to add it to the batch (None: it was in a batch already, see park_wire).
        self.add = add
        self.future = future
        self.parks = parks  # an acquire/campaign: a WAITING result parks it by ticket
        self.abandoned = False  # its caller timed out or was cancelled
        self.result: Result | None = None
        self.applied: asyncio.Future[Result] | None = None
        self.encode = encode
        #: Set when a done callback withdraws a cancelled wait (submit_encoded, park_wire).
        self.service: LockService | None = None
        #: park_wire's timeout.
        self.timer: asyncio.TimerHandle | None = None
        self.key: Key = b""
        self.sid = 0
        #: What the caller gets if the machine withdraws the wait at its deadline (the
        #: TIMEOUT that rides in the log) before the service's own timer does it.
        self.timeout_error: BaseException | None = None
        #: The session whose bound of holds and waits counts this request until applied.
        self.counted = 0

    def on_done(self, fut: asyncio.Future[Any]) -> None:
        """The future's done callback of a parking request of a server (a bound method:
        no reference cycle through the request)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.service is not None:
            self.service._reply_done(fut, self, self.key, self.sid)


class _Appender:
    """Appends (write + fdatasync) the batch records for the loop, in a native thread
    that never takes the GIL (:class:`coordcore._native.syncwrite.SyncWriter`); the loop
    learns of each commit from the writer's eventfd.

    A Python thread had to take the GIL to start each write and again to report it;
    with the event loop busy that hand-off cost as much as the fdatasync itself. One
    record at a time, in order: the writer awaits each append before the next one.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, log: BatchLog,
                 io: concurrent.futures.ThreadPoolExecutor) -> None:
        self._loop = loop
        self._log = log
        self._io = io
        self._writer = _SyncWriter()
        self._pending: tuple[asyncio.Future[int], int, int] | None = None
        loop.add_reader(self._writer.fileno, self._on_done)

    def append(self, record: bytes) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = self._loop.create_future()
        if self._pending is not None:  # pragma: no cover - the writer never overlaps appends
            raise RuntimeError("an append is in flight already")
        if self._log.segment_full:
            # Starting a segment creates a file and fsyncs the directory: in the
            # executor, not on the event loop (once per segment).
            return self._loop.run_in_executor(self._io, self._log.append, record)
        try:
            fd, data, index = self._log.begin_append(record)
            self._writer.submit(fd, data, self._log.durability == "fsync")
        except BaseException as exc:
            fut.set_exception(exc)
            return fut
        self._pending = (fut, index, len(data))
        return fut

    def _on_done(self) -> None:
        pending = self._pending
        if pending is None:
            return
        try:
            if self._writer.result() is None:
                return  # not done yet (a spurious wake-up)
        except OSError as exc:
            self._pending = None
            self._log.fail_append(exc)
            if not pending[0].done():
                pending[0].set_exception(exc)
            return
        self._pending = None
        fut, index, size = pending
        self._log.end_append(index, size)
        if not fut.done():
            fut.set_result(index)

    def stop(self) -> Callable[[], None]:
        """Stop listening; returns the call that stops the thread once the append in
        flight (if any) is done (it blocks: run it off the event loop)."""
        self._loop.remove_reader(self._writer.fileno)
        close: Callable[[], None] = self._writer.close
        return close


class _Batch:
    """A batch record on its way to disk, and who waits for it."""

    __slots__ = ("record", "accepted", "wire", "wire_base", "tick_waiters", "appended")

    def __init__(self, record: bytes, accepted: list[tuple[_Request, int]], wire: Any, wire_base: int,
                 tick_waiters: list[asyncio.Future[None]], appended: asyncio.Future[int] | None) -> None:
        self.record = record
        #: Requests in the batch and the index of their (first) command.
        self.accepted = accepted
        #: The lane's commands in the batch (a WireBatch), from command ``wire_base`` on.
        self.wire = wire
        self.wire_base = wire_base
        self.tick_waiters = tick_waiters
        #: The log thread's append (None: no log).
        self.appended = appended

    def abort(self, exc: BaseException) -> None:
        """The batch's fate on disk is unknown: its requesters get the error itself (not
        acknowledged)."""
        for req, _ in self.accepted:
            _set_exception(req, exc)
        if self.wire is not None:
            self.wire.fail(exc)
        for w in self.tick_waiters:
            if not w.done():
                w.set_exception(exc)
        if self.appended is not None and not self.appended.done():
            self.appended.cancel()


class Session:
    """A lease: alive while kept alive (in the background unless ``keepalive=False``).

    Everything acquired with a session is released when it closes or expires. ``done``
    resolves (with ``"closed"``, ``"expired"`` or ``"service closed"``) when it ends.
    """

    def __init__(self, service: LockService, session_id: int, ttl: float, keepalive: bool,
                 credential: bytes = b"") -> None:
        self.id = session_id
        self.ttl = ttl
        #: ``b"<id>.<secret>"``: what a server's client presents to act for this session
        #: (the id alone is public; empty for a handle made by :meth:`LockService.session`).
        self.credential = credential
        self._service = service
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._keepalive: asyncio.Task[None] | None = None
        if keepalive:
            self._keepalive = asyncio.ensure_future(self._keepalive_loop())

    @property
    def expired(self) -> bool:
        """True once the session ended by expiry."""
        return self.done.done() and self.done.result() == "expired"

    @property
    def alive(self) -> bool:
        """Not yet closed or expired (as far as this process has seen)."""
        return not self.done.done()

    async def _keepalive_loop(self) -> None:
        interval = max(self.ttl / 3.0, 0.001)
        while not self.done.done():
            await asyncio.sleep(interval)
            try:
                await self._service.keepalive(self)
            except (SessionExpired, ServiceClosed):
                return
            except Exception:  # an I/O error: the service is failing; say so once
                logger.exception("keep-alive of session %d failed", self.id)
                return

    def _end(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)
        task, self._keepalive = self._keepalive, None
        if task is not None and task is not _current_task():
            task.cancel()

    async def keepalive(self) -> None:
        """Extend the lease now (the background task does this every ttl/3)."""
        await self._service.keepalive(self)

    async def close(self) -> None:
        """Close the session, releasing everything it holds and waits for. Idempotent."""
        if self.done.done():
            return
        try:
            await self._service.close_session(self)
        except SessionExpired:
            pass

    def lock(self, key: Key, *, shared: bool = False, timeout: float | None = None) -> _GrantContext:
        """``self.service.lock(key, self, ...)``."""
        return self._service.lock(key, self, shared=shared, timeout=timeout)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = self.done.result() if self.done.done() else "alive"
        return f"<Session {self.id} ttl={self.ttl}s {state}>"


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


class _GrantContext:
    """``async with svc.lock(...) as grant``: acquire on enter, release on exit."""

    def __init__(self, acquire: Callable[[], Coroutine[Any, Any, Grant]], service: LockService) -> None:
        self._acquire = acquire
        self._service = service
        self._grant: Grant | None = None

    async def __aenter__(self) -> Grant:
        self._grant = await self._acquire()
        return self._grant

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> None:
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


class Watch:
    """An async iterator of :class:`~coordcore.locks.machine.Event` for keys starting with
    a prefix, in revision order, from the revision after :attr:`start_revision`.

    The buffer is bounded: a reader that falls more than ``buffer`` events behind gets
    :class:`~coordcore.errors.WatchLagged` (after the events it was sent) instead of
    unbounded memory. Iteration ends with :class:`~coordcore.errors.ServiceClosed` when
    the service closes; :meth:`close` ends it quietly.
    """

    def __init__(self, service: LockService, prefix: bytes, buffer: int, start_revision: int) -> None:
        self.prefix = prefix
        self.start_revision = start_revision
        self._service = service
        self._buffer = buffer
        self._queue: collections.deque[Event] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._last = start_revision

    def _offer(self, event: Event) -> None:
        if self._error is not None or self._closed:
            return
        if len(self._queue) >= self._buffer:
            self._fail(WatchLagged(
                f"watch on {self.prefix!r} fell more than {self._buffer} events behind; events up "
                f"to revision {self._last} were delivered, re-read the state and watch again",
                self._last))
            return
        self._queue.append(event)
        self._last = event.revision
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._service._watches.discard(self)
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _peek(self) -> Event | None:
        return self._queue[0] if self._queue else None

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Event:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def pending(self) -> int:
        """Events buffered and not yet read."""
        return len(self._queue)

    def close(self) -> None:
        """Stop watching; iteration ends (after nothing more)."""
        self._closed = True
        self._queue.clear()
        self._service._watches.discard(self)
        self._wake()

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


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

    #: The revision high-water mark of a durable service (see :mod:`coordcore.locks.recovery`).
    _mark: RevisionMark | None = None

    def __init__(self, *, log: BatchLog | None, machine: LockMachine, clock: Callable[[], float],
                 tick_interval: float, snapshot_every_records: int, snapshot_every_bytes: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._log = log
        self._machine = machine
        self._clock = clock
        self._tick_interval = tick_interval
        self._snap_records = snapshot_every_records
        self._snap_bytes = snapshot_every_bytes
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="coordcore-log")
        self._appender = _Appender(self._loop, log, self._io) if log is not None else None
        self._builder = BatchBuilder()
        self._queue: list[_Request] = []
        self._wakeup = asyncio.Event()
        self._tick_wanted = False
        self._tick_waiters: list[asyncio.Future[None]] = []
        self._snapshot_waiters: list[asyncio.Future[None]] = []
        self._parked: dict[int, _Request] = {}
        self._sessions: dict[int, Session] = {}
        self._watches: set[Watch] = set()
        self._background: set[asyncio.Future[Any]] = set()
        self._closing = False
        self._close_started = False
        self._closed = asyncio.Event()
        self._failure: BaseException | None = None
        self._last_ms = machine.time_ms
        self._since_snapshot_records = 0
        self._since_snapshot_bytes = 0
        self.stats = BatchStats()
        self._batch_listeners: list[Callable[[], None]] = []
        #: A server's native command lane (attach_wire), taken into every batch.
        self._lane: Any = None
        #: Bounds checked where commands are accepted (not in the log, so replay never
        #: depends on them): see :meth:`set_limits`.
        self.max_sessions = DEFAULT_MAX_SESSIONS
        self.max_contenders_per_session = DEFAULT_MAX_CONTENDERS_PER_SESSION
        self._pending_contenders: dict[int, int] = {}
        self._writer = asyncio.ensure_future(self._write_loop())
        self._ticker = asyncio.ensure_future(self._tick_loop()) if tick_interval > 0 else None

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
        """Open (recovering) the durable service whose log lives in directory ``path``.

        ``await LockService.open(path)`` or ``async with LockService.open(path) as svc``.
        ``durability="unsafe-no-fsync"`` skips fsync (tests and caches only).
        ``count_downtime=False`` resumes the clock where the last batch left it (see
        "Time" in the module docs); ``clock`` replaces the clock altogether (seconds).
        Waiters recovered from the log have lost their callers: they are detached
        (``DETACH``), so each is withdrawn ``waiter_grace`` seconds after the start
        (released, if it was granted meanwhile) unless its client retries the acquire
        with the same request id (a server's clients do when they reconnect).
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

        async def start() -> LockService:
            loop = asyncio.get_running_loop()
            opener = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="coordcore-open")
            try:
                log, machine, mark = await loop.run_in_executor(
                    opener, cls._recover, path, durability, segment_bytes, allow_empty_log)
            finally:
                opener.shutdown(wait=False)
            chosen = clock
            if chosen is None:
                resume = not count_downtime and machine.time_ms > 0
                chosen = _default_clock(machine.time_ms / 1000 if resume else None)
            svc = cls(log=log, machine=machine, clock=chosen,
                      tick_interval=tick_interval, snapshot_every_records=snapshot_every_records,
                      snapshot_every_bytes=snapshot_every_bytes)
            svc._mark = mark
            if machine.waiter_count:
                try:
                    detached = await svc._call(lambda b: b.detach(grace_ms))
                except BaseException:
                    await svc.close()
                    raise
                logger.info("%d waiters recovered without their callers: withdrawn in %.1f s unless "
                            "their clients retry", detached.value, grace_ms / 1000)
            return svc

        grace_ms = _seconds_ms("waiter_grace", waiter_grace)
        return _Starter(start)

    @classmethod
    def in_memory(cls, *, clock: Callable[[], float] | None = None,
                  tick_interval: float = 0.1) -> _Starter[LockService]:
        """A service without a log (state is lost when it closes): for tests and
        single-process coordination that need not survive a restart."""
        cls._check_options(tick_interval, 1, 1)

        async def start() -> LockService:
            return cls(log=None, machine=LockMachine(), clock=clock or _default_clock(),
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

    @staticmethod
    def _recover(path: str | os.PathLike[str], durability: Durability, segment_bytes: int,
                 allow_empty_log: bool = False) -> tuple[BatchLog, LockMachine, RevisionMark]:
        directory = Path(os.fspath(path))
        fsync = durability == "fsync"
        # Before BatchLog.open, which starts a segment in an empty directory.
        lost = recovery.lost_log_evidence(directory)
        if lost and not allow_empty_log:
            raise recovery.missing_log_error(directory, lost, "allow_empty_log=True")
        log = BatchLog.open(path, durability=durability, segment_bytes=segment_bytes)
        try:
            machine = LockMachine()
            rec = log.recovered
            if rec.snapshot is not None:
                machine.restore(_unwrap_snapshot(rec.snapshot.payload, rec.snapshot.index, log))
            for record in rec.records:
                try:
                    machine.apply_raw(record.payload)
                except CoordcoreError as exc:
                    raise LogCorrupted(
                        f"lock log {log.path}: record {record.index} passed its checksum but the "
                        f"lock machine refuses it ({exc}); written by an incompatible version?") from exc
            rec.records.clear()  # replayed: free the memory
            mark = RevisionMark(directory, fsync=fsync)
            state = mark.state
            last = log.next_index - 1
            floor = 0
            if state is not None and state.raise_to:
                floor, why = state.raise_to, "records were dropped by a repair"
            elif state is not None and lost:
                floor, why = state.reserved, "the log was lost (allow_empty_log)"
            elif state is not None and last < state.index:
                raise recovery.LogBehindMark(
                    f"lock log {log.path}: it ends at record {last}, but {recovery.MARK_NAME} says "
                    f"record {state.index} (revision {state.revision}) was on disk: records are "
                    "missing (segments deleted, or an older copy of the directory restored), and "
                    f"tokens up to {state.reserved} may have been issued. `coordcore locks repair "
                    f"{log.path} --apply` accepts the loss (new tokens start above {state.reserved})")
            elif lost:
                logger.warning("lock log %s: starting empty (allow_empty_log) without a revision "
                               "mark: fencing tokens issued before may be issued again", log.path)
            if floor > machine.revision:
                # Not a log record: snapshot at once so replay reaches the same state.
                machine.raise_revision(floor)
                index = log.next_index - 1
                log.write_snapshot(index, _snapshot_payload(index, machine))
                logger.warning("lock log %s: revision raised to %d (%s), so no fencing token is "
                               "issued twice; snapshot written", log.path, floor, why)
            if state is None or state.raise_to or machine.revision >= state.reserved:
                mark.write(recovery.MarkState(machine.revision + recovery.RESERVE, machine.revision,
                                              log.next_index - 1))
            return log, machine, mark
        except BaseException:
            log.close()
            raise

    async def __aenter__(self) -> LockService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the writer ------------------------------------------------------------------

    def _now_ms(self) -> int:
        now = int(self._clock() * 1000)
        if now < self._last_ms:
            now = self._last_ms  # never backwards, whatever the clock does
        return now

    def _submit(self, add: Callable[[BatchBuilder], int], *, parks: bool = False) -> _Request:
        if self._closing:
            raise ServiceClosed("the lock service is closed" if self._failure is None else
                                f"the lock service failed: {self._failure!r}") from self._failure
        req = _Request(add, parks, self._loop.create_future())
        self._queue.append(req)
        self._wakeup.set()
        return req

    def submit_encoded(self, add: Callable[[BatchBuilder], int], encode: Callable[[Result], T], *,
                       parks: bool = False, key: Key = b"", session_id: int = 0,
                       contends: bool = False) -> asyncio.Future[T]:
        """Low level, for servers: queue one command (``add`` appends it to the batch's
        :class:`~coordcore.locks.machine.BatchBuilder`) and return a future of
        ``encode(result)``, set when its batch has committed (is on disk) and been
        applied; ``encode`` must also handle error results. With ``parks`` (an acquire
        or campaign with ``wait=True``) a WAITING result parks it until the batch that
        grants it (then ``encode`` gets the result with ``status=OK, value=token``) or
        cancels it (then the future fails with SessionExpired or Cancelled).
        Cancelling the future of a parked request withdraws it through the log, like a
        cancelled :meth:`acquire` (``key`` and ``session_id`` name it for the CANCEL).
        No task and no coroutine per request: the cheap path a server's hot commands use.
        ``contends`` (an acquire-like command) holds it to the session's bound of holds
        and waits (:meth:`set_limits`).
        """
        if self._closing:
            raise ServiceClosed("the lock service is closed" if self._failure is None else
                                f"the lock service failed: {self._failure!r}") from self._failure
        fut: asyncio.Future[T] = self._loop.create_future()
        if contends:
            self._check_room(session_id)
        req = _Request(add, parks, fut, encode)
        if parks:
            req.service, req.key, req.sid = self, key, session_id
            fut.add_done_callback(req.on_done)
        self._queue.append(req)
        self._wakeup.set()
        if contends:
            self._count(req, session_id)
        return fut

    def attach_wire(self, lane: Any) -> None:
        """Low level, for servers: every batch also takes (up to its bound) the commands
        queued in ``lane``, a :class:`coordcore._native.lockwire.WireLane` that the
        server's connections fill natively, and resolves them natively after the
        commit (see :meth:`park_wire` and :meth:`withdraw_wire` for the outcomes it
        hands back). One lane per service."""
        if self._lane is not None:
            raise BadArgument("a wire lane is attached already")
        lane.wake = self._wakeup.set
        lane.closed = self._closing
        self._lane = lane

    def park_wire(self, result: Result, key: Key, session_id: int, encode: Callable[[Result], T], *,
                  timeout: float | None = None, timeout_error: BaseException | None = None) -> asyncio.Future[T]:
        """Low level, for servers: a lane acquire came back ``WAITING`` (``result``):
        return a future of ``encode(result)`` with ``status=OK, value=token`` once the
        batch that grants it commits (or failing with SessionExpired / Cancelled), like
        a parked :meth:`submit_encoded` request; cancelling it withdraws the wait. With
        ``timeout`` (seconds from now) it fails with ``timeout_error`` when the grant
        has not come by then, and the wait is withdrawn (as :meth:`acquire` does)."""
        fut: asyncio.Future[T] = self._loop.create_future()
        req = _Request(None, True, fut, encode)
        req.result = result
        req.service, req.key, req.sid = self, key, session_id
        fut.add_done_callback(req.on_done)
        self._park(result.aux, req)  # aux: the ticket of a waiting contender
        if timeout is not None:
            error = timeout_error if timeout_error is not None else LockTimeout(f"{key!r} not granted in time")
            req.timeout_error = error
            req.timer = self._loop.call_later(max(0.0, timeout), self._wire_timed_out, req, error)
        return fut

    def _wire_timed_out(self, req: _Request, error: BaseException) -> None:
        """A park_wire wait timed out: withdraw it, then fail its future with ``error``
        (as :meth:`acquire` answers a timeout only once the wait is gone)."""
        req.timer = None
        if req.future.done():
            return
        assert req.result is not None
        if self._parked.get(req.result.aux) is req:
            del self._parked[req.result.aux]  # no grant reaches the future from now on
        withdraw = self._withdraw_result(req.result, req.key, req.sid)

        async def expire() -> None:
            try:
                await withdraw
            finally:
                if not req.future.done():
                    req.future.set_exception(error)

        self._track(asyncio.ensure_future(expire()))

    def withdraw_wire(self, result: Result, key: Key, session_id: int) -> None:
        """Low level, for servers: a lane acquire (``result``: granted or waiting)
        whose requester has gone: CANCEL it through the log in the background (which
        also releases a grant)."""
        if result.status in (Status.OK, Status.WAITING):
            self._track(asyncio.ensure_future(self._withdraw_result(result, key, session_id)))

    def _withdraw_result(self, result: Result, key: Key, sid: int) -> Coroutine[Any, Any, None]:
        """:meth:`_withdraw` for a committed acquire known only by its result."""
        req = _Request(None, True, self._loop.create_future())
        req.result = result
        req.future.add_done_callback(_retrieve)
        return self._withdraw(req, key, sid)

    def _reply_done(self, fut: asyncio.Future[Any], req: _Request, key: Key, sid: int) -> None:
        if fut.cancelled() and not req.abandoned:
            # The caller gave up (its connection went, or the server is stopping):
            # withdraw the wait, or the grant if it won the race (as _contend does).
            self._track(asyncio.ensure_future(self._withdraw(req, key, sid)))

    async def _call(self, add: Callable[[BatchBuilder], int]) -> Result:
        """Submit one command and wait for its (committed) result; raise on error."""
        result: Result = await self._submit(add).future
        exc = result.exception()
        if exc is not None:
            raise exc
        return result

    async def _write_loop(self) -> None:
        pending: _Batch | None = None
        try:
            while True:
                if pending is None and (self._queue or self._tick_wanted or self._lane):
                    pending = self._cut_batch()
                if pending is not None:
                    batch, pending = pending, None
                    raw_results, raw_events = await self._commit(batch)
                    if self._appender is not None and (self._queue or self._tick_wanted or self._lane) \
                            and not (self._snapshot_waiters or self._snapshot_due()):
                        # Start the next batch's write + fsync now: it runs in the log
                        # thread while this batch's requesters are answered.
                        pending = self._cut_batch()
                    self._answer(batch, raw_results, raw_events)
                    if pending is not None:
                        continue
                if self._snapshot_waiters or self._snapshot_due():
                    await self._take_snapshot()
                if self._queue or self._tick_wanted or self._snapshot_waiters or self._lane:
                    # Let the tasks just answered run (and queue their next requests)
                    # before the next batch is cut, so batches fill up under load.
                    await asyncio.sleep(0)
                    continue
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                # One more turn of the loop: tasks woken by the last commit in the same
                # turn as the first new request queue theirs too, into the same batch.
                await asyncio.sleep(0)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                logger.exception("the lock service's writer failed; closing the service")
            if pending is not None:
                pending.abort(exc)
            self._fail(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _cut_batch(self) -> _Batch | None:
        """Take the queued requests (and the lane's commands) into a batch record and
        start appending it (write + fsync, in the log thread); None if there is nothing
        to write."""
        if len(self._queue) <= MAX_BATCH:
            batch, self._queue = self._queue, []
        else:  # a flood: cut a bounded batch, the rest goes into the next one
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        # The lane's commands (hot commands of a server's connections) go last; they
        # share no connection with the queued ones (the server keeps them apart).
        wire = self._lane.cut(MAX_BATCH - len(batch)) if self._lane else None
        tick_waiters, self._tick_waiters = self._tick_waiters, []
        tick = self._tick_wanted
        self._tick_wanted = False
        builder = self._builder
        parts: list[bytes] = []
        count = 0
        accepted: list[tuple[_Request, int]] = []
        for req in batch:
            add = req.add
            assert add is not None  # only park_wire/withdraw_wire requests have none: never queued
            builder.clear()
            try:
                index = add(builder)
            except CoordcoreError as exc:
                if req.counted:
                    self._uncount(req)
                _set_exception(req, exc)
                continue
            if len(builder):
                parts.append(builder.build(0)[BATCH_HEADER_SIZE:])  # its commands, byte for byte
            accepted.append((req, count + index))
            count += len(builder)
        wire_base = count
        if wire is not None:
            parts.append(wire.commands)
            count += wire.count
        if not accepted and not tick and wire is None:
            for w in tick_waiters:
                if not w.done():
                    w.set_result(None)
            return None  # every request was refused up front: nothing to write
        record = _lw.assemble(self._now_ms(), parts, count)
        appended = self._appender.append(record) if self._appender is not None else None
        return _Batch(record, accepted, wire, wire_base, tick_waiters, appended)

    async def _commit(self, batch: _Batch) -> tuple[bytes, bytes]:
        """Wait for ``batch`` to be on disk, then apply it: its packed results and events."""
        try:
            if batch.appended is not None:
                await batch.appended
                assert self._log is not None
                self.stats.fsyncs += self._log.durability == "fsync"
            raw_results, raw_events = self._machine.apply_raw(batch.record)
            mark = self._mark
            if mark is not None and mark.state is not None and self._machine.revision > mark.state.reserved:
                # Past the reserved revisions: reserve more before anyone sees a token
                # above the mark (on the loop, so no read sees it either; once per
                # RESERVE revisions).
                assert self._log is not None
                mark.reserve(self._machine.revision, self._log.next_index - 1)
        except BaseException as exc:
            batch.abort(exc)
            raise
        self._last_ms = self._machine.time_ms
        st = self.stats
        st.batches += 1
        n = len(batch.accepted) + (batch.wire.count if batch.wire is not None else 0)
        st.commands += n
        st.bytes += len(batch.record)
        if not n:
            st.ticks += 1
        st.sizes[1 << (n.bit_length() - 1) if n else 0] += 1
        self._since_snapshot_records += 1
        self._since_snapshot_bytes += len(batch.record)
        return raw_results, raw_events

    def _answer(self, batch: _Batch, raw_results: bytes, raw_events: bytes) -> None:
        """Resolve a committed batch's requests and dispatch its events."""
        for req, index in batch.accepted:
            self._resolve(req, decode_results(raw_results[index * 24:index * 24 + 24])[0])
        if batch.wire is not None:
            batch.wire.resolve(raw_results, batch.wire_base)
        # Without watches only session ends and the grants/cancels of parked requests
        # matter: decode just those.
        self._dispatch(decode_events(raw_events) if self._watches
                       else _lw.filter_events(raw_events, Event, self._parked))
        for w in batch.tick_waiters:
            if not w.done():
                w.set_result(None)
        for listener in self._batch_listeners:
            listener()

    def add_batch_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each committed batch, once its requests' futures are
        resolved and its events dispatched (a server writes the batch's replies there,
        one write per connection, without waiting for the futures' callbacks)."""
        self._batch_listeners.append(listener)

    def _resolve(self, req: _Request, result: Result) -> None:
        req.result = result
        if req.counted:
            self._uncount(req)
        if req.applied is not None and not req.applied.done():
            req.applied.set_result(result)
        if req.parks and result.status == _WAITING:
            self._park(result.aux, req)  # aux: the ticket of a waiting contender
            return
        fut = req.future
        if not fut.done():
            encode = req.encode
            fut.set_result(result if encode is None else encode(result))

    def _park(self, ticket: int, req: _Request) -> None:
        """``req`` waits for the grant of ``ticket``. A request parked on it already was
        the same acquire on a connection that has gone (this one is its client's retry,
        which re-attached): it is superseded, not withdrawn."""
        old = self._parked.get(ticket)
        if old is not None and old is not req:
            old.abandoned = True
            if not old.future.done():
                old.future.cancel()
        self._parked[ticket] = req

    def _dispatch(self, events: list[Event]) -> None:
        ended: dict[int, str] = {}
        watches = self._watches
        for ev in events:
            kind = ev.kind
            if kind == EventKind.GRANT:
                req = self._parked.pop(ev.ticket, None)
                if req is not None and not req.future.done():
                    assert req.result is not None
                    req.result = result = req.result._replace(status=Status.OK, value=ev.token)
                    encode = req.encode
                    req.future.set_result(result if encode is None else encode(result))
            elif kind == EventKind.CANCEL:
                req = self._parked.pop(ev.ticket, None)
                if req is not None:
                    why = ended.get(ev.session)
                    if why == "expired":
                        _set_exception(req, SessionExpired(
                            f"session {ev.session} expired while waiting for {ev.key!r}"))
                    elif why is None and req.timeout_error is not None:
                        _set_exception(req, req.timeout_error)  # its TIMEOUT, withdrawn by the machine
                    else:
                        _set_exception(req, Cancelled(
                            f"the wait for {ev.key!r} was cancelled"
                            + (" (its session was closed)" if why else "")))
            elif kind == EventKind.EXPIRE or kind == EventKind.CLOSE:
                why = "expired" if kind == EventKind.EXPIRE else "closed"
                ended[ev.session] = why
                session = self._sessions.pop(ev.session, None)
                if session is not None:
                    session._end(why)
            if watches:
                key = ev.key
                for w in tuple(watches):
                    if key.startswith(w.prefix):
                        w._offer(ev)

    def _snapshot_due(self) -> bool:
        return self._log is not None and (
            self._since_snapshot_records >= self._snap_records
            or self._since_snapshot_bytes >= self._snap_bytes)

    async def _take_snapshot(self) -> None:
        waiters, self._snapshot_waiters = self._snapshot_waiters, []
        try:
            if self._log is not None:
                index = self._log.next_index - 1
                m = self._machine
                payload = _snapshot_payload(index, m)
                await self._loop.run_in_executor(self._io, self._log.write_snapshot, index, payload)
                self.stats.snapshots += 1
                self._since_snapshot_records = 0
                self._since_snapshot_bytes = 0
        except BaseException as exc:
            for w in waiters:
                if not w.done():
                    w.set_exception(exc)
            raise
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def _tick_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._tick_interval)
            deadline = self._machine.next_deadline()
            if deadline is not None and deadline <= self._now_ms() and not self._queue and not self._lane:
                # Any batch expires due sessions; only an idle service needs a tick.
                self._tick_wanted = True
                self._wakeup.set()

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)
        fut.add_done_callback(_retrieve)

    def _fail(self, exc: BaseException) -> None:
        """The writer stopped (I/O error or close): fail everything still waiting."""
        if self._failure is None and not isinstance(exc, asyncio.CancelledError):
            self._failure = exc
        self._closing = True
        closed = ServiceClosed("the lock service is closed" if self._failure is None else
                               f"the lock service failed: {self._failure!r}")
        for req in (*self._queue, *self._parked.values()):
            _set_exception(req, closed)
        self._queue.clear()
        if self._lane is not None:
            self._lane.closed = True
            leftover = self._lane.cut(len(self._lane))
            if leftover is not None:
                leftover.fail(closed)
        self._parked.clear()
        for fut in (*self._tick_waiters, *self._snapshot_waiters):
            if not fut.done():
                fut.set_exception(closed)
        self._tick_waiters.clear()
        self._snapshot_waiters.clear()
        for w in tuple(self._watches):
            w._fail(closed)
        for session in self._sessions.values():
            session._end("service closed")
        self._sessions.clear()
        self._wakeup.set()

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
                setattr(self, name, value)

    def _submit_counted(self, add: Callable[[BatchBuilder], int], sid: int, *, parks: bool) -> _Request:
        """Submit an acquire-like command within the session's bound of holds and waits,
        counting the ones accepted and not applied yet (a pipeline cannot slip past)."""
        self._check_room(sid)
        req = self._submit(add, parks=parks)
        self._count(req, sid)
        return req

    def _check_room(self, sid: int) -> None:
        if self._machine.contender_count(sid) + self._pending_contenders.get(sid, 0) \
                >= self.max_contenders_per_session:
            raise LimitExceeded(f"session {sid} holds or waits for {self.max_contenders_per_session} locks, "
                                "the most one session may (release some first)")

    def _count(self, req: _Request, sid: int) -> None:
        req.counted = sid
        self._pending_contenders[sid] = self._pending_contenders.get(sid, 0) + 1

    def _uncount(self, req: _Request) -> None:
        sid, req.counted = req.counted, 0
        left = self._pending_contenders.get(sid, 0) - 1
        if left > 0:
            self._pending_contenders[sid] = left
        else:
            self._pending_contenders.pop(sid, None)

    # --- sessions --------------------------------------------------------------------

    async def open_session(self, ttl: float = 10.0, *, keepalive: bool = True) -> Session:
        """Open a session (a lease of ``ttl`` seconds). With ``keepalive`` (the default) a
        background task extends it every ttl/3 until it is closed; its ``done`` future
        tells when it ends."""
        ttl_ms = _ttl_ms(ttl)
        if self._machine.session_count >= self.max_sessions:
            raise LimitExceeded(f"{self.max_sessions} sessions are open, the most this server takes")
        # The secret is chosen here, where the command is accepted; only its digest
        # goes into the log (and so into every replica), never the secret.
        secret = secrets.token_bytes(SECRET_BYTES)
        digest = hashlib.sha256(secret).digest()
        result = await self._call(lambda b: b.open_session(ttl_ms, digest=digest))
        credential = b"%d.%s" % (result.session_id, secret.hex().encode())
        session = Session(self, result.session_id, ttl_ms / 1000.0, keepalive, credential)
        self._sessions[session.id] = session
        return session

    def verify_credential(self, credential: bytes) -> int:
        """The id of the live session ``credential`` (``b"<id>.<secret hex>"``, what
        :attr:`Session.credential` holds) belongs to, or 0: a wrong secret, a bare id, a
        closed or expired session, or a session opened before credentials existed.

        Checking before a command is queued is enough: session ids are never reused,
        so a command checked against session ``n`` can only ever act on session ``n``."""
        sid_text, dot, secret_hex = credential.partition(b".")
        if not dot or len(secret_hex) != 2 * SECRET_BYTES or not sid_text.isdigit() or len(sid_text) > 19 \
                or not _HEX.issuperset(secret_hex):
            return 0  # one spelling only (lowercase hex), as the server's native lane reads it
        secret = bytes.fromhex(secret_hex.decode("ascii"))
        sid = int(sid_text)
        return sid if self._machine.credential_matches(sid, hashlib.sha256(secret).digest()) else 0

    def admit_hot(self, credential: bytes) -> int:
        """:meth:`verify_credential` for a server's native lane, which asks again every
        few commands: 0 also when the session is at its bound of holds and waits (the
        command then takes the general path, which answers why)."""
        sid = self.verify_credential(credential)
        if sid and self._machine.contender_count(sid) >= self.max_contenders_per_session:
            return 0
        return sid

    def session_for_credential(self, credential: bytes) -> int:
        """:meth:`verify_credential`, raising :class:`~coordcore.errors.SessionExpired`
        with the reason when it is not a live session's credential."""
        sid = self.verify_credential(credential)
        if sid:
            return sid
        # Name the session by its public id only: never echo a secret.
        text = credential.partition(b".")[0][:20].decode("ascii", "replace")
        if credential.isdigit():
            raise SessionExpired(f"session {text} needs its credential: pass the handle SESSION.OPEN "
                                 "returned (<id>.<secret>), not the bare id")
        raise SessionExpired(f"no live session {text} with that credential (never opened, closed, "
                             "expired, or a wrong secret)")

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
        if self._closing:
            raise ServiceClosed("the lock service is closed" if self._failure is None else
                                f"the lock service failed: {self._failure!r}") from self._failure
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
        """Extend a session's lease to now + TTL; returns the new deadline (ms)."""
        sid = self._sid(session)
        return (await self._call(lambda b: b.keepalive(sid))).deadline_ms

    async def close_session(self, session: Session | int) -> None:
        """Close a session: release everything it holds, cancel what it waits for."""
        sid = self._sid(session)
        await self._call(lambda b: b.close_session(sid))

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
        req = self._submit_counted(add, sid, parks=True)
        what = "shared" if shared else "leader" if kind == "election" else kind
        if timeout is not None:
            req.timeout_error = LockTimeout(f"{what} {key!r} not granted within {timeout} s")
        # The caller awaits the request's own future (one loop hop from commit to the
        # caller, which matters for batching); a timeout fails that future with
        # _TimedOut, a cancellation cancels it. Either way the request's committed
        # outcome stays in req.result / req.applied for _withdraw.
        timer = None
        if timeout is not None:
            timer = self._loop.call_later(timeout, _time_out, req.future)
        try:
            result = await req.future
        except _TimedOut:
            await self._withdraw(req, key, sid)
            raise LockTimeout(f"{what} {key!r} not granted within {timeout} s") from None
        except asyncio.CancelledError:
            # Cancelled while waiting, or granted in the same step as the cancellation:
            # withdraw in the background (a CANCEL also releases a grant that won).
            # Not when a retry of the same acquire took the wait over (_park).
            if not req.abandoned:
                self._track(asyncio.ensure_future(self._withdraw(req, key, sid)))
            raise
        finally:
            if timer is not None:
                timer.cancel()
        exc = result.exception()
        if exc is not None:
            raise exc
        return Grant(_key_bytes(key), result.token, sid, kind, shared, result.ticket)

    async def _withdraw(self, req: _Request, key: Key, sid: int) -> None:
        """Make sure an abandoned acquire holds nothing: if it never reached a batch it is
        dropped; otherwise CANCEL its ticket (which also releases it if the grant won)."""
        req.abandoned = True
        if req.result is None:
            try:
                self._queue.remove(req)
            except ValueError:
                pass  # already in the batch being written: wait for its result
            else:
                if req.counted:
                    self._uncount(req)
                req.future.cancel()  # never reached a batch: it never existed
                return
            if req.applied is None:
                req.applied = self._loop.create_future()
                req.applied.add_done_callback(_retrieve)
            try:
                result = await asyncio.shield(req.applied)
            except (asyncio.CancelledError, ServiceClosed):
                return
        else:
            result = req.result
        if result.status not in (Status.OK, Status.WAITING):
            return
        ticket = result.ticket
        if self._parked.get(ticket) is req:
            del self._parked[ticket]
        if not req.future.done():
            req.future.cancel()
        try:
            await self._call(lambda b: b.cancel(sid, key, ticket))
        except (SessionExpired, ServiceClosed, NotLockHolder):
            pass  # the session ended (and took the contender with it), or we did
        except CoordcoreError as exc:
            if exc.code != "NOTFOUND":
                raise

    async def cancel(self, key: Key, session: Session | int, ticket: int, *, request_id: int = 0) -> None:
        """Withdraw the session's contender with ``ticket`` on ``key`` (a waiter leaves the
        queue, a holder releases). Raises :class:`~coordcore.errors.CoordcoreError` with
        code ``NOTFOUND`` if the session has no such contender."""
        sid = self._sid(session)
        await self._call(lambda b: b.cancel(sid, key, ticket, request_id=request_id))

    async def acquire(self, key: Key, session: Session | int, *, shared: bool = False,
                      timeout: float | None = None, label: str | bytes = b"",
                      request_id: int = 0) -> Grant:
        """Acquire lock ``key`` (exclusive, or ``shared`` for a reader), waiting up to
        ``timeout`` seconds (None: forever; 0: only if free now). Raises
        :class:`~coordcore.errors.LockTimeout`, :class:`~coordcore.errors.SessionExpired`
        (the session ended, also while waiting), :class:`~coordcore.errors.Cancelled`
        (the session was closed while waiting). ``label`` shows in :meth:`contenders`;
        ``request_id`` makes a retried request idempotent (servers)."""
        sid = self._sid(session)
        t = _check_timeout(timeout)
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
        result: Result = await self._submit_counted(add, sid, parks=False).future
        if result.status == Status.BUSY:
            return None
        exc = result.exception()
        if exc is not None:
            raise exc
        return Grant(_key_bytes(key), result.token, sid, kind, shared, result.ticket)

    async def try_acquire(self, key: Key, session: Session | int, *, shared: bool = False,
                          label: str | bytes = b"", request_id: int = 0) -> Grant | None:
        """Acquire lock ``key`` only if it can be granted at once; None otherwise."""
        sid = self._sid(session)
        return await self._try(lambda b: b.acquire(sid, key, shared=shared, wait=False, value=label,
                                                   request_id=request_id),
                               key, sid, "lock", shared)

    def lock(self, key: Key, session: Session | int, *, shared: bool = False,
             timeout: float | None = None, label: str | bytes = b"") -> _GrantContext:
        """``async with svc.lock(key, session) as grant:`` acquire, then release on exit.

        If the lock was lost while the body ran (the session expired), leaving the block
        raises :class:`~coordcore.errors.SessionExpired` (or NotLockHolder), so the loss
        is not silent."""
        return _GrantContext(lambda: self.acquire(key, session, shared=shared, timeout=timeout,
                                                  label=label), self)

    async def release(self, grant: Grant, *, request_id: int = 0) -> None:
        """Release a lock, semaphore permit or leadership. Raises
        :class:`~coordcore.errors.NotLockHolder` if it is no longer held (released
        already, or lost with its session: then :class:`~coordcore.errors.SessionExpired`)."""
        if not isinstance(grant, Grant):
            raise WrongType(f"release takes a Grant, not {type(grant).__name__}")
        sid, key, token = grant.session, grant.key, grant.token
        if grant.kind == "semaphore":
            await self._call(lambda b: b.sem_release(sid, key, token, request_id=request_id))
        elif grant.kind == "election":
            await self._call(lambda b: b.resign(sid, key, token, request_id=request_id))
        else:
            await self._call(lambda b: b.release(sid, key, token, request_id=request_id))

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
        return (await self._call(lambda b: b.proclaim(sid, name, value, token,
                                                      request_id=request_id))).value

    async def resign(self, leadership: Grant, *, request_id: int = 0) -> None:
        """Give up leadership; the next candidate (if any) leads in the same batch."""
        if not isinstance(leadership, Grant) or leadership.kind != "election":
            raise WrongType("resign takes the Grant that campaign() returned")
        sid, name, token = leadership.session, leadership.key, leadership.token
        await self._call(lambda b: b.resign(sid, name, token, request_id=request_id))

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
        return self._log.recovered.torn_tail if self._log is not None else None

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
        return self._closing

    def state_snapshot(self) -> bytes:
        """The machine's deterministic snapshot of the committed state (for checks)."""
        return self._machine.snapshot()

    def watch(self, prefix: Key = b"", *, buffer: int = DEFAULT_WATCH_BUFFER) -> Watch:
        """Watch every event on keys starting with ``prefix`` (``""``: everything,
        session events included), from the next committed revision on."""
        if self._closing:
            raise ServiceClosed("the lock service is closed")
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise BadArgument(f"buffer must be an int >= 1, not {buffer!r}")
        w = Watch(self, _key_bytes(prefix), buffer, self._machine.revision)
        self._watches.add(w)
        return w

    # --- maintenance -------------------------------------------------------------------

    async def tick(self) -> None:
        """Commit an empty batch now (expiring due sessions) and wait for it."""
        if self._closing:
            raise ServiceClosed("the lock service is closed")
        fut: asyncio.Future[None] = self._loop.create_future()
        self._tick_waiters.append(fut)
        self._tick_wanted = True
        self._wakeup.set()
        await fut

    async def snapshot(self) -> None:
        """Write a snapshot of the committed state now and drop the log it covers
        (between two batches; also automatic, see :meth:`open`)."""
        if self._closing:
            raise ServiceClosed("the lock service is closed")
        if self._log is None:
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self._snapshot_waiters.append(fut)
        self._wakeup.set()
        await fut

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
        self._closing = True
        self._wakeup.set()
        try:
            if self._ticker is not None:
                self._ticker.cancel()
                await asyncio.gather(self._ticker, return_exceptions=True)
            for session in tuple(self._sessions.values()):
                if session._keepalive is not None:
                    session._keepalive.cancel()
            if self._background:
                await asyncio.gather(*tuple(self._background), return_exceptions=True)
            await asyncio.gather(self._writer, return_exceptions=True)
            self._fail(asyncio.CancelledError())
            if self._appender is not None:
                # Off the loop: after a failed batch a write may still be in flight.
                await self._loop.run_in_executor(self._io, self._appender.stop())
            if self._log is not None:
                await self._loop.run_in_executor(self._io, self._log.close)
        finally:
            self._io.shutdown(wait=False)
            self._closed.set()

    def __repr__(self) -> str:
        where = str(self._log.path) if self._log is not None else "in-memory"
        state = "closed" if self._closing else f"revision={self.revision}"
        return f"<LockService {where} {state} sessions={self._machine.session_count}>"


class _TimedOut(Exception):
    pass


def _time_out(fut: asyncio.Future[Result]) -> None:
    if not fut.done():
        fut.set_exception(_TimedOut())


def _set_exception(req: _Request, exc: BaseException) -> None:
    """Fail a request's waiter; an abandoned one (its caller left) just ends."""
    if req.applied is not None and not req.applied.done():
        req.applied.set_exception(exc)
    if req.future.done():
        return
    if req.abandoned:
        req.future.cancel()
    else:
        req.future.set_exception(exc)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _snapshot_payload(index: int, m: LockMachine) -> bytes:
    return _SNAP_HEAD.pack(_SNAP_MAGIC, 1, 0, index, m.revision, m.time_ms) + m.snapshot()


def _unwrap_snapshot(payload: bytes, index: int, log: BatchLog) -> bytes:
    if len(payload) < _SNAP_HEAD.size:
        raise LogCorrupted(f"lock log {log.path}: snapshot {index} is too short for its header")
    magic, version, _, covered, _rev, _t = _SNAP_HEAD.unpack_from(payload)
    if magic != _SNAP_MAGIC or version != 1 or covered != index:
        raise LogCorrupted(f"lock log {log.path}: snapshot {index} is not a lock service snapshot "
                           f"(magic {magic!r}, version {version}, index {covered})")
    return payload[_SNAP_HEAD.size:]
