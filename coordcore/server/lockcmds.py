"""Session, lock, semaphore, election and watch commands, served by the
:class:`~coordcore.locks.service.LockService` (its durable log lives in
``<data_dir>/locks``).

Sessions are not tied to connections (like etcd leases): a client that reconnects
keeps its session and its locks while it keeps the session alive. A blocking acquire
parks its connection (see :mod:`coordcore.server.protocol`); the lock service wakes it
when the batch that grants it commits. If the connection goes while it waits, the
wait is withdrawn through the log (a CANCEL, which also releases a grant that won the
race), so a vanished client never ends up holding a lock it cannot know about.

Sessions belong to their opener: ``SESSION.OPEN`` answers a *credential*, the handle
``<id>.<secret>`` (128 random bits), and every command that acts for a session takes
that handle where it says ``session`` below. The id alone (what ``LOCK.INFO``,
``ELECT.LEADER`` and watches show) is public and acts for nobody: a bare id or a wrong
secret gets ``-NOSESSION``. The log keeps only the secret's digest.

A retried acquire (same ``REQID``) whose first attempt was left waiting re-attaches to
that wait, e.g. after a reconnect or a server restart: it answers the token if the wait
was granted meanwhile, or waits on. Waiters recovered at a restart are withdrawn (and
released, if granted) after a grace of a few seconds unless their client retries so.

Wire commands (``ms`` are milliseconds, ``ttl`` seconds; ``REQID n`` makes a retried
request idempotent per session; ``TOKEN t`` names one hold, 0 or absent: the oldest)::

    SESSION.OPEN ttl                       -> session credential "<id>.<secret>"
    SESSION.KEEPALIVE session              -> deadline (ms, service clock)
    SESSION.CLOSE session                  -> OK
    SESSION.INFO id [AFTER t] [COUNT n]    -> map (ttl_ms, deadline_ms, contender_count, contenders,
                                              next) | null (a read: by the public id; paged)
    LOCK.ACQUIRE key session [SHARED] [TIMEOUT ms] [REQID n] [LABEL v]   -> token
    LOCK.TRY key session [SHARED] [REQID n] [LABEL v]                    -> token | null
    LOCK.RELEASE key session [TOKEN t] [REQID n]                         -> OK
    LOCK.CANCEL key session TICKET t [REQID n]                           -> OK
    LOCK.INFO key [COUNT n]                -> map (key, kind, permits, mode, holders, waiters,
                                              holder_count, waiter_count; the first n of each)
    SEM.ACQUIRE key session permits [TIMEOUT ms] [REQID n] [LABEL v]     -> token
    SEM.TRY key session permits [REQID n] [LABEL v]                      -> token | null
    SEM.RELEASE key session [TOKEN t] [REQID n]                          -> OK
    SEM.INFO key                           -> as LOCK.INFO
    ELECT.CAMPAIGN name session value [TIMEOUT ms] [REQID n]             -> token
    ELECT.PROCLAIM name session value [TOKEN t] [REQID n]                -> revision
    ELECT.RESIGN name session [TOKEN t] [REQID n]                        -> OK
    ELECT.LEADER name                      -> map (session, value, token) | null
    LOCKS.KEYS [prefix]                    -> keys in use (LIMIT past max_reply_items)
    LOCKS.SCAN cursor [MATCH prefix] [COUNT n] -> [next cursor, keys] (as Redis's SCAN)
    LOCKS.REVISION                         -> the last committed revision
    POOL.DEFINE pool capacity [GRACE ms] [PATIENCE n]                    -> OK (admin)
    POOL.TENANT pool tenant [WEIGHT w] [MIN n] [MAX n] [BAND b]          -> OK (admin)
    POOL.ACQUIRE pool session tenant units [TIMEOUT ms] [REQID n]        -> token
    POOL.TRY pool session tenant units [REQID n]                         -> token | null
    POOL.RELEASE pool session token [REQID n]                            -> OK (a ticket: withdraws a wait)
    POOL.RESIZE pool session token units [REQID n]                       -> 1 (done) | 0 (a grow that must wait)
    POOL.INFO pool [SESSION id]            -> map (capacity, grace_ms, patience, held, tenants, leases,
                                              waiting, waits; SESSION: only its leases, waits) | null
    WATCH prefix / UNWATCH [prefix]        -> OK, then pushes
        >5 "watch" revision kind key {mode, session, ticket, token, value}

``LOCK.ACQUIRE`` and ``LOCK.TRY`` by a session that already holds or waits for the
lock, when either claim is exclusive, answer ``-HELD`` at once (a shared hold is not
upgraded); reentrant locks are a client-side count.

A watch push is a RESP3 push after ``HELLO 3``; on RESP2 it is a plain array and the
connection accepts only WATCH, UNWATCH, PING and QUIT while it watches (as Redis does
for pub/sub).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from coordcore._native import require
from coordcore.errors import (
    BadArgument,
    CoordcoreError,
    InternalError,
    LimitExceeded,
    LockTimeout,
    NoPermission,
    Unavailable,
    WatchLagged,
)
from coordcore.locks.machine import (
    MAX_KEY_SIZE,
    BatchBuilder,
    MAX_VALUE_SIZE,
    Contender,
    Event,
    EventKind,
    Kind,
    Mode,
    Result,
    Status,
    decode_results,
)
from coordcore.locks.service import LockService
from coordcore.server import resp
from coordcore.server.commands import parse_float, parse_int, parse_options, require_args
from coordcore.server.core import Client, Command, CommandTable, Flag
from coordcore.server.log import StructLog
from coordcore.types import Grant, GrantKind

__all__ = ["LockCommands", "LockConfig", "encode_event", "open_service", "pools_info"]

_U63 = 2**63 - 1
_lw = require("lockwire")
_MAX_TIMEOUT_MS = 30 * 86_400_000


class LockConfig(Protocol):
    """The settings of the lock service the server opens (ServerConfig has them)."""

    @property
    def data_dir(self) -> Path: ...
    @property
    def fsync(self) -> bool: ...
    @property
    def allow_empty_lock_log(self) -> bool: ...
    @property
    def waiter_grace(self) -> float: ...
    @property
    def max_sessions(self) -> int: ...
    @property
    def max_locks_per_session(self) -> int: ...
    @property
    def max_reply_items(self) -> int: ...
    @property
    def audit_key(self) -> Path | None: ...
    @property
    def audit_every(self) -> int: ...
    @property
    def audit_segment_bytes(self) -> int: ...
    @property
    def audit_archive_dir(self) -> Path | None: ...
    @property
    def audit_archive_command(self) -> str | None: ...
    @property
    def audit_trusted_keys(self) -> tuple[Path, ...]: ...


async def open_service(config: LockConfig, log: StructLog) -> LockService:
    """Open the durable lock service in ``<data_dir>/locks``."""
    path = config.data_dir / "locks"
    durability: Literal["fsync", "unsafe-no-fsync"] = "fsync" if config.fsync else "unsafe-no-fsync"
    from coordcore.locks import recovery

    # A data dir that has served (ID state, a revision mark) but has no lock log lost it:
    # starting empty would forget every lock and could reissue tokens (issue 9, item 6).
    allow_empty = config.allow_empty_lock_log
    lost = recovery.lost_log_evidence(path, config.data_dir)
    if lost and not allow_empty:
        raise recovery.missing_log_error(path, lost, "--allow-empty-lock-log")
    if lost:
        log.warning("starting with an empty lock log (--allow-empty-lock-log)", path=str(path),
                    found="; ".join(lost))
    # count_downtime=False: a restart resumes the service clock where the last batch left
    # it, so sessions keep the TTL they had left and clients that reconnect within it
    # keep their locks (etcd renews leases on a new leader the same way).
    if config.audit_key is not None:  # every record also goes to <data_dir>/audit
        from coordcore.audit.wire import open_audited_service

        svc = await open_audited_service(path, config.data_dir / "audit", config.audit_key,
                                         durability=durability, allow_empty_log=allow_empty,
                                         waiter_grace=config.waiter_grace, every=config.audit_every,
                                         segment_bytes=config.audit_segment_bytes,
                                         archive_dir=config.audit_archive_dir,
                                         archive_command=config.audit_archive_command,
                                         trusted=config.audit_trusted_keys)
    else:
        svc = await LockService.open(path, durability=durability, count_downtime=False,
                                     waiter_grace=config.waiter_grace, allow_empty_log=allow_empty)
    svc.set_limits(max_sessions=config.max_sessions, max_contenders_per_session=config.max_locks_per_session)
    log.info("lock service open", path=str(path), durability=durability, revision=svc.revision)
    return svc


class _ConnState:
    """What the lock commands keep per connection (its ``lock_state``)."""

    __slots__ = ("token_encoder", "ok_encoder", "watches")

    def __init__(self) -> None:
        #: The reply encoders of this connection's acquires and releases (made once).
        self.token_encoder: Callable[[Result], bytes] | None = None
        self.ok_encoder: Callable[[Result], bytes] | None = None
        #: WATCH subscriptions: prefix -> (watch, forwarding task).
        self.watches: dict[bytes, tuple[Any, asyncio.Task[None]]] = {}


def _state(conn: Client) -> _ConnState:
    state = conn.lock_state
    if state is None:
        state = conn.lock_state = _ConnState()
    return state  # type: ignore[no-any-return]


# --- argument parsing ----------------------------------------------------------------


def _key(value: bytes, what: str = "key") -> bytes:
    if not 1 <= len(value) <= MAX_KEY_SIZE:
        raise BadArgument(f"{what} must be 1..{MAX_KEY_SIZE} bytes, got {len(value)}")
    return value


class _Options:
    __slots__ = ("shared", "timeout", "request_id", "label", "token")

    def __init__(self) -> None:
        self.shared = False
        self.timeout: float | None = None
        self.request_id = 0
        self.label = b""
        self.token = 0


def _options(args: list[bytes], allowed: frozenset[bytes]) -> _Options:
    opts = _Options()
    i = 0
    while i < len(args):
        word = args[i].upper()
        if word not in allowed:
            raise BadArgument(f"unexpected argument {args[i][:32]!r} (allowed: "
                              f"{', '.join(sorted(a.decode() for a in allowed))})")
        if word == b"SHARED":
            opts.shared = True
            i += 1
            continue
        if i + 1 >= len(args):
            raise BadArgument(f"{word.decode()} needs a value")
        value = args[i + 1]
        if word == b"TIMEOUT":
            opts.timeout = parse_int(value, "TIMEOUT ms", 0, _MAX_TIMEOUT_MS) / 1000.0
        elif word == b"REQID":
            opts.request_id = parse_int(value, "REQID", 1, _U63)
        elif word == b"TOKEN" or word == b"TICKET":
            opts.token = parse_int(value, word.decode(), 0, _U63)
        elif word == b"LABEL":
            if len(value) > MAX_VALUE_SIZE:
                raise BadArgument(f"LABEL must be at most {MAX_VALUE_SIZE} bytes")
            opts.label = value
        i += 2
    return opts


_OK = int(Status.OK)
_ACQ = frozenset({b"SHARED", b"TIMEOUT", b"REQID", b"LABEL"})
_TRY = frozenset({b"SHARED", b"REQID", b"LABEL"})
_SEM_ACQ = frozenset({b"TIMEOUT", b"REQID", b"LABEL"})
_SEM_TRY = frozenset({b"REQID", b"LABEL"})
_REL = frozenset({b"TOKEN", b"REQID"})
_CAMPAIGN = frozenset({b"TIMEOUT", b"REQID"})
_CANCEL = frozenset({b"TICKET", b"REQID"})
_REQID = (1, _U63)  # REQID's range, for parse_options
_PAGE = frozenset({b"AFTER", b"COUNT"})
_COUNT = frozenset({b"COUNT"})
#: Items a paged reply lists when the request does not say (COUNT).
DEFAULT_PAGE = 1000


def _tenant(value: bytes) -> bytes:
    if not 1 <= len(value) <= 255:
        raise BadArgument(f"tenant must be 1..255 bytes, got {len(value)}")
    return value


# --- replies -----------------------------------------------------------------------------


async def _reply_int(awaitable: Awaitable[int]) -> bytes:
    return resp.encode_int(await awaitable)


async def _ok(awaitable: Awaitable[Any]) -> bytes:
    await awaitable
    return resp.OK


async def _token_or_null(conn: Client, awaitable: Awaitable[Grant | None]) -> bytes:
    grant = await awaitable
    return resp.encode_null(conn.resp3) if grant is None else resp.encode_int(grant.token)


def _mode_name(mode: int) -> bytes:
    try:
        return Mode(mode).name.lower().encode()
    except ValueError:
        return b"%d" % mode


def _contender(c: Contender, resp3: bool, key: bytes | None = None) -> bytes:
    pairs = [(b"session", resp.encode_int(c.session)), (b"ticket", resp.encode_int(c.ticket)),
             (b"token", resp.encode_int(c.token)), (b"mode", resp.encode_bulk(_mode_name(c.mode))),
             (b"value", resp.encode_bulk(c.value))]
    if key is not None:
        pairs.insert(0, (b"key", resp.encode_bulk(key)))
    return resp.encode_map(pairs, resp3)


def _token_reply(result: Result) -> bytes:
    """The reply to a committed acquire: its fencing token, or the error."""
    if result.status == _OK:
        return b":%d\r\n" % result.value  # an ACQUIRE's value is its token
    return _error_reply(result)


def _ok_reply(result: Result) -> bytes:
    if result.status == _OK:
        return resp.OK
    return _error_reply(result)


def _error_reply(result: Result) -> bytes:
    exc = result.exception()
    if exc is None:  # pragma: no cover - WAITING never reaches a reply (it parks)
        return resp.encode_exception(InternalError(f"internal error: unexpected status {result.status}"))
    return resp.encode_exception(exc)


def _encoder(conn: Client, reply: Callable[[Result], bytes]) -> Callable[[Result], bytes]:
    """``reply``, marking ``conn`` for the flush at the end of the committing batch."""
    mark = conn.mark_dirty

    def encode(result: Result) -> bytes:
        mark()
        return reply(result)

    return encode


def _token_encoder(conn: Client) -> Callable[[Result], bytes]:
    state = _state(conn)
    enc = state.token_encoder
    if enc is None:
        enc = state.token_encoder = _encoder(conn, _token_reply)
    return enc


def _ok_encoder(conn: Client) -> Callable[[Result], bytes]:
    state = _state(conn)
    enc = state.ok_encoder
    if enc is None:
        enc = state.ok_encoder = _encoder(conn, _ok_reply)
    return enc


def encode_event(ev: Event, resp3: bool) -> bytes:
    try:
        kind = EventKind(ev.kind).name.lower().encode()
    except ValueError:
        kind = b"%d" % ev.kind
    fields = resp.encode_map([(b"mode", resp.encode_bulk(_mode_name(ev.mode))),
                              (b"session", resp.encode_int(ev.session)), (b"ticket", resp.encode_int(ev.ticket)),
                              (b"token", resp.encode_int(ev.token)), (b"value", resp.encode_bulk(ev.value))],
                             resp3)
    return resp.encode_push([resp.encode_bulk(b"watch"), resp.encode_int(ev.revision), resp.encode_bulk(kind),
                             resp.encode_bulk(ev.key), fields], resp3)


class LockCommands:
    """The lock service as the server serves it: the command table, the native lane
    that takes the hot lock commands of every connection into the service's batches
    (see :mod:`coordcore.server.protocol`), the flush of every connection a batch
    gave replies to, and INFO's lines. Every call into the service's server-facing
    API is made here, once."""

    def __init__(self, svc: LockService, *, log: StructLog, max_reply_items: int, tracer: Any = None) -> None:
        self.svc = svc
        self.log = log
        self.max_items = max_reply_items
        #: Connections with replies ready in the batch being resolved (the lane's list).
        self._dirty: list[Client] = []
        lane = self.lane = _lw.WireLane(None, self._other, self._dirty)
        lane.verify = svc.admit_hot
        svc.pipeline.attach(lane)
        svc.pipeline.on_batch(self._flush_dirty)
        # An OpenTelemetry tracer (the server's --otel): a span per batch that carries traced requests.
        svc.pipeline.tracer = tracer

    def _flush_dirty(self) -> None:
        """Write the replies a committed batch made ready: one write per connection.
        (The list is the lane's too, so it is emptied in place, never replaced.)"""
        dirty = self._dirty
        if not dirty:
            return
        conns = dirty[:]
        dirty.clear()
        for conn in conns:
            conn.flush()

    def _other(self, batch: Any, i: int, owner: Any, error: BaseException | None) -> bytes | None:
        """The reply to lane command ``i`` when it is not a plain success."""
        try:
            kind, sid, key, what, timeout_ms, left = batch.entry(i)
            if error is not None:  # the batch did not commit
                if isinstance(error, CoordcoreError):
                    return resp.encode_exception(error)
                return resp.encode_exception(Unavailable(f"the lock service failed: {type(error).__name__}"))
            result = decode_results(batch.result(i))[0]
            if owner.closed:  # the connection has gone: nobody reads this
                if kind == _lw.ACQUIRE:
                    self.svc.pipeline.withdraw(result, key, sid)  # hold nothing for it
                return None
            if kind == _lw.ACQUIRE and result.status == Status.WAITING:
                conn: Client = owner.conn
                # The same words as the command table's LOCK.ACQUIRE / SEM.ACQUIRE ... TIMEOUT.
                timeout_error = LockTimeout(f"{what} {key!r} not granted within {timeout_ms / 1000.0} s") \
                    if timeout_ms else None
                conn.park(self.svc.pipeline.park(result, key, sid, _token_encoder(conn), timeout=left,
                                             timeout_error=timeout_error))
                return None
            return _error_reply(result)
        except Exception as exc:  # a bug must not stall the batch's other replies
            self.log.exception("lane reply failed")
            return resp.encode_exception(InternalError.about(exc))

    def _submit(self, build: Callable[[BatchBuilder], int], encode: Callable[[Result], bytes], *,
                parks: bool = False, key: bytes = b"", session_id: int = 0,
                contends: bool = False) -> Awaitable[bytes]:
        """Queue one command for the next batch; its reply is ``encode(result)`` once it
        commits (no task, no coroutine)."""
        return self.svc.pipeline.submit_command(build, encode, parks=parks, key=key, session_id=session_id,
                                       contends=contends)

    def _session(self, conn: Client, value: bytes) -> int:
        """The session a command acts for, named by its credential (the handle SESSION.OPEN
        answered to this connection's user); the bare public id is refused, and so is
        another user's session."""
        return self.svc.session_for_credential(value, conn.user.owner)

    async def close(self) -> None:
        svc = self.svc
        await svc.close()
        self.log.info("lock service closed", revision=svc.revision)

    def log_batches(self) -> None:
        """``--log-level debug``: a log line per committed batch."""
        svc, st = self.svc, self.svc.stats
        last = [st.commands]

        def log_batch() -> None:
            self.log.debug("batch committed", batch=st.batches, commands=st.commands - last[0],
                           revision=svc.revision, bytes=st.bytes)
            last[0] = st.commands

        svc.pipeline.on_batch(log_batch)

    def info_lines(self) -> list[str]:
        svc = self.svc
        st = svc.stats
        return ["# Locks", f"revision:{svc.revision}", f"batches:{st.batches}", f"batch_commands:{st.commands}",
                f"fsyncs:{st.fsyncs}", f"snapshots:{st.snapshots}", f"keys:{len(svc.keys())}",
                f"pools:{len(svc.pools.names())}", "", "# Pools", *pools_info(svc), ""]

    def commands(self) -> CommandTable:
        """The command table, each entry's handler bound to this service."""
        return {name: Command(handler.__get__(self), flags) for name, (handler, flags) in self.SPEC.items()}

    #: Each command's handler (a function of LockCommands) and flags (set below the class).
    SPEC: ClassVar[dict[bytes, tuple[Callable[..., Any], Flag]]]

    def _page_options(self, args: list[bytes], allowed: frozenset[bytes]) -> tuple[int, int]:
        """``AFTER n`` and ``COUNT n`` (at most the server's max_reply_items)."""
        after, count = 0, min(DEFAULT_PAGE, self.max_items)
        if len(args) % 2:
            raise BadArgument("options come in pairs: " + ", ".join(sorted(a.decode() for a in allowed)))
        for word, value in zip(args[::2], args[1::2]):
            w = word.upper()
            if w not in allowed:
                raise BadArgument(f"unexpected argument {word[:32]!r} (allowed: "
                                  f"{', '.join(sorted(a.decode() for a in allowed))})")
            if w == b"AFTER":
                after = parse_int(value, "AFTER", 0, _U63)
            else:
                count = parse_int(value, "COUNT", 1, self.max_items)
        return after, count

    # --- sessions ---------------------------------------------------------------------------

    def cmd_session_open(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 1, 1)
        ttl = parse_float(req[1], "ttl (seconds)", 0.001, 30 * 86_400.0)
        svc = self.svc
        owner = conn.user.owner

        async def run() -> bytes:
            session = await svc.open_session(ttl, keepalive=False, owner=owner)
            return resp.encode_bulk(session.credential)

        return run()

    def cmd_session_keepalive(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 1, 1)
        return _reply_int(self.svc.keepalive(self._session(conn, req[1])))

    def cmd_session_close(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 1, 1)
        return _ok(self.svc.close_session(self._session(conn, req[1])))

    def cmd_session_info(self, conn: Client, req: list[bytes]) -> bytes:
        """``SESSION.INFO id [AFTER ticket] [COUNT n]``: a page of the session's contenders
        in ticket order (``next``: the AFTER of the next page, 0 at the end)."""
        require_args(req, 1)
        after, count = self._page_options(req[2:], _PAGE)
        info = self.svc.session_info(parse_int(req[1].partition(b".")[0], "session id", 1, _U63),
                                     after=after, limit=count)
        if info is None:
            return resp.encode_null(conn.resp3)
        # A full page may have more behind it (the last page may then come back empty).
        more = len(info.contenders) == count
        return resp.encode_map([
            (b"session", resp.encode_int(info.session_id)),
            (b"ttl_ms", resp.encode_int(info.ttl_ms)),
            (b"deadline_ms", resp.encode_int(info.deadline_ms)),
            (b"contender_count", resp.encode_int(info.contender_count)),
            (b"contenders", resp.encode_array([_contender(c, conn.resp3, key) for key, c in info.contenders])),
            (b"next", resp.encode_int(info.contenders[-1][1].ticket if more else 0)),
        ], conn.resp3)

    # --- locks -------------------------------------------------------------------------------

    def cmd_lock_acquire(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 2)
        key, sid = _key(req[1]), self._session(conn, req[2])
        # (Without LABEL or TIMEOUT 0, with plain numbers and a connection with nothing else
        # in flight, it never gets here: the native lane takes it, see coordcore.server.protocol.
        # The same goes for SEM.ACQUIRE and the releases.)
        o = _options(req[3:], _ACQ)
        if o.timeout is None:
            # No task, no coroutine: the lock service resolves the reply future with the
            # encoded token when the grant commits.
            shared, label, rid = o.shared, o.label, o.request_id
            return self._submit(
                lambda b: b.acquire(sid, key, shared=shared, wait=True, value=label, request_id=rid),
                _token_encoder(conn), parks=True, key=key, session_id=sid, contends=True)
        svc = self.svc

        async def run() -> bytes:
            grant = await svc.acquire(key, sid, shared=o.shared, timeout=o.timeout, label=o.label,
                                      request_id=o.request_id)
            return resp.encode_int(grant.token)

        return run()

    def cmd_lock_try(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 2)
        key, sid = _key(req[1]), self._session(conn, req[2])
        o = _options(req[3:], _TRY)
        return _token_or_null(conn, self.svc.try_acquire(key, sid, shared=o.shared, label=o.label,
                                                         request_id=o.request_id))

    def _release(self, conn: Client, req: list[bytes], kind: GrantKind) -> Awaitable[bytes]:
        require_args(req, 2)
        key, sid = _key(req[1]), self._session(conn, req[2])
        o = _options(req[3:], _REL)
        grant = Grant(key, o.token, sid, kind)
        return _ok(self.svc.release(grant, request_id=o.request_id))

    def cmd_lock_release(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 2)
        key, sid = _key(req[1]), self._session(conn, req[2])
        o = _options(req[3:], _REL)
        token, rid = o.token, o.request_id
        return self._submit(lambda b: b.release(sid, key, token, request_id=rid), _ok_encoder(conn))

    def cmd_lock_cancel(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        """Withdraw one contender (by the ticket ``LOCK.INFO`` shows): a waiter leaves the
        queue, a holder releases. Any kind of key. What a client that lost a connection
        sends for a wait it gave up."""
        require_args(req, 4)
        key, sid = _key(req[1]), self._session(conn, req[2])
        o = _options(req[3:], _CANCEL)
        if not o.token:
            raise BadArgument("LOCK.CANCEL needs TICKET t")
        return _ok(self.svc.cancel(key, sid, o.token, request_id=o.request_id))

    def cmd_key_info(self, conn: Client, req: list[bytes]) -> bytes:
        """``LOCK.INFO key [COUNT n]``: holders and waiters, the first n of each, and how
        many there are in all."""
        require_args(req, 1)
        key = _key(req[1])
        _, count = self._page_options(req[2:], _COUNT)
        info = self.svc.info(key, limit=count)
        holders: tuple[Contender, ...] = ()
        waiters: tuple[Contender, ...] = ()
        if info is None:
            kind, permits = b"none", 0
        else:
            kind = Kind(info.kind).name.lower().encode()
            permits, holders, waiters = info.permits, info.holders, info.waiters
        if not holders:
            mode = b"free"
        else:
            mode = _mode_name(holders[0].mode)
        return resp.encode_map([
            (b"key", resp.encode_bulk(key)),
            (b"kind", resp.encode_bulk(kind)),
            (b"permits", resp.encode_int(permits)),
            (b"mode", resp.encode_bulk(mode)),
            (b"holders", resp.encode_array([_contender(c, conn.resp3) for c in holders])),
            (b"waiters", resp.encode_array([_contender(c, conn.resp3) for c in waiters])),
            (b"holder_count", resp.encode_int(info.holder_count if info is not None else 0)),
            (b"waiter_count", resp.encode_int(info.waiter_count if info is not None else 0)),
        ], conn.resp3)

    # --- semaphores ---------------------------------------------------------------------------

    def cmd_sem_acquire(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 3)
        key, sid = _key(req[1]), self._session(conn, req[2])
        permits = parse_int(req[3], "permits", 1, 1_000_000)
        o = _options(req[4:], _SEM_ACQ)
        svc = self.svc

        async def run() -> bytes:
            grant = await svc.acquire_semaphore(key, sid, permits, timeout=o.timeout, label=o.label,
                                                request_id=o.request_id)
            return resp.encode_int(grant.token)

        return run()

    def cmd_sem_try(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 3)
        key, sid = _key(req[1]), self._session(conn, req[2])
        permits = parse_int(req[3], "permits", 1, 1_000_000)
        o = _options(req[4:], _SEM_TRY)
        return _token_or_null(conn, self.svc.try_acquire_semaphore(key, sid, permits, label=o.label,
                                                                   request_id=o.request_id))

    def cmd_sem_release(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        return self._release(conn, req, "semaphore")

    # --- elections ----------------------------------------------------------------------------

    def cmd_elect_campaign(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 3)
        key, sid, value = _key(req[1], "election name"), self._session(conn, req[2]), req[3]
        if len(value) > MAX_VALUE_SIZE:
            raise BadArgument(f"value must be at most {MAX_VALUE_SIZE} bytes")
        o = _options(req[4:], _CAMPAIGN)
        svc = self.svc

        async def run() -> bytes:
            grant = await svc.campaign(key, sid, value, timeout=o.timeout, request_id=o.request_id)
            return resp.encode_int(grant.token)

        return run()

    def cmd_elect_proclaim(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 3)
        key, sid, value = _key(req[1], "election name"), self._session(conn, req[2]), req[3]
        if len(value) > MAX_VALUE_SIZE:
            raise BadArgument(f"value must be at most {MAX_VALUE_SIZE} bytes")
        o = _options(req[4:], _REL)
        grant = Grant(key, o.token, sid, "election")
        return _reply_int(self.svc.proclaim(grant, value, request_id=o.request_id))

    def cmd_elect_resign(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        return self._release(conn, req, "election")

    def cmd_elect_leader(self, conn: Client, req: list[bytes]) -> bytes:
        require_args(req, 1, 1)
        leader = self.svc.leader(_key(req[1], "election name"))
        if leader is None:
            return resp.encode_null(conn.resp3)
        return resp.encode_map([(b"session", resp.encode_int(leader.session)),
                                (b"value", resp.encode_bulk(leader.value)),
                                (b"token", resp.encode_int(leader.token))], conn.resp3)

    # --- state ----------------------------------------------------------------------------------

    def cmd_keys(self, conn: Client, req: list[bytes]) -> bytes:
        """``LOCKS.KEYS [prefix]``: every key in use under prefix, sorted, while they are at
        most max_reply_items; past that ``-LIMIT`` (page with LOCKS.SCAN)."""
        require_args(req, 0, 1)
        prefix = req[1] if len(req) > 1 else b""
        limit = self.max_items
        svc = self.svc
        keys: list[bytes] = []
        cursor = 0
        while True:  # pages, so a huge state never becomes one huge list
            cursor, page = svc.scan_keys(prefix, cursor, 1000)
            keys += page
            if len(keys) > limit:
                raise LimitExceeded(f"more than {limit} keys under {prefix[:64]!r}: page with LOCKS.SCAN")
            if cursor == 0:
                break
        keys.sort()
        return resp.encode_array([resp.encode_bulk(k) for k in keys])

    # --- audit (coordcore.audit.wire) -----------------------------------------------------------

    def cmd_audit_checkpoint(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        from coordcore.audit import wire

        return wire.cmd_checkpoint(self.svc, conn, req)

    def cmd_audit_history(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        from coordcore.audit import wire

        return wire.cmd_history(self.svc, conn, req, self.max_items)

    def cmd_scan(self, conn: Client, req: list[bytes]) -> bytes:
        """``LOCKS.SCAN cursor [MATCH prefix] [COUNT n]`` -> ``[next cursor, [keys]]``, as
        Redis's SCAN: start at 0, stop when the next cursor is 0; a key in use throughout
        the scan comes back exactly once. MATCH is a key prefix (no glob)."""
        require_args(req, 1)
        cursor = parse_int(req[1], "cursor", 0, _U63)
        prefix, count = b"", min(DEFAULT_PAGE, self.max_items)
        rest = req[2:]
        if len(rest) % 2:
            raise BadArgument("options come in pairs: MATCH prefix, COUNT n")
        for word, value in zip(rest[::2], rest[1::2]):
            w = word.upper()
            if w == b"MATCH":
                if len(value) > MAX_KEY_SIZE:
                    raise BadArgument(f"MATCH prefix must be at most {MAX_KEY_SIZE} bytes")
                prefix = value
            elif w == b"COUNT":
                count = parse_int(value, "COUNT", 1, self.max_items)
            else:
                raise BadArgument(f"unexpected argument {word[:32]!r} (allowed: COUNT, MATCH)")
        nxt, keys = self.svc.scan_keys(prefix, cursor, count)
        return resp.encode_array([resp.encode_bulk(b"%d" % nxt),
                                  resp.encode_array([resp.encode_bulk(k) for k in keys])])

    def cmd_revision(self, conn: Client, req: list[bytes]) -> bytes:
        require_args(req, 0, 0)
        return resp.encode_int(self.svc.revision)

    # --- watches --------------------------------------------------------------------------------

    async def _forward(self, conn: Client, watch: Any) -> None:
        try:
            async for ev in watch:
                conn.push(encode_event(ev, conn.resp3))
        except WatchLagged as exc:
            push_watch_error(conn, f"{exc.code} {exc}")
            self.log.warning("watch lagged, closing connection", conn=conn.id, peer=conn.peer)
            conn.abort()
        except CoordcoreError:
            pass  # the service closed: the connection closes with the server

    # --- quota pools (coordcore.locks.pools) ------------------------------------------------

    def cmd_pool_define(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 2)
        pool, capacity = _key(req[1], "pool"), parse_int(req[2], "capacity", 1, 1_000_000)
        o = parse_options(req[3:], {b"GRACE": (0, _MAX_TIMEOUT_MS), b"PATIENCE": (1, 65535)})
        return _ok(self.svc.pools.define(pool, capacity, grace=o.get(b"GRACE", 5000) / 1000.0,
                                         patience=o.get(b"PATIENCE", 16)))

    def cmd_pool_tenant(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 2)
        pool, tenant = _key(req[1], "pool"), _tenant(req[2])
        o = parse_options(req[3:], {b"WEIGHT": (1, 1_000_000), b"MIN": (0, 1_000_000), b"MAX": (1, 1_000_000),
                             b"BAND": (0, 7)})
        return _ok(self.svc.pools.define_tenant(pool, tenant, weight=o.get(b"WEIGHT", 1), minimum=o.get(b"MIN", 0),
                                                maximum=o.get(b"MAX"), band=o.get(b"BAND", 0)))

    def cmd_pool_acquire(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 4)
        pool, sid, tenant = _key(req[1], "pool"), self._session(conn, req[2]), _tenant(req[3])
        units = parse_int(req[4], "units", 1, 1_000_000)
        o = parse_options(req[5:], {b"TIMEOUT": (0, _MAX_TIMEOUT_MS), b"REQID": _REQID})
        timeout = o[b"TIMEOUT"] / 1000.0 if b"TIMEOUT" in o else None
        rid = o.get(b"REQID", 0)
        svc = self.svc

        async def run() -> bytes:
            lease = await svc.pools.acquire(pool, units, sid, tenant=tenant, timeout=timeout, track=False,
                                            request_id=rid)
            return resp.encode_int(lease.token)

        return run()

    def cmd_pool_try(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 4)
        pool, sid, tenant = _key(req[1], "pool"), self._session(conn, req[2]), _tenant(req[3])
        units = parse_int(req[4], "units", 1, 1_000_000)
        rid = parse_options(req[5:], {b"REQID": _REQID}).get(b"REQID", 0)
        svc = self.svc

        async def run() -> bytes:
            try:
                lease = await svc.pools.acquire(pool, units, sid, tenant=tenant, timeout=0, track=False,
                                                request_id=rid)
            except LockTimeout:
                return resp.encode_null(conn.resp3)
            return resp.encode_int(lease.token)

        return run()

    def cmd_pool_release(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 3, 5)
        pool, sid = _key(req[1], "pool"), self._session(conn, req[2])
        rev = parse_int(req[3], "token", 1, _U63)
        rid = parse_options(req[4:], {b"REQID": _REQID}).get(b"REQID", 0)
        return self._submit(lambda b: b.cap_release(sid, pool, rev, request_id=rid), _ok_encoder(conn))

    def cmd_pool_resize(self, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        require_args(req, 4, 6)
        pool, sid = _key(req[1], "pool"), self._session(conn, req[2])
        token, units = parse_int(req[3], "token", 1, _U63), parse_int(req[4], "units", 1, 1_000_000)
        rid = parse_options(req[5:], {b"REQID": _REQID}).get(b"REQID", 0)
        mark = conn.mark_dirty

        def encode(result: Result) -> bytes:
            mark()
            if result.status in (Status.OK, Status.BUSY):
                return resp.encode_int(int(result.status == Status.OK))
            return _error_reply(result)

        return self._submit(lambda b: b.cap_resize(sid, pool, token, units, request_id=rid), encode)

    def cmd_pool_info(self, conn: Client, req: list[bytes]) -> bytes:
        """``POOL.INFO pool [SESSION id]``: with SESSION, only that session's leases and
        waits (what a client settles after an acquire it gave up)."""
        require_args(req, 1, 3)
        only = parse_options(req[2:], {b"SESSION": (1, _U63)}).get(b"SESSION")
        info = self.svc.pools.info(_key(req[1], "pool"))
        if info is None:
            return resp.encode_null(conn.resp3)
        if only is not None:
            info = info._replace(leases=tuple(x for x in info.leases if x.session == only),
                                 waits=tuple(x for x in info.waits if x.session == only))
        r3, lim = conn.resp3, self.max_items
        shares = info.shares()
        tenants = [resp.encode_map([(b"name", resp.encode_bulk(t.name)), (b"weight", resp.encode_int(t.weight)),
                                    (b"min", resp.encode_int(t.minimum)), (b"max", resp.encode_int(t.maximum)),
                                    (b"band", resp.encode_int(t.band)), (b"held", resp.encode_int(t.held)),
                                    (b"share", resp.encode_bulk(b"%.3f" % float(shares[t.name])))], r3)
                   for t in info.tenants[:lim]]
        leases = [resp.encode_map([(b"session", resp.encode_int(x.session)), (b"tenant", resp.encode_bulk(x.tenant)),
                                   (b"units", resp.encode_int(x.units)), (b"token", resp.encode_int(x.token)),
                                   (b"giveback_deadline_ms", resp.encode_int(x.giveback_deadline_ms))], r3)
                  for x in info.leases[:lim]]
        return resp.encode_map([
            (b"capacity", resp.encode_int(info.capacity)), (b"grace_ms", resp.encode_int(info.grace_ms)),
            (b"patience", resp.encode_int(info.patience)), (b"held", resp.encode_int(info.held)),
            (b"tenants", resp.encode_array(tenants)), (b"leases", resp.encode_array(leases)),
            (b"waiting", resp.encode_int(len(info.waits))),
            (b"waits", resp.encode_array([resp.encode_map([
                (b"session", resp.encode_int(x.session)), (b"tenant", resp.encode_bulk(x.tenant)),
                (b"units", resp.encode_int(x.units)), (b"ticket", resp.encode_int(x.ticket))], r3)
                for x in info.waits[:lim]])),
        ], r3)

    def cmd_watch(self, conn: Client, req: list[bytes]) -> bytes:
        require_args(req, 1, 1)
        prefix = req[1]
        if len(prefix) > MAX_KEY_SIZE:
            raise BadArgument(f"prefix must be at most {MAX_KEY_SIZE} bytes")
        watches = _state(conn).watches
        if prefix not in watches:
            watch = self.svc.watch(prefix)
            task = asyncio.ensure_future(self._forward(conn, watch))
            watches[prefix] = (watch, task)
            if len(watches) == 1:
                conn.on_close.append(lambda: _unwatch_all(conn))
        if not conn.resp3:
            conn.watch_mode(True)
        return resp.OK

    def cmd_unwatch(self, conn: Client, req: list[bytes]) -> bytes:
        require_args(req, 0, 1)
        watches = _state(conn).watches
        if len(req) == 1:
            _unwatch_all(conn)
        else:
            item = watches.pop(req[1], None)
            if item is not None:
                item[0].close()
                item[1].cancel()
        if not watches:
            conn.watch_mode(False)
        return resp.OK

    def cmd_subscribe(self, conn: Client, req: list[bytes]) -> bytes:
        """``SUBSCRIBE prefix``: WATCH in pub/sub's form, because redis-cli reads replies
        forever (and prints pushes) only after a command named SUBSCRIBE. One prefix: the
        ACL checks the first argument."""
        if len(req) != 2:
            raise BadArgument("SUBSCRIBE takes one prefix here (it is WATCH prefix in pub/sub's form)")
        self.cmd_watch(conn, [b"WATCH", req[1]])
        count = len(_state(conn).watches)
        return resp.encode_push([resp.encode_bulk(b"subscribe"), resp.encode_bulk(req[1]), resp.encode_int(count)],
                                conn.resp3)

    def cmd_unsubscribe(self, conn: Client, req: list[bytes]) -> bytes:
        """``UNSUBSCRIBE [prefix ...]``: UNWATCH, answered as pub/sub answers, per prefix."""
        watches = _state(conn).watches
        prefixes = req[1:] or list(watches)
        out = []
        for prefix in prefixes:
            self.cmd_unwatch(conn, [b"UNWATCH", prefix])
            out.append(resp.encode_push([resp.encode_bulk(b"unsubscribe"), resp.encode_bulk(prefix),
                                         resp.encode_int(len(watches))], conn.resp3))
        if not out:  # nothing watched: one reply all the same, as Redis
            conn.watch_mode(False)
            out.append(resp.encode_push([resp.encode_bulk(b"unsubscribe"), resp.encode_null(conn.resp3),
                                         resp.encode_int(0)], conn.resp3))
        return b"".join(out)


_HOT = Flag.HOT | Flag.WRITES
LockCommands.SPEC = {
    b"SESSION.OPEN": (LockCommands.cmd_session_open, Flag.WRITES),
    b"SESSION.KEEPALIVE": (LockCommands.cmd_session_keepalive, Flag.WRITES),
    b"SESSION.CLOSE": (LockCommands.cmd_session_close, Flag.WRITES),
    b"SESSION.INFO": (LockCommands.cmd_session_info, Flag.READS),
    b"LOCK.ACQUIRE": (LockCommands.cmd_lock_acquire, Flag.PARKS | _HOT),
    b"LOCK.TRY": (LockCommands.cmd_lock_try, Flag.WRITES),
    b"LOCK.RELEASE": (LockCommands.cmd_lock_release, _HOT),
    b"LOCK.CANCEL": (LockCommands.cmd_lock_cancel, Flag.WRITES),
    b"LOCK.INFO": (LockCommands.cmd_key_info, Flag.READS),
    b"SEM.ACQUIRE": (LockCommands.cmd_sem_acquire, Flag.PARKS | _HOT),
    b"SEM.TRY": (LockCommands.cmd_sem_try, Flag.WRITES),
    b"SEM.RELEASE": (LockCommands.cmd_sem_release, _HOT),
    b"SEM.INFO": (LockCommands.cmd_key_info, Flag.READS),
    b"ELECT.CAMPAIGN": (LockCommands.cmd_elect_campaign, Flag.PARKS | Flag.WRITES),
    b"ELECT.PROCLAIM": (LockCommands.cmd_elect_proclaim, Flag.WRITES),
    b"ELECT.RESIGN": (LockCommands.cmd_elect_resign, Flag.WRITES),
    b"ELECT.LEADER": (LockCommands.cmd_elect_leader, Flag.READS),
    b"LOCKS.KEYS": (LockCommands.cmd_keys, Flag.READS),
    b"LOCKS.SCAN": (LockCommands.cmd_scan, Flag.READS),
    b"LOCKS.REVISION": (LockCommands.cmd_revision, Flag.READS),
    b"AUDIT.CHECKPOINT": (LockCommands.cmd_audit_checkpoint, Flag.WRITES),
    b"AUDIT.HISTORY": (LockCommands.cmd_audit_history, Flag.READS),
    b"POOL.DEFINE": (LockCommands.cmd_pool_define, Flag.WRITES),
    b"POOL.TENANT": (LockCommands.cmd_pool_tenant, Flag.WRITES),
    b"POOL.ACQUIRE": (LockCommands.cmd_pool_acquire, Flag.PARKS | Flag.WRITES),
    b"POOL.TRY": (LockCommands.cmd_pool_try, Flag.WRITES),
    b"POOL.RELEASE": (LockCommands.cmd_pool_release, Flag.WRITES),
    b"POOL.RESIZE": (LockCommands.cmd_pool_resize, Flag.WRITES),
    b"POOL.INFO": (LockCommands.cmd_pool_info, Flag.READS),
    b"WATCH": (LockCommands.cmd_watch, Flag.WATCH),
    b"UNWATCH": (LockCommands.cmd_unwatch, Flag.WATCH),
    b"SUBSCRIBE": (LockCommands.cmd_subscribe, Flag.WATCH),
    b"UNSUBSCRIBE": (LockCommands.cmd_unsubscribe, Flag.WATCH),
}


def pools_info(svc: LockService) -> list[str]:
    """INFO's ``Pools`` section: every pool together (no per-pool lines: bounded)."""
    t = svc.pools.totals()
    return [f"pools:{t.pools}", f"capacity_total:{t.capacity}", f"units_held:{t.held}",
            f"requests_waiting:{t.waiting}", f"preemptions:{t.preemptions}", f"revocations:{t.revocations}"]


def push_watch_error(conn: Client, error: str) -> None:
    """Tell a watching client that a watch ended: ``["watch-error", "CODE message"]``."""
    conn.push(resp.encode_push([resp.encode_bulk(b"watch-error"), resp.encode_bulk(error.encode())], conn.resp3))


def end_denied_watches(conn: Client, denied: Callable[[list[bytes]], str | None]) -> int:
    """After the connection's user got new rights (an ACL reload): end each watch the
    user may no longer hold, with a ``watch-error`` push naming why; how many ended."""
    state = conn.lock_state
    if state is None:
        return 0
    watches = _state(conn).watches
    ended = 0
    for prefix in list(watches):
        why = denied([b"WATCH", prefix])
        if why is None:
            continue
        watch, task = watches.pop(prefix)
        watch.close()
        task.cancel()
        push_watch_error(conn, f"{NoPermission.code} {why}")
        ended += 1
    if ended and not watches:
        conn.watch_mode(False)
    return ended


def _unwatch_all(conn: Client) -> None:
    watches = _state(conn).watches
    for watch, task in watches.values():
        watch.close()
        task.cancel()
    watches.clear()
