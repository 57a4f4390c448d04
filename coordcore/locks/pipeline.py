"""The commit pipeline: commands in, batch records to the log, results and events out.

Every mutating call becomes one :class:`Request` queued for **one writer task**. The
writer drains everything queued (and the commands of attached :class:`CommandSource`\\ s,
such as a server's native lane) into one batch record, hands it to the
:class:`~coordcore.locks.store.LogStore`, and once the store says it is durable applies
it to the machine, answers every request of the batch and dispatches the events: grants
and cancels to parked waits, session ends and watch events to the service. Nothing is
acknowledged before its batch is durable. While appends are in flight the next batch
accumulates (group commit), so under load batches grow by themselves.

A store may take several appends at once (:attr:`LogStore.max_in_flight
<coordcore.locks.store.LogStore.max_in_flight>`: etcd's, where one append is a network
round trip): then batch N+1 is cut and appended while N is still on its way. Batches are
still applied and answered strictly in order; if one fails, every later one in flight
fails with it and nothing after it is acknowledged. Cutting early is safe because a
batch's bytes depend on no machine state: commands are checked against the state when
they are submitted (as they are while one batch is in flight), batch time is kept rising
across the batches in flight, and a snapshot waits until none is.

The pipeline knows neither the wire nor the public API: :class:`~coordcore.locks.service.LockService`
drives it, and a server reaches it through :attr:`LockService.pipeline
<coordcore.locks.service.LockService.pipeline>` (:meth:`CommitPipeline.submit_command`,
:meth:`CommitPipeline.attach`, :meth:`CommitPipeline.park`, :meth:`CommitPipeline.withdraw`,
:meth:`CommitPipeline.on_batch`).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from coordcore import tracing
from coordcore._native import require
from coordcore.errors import (
    Cancelled,
    CoordcoreError,
    LimitExceeded,
    LockTimeout,
    NotLockHolder,
    ServiceClosed,
    SessionExpired,
)
from coordcore.locks.machine import (
    BATCH_HEADER_SIZE,
    BatchBuilder,
    Event,
    EventKind,
    LockMachine,
    Result,
    Status,
    decode_events,
    decode_results,
)
from coordcore.locks.store import LogStore, snapshot_payload

__all__ = ["BatchStats", "CommandSource", "CommitPipeline", "Request", "SourceBatch"]

logger = logging.getLogger("coordcore.locks.service")

_formats = require("lockmachine")

T = TypeVar("T")
Key = str | bytes
Add = Callable[[BatchBuilder], int]

#: The most requests one batch record carries (a flood is cut into several batches).
MAX_BATCH: Final = 16_384
#: The longest batch record without a store (a flood is cut by MAX_BATCH long before).
MAX_RECORD_BYTES: Final = 1 << 30
#: An append that takes longer than this (ms) to become durable, once it is the next to
#: commit, holds the batch clock back by the excess: time in which no record could
#: commit (etcd without a leader, a stalled disk) does not count against sessions,
#: waits or graces, whose keep-alives and releases could not commit either. As a
#: failover resumes the clock (count_downtime=False), so does a stall. A clock that runs
#: slow only ever ends a lease later, never sooner than its holder can tell.
STALL_GRACE_MS: Final = 1000
#: Default bound of holds + waits per session.
DEFAULT_MAX_CONTENDERS_PER_SESSION: Final = 100_000

_WAITING: Final = int(Status.WAITING)


class SourceBatch(Protocol):
    """The commands a :class:`CommandSource` gave to one batch."""

    #: Encoded commands, byte for byte as they go into the batch record.
    commands: bytes
    count: int

    def resolve(self, results: bytes, base: int) -> None:
        """The batch committed: its packed results, these commands' from ``base`` on."""

    def fail(self, error: BaseException) -> None:
        """The batch did not commit (or its fate is unknown)."""


class CommandSource(Protocol):
    """Commands queued outside the pipeline (a server's native lane), taken into every
    batch after the queued requests. The pipeline sets ``wake`` (call it when commands
    arrive) and ``closed`` (set when it stops taking them)."""

    wake: Callable[[], None]
    closed: bool

    def __len__(self) -> int:
        """Commands queued."""

    def cut(self, limit: int, max_bytes: int = ...) -> SourceBatch | None:
        """Take up to ``limit`` queued commands, together at most ``max_bytes`` long
        (None: nothing queued, or the first is longer)."""


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


class Request:
    """One command waiting for its batch. ``add`` puts it in the builder.

    ``future`` gets the committed :class:`Result`, or ``encode(result)`` when the
    request came through :meth:`CommitPipeline.submit_command` (a server's reply bytes).
    """

    __slots__ = ("add", "future", "parks", "abandoned", "result", "applied", "encode", "pipeline", "key", "sid",
                 "timer", "timeout_error", "counted", "link")
    #: The span context of the server span it was queued from; set only while the
    #: pipeline traces (unset: untraced), so an untraced request pays nothing for it.
    link: Any

    def __init__(self, add: Add | None, parks: bool,
                 future: asyncio.Future[Any], encode: Callable[[Result], Any] | None = None) -> None:
        #: How to add it to the batch (None: it was in a batch already, see park()).
        self.add = add
        self.future = future
        self.parks = parks  # an acquire/campaign: a WAITING result parks it by ticket
        self.abandoned = False  # its caller timed out or was cancelled
        self.result: Result | None = None
        self.applied: asyncio.Future[Result] | None = None
        self.encode = encode
        #: Set when a done callback withdraws a cancelled wait (submit_command, park).
        self.pipeline: CommitPipeline | None = None
        #: park()'s timeout.
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
        pipeline = self.pipeline
        if pipeline is not None and fut.cancelled() and not self.abandoned:
            # The caller gave up (its connection went, or the server is stopping):
            # withdraw the wait, or the grant if it won the race.
            pipeline.track(asyncio.ensure_future(pipeline.withdraw_request(self, self.key, self.sid)))


class _Batch:
    """A batch record on its way to the log, and who waits for it."""

    __slots__ = ("record", "accepted", "source", "source_base", "tick_waiters", "appended", "count", "links",
                 "cut_ns")

    def __init__(self, record: bytes, accepted: list[tuple[Request, int]], source: SourceBatch | None,
                 source_base: int, tick_waiters: list[asyncio.Future[None]],
                 appended: asyncio.Future[int] | None) -> None:
        self.record = record
        #: Requests in the batch and the index of their (first) command.
        self.accepted = accepted
        #: The source's commands in the batch, from command ``source_base`` on.
        self.source = source
        self.source_base = source_base
        self.tick_waiters = tick_waiters
        #: The store's append (None: no store).
        self.appended = appended
        #: Commands in the batch.
        self.count = len(accepted) + (source.count if source is not None else 0)
        #: The span contexts of the traced requests in it, and when it was cut (only
        #: while the pipeline traces; see CommitPipeline.tracer).
        self.links: list[Any] | None = None
        self.cut_ns = 0

    def abort(self, exc: BaseException) -> None:
        """The batch's fate in the log is unknown: its requesters get the error itself
        (not acknowledged)."""
        for req, _ in self.accepted:
            set_exception(req, exc)
        if self.source is not None:
            self.source.fail(exc)
        for w in self.tick_waiters:
            if not w.done():
                w.set_exception(exc)
        if self.appended is not None and not self.appended.done():
            self.appended.cancel()


class CommitPipeline:
    """The writer of one lock machine: see the module docstring.

    ``on_session_end(session_id, why)`` is called for each session a batch ends
    (``"expired"`` or ``"closed"``), ``on_stop(error)`` once when the pipeline stops
    (``error``: what waiters still queued got), and :attr:`event_sink`, while set, gets
    every batch's events (the service sets it while it has watches)."""

    def __init__(self, *, store: LogStore | None, machine: LockMachine, clock: Callable[[], int],
                 tick_interval: float, snapshot_every_records: int, snapshot_every_bytes: int,
                 on_session_end: Callable[[int, str], None], on_stop: Callable[[BaseException], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._store = store
        self._machine = machine
        #: The batch time (ms), never below the last batch's.
        self._clock = clock
        #: Time (ms) the log could not commit, beyond STALL_GRACE_MS per append: the
        #: batch clock leaves it out (see STALL_GRACE_MS).
        self._stalled_ms = 0
        self._tick_interval = tick_interval
        self._snap_records = snapshot_every_records
        self._snap_bytes = snapshot_every_bytes
        self._on_session_end = on_session_end
        self._on_stop = on_stop
        self.event_sink: Callable[[list[Event]], None] | None = None
        self._builder = BatchBuilder()
        self._queue: list[Request] = []
        self._wakeup = asyncio.Event()
        self._tick_wanted = False
        self._tick_waiters: list[asyncio.Future[None]] = []
        self._snapshot_waiters: list[asyncio.Future[None]] = []
        self._parked: dict[int, Request] = {}
        self._background: set[asyncio.Future[Any]] = set()
        self._closing = False
        self._failure: BaseException | None = None
        self._last_ms = machine.time_ms
        self._since_snapshot_records = 0
        self._since_snapshot_bytes = 0
        #: The most command bytes one record carries (the store's bound less the header).
        self._max_body = (store.max_record_bytes if store is not None else MAX_RECORD_BYTES) - BATCH_HEADER_SIZE
        #: Batches appended and not yet applied (in sequence order), at most ``_depth``.
        self._inflight: collections.deque[_Batch] = collections.deque()
        self._depth = store.max_in_flight if store is not None else 1
        if self._depth < 1:
            raise ValueError(f"the store's max_in_flight must be at least 1, got {self._depth}")
        self.stats = BatchStats()
        self._batch_listeners: list[Callable[[], None]] = []
        #: Commands from outside (a server's native lane), taken into every batch.
        self._source: CommandSource | None = None
        #: Bound of holds + waits per session, checked where commands are accepted (not
        #: in the log, so replay never depends on it).
        self.max_contenders_per_session = DEFAULT_MAX_CONTENDERS_PER_SESSION
        self._pending_contenders: dict[int, int] = {}
        #: An OpenTelemetry tracer (set by a server that traces; None: off): a batch
        #: that carries traced requests gets a span linked to theirs (see _trace_batch).
        self.tracer: Any = None
        self._writer = asyncio.ensure_future(self._write_loop())
        self._ticker = asyncio.ensure_future(self._tick_loop()) if tick_interval > 0 else None

    # --- state --------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing

    def closed_error(self) -> ServiceClosed:
        """What a call on a stopped pipeline raises."""
        if self._failure is None:
            return ServiceClosed("the lock service is closed")
        error = ServiceClosed(f"the lock service failed: {self._failure!r}")
        error.__cause__ = self._failure
        return error

    def now_ms(self) -> int:
        now = self._clock() - self._stalled_ms
        return now if now >= self._last_ms else self._last_ms  # never backwards

    # --- submitting -----------------------------------------------------------------

    def submit(self, add: Add, *, parks: bool = False, contends: int = 0) -> Request:
        """Queue one command for the next batch. ``contends`` (a session id: an
        acquire-like command) holds it to the session's bound of holds and waits,
        counting it until applied (so a pipeline of requests cannot slip past)."""
        return self._enqueue(Request(add, parks, self._loop.create_future()), contends)

    def _enqueue(self, req: Request, contends: int) -> Request:
        if self._closing:
            raise self.closed_error()
        if contends:
            self._check_room(contends)
        self._queue.append(req)
        self._wakeup.set()
        if contends:
            self._count(req, contends)
        if self.tracer is not None:
            req.link = tracing.LINK.get()  # the server span it runs in (None: untraced)
        return req

    async def call(self, add: Add) -> Result:
        """Submit one command and wait for its (committed) result; raise on error."""
        result: Result = await self.submit(add).future
        exc = result.exception()
        if exc is not None:
            raise exc
        return result

    def submit_command(self, add: Add, encode: Callable[[Result], T], *, parks: bool = False,
                       key: Key = b"", session_id: int = 0, contends: bool = False) -> asyncio.Future[T]:
        """For servers: queue one command (``add`` appends it to the batch's
        :class:`~coordcore.locks.machine.BatchBuilder`) and return a future of
        ``encode(result)``, set when its batch is durable and applied; ``encode`` must
        also handle error results. With ``parks`` (an acquire or campaign that waits) a
        WAITING result parks it until the batch that grants it (then ``encode`` gets the
        result with ``status=OK, value=token``) or cancels it (then the future fails with
        SessionExpired or Cancelled). Cancelling the future of a parked request withdraws
        it through the log (``key`` and ``session_id`` name it for the CANCEL). No task
        and no coroutine per request: the cheap path a server's commands use.
        ``contends``: see :meth:`submit`."""
        if self._closing:  # before the future exists: nothing to withdraw
            raise self.closed_error()
        fut: asyncio.Future[T] = self._loop.create_future()
        req = Request(add, parks, fut, encode)
        self._enqueue(req, session_id if contends else 0)
        if parks:
            req.pipeline, req.key, req.sid = self, key, session_id
            fut.add_done_callback(req.on_done)
        return fut

    def attach(self, source: CommandSource) -> None:
        """Take (up to each batch's bound) the commands queued in ``source`` into every
        batch, after the queued requests; ``source`` resolves them after the commit (see
        :meth:`park` and :meth:`withdraw` for the outcomes it hands back). One source."""
        if self._source is not None:
            raise CoordcoreError("a command source is attached already")
        source.wake = self._wakeup.set
        source.closed = self._closing
        self._source = source

    def park(self, result: Result, key: Key, session_id: int, encode: Callable[[Result], T], *,
             timeout: float | None = None, timeout_error: BaseException | None = None) -> asyncio.Future[T]:
        """For a source: one of its acquires came back ``WAITING`` (``result``). Returns a
        future of ``encode(result)`` with ``status=OK, value=token`` once the batch that
        grants it commits (or failing with SessionExpired / Cancelled), like a parked
        :meth:`submit_command` request; cancelling it withdraws the wait. With
        ``timeout`` (seconds from now) it fails with ``timeout_error`` when the grant has
        not come by then, and the wait is withdrawn first."""
        fut: asyncio.Future[T] = self._loop.create_future()
        req = Request(None, True, fut, encode)
        req.result = result
        req.pipeline, req.key, req.sid = self, key, session_id
        fut.add_done_callback(req.on_done)
        self._park(result.aux, req)  # aux: the ticket of a waiting contender
        if timeout is not None:
            error = timeout_error if timeout_error is not None else LockTimeout(f"{key!r} not granted in time")
            req.timeout_error = error
            req.timer = self._loop.call_later(max(0.0, timeout), self._park_timed_out, req, error)
        return fut

    def _park_timed_out(self, req: Request, error: BaseException) -> None:
        """A park() wait timed out: withdraw it, then fail its future with ``error``
        (a timeout is answered only once the wait is gone)."""
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

        self.track(asyncio.ensure_future(expire()))

    def withdraw(self, result: Result, key: Key, session_id: int) -> None:
        """For a source: one of its acquires (``result``: granted or waiting) whose
        requester has gone: CANCEL it through the log in the background (which also
        releases a grant)."""
        if result.status in (Status.OK, Status.WAITING):
            self.track(asyncio.ensure_future(self._withdraw_result(result, key, session_id)))

    def _withdraw_result(self, result: Result, key: Key, sid: int) -> Coroutine[Any, Any, None]:
        """:meth:`withdraw_request` for a committed acquire known only by its result."""
        req = Request(None, True, self._loop.create_future())
        req.result = result
        req.future.add_done_callback(retrieve)
        return self.withdraw_request(req, key, sid)

    async def withdraw_request(self, req: Request, key: Key, sid: int,
                               cancel: Callable[[int], Awaitable[None]] | None = None) -> None:
        """Make sure an abandoned acquire holds nothing: if it never reached a batch it is
        dropped; otherwise CANCEL its ticket (which also releases it if the grant won), or
        ``await cancel(ticket)`` for a request that is no lock's (a pool's)."""
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
                req.applied.add_done_callback(retrieve)
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
        if cancel is not None:
            await cancel(ticket)
            return
        try:
            await self.call(lambda b: b.cancel(sid, key, ticket))
        except (SessionExpired, ServiceClosed, NotLockHolder):
            pass  # the session ended (and took the contender with it), or we did
        except CoordcoreError as exc:
            if exc.code != "NOTFOUND":
                raise

    def on_batch(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each committed batch, once its requests' futures are
        resolved and its events dispatched (a server writes the batch's replies there,
        one write per connection, without waiting for the futures' callbacks)."""
        self._batch_listeners.append(listener)

    def track(self, fut: asyncio.Future[Any]) -> None:
        """Keep a background task until it ends (close waits for it)."""
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)
        fut.add_done_callback(retrieve)

    # --- the bound of holds and waits per session ---------------------------------------

    def has_room(self, sid: int) -> bool:
        return self._machine.contender_count(sid) < self.max_contenders_per_session

    def _check_room(self, sid: int) -> None:
        if self._machine.contender_count(sid) + self._pending_contenders.get(sid, 0) \
                >= self.max_contenders_per_session:
            raise LimitExceeded(f"session {sid} holds or waits for {self.max_contenders_per_session} locks, "
                                "the most one session may (release some first)")

    def _count(self, req: Request, sid: int) -> None:
        req.counted = sid
        self._pending_contenders[sid] = self._pending_contenders.get(sid, 0) + 1

    def _uncount(self, req: Request) -> None:
        sid, req.counted = req.counted, 0
        left = self._pending_contenders.get(sid, 0) - 1
        if left > 0:
            self._pending_contenders[sid] = left
        else:
            self._pending_contenders.pop(sid, None)

    # --- the writer -------------------------------------------------------------------

    def _has_work(self) -> bool:
        return bool(self._queue or self._tick_wanted or self._source)

    async def _write_loop(self) -> None:
        inflight = self._inflight
        depth = self._depth
        try:
            while True:
                if len(inflight) < depth and self._worth_cutting() and not self._snapshot_wanted():
                    batch = self._cut_batch()
                    if batch is not None:
                        inflight.append(batch)
                        continue  # a flood cut to the bounds: the rest may go too
                if inflight:
                    head = inflight[0]
                    if len(inflight) < depth and head.appended is not None and not head.appended.done() \
                            and not self._snapshot_wanted():
                        # Room for another append: wait for the head's (its done callback
                        # sets the wakeup too), or for enough new work to send at once.
                        self._wakeup.clear()
                        if not self._worth_cutting():
                            await self._wakeup.wait()
                        if not head.appended.done():
                            # Let the rest of this turn's arrivals queue into the batch.
                            await asyncio.sleep(0)
                            continue
                    inflight.popleft()  # (_commit aborts it if it fails)
                    raw_results, raw_events = await self._commit(head)
                    if self._store is not None and self._has_work() and not self._snapshot_wanted():
                        # Start the next batch's append now: it runs while this
                        # batch's requesters are answered.
                        while len(inflight) < depth and self._worth_cutting():
                            batch = self._cut_batch()
                            if batch is None:
                                break
                            inflight.append(batch)
                    self._answer(head, raw_results, raw_events)
                    if inflight:
                        continue
                if self._snapshot_wanted():
                    await self._take_snapshot()
                if self._has_work() or self._snapshot_waiters:
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
            # Every batch after a failed one fails too (each chains on the one before,
            # so nothing later may be acknowledged), the failed one first.
            while inflight:
                inflight.popleft().abort(exc)
            self._stop(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _worth_cutting(self) -> bool:
        """Whether to cut a batch now. With batches in flight, only once the queue holds
        at least as many commands as the newest of them: one append of many commands
        costs far less per command than many appends of few, so under a steady load
        batches stay as large as with one in flight (on a busy etcd its Txn rate is what
        runs out), while a backlog goes out at once instead of waiting a round trip."""
        inflight = self._inflight
        if not inflight:
            return self._has_work()
        queued = len(self._queue) + (len(self._source) if self._source is not None else 0)
        return queued > 0 and queued >= inflight[-1].count

    def _snapshot_wanted(self) -> bool:
        return bool(self._snapshot_waiters) or self._snapshot_due()

    def _cut_batch(self) -> _Batch | None:
        """Take the queued requests (and the source's commands) into a batch record and
        start appending it; None if there is nothing to write."""
        if len(self._queue) <= MAX_BATCH:
            batch, self._queue = self._queue, []
        else:  # a flood: cut a bounded batch, the rest goes into the next one
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        tick_waiters, self._tick_waiters = self._tick_waiters, []
        tick = self._tick_wanted
        self._tick_wanted = False
        builder = self._builder
        room = self._max_body
        parts: list[bytes] = []
        count = 0
        accepted: list[tuple[Request, int]] = []
        for i, req in enumerate(batch):
            add = req.add
            assert add is not None  # only park()/withdraw() requests have none: never queued
            builder.clear()
            try:
                index = add(builder)
            except CoordcoreError as exc:
                if req.counted:
                    self._uncount(req)
                set_exception(req, exc)
                continue
            if len(builder):
                part = builder.build(0)[BATCH_HEADER_SIZE:]  # its commands, byte for byte
                if len(part) > room and accepted:
                    # The record is as long as the store takes: the rest goes first into
                    # the next one (adding a command again builds the same bytes).
                    self._queue[:0] = batch[i:]
                    break
                room -= len(part)
                parts.append(part)
            accepted.append((req, count + index))
            count += len(builder)
        # The source's commands (hot commands of a server's connections) go last; they
        # share no connection with the queued ones (the server keeps them apart).
        source = self._source.cut(MAX_BATCH - len(accepted), room) if self._source else None
        source_base = count
        if source is not None:
            parts.append(source.commands)
            count += source.count
        if not accepted and not tick and source is None:
            for w in tick_waiters:
                if not w.done():
                    w.set_result(None)
            return None  # every request was refused up front: nothing to write
        # Batch time never goes backwards, also past batches still in flight.
        self._last_ms = now = self.now_ms()
        record = _formats.assemble(now, parts, count)
        tracer = self.tracer
        cut_ns = time.time_ns() if tracer is not None else 0
        appended = self._store.append(record) if self._store is not None else None
        if appended is not None and self._depth > 1:
            appended.add_done_callback(self._wake)
        out = _Batch(record, accepted, source, source_base, tick_waiters, appended)
        if tracer is not None:
            links = [link for req, _ in accepted if (link := getattr(req, "link", None)) is not None]
            if links:
                out.links, out.cut_ns = links, cut_ns
        return out

    def _wake(self, _: object) -> None:
        self._wakeup.set()

    async def _commit(self, batch: _Batch) -> tuple[bytes, bytes]:
        """Wait for ``batch`` to be durable, then apply it: its packed results and events."""
        try:
            if batch.appended is not None:
                began = self._clock()
                await batch.appended
                waited = self._clock() - began
                if waited > STALL_GRACE_MS:
                    self._stalled_ms += waited - STALL_GRACE_MS
                assert self._store is not None
                self.stats.fsyncs += self._store.syncs
            raw_results, raw_events = self._machine.apply_raw(batch.record)
            if self._store is not None:
                self._store.applied(self._machine.revision)
        except BaseException as exc:
            batch.abort(exc)
            raise
        if self._machine.time_ms > self._last_ms:
            self._last_ms = self._machine.time_ms
        st = self.stats
        st.batches += 1
        n = len(batch.accepted) + (batch.source.count if batch.source is not None else 0)
        st.commands += n
        st.bytes += len(batch.record)
        if not n:
            st.ticks += 1
        st.sizes[1 << (n.bit_length() - 1) if n else 0] += 1
        self._since_snapshot_records += 1
        self._since_snapshot_bytes += len(batch.record)
        if batch.links is not None:
            self._trace_batch(batch, n)
        return raw_results, raw_events

    def _trace_batch(self, batch: _Batch, commands: int) -> None:
        """The span of a committed batch that carried traced requests: from its cut to
        now, linked to each of their server spans (and the child of the first, so a
        trace shows its commit)."""
        attributes: dict[str, Any] = {"coordcore.batch.commands": commands,
                                      "coordcore.batch.bytes": len(batch.record),
                                      "coordcore.batch.traced": len(batch.links or ()),
                                      "coordcore.revision": self._machine.revision}
        times = getattr(self._store, "sync_times", None)
        if times is not None and getattr(self._store, "syncs", False):
            attributes["coordcore.fsync.duration"] = times.last
        tracing.batch_span(self.tracer, "coordcore.commit", batch.links or [], batch.cut_ns, attributes)

    def _answer(self, batch: _Batch, raw_results: bytes, raw_events: bytes) -> None:
        """Resolve a committed batch's requests and dispatch its events."""
        for req, index in batch.accepted:
            self._resolve(req, decode_results(raw_results[index * 24:index * 24 + 24])[0])
        if batch.source is not None:
            batch.source.resolve(raw_results, batch.source_base)
        sink = self.event_sink
        # Without a sink only session ends and the grants/cancels of parked requests
        # matter: decode just those.
        events = decode_events(raw_events) if sink is not None \
            else _formats.filter_events(raw_events, Event, self._parked)
        self._dispatch(events)
        if sink is not None:
            sink(events)
        for w in batch.tick_waiters:
            if not w.done():
                w.set_result(None)
        for listener in self._batch_listeners:
            listener()

    def _resolve(self, req: Request, result: Result) -> None:
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

    def _park(self, ticket: int, req: Request) -> None:
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
                        set_exception(req, SessionExpired(
                            f"session {ev.session} expired while waiting for {ev.key!r}"))
                    elif why is None and req.timeout_error is not None:
                        set_exception(req, req.timeout_error)  # its TIMEOUT, withdrawn by the machine
                    else:
                        set_exception(req, Cancelled(
                            f"the wait for {ev.key!r} was cancelled"
                            + (" (its session was closed)" if why else "")))
            elif kind == EventKind.EXPIRE or kind == EventKind.CLOSE:
                why = "expired" if kind == EventKind.EXPIRE else "closed"
                ended[ev.session] = why
                self._on_session_end(ev.session, why)

    # --- ticks and snapshots ---------------------------------------------------------

    def tick(self) -> asyncio.Future[None]:
        """Commit an empty batch now (expiring due sessions); resolved when it has."""
        if self._closing:
            raise self.closed_error()
        fut: asyncio.Future[None] = self._loop.create_future()
        self._tick_waiters.append(fut)
        self._tick_wanted = True
        self._wakeup.set()
        return fut

    def snapshot(self) -> asyncio.Future[None]:
        """Write a snapshot between two batches; resolved when it is stored."""
        if self._closing:
            raise self.closed_error()
        fut: asyncio.Future[None] = self._loop.create_future()
        if self._store is None:
            fut.set_result(None)
            return fut
        self._snapshot_waiters.append(fut)
        self._wakeup.set()
        return fut

    def _snapshot_due(self) -> bool:
        return self._store is not None and (
            self._since_snapshot_records >= self._snap_records
            or self._since_snapshot_bytes >= self._snap_bytes)

    async def _take_snapshot(self) -> None:
        waiters, self._snapshot_waiters = self._snapshot_waiters, []
        try:
            if self._store is not None:
                await write_snapshot(self._store, self._machine)
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
            if deadline is not None and deadline <= self.now_ms() and not self._queue and not self._source:
                # Any batch expires due sessions; only an idle service needs a tick.
                self._tick_wanted = True
                self._wakeup.set()

    # --- stopping ----------------------------------------------------------------------

    def _stop(self, exc: BaseException) -> None:
        """The writer stopped (I/O error or close): fail everything still waiting."""
        if self._failure is None and not isinstance(exc, asyncio.CancelledError):
            self._failure = exc
        self._closing = True
        closed = self.closed_error()
        for req in (*self._queue, *self._parked.values()):
            set_exception(req, closed)
        self._queue.clear()
        if self._source is not None:
            self._source.closed = True
            leftover = self._source.cut(len(self._source))
            if leftover is not None:
                leftover.fail(closed)
        self._parked.clear()
        for fut in (*self._tick_waiters, *self._snapshot_waiters):
            if not fut.done():
                fut.set_exception(closed)
        self._tick_waiters.clear()
        self._snapshot_waiters.clear()
        self._on_stop(closed)
        self._wakeup.set()

    def begin_close(self) -> None:
        """Take no more requests; the writer finishes what is queued."""
        self._closing = True
        self._wakeup.set()

    async def close(self) -> None:
        """Finish the queued requests and the batch in flight, fail what still waits,
        then close the store."""
        self.begin_close()
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        if self._background:
            await asyncio.gather(*tuple(self._background), return_exceptions=True)
        await asyncio.gather(self._writer, return_exceptions=True)
        self._stop(asyncio.CancelledError())
        if self._store is not None:
            await self._store.close()


async def write_snapshot(store: LogStore, machine: LockMachine) -> None:
    """Store a snapshot of ``machine``'s state after the store's last record."""
    index = store.next_index - 1
    payload = snapshot_payload(index, machine.revision, machine.time_ms, machine.snapshot())
    await store.write_snapshot(index, payload)


def set_exception(req: Request, exc: BaseException) -> None:
    """Fail a request's waiter; an abandoned one (its caller left) just ends."""
    if req.applied is not None and not req.applied.done():
        req.applied.set_exception(exc)
    if req.future.done():
        return
    if req.abandoned:
        req.future.cancel()
    else:
        req.future.set_exception(exc)


def retrieve(fut: asyncio.Future[Any]) -> None:
    """A done callback that marks a future's exception as seen."""
    if not fut.cancelled():
        fut.exception()
