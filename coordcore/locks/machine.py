"""The deterministic lock state machine: batch records in, results and events out.

:class:`LockMachine` is a compiled (Cython) state machine. It never reads a clock and
never does I/O: each *batch record* it applies carries the time chosen by whoever
appended it, so replaying the same records from an empty machine always gives the
same state, byte for byte (:meth:`LockMachine.snapshot`). The durable log stores
these records, the service builds them with :class:`BatchBuilder`, and (later) etcd
replicates them. This module is the contract between those layers.

Contract
========

State
-----
* **Sessions**: id (from a counter starting at 1, never reused), TTL, deadline, and the
  digest of its opener's credential (:data:`CREDENTIAL_DIGEST_SIZE` bytes, carried by
  OPEN; the machine never sees the credential itself, and checks nothing with it: the
  service that accepts commands compares a caller's credential with
  :meth:`LockMachine.credential_matches` before it queues the command, which is sound
  because session ids are never reused). A session opened or kept alive at batch
  time ``t`` has deadline ``t + ttl``. It *expires* at the start of the first batch
  whose time is ``>= deadline``.
* **Keys**: at most :data:`MAX_KEY_SIZE` bytes, non-empty, any bytes (``str`` is
  encoded as UTF-8). One key namespace: a key is a *lock*, a *semaphore* or an
  *election* (its :class:`Kind`) from its first contender until its last one leaves
  (then it no longer exists). Using a key as another kind gives ``WRONGTYPE``.
* **Contenders**: every acquire or campaign that is granted or waits creates a
  contender with a **ticket** (the revision at which it arrived); when granted it gets
  a **token** (the revision at the grant: the fencing token). A contender granted at
  once has ``token == ticket``. Holders are kept in token order, waiters in FIFO
  (ticket) order. A session may hold several contenders on one semaphore key, and
  several *shared* ones on one lock key, but at most one per election, and (format
  version 3) no second one on a lock key if either claim is exclusive: that acquire
  would wait for the session itself forever, so it is refused at once with ``HELD``
  (detail ``HELD``, or ``UPGRADE`` when the session holds the lock shared and asks for
  it exclusively: there is no upgrade; release, then acquire). Reentrant locks are a
  client-side count over one grant. Version 2 records keep version 2's rule (the
  second claim queues), so old logs replay as they were written.
* **Revision**: one counter; every event gets the next revision, so events form a
  gap-free sequence ``1, 2, 3, ...``. Tokens and tickets are revisions: strictly
  increasing, never reused, preserved by snapshots. Keep-alives do not change the
  revision (they only move a deadline; etcd does the same with lease refreshes).

Granting (in FIFO order, writers are never starved)
---------------------------------------------------
* lock: an exclusive contender is granted when there are no holders; a shared one when
  there are no holders or only shared holders. An acquire is granted at once only
  if nobody waits, so a waiting writer blocks readers that come after it.
* semaphore: ``permits`` is fixed by the first acquire on the key; granted when
  fewer than ``permits`` contenders hold. A different ``permits`` later is ``BADARG``.
* election: the single holder is the **leader** with the value it campaigned with
  (or last proclaimed); candidates wait in FIFO order for succession.
* An acquire or campaign with ``wait=False`` that cannot be granted at once returns
  ``BUSY`` and changes nothing; with ``wait=True`` it returns ``WAITING`` with its
  ticket, and the grant arrives later as a ``GRANT`` event carrying that ticket.
* **Wait deadlines**: an acquire or campaign that waits with ``timeout_ms`` (format
  version 2) has the wait deadline ``t + timeout_ms``; at the start of the first batch
  whose time is ``>= deadline`` it is withdrawn (a ``CANCEL`` event), so a TIMEOUT
  survives restarts and replays. A grant ends the wait (and its deadline).
* **Detached waiters**: ``DETACH grace_ms`` (a service says it when it starts, since
  no waiter has a connection any more) gives every waiting contender at most
  ``grace_ms`` more: then it is withdrawn, and if it was granted meanwhile, released
  (nobody would know it holds). Its client *re-attaches* it by retrying the acquire
  with the same request id, which answers where it stands now: granted (``OK`` with
  its token), still waiting (``WAITING``; the retry's ``timeout_ms`` counts from now)
  or gone (``NOTFOUND``, detail ``WAIT_ENDED``).

Commands (:class:`Op`; build them with :class:`BatchBuilder`)
-------------------------------------------------------------
============== ===================================== =========================================
op             arguments                             success result (``value``, ``aux``)
============== ===================================== =========================================
OPEN           ttl_ms, credential digest (value)     session id, deadline
KEEPALIVE      session                               deadline, deadline
CLOSE          session                               0, 0 (releases everything the session has)
ACQUIRE        session, key, shared, wait, value     token, ticket (or WAITING: 0, ticket)
RELEASE        session, key, token (0: oldest hold)  token, ticket
SEM_ACQUIRE    session, key, permits, wait, value    token, ticket (or WAITING: 0, ticket)
SEM_RELEASE    session, key, token (0: oldest hold)  token, ticket
CAMPAIGN       session, key, value, wait             token, ticket (or WAITING: 0, ticket)
PROCLAIM       session, key, token (0: mine), value  revision of the proclaim, token
RESIGN         session, key, token (0: mine)         token, ticket
CANCEL         session, key, ticket                  token if it held (now released) else 0, ticket
DETACH         grace_ms (no session)                 how many waiters it detached, 0
============== ===================================== =========================================

ACQUIRE, SEM_ACQUIRE and CAMPAIGN carry their wait timeout (ms, 0: none) in the high
32 bits of ``arg``; the low 32 bits hold the semaphore's permits (SEM_ACQUIRE) or 0.

``CANCEL`` withdraws a contender whatever its state: a waiter is removed (``CANCEL``
event), a holder is released (``RELEASE`` event). A service cancels a timed-out
acquire with it; if the grant won the race, the result tells (``value != 0``).

Every command except OPEN names a session; if it does not exist (never opened,
closed, expired) the result is ``NOSESSION``.

Idempotence: a command with a non-zero ``request_id`` (ACQUIRE, RELEASE, SEM_*, CAP_*,
CAMPAIGN, PROCLAIM, RESIGN, CANCEL) is remembered in a per-session table of the
:data:`REQUEST_WINDOW` most recent request ids. A retry with the same
``(session, request_id)`` returns the original result with ``duplicate`` set and
changes nothing (no event), except that a retried acquire that first answered
``WAITING`` re-attaches (see "Detached waiters"); a retried CAP_ACQUIRE that first
answered ``WAITING`` answers where that request stands now (``OK`` with its token,
``WAITING``, or ``NOTFOUND``/``WAIT_ENDED``) and changes nothing (its wait keeps the
first deadline), except that a detached pool wait is re-attached (see "Detached pool
waits"). Clients must not reuse a request id on a session, and must
not retry a request after issuing :data:`REQUEST_WINDOW` newer ones on that session.
OPEN, KEEPALIVE and CLOSE are not remembered: a repeated KEEPALIVE is harmless, a
repeated CLOSE answers ``NOSESSION``, a repeated OPEN opens another session (an
orphan expires after its TTL).

Results (:class:`Result`)
-------------------------
One per command, in order: ``status`` (:class:`Status`: ``OK``, ``WAITING``,
``BUSY`` or an error), ``value``, ``aux`` (see the table), ``detail`` (why, for
errors), ``duplicate``. Error statuses map to the classes of :mod:`coordcore.errors`
through their code words (:func:`status_code`, :meth:`Result.exception`): ``NOSESSION``
-> :class:`~coordcore.errors.SessionExpired`, ``NOTHOLDER`` ->
:class:`~coordcore.errors.NotLockHolder`, ``CONFLICT``, ``NOTLEADER``, ``BADARG``,
``WRONGTYPE``, ``NOTFOUND``; ``BUSY`` maps to ``TIMEOUT``
(:class:`~coordcore.errors.LockTimeout`, a try is a zero timeout). A command that
fails changes nothing.

Events (:class:`Event`)
-----------------------
Every state change is one event with its own revision: ``OPEN``, ``CLOSE``,
``EXPIRE`` (session events, empty key), ``WAIT`` (a contender queued), ``GRANT`` (a
contender now holds: token = revision; for an election, a new leader and its value),
``RELEASE`` (a holder left: release, resign, cancel, close or expiry), ``CANCEL`` (a
waiter left), ``PROCLAIM`` (the leader's new value). When a session ends, its
``CLOSE``/``EXPIRE`` event comes first, then one ``RELEASE``/``CANCEL`` per contender
in ticket order, then the grants this made possible. A ``watch(prefix)`` is a filter
on this stream.

Time
----
A batch's timestamp is the appender's clock in ms. If it is earlier than the last
applied batch's time, the batch is applied at the last time (time never goes back
inside the machine). Expiry happens at the start of a batch, before its commands:
every session with ``deadline <= time``, in (deadline, session id) order; the
sessions' contenders are removed first, then waiters are granted, so no grant goes
to a session expiring in the same batch. An empty batch is a *tick*.

Batch record (format version 3, little-endian)
----------------------------------------------
::

    header  20 bytes: magic b"CCLB", u8 version (3), u8 flags (0), u16 reserved (0),
                      u64 time_ms, u32 command count
    command 32 bytes + key + value:
            u8 op, u8 flags (bit 0 SHARED, bit 1 WAIT), u16 key length,
            u32 value length, u64 session, u64 request id,
            u64 arg (ttl_ms | token | timeout_ms << 32 | permits | ticket | grace_ms),
            key bytes, value bytes

Version 2 records (written before the ``HELD`` rule) are still applied with
version 2's rules, which differ only in that rule: it is the same layout. Version 1
records (written before session credentials and wait deadlines) are still applied,
with version 1's rules: OPEN takes no value (such a session has no
credential, so no caller can use it: it expires), an acquire's ``arg`` must be 0 (a
semaphore's is its permits), there is no DETACH and a retry never re-attaches.

The record must be consumed exactly. A record that is structurally malformed (bad
magic or version, reserved bits set, a time beyond :data:`MAX_TIME_MS`, truncated,
trailing bytes, unknown op, unknown flag bits, more than :data:`MAX_BATCH_COMMANDS`) raises :class:`~coordcore.errors.BadArgument` (or
:class:`~coordcore.errors.UnknownCommand`) *before anything is applied*. Arguments
out of range inside a well-formed record (bad TTL, key too long, ...) give a
``BADARG`` result for that command only. :class:`BatchBuilder` refuses all of these
up front with :class:`~coordcore.errors.BadArgument` or
:class:`~coordcore.errors.WrongType`.

Quota pools (format version 4)
------------------------------
The rules (grant order, starvation bound, preemption) are in :mod:`coordcore.locks.pools`
and, executable, in tests/models/pool_model.py. A record that carries one of these
commands has format version 4 (the same layout; :class:`BatchBuilder` and the server's
assembler write 4 only then, so a log without pools is byte-identical to version 3's):

============== ============================================== =============================
op             arguments                                      success (``value``, ``aux``)
============== ============================================== =============================
POOL_SET       key pool, arg capacity, value u32 grace_ms,    capacity, revision
               u32 patience (session 0)
TENANT_SET     key pool, value u32 weight, u32 minimum,       weight, revision
               u32 maximum, u8 band, 3 zero bytes, tenant
               name (session 0)
CAP_ACQUIRE    session, key pool, value tenant, arg           token, ticket (or WAITING:
               timeout_ms << 32 | units, flag WAIT            0, ticket; BUSY for a try)
CAP_RELEASE    session, key pool, arg token (or a waiting     token or ticket, units
               request's ticket: withdraws it)
CAP_RESIZE     session, key pool, arg token, value u32 units  token, units (BUSY: a grow
                                                              that would pass a waiter)
============== ============================================== =============================

Errors: ``NOTFOUND`` (details ``NO_SUCH_POOL``, ``NO_SUCH_TENANT``), ``BADARG``
(``PERMITS``: more units than the tenant may hold, ``value`` its limit; ``MINIMUMS``:
the guaranteed minimums would exceed the capacity), ``CONFLICT`` (``OVER``: a new
capacity or maximum below what is held now), ``NOTHOLDER``. Events carry the pool as
key, the tenant as value and mode ``POOL``: ``WAIT``, ``GRANT``, ``RELEASE``,
``CANCEL`` (a wait withdrawn: timeout, release, session end, a request the new limits
can never grant), ``GIVEBACK`` (a lease asked to give its units back by batch time +
grace) and ``REVOKE`` (a lease still held at that deadline, taken at the first batch at
or after it). A session's pool leases and waits end with it, after its locks, in
ticket order. Snapshots of a machine with pools are version 3 (version 2 plus a pool
section); without pools they stay version 2, byte for byte.

Detached pool waits (format version 5): ``DETACH grace_ms`` with flag ``WAIT`` (only in
a version 5 record; :class:`BatchBuilder` writes 5 only for it) detaches the pool waits
too, as it does lock waiters: each gets at most ``grace_ms`` more, then is withdrawn
(``CANCEL``) unless its client re-attaches by retrying its CAP_ACQUIRE with the same
request id (the wait then has the retry's ``timeout_ms`` from now). One granted before
that stays a lease (its client learns the token on the retry). A DETACH without the
flag, as every record before version 5, leaves pool waits alone. A detached wait is
marked in the snapshot's wait record (its last u32, 0 before).

Snapshot (version 2; version 1 is still read)
---------------------------------------------
``snapshot()`` is deterministic: sessions sorted by id, keys sorted by bytes,
holders in token order and waiters in ticket order, each session's request table
oldest first, then a CRC-32C of everything before it. ``restore()`` (or
:meth:`LockMachine.from_snapshot`) validates it whole before replacing anything and
raises :class:`~coordcore.errors.LogCorrupted` when it is damaged, including a checksum
that matches fields no machine could have written (a revision or session counter above
``2**62``, a contender of session 0, ...).

Example
-------
>>> b = BatchBuilder()
>>> b.open_session(ttl_ms=10_000)
0
>>> len(b), len(b.build(time_ms=1_000)) == BATCH_HEADER_SIZE + COMMAND_HEADER_SIZE
(1, True)
>>> decode_batch(b.build(time_ms=1_000))[1][0].op == Op.OPEN
True
"""
from __future__ import annotations

import operator
import struct
from typing import NamedTuple

from coordcore.errors import BadArgument, CoordcoreError, UnknownCommand, WrongType, error_for_code
from coordcore.locks.pools import PoolInfo

try:
    from coordcore._native import lockmachine as _lm
except ImportError:  # pragma: no cover - a broken installation
    from coordcore._native import require

    require("lockmachine")
    raise

__all__ = [
    "BATCH_FORMAT_VERSION",
    "POOL_BATCH_FORMAT_VERSION",
    "POOL_DETACH_BATCH_FORMAT_VERSION",
    "BATCH_HEADER_SIZE",
    "COMMAND_HEADER_SIZE",
    "CREDENTIAL_DIGEST_SIZE",
    "MAX_TIMEOUT_MS",
    "MAX_BATCH_COMMANDS",
    "MAX_KEY_SIZE",
    "MAX_PERMITS",
    "MAX_TIME_MS",
    "MAX_TTL_MS",
    "MAX_VALUE_SIZE",
    "MIN_TTL_MS",
    "REQUEST_WINDOW",
    "Applied",
    "BatchBuilder",
    "Command",
    "Contender",
    "Detail",
    "Event",
    "EventKind",
    "KeyInfo",
    "Kind",
    "LockMachine",
    "Mode",
    "Op",
    "Result",
    "SessionInfo",
    "Status",
    "Timings",
    "decode_batch",
    "decode_events",
    "decode_results",
    "status_code",
    "tick",
]

# The constants and enums of the contract come from the compiled machine, which declares
# the formats once (coordcore/_native/lockformat.pxd); this module documents them.

#: Version of the batch record format written by :class:`BatchBuilder` (1 is still read).
BATCH_FORMAT_VERSION: int = _lm.BATCH_FORMAT_VERSION
POOL_BATCH_FORMAT_VERSION: int = _lm.POOL_BATCH_FORMAT_VERSION  # a record with pool commands
#: A record with a DETACH of pool waiters (``detach(grace_ms, pools=True)``).
POOL_DETACH_BATCH_FORMAT_VERSION: int = _lm.POOL_DETACH_BATCH_FORMAT_VERSION
#: Size of a session credential's digest (SHA-256) carried by OPEN.
CREDENTIAL_DIGEST_SIZE: int = _lm.CREDENTIAL_DIGEST_SIZE
BATCH_MAGIC: bytes = _lm.BATCH_MAGIC
#: Size of a batch record's header, and of each command's fixed part.
BATCH_HEADER_SIZE: int = _lm.BATCH_HEADER_SIZE
COMMAND_HEADER_SIZE: int = _lm.COMMAND_HEADER_SIZE
#: Largest key, in bytes (after UTF-8 encoding of a ``str``).
MAX_KEY_SIZE: int = _lm.MAX_KEY_SIZE
#: Largest value (election value, contender label), in bytes.
MAX_VALUE_SIZE: int = _lm.MAX_VALUE_SIZE
#: Bounds of a session TTL, in ms (1 ms .. 30 days).
MIN_TTL_MS: int = _lm.MIN_TTL_MS
MAX_TTL_MS: int = _lm.MAX_TTL_MS
#: Largest semaphore size.
MAX_PERMITS: int = _lm.MAX_PERMITS
#: Longest wait timeout and detach grace, in ms (as a TTL: 30 days).
MAX_TIMEOUT_MS: int = _lm.MAX_TIMEOUT_MS
#: Largest batch timestamp (ms); deadlines stay far from 64-bit overflow.
MAX_TIME_MS: int = _lm.MAX_TIME_MS
#: Most commands in one batch record.
MAX_BATCH_COMMANDS: int = _lm.MAX_BATCH_COMMANDS
#: How many recent request ids each session remembers for idempotent retries.
REQUEST_WINDOW: int = _lm.REQUEST_WINDOW

_U64 = 2**64 - 1
_U32 = 2**32 - 1


def _prefix(prefix: object) -> bytes:
    if isinstance(prefix, str):
        return prefix.encode()
    if isinstance(prefix, (bytes, bytearray, memoryview)):
        return bytes(prefix)
    # bytes(n) of an int would be n zero bytes (a MemoryError for a large n)
    raise WrongType(f"prefix must be str or bytes, not {type(prefix).__name__}")


#: Command codes of the batch record (stable: they are stored in logs).
Op = _lm.Op
#: Command flag bits.
FLAG_SHARED: int = _lm.FLAG_SHARED
FLAG_WAIT: int = _lm.FLAG_WAIT
#: Result status of a command (stable numbers, stored in snapshots).
Status = _lm.Status
#: Why a command failed (``Result.detail``); 0 when it did not.
Detail = _lm.Detail
#: What a key is, from its first contender to its last.
Kind = _lm.Kind
#: How a contender holds or waits (``NONE`` for session events).
Mode = _lm.Mode
#: What an :class:`Event` reports.
EventKind = _lm.EventKind


_STATUS_CODES: dict[int, str] = {
    Status.BUSY: "TIMEOUT",
    Status.NOSESSION: "NOSESSION",
    Status.NOTHOLDER: "NOTHOLDER",
    Status.CONFLICT: "CONFLICT",
    Status.NOTLEADER: "NOTLEADER",
    Status.BADARG: "BADARG",
    Status.WRONGTYPE: "WRONGTYPE",
    Status.NOTFOUND: "NOTFOUND",
    Status.HELD: "HELD",
}

_DETAIL_TEXT: dict[int, str] = {
    Detail.NONE: "",
    Detail.FLAGS: "a flag this command does not take",
    Detail.KEY: f"key must be 1..{MAX_KEY_SIZE} bytes (and only for commands that take a key)",
    Detail.VALUE: f"value must be at most {MAX_VALUE_SIZE} bytes (and only for commands that take one)",
    Detail.TTL: f"ttl_ms must be in [{MIN_TTL_MS}, {MAX_TTL_MS}]",
    Detail.PERMITS: f"permits must be in [1, {MAX_PERMITS}]",
    Detail.PERMITS_MISMATCH: "the semaphore exists with another number of permits",
    Detail.SESSION: "session id must be non-zero (and zero for OPEN)",
    Detail.ARG: "an argument this command does not take, or ticket 0",
    Detail.NO_SUCH_SESSION: "no such session (never opened, closed or expired)",
    Detail.NO_SUCH_HOLD: "the session holds nothing with that token on this key",
    Detail.NOT_LEADER: "the session is not this election's leader (with that token)",
    Detail.NO_SUCH_CONTENDER: "the session has no contender with that ticket on this key",
    Detail.ALREADY_CANDIDATE: "the session already campaigns in or leads this election",
    Detail.KIND: "the key is in use as another kind",
    Detail.TIMEOUT: f"a wait timeout must be in [0, {MAX_TIMEOUT_MS}] ms, and only with wait",
    Detail.WAIT_ENDED: "the wait of this request ended before the retry (timed out, withdrawn or released)",
    Detail.HELD: "this session already holds or waits for this lock, and one of the two claims is exclusive",
    Detail.UPGRADE: "this session holds this lock shared: an upgrade to exclusive is refused (release first)",
    Detail.NO_SUCH_POOL: "no such pool",
    Detail.NO_SUCH_TENANT: "no such tenant in this pool",
    Detail.OVER: "more units are held than the new capacity or maximum allows",
    Detail.MINIMUMS: "the tenants' guaranteed minimums would exceed the pool's capacity",
}


def status_code(status: int) -> str | None:
    """The wire code word of an error status (``None`` for OK and WAITING).

    >>> status_code(Status.NOSESSION), status_code(Status.BUSY), status_code(Status.OK)
    ('NOSESSION', 'TIMEOUT', None)
    """
    return _STATUS_CODES.get(status)


class Result(NamedTuple):
    """The outcome of one command. See the module docstring for ``value``/``aux`` per op."""

    op: int
    status: int
    detail: int
    flags: int
    value: int
    aux: int

    @property
    def ok(self) -> bool:
        """Granted / done (not waiting, not busy, no error)."""
        return self.status == Status.OK

    @property
    def waiting(self) -> bool:
        """Queued: the grant will come as a GRANT event with :attr:`ticket`."""
        return self.status == Status.WAITING

    @property
    def duplicate(self) -> bool:
        """A retry answered from the request table; nothing changed."""
        return bool(self.flags & 1)

    @property
    def token(self) -> int:
        """Fencing token of a grant (ACQUIRE, SEM_ACQUIRE, CAMPAIGN, RELEASE...); 0 if none."""
        if self.op in (Op.OPEN, Op.KEEPALIVE, Op.CLOSE, Op.DETACH, Op.POOL_SET, Op.TENANT_SET):
            return 0
        if self.op == Op.PROCLAIM:
            return self.aux if self.status == Status.OK else 0
        return self.value if self.status == Status.OK else 0

    @property
    def ticket(self) -> int:
        """The contender's ticket (identity while waiting, argument of CANCEL)."""
        if self.op in (Op.OPEN, Op.KEEPALIVE, Op.CLOSE, Op.PROCLAIM, Op.DETACH, Op.POOL_SET, Op.TENANT_SET,
                       Op.CAP_RELEASE, Op.CAP_RESIZE):
            return 0
        return self.aux if self.status in (Status.OK, Status.WAITING) else 0

    @property
    def session_id(self) -> int:
        """The new session's id (OPEN)."""
        return self.value if self.op == Op.OPEN and self.status == Status.OK else 0

    @property
    def deadline_ms(self) -> int:
        """The session's new deadline (OPEN, KEEPALIVE)."""
        ok = self.status == Status.OK and self.op in (Op.OPEN, Op.KEEPALIVE)
        return self.aux if ok else 0

    @property
    def code(self) -> str | None:
        """The error code word (``"NOSESSION"``...), ``"TIMEOUT"`` for BUSY, else None."""
        return _STATUS_CODES.get(self.status)

    @property
    def message(self) -> str:
        """A human sentence for an error result ('' for success)."""
        if self.status in (Status.OK, Status.WAITING):
            return ""
        name = Op(self.op).name if self.op in Op._value2member_map_ else str(self.op)
        if self.status == Status.BUSY:
            return f"{name}: not granted at once (held or contended) and wait=False"
        text = _DETAIL_TEXT.get(self.detail, "")
        if self.detail == Detail.PERMITS_MISMATCH:
            text += f" ({self.value})"
        elif self.detail == Detail.KIND and self.value in Kind._value2member_map_:
            text += f" ({Kind(self.value).name.lower()})"
        return f"{name}: {text}" if text else name

    def exception(self) -> CoordcoreError | None:
        """The exception this result stands for (None for OK and WAITING)."""
        code = _STATUS_CODES.get(self.status)
        if code is None:
            return None
        return error_for_code(code)(self.message)

    def unwrap(self) -> Result:
        """Return self if OK or WAITING, else raise :meth:`exception`."""
        exc = self.exception()
        if exc is not None:
            raise exc
        return self


class Event(NamedTuple):
    """One state change, at its own revision. ``key`` and ``value`` are bytes."""

    revision: int
    kind: int
    mode: int
    session: int
    ticket: int
    token: int
    key: bytes
    value: bytes


class Applied(NamedTuple):
    """What :meth:`LockMachine.apply` returns."""

    results: list[Result]
    events: list[Event]


class Contender(NamedTuple):
    """A holder (``token != 0``) or waiter of a key."""

    session: int
    ticket: int
    token: int
    mode: int
    value: bytes

    @property
    def holding(self) -> bool:
        return self.token != 0


class KeyInfo(NamedTuple):
    """A key's kind, size (semaphores), holders (token order) and waiters (FIFO)."""

    key: bytes
    kind: int
    permits: int
    holders: tuple[Contender, ...]
    waiters: tuple[Contender, ...]
    #: All of them (``holders``/``waiters`` may be the first page).
    holder_count: int = 0
    waiter_count: int = 0


class SessionInfo(NamedTuple):
    """A live session and the contenders it owns (ticket order) as (key, Contender)."""

    session_id: int
    ttl_ms: int
    deadline_ms: int
    contenders: tuple[tuple[bytes, Contender], ...]
    #: All its contenders (``contenders`` may be one page of them).
    contender_count: int = 0


class Timings(NamedTuple):
    """How long contenders waited and held (:meth:`LockMachine.timings`), by kind:
    "exclusive", "shared" (locks), "semaphore", "election", "pool". Each kind maps to
    ``(counts, sum_ms)``: counts per bucket, not cumulative, one per bound in
    ``bounds_ms`` (a time falls in the first bucket whose bound is >= it) and one more
    for times above the last bound."""

    bounds_ms: list[int]
    waits: dict[str, tuple[list[int], int]]
    holds: dict[str, tuple[list[int], int]]


class Command(NamedTuple):
    """One decoded command of a batch record (:func:`decode_batch`)."""

    op: int
    flags: int
    session: int
    request_id: int
    arg: int
    key: bytes
    value: bytes


# --- encoding ----------------------------------------------------------------------

# The Python encoder's view of the layouts (lockformat.pxd has the fields): checked
# against the native sizes at import.
_HEADER = struct.Struct("<4sBBHQI")
_CMD = struct.Struct("<BBHIQQQ")
RESULT_SIZE: int = _lm.RESULT_SIZE
EVENT_HEADER_SIZE: int = _lm.EVENT_HEADER_SIZE
if (_HEADER.size, _CMD.size) != (BATCH_HEADER_SIZE, COMMAND_HEADER_SIZE):  # pragma: no cover - a broken build
    raise ImportError("coordcore.locks.machine's batch layout differs from the compiled machine's")


def _int(name: str, value: object, lo: int, hi: int) -> int:
    if type(value) is not int:
        if isinstance(value, bool) or not hasattr(type(value), "__index__"):
            raise WrongType(f"{name} must be an int, not {type(value).__name__}")
        value = operator.index(value)  # type: ignore[arg-type]
    if not lo <= value <= hi:
        raise BadArgument(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _key(key: object) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    elif isinstance(key, (bytearray, memoryview)):
        key = bytes(key)
    elif not isinstance(key, bytes):
        raise WrongType(f"key must be str or bytes, not {type(key).__name__}")
    if not 0 < len(key) <= MAX_KEY_SIZE:
        raise BadArgument(f"key must be 1..{MAX_KEY_SIZE} bytes, got {len(key)}")
    return key


def _value(value: object) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    elif isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    elif not isinstance(value, bytes):
        raise WrongType(f"value must be str or bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE_SIZE:
        raise BadArgument(f"value must be at most {MAX_VALUE_SIZE} bytes, got {len(value)}")
    return value


def _sid(session: object) -> int:
    if type(session) is int and 0 < session <= _U64:
        return session
    return _int("session", session, 1, _U64)


def _u64(name: str, value: object) -> int:
    if type(value) is int and 0 <= value <= _U64:
        return value
    return _int(name, value, 0, _U64)


def _k(key: object) -> bytes:
    if type(key) is bytes:
        if 0 < len(key) <= MAX_KEY_SIZE:
            return key
    elif type(key) is str:
        b = key.encode()
        if 0 < len(b) <= MAX_KEY_SIZE:
            return b
    return _key(key)


def _v(value: object) -> bytes:
    if type(value) is bytes and len(value) <= MAX_VALUE_SIZE:
        return value
    return _value(value)


_pack_cmd = _CMD.pack


class BatchBuilder:
    """Builds one batch record, validating every argument before writing a byte.

    Each method appends one command and returns its index in the batch (the index of
    its :class:`Result`). Configure once, reuse: :meth:`build` returns the record and
    :meth:`clear` empties the builder for the next batch.

    >>> b = BatchBuilder()
    >>> b.acquire(1, "jobs/42", request_id=7), b.release(1, "jobs/42", token=3)
    (0, 1)
    >>> b.acquire(1, "x" * 2000)
    Traceback (most recent call last):
    ...
    coordcore.errors.BadArgument: key must be 1..1024 bytes, got 2000
    >>> b.open_session(ttl_ms=-5)
    Traceback (most recent call last):
    ...
    coordcore.errors.BadArgument: ttl_ms must be in [1, 2592000000], got -5
    >>> len(b)
    2
    """

    __slots__ = ("_buf", "_count", "_pools", "_detach_pools")

    def __init__(self) -> None:
        self._buf = bytearray(BATCH_HEADER_SIZE)
        self._count = 0
        self._pools = False  # a pool command makes the record format version 4
        self._detach_pools = False  # a DETACH of pool waits makes it version 5

    def __len__(self) -> int:
        return self._count

    def clear(self) -> None:
        """Forget every command (keeps the buffer for reuse)."""
        del self._buf[BATCH_HEADER_SIZE:]
        self._count = 0
        self._pools = False
        self._detach_pools = False

    def build(self, time_ms: int) -> bytes:
        """The batch record stamped with ``time_ms`` (the appender's clock, in ms)."""
        t = _int("time_ms", time_ms, 0, MAX_TIME_MS)
        version = POOL_DETACH_BATCH_FORMAT_VERSION if self._detach_pools \
            else POOL_BATCH_FORMAT_VERSION if self._pools else BATCH_FORMAT_VERSION
        _HEADER.pack_into(self._buf, 0, BATCH_MAGIC, version, 0, 0, t, self._count)
        return bytes(self._buf)

    def _add(self, op: int, flags: int, session: int, request_id: int, arg: int,
             key: bytes, value: bytes) -> int:
        # Callers validated every argument; this only writes.
        count = self._count
        if count >= MAX_BATCH_COMMANDS:
            raise BadArgument(f"a batch holds at most {MAX_BATCH_COMMANDS} commands")
        buf = self._buf
        buf += _pack_cmd(op, flags, len(key), len(value), session, request_id, arg)
        if key:
            buf += key
        if value:
            buf += value
        self._count = count + 1
        return count

    def add(self, command: Command) -> int:
        """Append a decoded :class:`Command` (validated like the named methods)."""
        op = command.op
        shared = bool(command.flags & FLAG_SHARED)
        wait = bool(command.flags & FLAG_WAIT)
        if command.flags & ~(FLAG_SHARED | FLAG_WAIT):
            raise BadArgument(f"unknown command flags {command.flags:#x}")
        s, r, a, k, v = command.session, command.request_id, command.arg, command.key, command.value
        timeout = a >> 32 if op in (Op.ACQUIRE, Op.SEM_ACQUIRE, Op.CAMPAIGN) else 0
        low = a & 0xFFFFFFFF
        if op == Op.OPEN:
            return self.open_session(a, digest=v)
        if op == Op.KEEPALIVE:
            return self.keepalive(s)
        if op == Op.CLOSE:
            return self.close_session(s)
        if op == Op.ACQUIRE:
            if low:
                raise BadArgument("an ACQUIRE's arg holds only its timeout")
            return self.acquire(s, k, shared=shared, wait=wait, request_id=r, value=v, timeout_ms=timeout)
        if op == Op.RELEASE:
            return self.release(s, k, a, request_id=r)
        if op == Op.SEM_ACQUIRE:
            return self.sem_acquire(s, k, low, wait=wait, request_id=r, value=v, timeout_ms=timeout)
        if op == Op.SEM_RELEASE:
            return self.sem_release(s, k, a, request_id=r)
        if op == Op.CAMPAIGN:
            if low:
                raise BadArgument("a CAMPAIGN's arg holds only its timeout")
            return self.campaign(s, k, v, wait=wait, request_id=r, timeout_ms=timeout)
        if op == Op.PROCLAIM:
            return self.proclaim(s, k, v, a, request_id=r)
        if op == Op.RESIGN:
            return self.resign(s, k, a, request_id=r)
        if op == Op.CANCEL:
            return self.cancel(s, k, a, request_id=r)
        if op == Op.DETACH:
            return self.detach(a, pools=bool(command.flags & FLAG_WAIT))
        if Op.POOL_SET <= op <= Op.CAP_RESIZE:
            return self._pool_command(op, command.flags, s, r, a, k, v)
        raise UnknownCommand(f"unknown lock machine command {op!r}")

    def open_session(self, ttl_ms: int, *, digest: bytes = b"") -> int:
        """Open a session with a TTL in ms; its id comes back in ``Result.session_id``.
        ``digest`` is the SHA-256 of its opener's credential (empty: a session no caller
        of a server can use)."""
        ttl = _int("ttl_ms", ttl_ms, MIN_TTL_MS, MAX_TTL_MS)
        if type(digest) is not bytes or len(digest) not in (0, CREDENTIAL_DIGEST_SIZE):
            raise BadArgument(f"digest must be {CREDENTIAL_DIGEST_SIZE} bytes (or empty)")
        return self._add(1, 0, 0, 0, ttl, b"", digest)

    def keepalive(self, session: int) -> int:
        """Extend the session's deadline to batch time + its TTL."""
        return self._add(2, 0, _sid(session), 0, 0, b"", b"")

    def close_session(self, session: int) -> int:
        """Close the session, releasing and cancelling all it has."""
        return self._add(3, 0, _sid(session), 0, 0, b"", b"")

    def acquire(self, session: int, key: str | bytes, *, shared: bool = False, wait: bool = True,
                request_id: int = 0, value: str | bytes = b"", timeout_ms: int = 0) -> int:
        """Acquire the lock ``key`` exclusively (or ``shared``); ``wait=False`` is a try.

        ``value`` is an optional label shown to :meth:`LockMachine.info` (kazoo's
        contender identifier); ``timeout_ms`` (with ``wait``) withdraws the wait at
        batch time + timeout_ms if it has not been granted by then.
        """
        if shared is False or shared is True:
            flags = FLAG_SHARED if shared else 0
        else:
            flags = FLAG_SHARED if _bool("shared", shared) else 0
        if wait is True:
            flags |= FLAG_WAIT
        elif wait is not False and _bool("wait", wait):
            flags |= FLAG_WAIT
        return self._add(4, flags, _sid(session), _u64("request_id", request_id),
                         _timeout(timeout_ms, flags & FLAG_WAIT), _k(key), _v(value))

    def release(self, session: int, key: str | bytes, token: int = 0, *, request_id: int = 0) -> int:
        """Release the session's hold on lock ``key`` with ``token`` (0: its oldest hold)."""
        return self._add(5, 0, _sid(session), _u64("request_id", request_id), _u64("token", token),
                         _k(key), b"")

    def sem_acquire(self, session: int, key: str | bytes, permits: int, *, wait: bool = True,
                    request_id: int = 0, value: str | bytes = b"", timeout_ms: int = 0) -> int:
        """Take one permit of the semaphore ``key`` of size ``permits``."""
        flags = FLAG_WAIT if _bool("wait", wait) else 0
        return self._add(6, flags, _sid(session), _u64("request_id", request_id),
                         _int("permits", permits, 1, MAX_PERMITS) | _timeout(timeout_ms, flags),
                         _k(key), _v(value))

    def sem_release(self, session: int, key: str | bytes, token: int = 0, *, request_id: int = 0) -> int:
        """Give back the permit with ``token`` (0: the session's oldest on this key)."""
        return self._add(7, 0, _sid(session), _u64("request_id", request_id), _u64("token", token),
                         _k(key), b"")

    def campaign(self, session: int, key: str | bytes, value: str | bytes, *, wait: bool = True,
                 request_id: int = 0, timeout_ms: int = 0) -> int:
        """Run for leader of election ``key`` with ``value``; FIFO succession."""
        flags = FLAG_WAIT if _bool("wait", wait) else 0
        return self._add(8, flags, _sid(session), _u64("request_id", request_id),
                         _timeout(timeout_ms, flags), _k(key), _v(value))

    def proclaim(self, session: int, key: str | bytes, value: str | bytes, token: int = 0, *,
                 request_id: int = 0) -> int:
        """As leader (with ``token``, 0: whichever), publish a new value."""
        return self._add(9, 0, _sid(session), _u64("request_id", request_id), _u64("token", token),
                         _k(key), _v(value))

    def resign(self, session: int, key: str | bytes, token: int = 0, *, request_id: int = 0) -> int:
        """Give up leadership (with ``token``, 0: whichever); the next candidate leads."""
        return self._add(10, 0, _sid(session), _u64("request_id", request_id), _u64("token", token),
                         _k(key), b"")

    def cancel(self, session: int, key: str | bytes, ticket: int, *, request_id: int = 0) -> int:
        """Withdraw the contender with ``ticket``: dequeue a waiter, release a holder."""
        return self._add(11, 0, _sid(session), _u64("request_id", request_id),
                         _int("ticket", ticket, 1, _U64), _k(key), b"")

    def detach(self, grace_ms: int, *, pools: bool = False) -> int:
        """Give every waiter at most ``grace_ms`` more unless its client re-attaches (see
        "Detached waiters" in the module docs); with ``pools``, every pool wait too
        (format version 5: "Detached pool waits")."""
        if _bool("pools", pools):
            self._detach_pools = True
        return self._add(12, FLAG_WAIT if pools else 0, 0, 0, _int("grace_ms", grace_ms, 0, MAX_TIMEOUT_MS), b"", b"")

    # --- quota pools (format version 4; the rules: coordcore.locks.pools) ----------------

    def _pool_command(self, op: int, flags: int, session: int, request_id: int, arg: int, key: bytes,
                      value: bytes) -> int:
        # A decoded pool command: the machine checks its fields (it answers BADARG).
        if type(key) is not bytes or not 0 < len(key) <= MAX_KEY_SIZE or type(value) is not bytes \
                or len(value) > MAX_VALUE_SIZE:
            raise BadArgument("a pool command's key or value is out of range")
        self._pools = True
        return self._add(op, flags, _u64("session", session), _u64("request_id", request_id), _u64("arg", arg),
                         key, value)

    def pool_set(self, pool: str | bytes, capacity: int, *, grace_ms: int = 5_000, patience: int = 16) -> int:
        """Define a pool of ``capacity`` units, or change it: a preempted lease has
        ``grace_ms`` to give its units back; ``patience`` is the starvation bound."""
        conf = _POOL_CONF.pack(_int("grace_ms", grace_ms, 0, MAX_TIMEOUT_MS), _int("patience", patience, 1, 65535))
        self._pools = True
        return self._add(Op.POOL_SET, 0, 0, 0, _int("capacity", capacity, 1, MAX_PERMITS), _k(pool), conf)

    def tenant_set(self, pool: str | bytes, tenant: str | bytes, *, weight: int = 1, minimum: int = 0,
                   maximum: int = MAX_PERMITS, band: int = 0) -> int:
        """Define a tenant of ``pool`` (or change it): its weight, guaranteed minimum,
        maximum and priority band (0..7, higher preempts lower)."""
        mx = _int("maximum", maximum, 1, MAX_PERMITS)
        conf = _TENANT_CONF.pack(_int("weight", weight, 1, MAX_PERMITS), _int("minimum", minimum, 0, mx), mx,
                                 _int("band", band, 0, 7))
        self._pools = True
        return self._add(Op.TENANT_SET, 0, 0, 0, 0, _k(pool), conf + _tenant(tenant))

    def cap_acquire(self, session: int, pool: str | bytes, tenant: str | bytes, units: int, *, wait: bool = True,
                    request_id: int = 0, timeout_ms: int = 0) -> int:
        """Ask ``pool`` for ``units`` on behalf of ``tenant``: a lease (OK, its token) or a
        place in the tenant's queue (WAITING, its ticket); ``wait=False`` is a try."""
        flags = FLAG_WAIT if _bool("wait", wait) else 0
        self._pools = True
        return self._add(Op.CAP_ACQUIRE, flags, _sid(session), _u64("request_id", request_id),
                         _int("units", units, 1, MAX_PERMITS) | _timeout(timeout_ms, flags), _k(pool), _tenant(tenant))

    def cap_release(self, session: int, pool: str | bytes, revision: int, *, request_id: int = 0) -> int:
        """Give back the lease with token ``revision``, or withdraw the wait with that ticket."""
        self._pools = True
        return self._add(Op.CAP_RELEASE, 0, _sid(session), _u64("request_id", request_id),
                         _int("revision", revision, 1, _U64), _k(pool), b"")

    def cap_resize(self, session: int, pool: str | bytes, token: int, units: int, *, request_id: int = 0) -> int:
        """Shrink the lease ``token`` to ``units`` (always), or grow it (only if nobody waits
        and the units are free: BUSY otherwise)."""
        self._pools = True
        return self._add(Op.CAP_RESIZE, 0, _sid(session), _u64("request_id", request_id), _int("token", token, 1, _U64),
                         _k(pool), _int("units", units, 1, MAX_PERMITS).to_bytes(4, "little"))


_POOL_CONF = struct.Struct("<II")
_TENANT_CONF = struct.Struct("<IIIB3x")


def _tenant(name: object) -> bytes:
    b = name.encode() if type(name) is str else name
    if type(b) is not bytes or not 0 < len(b) <= 255:
        raise BadArgument(f"tenant must be 1..255 bytes, got {name!r:.40}")
    return b


def _timeout(timeout_ms: object, wait: int) -> int:
    """An acquire's wait timeout, placed in the high 32 bits of its arg."""
    t = _int("timeout_ms", timeout_ms, 0, MAX_TIMEOUT_MS)
    if t and not wait:
        raise BadArgument("timeout_ms needs wait=True")
    return t << 32


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise WrongType(f"{name} must be a bool, not {type(value).__name__}")
    return value


def tick(time_ms: int) -> bytes:
    """An empty batch record: advances time and expires sessions.

    >>> len(tick(5)) == BATCH_HEADER_SIZE
    True
    """
    return BatchBuilder().build(time_ms)


def decode_batch(batch: bytes) -> tuple[int, list[Command]]:
    """Parse a batch record into (time_ms, commands), checking its structure.

    Raises :class:`~coordcore.errors.BadArgument` on a malformed record and
    :class:`~coordcore.errors.UnknownCommand` on an unknown op (what ``apply`` raises).
    """
    if not isinstance(batch, (bytes, bytearray, memoryview)):
        raise WrongType(f"batch must be bytes, not {type(batch).__name__}")
    data = bytes(batch)
    if len(data) < BATCH_HEADER_SIZE:
        raise BadArgument(f"malformed batch: {len(data)} bytes is shorter than the header")
    magic, version, flags, reserved, time_ms, count = _HEADER.unpack_from(data, 0)
    if magic != BATCH_MAGIC:
        raise BadArgument(f"malformed batch: bad magic {magic!r}")
    if not 1 <= version <= POOL_DETACH_BATCH_FORMAT_VERSION:
        raise BadArgument(f"malformed batch: unsupported format version {version}")
    if flags or reserved:
        raise BadArgument("malformed batch: reserved header bits set")
    if count > MAX_BATCH_COMMANDS:
        raise BadArgument(f"malformed batch: {count} commands (at most {MAX_BATCH_COMMANDS})")
    pos = BATCH_HEADER_SIZE
    commands: list[Command] = []
    for i in range(count):
        if pos + COMMAND_HEADER_SIZE > len(data):
            raise BadArgument(f"malformed batch: command {i} is truncated")
        op, cflags, klen, vlen, session, req, arg = _CMD.unpack_from(data, pos)
        if not Op.OPEN <= op <= (Op.CAP_RESIZE if version >= POOL_BATCH_FORMAT_VERSION else Op.DETACH if version >= 2
                                 else Op.CANCEL):
            raise UnknownCommand(f"malformed batch: command {i} has unknown op {op}")
        if cflags & ~(FLAG_SHARED | FLAG_WAIT):
            raise BadArgument(f"malformed batch: command {i} has unknown flags {cflags:#x}")
        pos += COMMAND_HEADER_SIZE
        if pos + klen + vlen > len(data):
            raise BadArgument(f"malformed batch: command {i} is truncated")
        key = data[pos:pos + klen]
        value = data[pos + klen:pos + klen + vlen]
        pos += klen + vlen
        commands.append(Command(op, cflags, session, req, arg, key, value))
    if pos != len(data):
        raise BadArgument(f"malformed batch: {len(data) - pos} trailing bytes")
    return time_ms, commands


def decode_results(raw: bytes) -> list[Result]:
    """Decode the packed results of :meth:`LockMachine.apply_raw` (24 bytes each:
    u8 op, u8 status, u8 detail, u8 flags, u32 0, u64 value, u64 aux)."""
    return _lm.decode_results(raw, Result)


def decode_events(raw: bytes) -> list[Event]:
    """Decode the packed events of :meth:`LockMachine.apply_raw` (each: u8 kind,
    u8 mode, u16 key length, u32 value length, u64 revision, u64 session, u64 ticket,
    u64 token, key, value)."""
    return _lm.decode_events(raw, Event)


def _contender(t: tuple[int, int, int, int, bytes]) -> Contender:
    return Contender(*t)


class LockMachine:
    """The deterministic lock state machine (see the module docstring for the contract).

    Not thread-safe: one owner (the service's writer) applies batches; the read-only
    queries may be called between batches.

    >>> m = LockMachine()
    >>> b = BatchBuilder()
    >>> b.open_session(ttl_ms=5_000), b.open_session(ttl_ms=5_000)
    (0, 1)
    >>> [r.session_id for r in m.apply(b.build(time_ms=1_000)).results]
    [1, 2]
    >>> b.clear()
    >>> b.acquire(1, "jobs/42", request_id=1), b.acquire(2, "jobs/42", request_id=1)
    (0, 1)
    >>> first, second = m.apply(b.build(time_ms=1_001)).results
    >>> first.ok, first.token, second.waiting, second.ticket
    (True, 3, True, 4)
    >>> [c.session for c in m.contenders("jobs/42")]
    [1, 2]
    >>> b.clear()
    >>> b.release(1, "jobs/42", first.token)
    0
    >>> [(EventKind(e.kind).name, e.session, e.token) for e in m.apply(b.build(1_002)).events]
    [('RELEASE', 1, 3), ('GRANT', 2, 6)]
    >>> m.next_deadline()
    6000
    >>> [EventKind(e.kind).name for e in m.apply(tick(6_000)).events]
    ['EXPIRE', 'EXPIRE', 'RELEASE']
    >>> LockMachine.from_snapshot(m.snapshot()).snapshot() == m.snapshot()
    True
    """

    __slots__ = ("_m",)

    def __init__(self) -> None:
        self._m = _lm.LockMachine()

    @classmethod
    def from_snapshot(cls, data: bytes) -> LockMachine:
        """A machine restored from :meth:`snapshot` bytes."""
        machine = cls()
        machine.restore(data)
        return machine

    # --- the log-driven path --------------------------------------------------------

    def apply(self, batch: bytes) -> Applied:
        """Apply one batch record; one :class:`Result` per command and the events caused."""
        raw_results, raw_events = self._m.apply(batch)
        return Applied(decode_results(raw_results), decode_events(raw_events))

    def apply_raw(self, batch: bytes) -> tuple[bytes, bytes]:
        """Apply one batch record; packed results and events (see :func:`decode_results`)."""
        return self._m.apply(batch)

    def snapshot(self) -> bytes:
        """The whole state as deterministic, checksummed bytes."""
        return self._m.snapshot()

    def restore(self, data: bytes) -> None:
        """Replace the whole state by a snapshot's (validated before anything changes)."""
        self._m.restore(data)

    # --- read-only queries (not log commands) ---------------------------------------

    @property
    def revision(self) -> int:
        """The revision of the last event (0 for an empty machine)."""
        return self._m.revision

    def raise_revision(self, floor: int) -> int:
        """Raise the revision to at least ``floor`` (it never goes down); return it.

        Only for recovery after records were dropped (a repaired or lost log): the next
        event's revision, and so every later token, is above every token those records
        may have issued. It is not a log command, so write a snapshot straight after,
        or replaying the log would not reach the same state."""
        if isinstance(floor, bool) or not isinstance(floor, int) or floor < 0:
            raise BadArgument(f"a revision floor is an int >= 0, not {floor!r}")
        try:
            return int(self._m.raise_revision(floor))
        except (ValueError, OverflowError) as exc:
            raise BadArgument(str(exc)) from None

    @property
    def time_ms(self) -> int:
        """The time of the last applied batch (never goes back)."""
        return self._m.time_ms

    @property
    def next_session_id(self) -> int:
        """The id the next OPEN will get."""
        return self._m.next_session_id

    @property
    def session_count(self) -> int:
        return self._m.session_count

    @property
    def waiter_count(self) -> int:
        """How many contenders wait (are not granted)."""
        return self._m.waiter_count

    def session_ids(self) -> list[int]:
        """The ids of the live sessions, ascending."""
        return self._m.session_ids()

    def credential_matches(self, session_id: int, digest: bytes) -> bool:
        """True if ``session_id`` is live and was opened with this credential digest."""
        return bool(self._m.credential_matches(_int("session_id", session_id, 0, _U64), digest))

    @property
    def key_count(self) -> int:
        return self._m.key_count

    def next_deadline(self) -> int | None:
        """The earliest session deadline (when the next tick has work), or None."""
        return self._m.next_deadline()

    def session(self, session_id: int, *, after: int = 0, limit: int = _U32) -> SessionInfo | None:
        """A live session's TTL, deadline and contenders, or None: at most ``limit``
        contenders, in ticket order, from the first ticket above ``after`` (pages)."""
        t = self._m.session(_int("session_id", session_id, 0, _U64), _int("after", after, 0, _U64),
                            _int("limit", limit, 0, _U32))
        if t is None:
            return None
        sid, ttl, deadline, items, total = t
        return SessionInfo(sid, ttl, deadline, tuple((k, _contender(c)) for k, c in items), total)

    def info(self, key: str | bytes, *, limit: int = _U32) -> KeyInfo | None:
        """A key's kind, permits, holders and waiters (LOCK.INFO), or None if unused; at
        most ``limit`` holders and ``limit`` waiters (the counts are whole)."""
        k = _key(key)
        t = self._m.key_info(k, _int("limit", limit, 0, _U32))
        if t is None:
            return None
        kind, permits, holders, waiters, nh, nw = t
        return KeyInfo(k, kind, permits, tuple(map(_contender, holders)),
                       tuple(map(_contender, waiters)), nh, nw)

    def oldest_wait_ms(self, key: str | bytes, *, now_ms: int | None = None) -> int | None:
        """How long the first (oldest) waiter of ``key`` has waited, in ms of batch time:
        ``now_ms`` (default: the last batch's time; never taken below it) minus the
        time of the batch it arrived in. None if the key is unused or has no waiter, or
        if that waiter was restored from a snapshot: snapshots keep no such times, so
        its wait is unknown. One lookup; not state (snapshots and hashes ignore it).

        >>> m, b = LockMachine(), BatchBuilder()
        >>> b.open_session(ttl_ms=5_000), b.open_session(ttl_ms=5_000)
        (0, 1)
        >>> _ = m.apply(b.build(time_ms=0)); b.clear()
        >>> b.acquire(1, "k"), b.acquire(2, "k", wait=True)
        (0, 1)
        >>> _ = m.apply(b.build(time_ms=10)); b.clear()
        >>> m.oldest_wait_ms("k"), m.oldest_wait_ms("k", now_ms=260), m.oldest_wait_ms("free")
        (0, 250, None)
        """
        now = None if now_ms is None else _int("now_ms", now_ms, 0, _U64)
        return self._m.oldest_wait_ms(_key(key), now)

    def scan_keys(self, prefix: str | bytes = b"", cursor: int = 0, count: int = 1000) -> tuple[int, list[bytes]]:
        """One page of the keys in use under ``prefix`` (unordered): ``(next cursor,
        keys)``; start with cursor 0, stop when the next cursor is 0 (Redis's SCAN
        guarantees: a key in use throughout comes back exactly once)."""
        return self._m.scan_keys(_prefix(prefix), _int("cursor", cursor, 0, _U64), _int("count", count, 1, _U32))

    def contender_count(self, session_id: int) -> int:
        """How many holds and waits a live session has (0 if none)."""
        return self._m.contender_count(_int("session_id", session_id, 0, _U64))

    def contenders(self, key: str | bytes) -> list[Contender]:
        """Holders (token order) then waiters (FIFO) of ``key`` (kazoo's ``contenders()``)."""
        info = self.info(key)
        return [] if info is None else [*info.holders, *info.waiters]

    def leader(self, key: str | bytes) -> Contender | None:
        """The election's leader (its ``value`` is the current proclamation), or None."""
        info = self.info(key)
        if info is None or info.kind != Kind.ELECTION or not info.holders:
            return None
        return info.holders[0]

    def keys(self, prefix: str | bytes = b"") -> list[bytes]:
        """The keys in use that start with ``prefix``, sorted (all of them: for large
        states page with :meth:`scan_keys`)."""
        return self._m.keys(_prefix(prefix))

    def pool(self, name: str | bytes) -> PoolInfo | None:
        """A pool's configuration, tenants, leases and waits (POOL.INFO), or None."""
        t = self._m.pool_info(_key(name))
        return None if t is None else PoolInfo.from_tuple(t)

    def pool_names(self) -> list[bytes]:
        """The pools defined, sorted."""
        return self._m.pool_names()

    def pool_summary(self, name: str | bytes) -> tuple[int, int, int, list[tuple[bytes, int, int, int, int, int, int, int]]] | None:
        """A pool without its leases and waits (a bounded read): (capacity, held, waiting
        requests, tenants (name, weight, minimum, maximum, band, held, wanted units,
        waiting requests)), or None."""
        return self._m.pool_summary(_key(name))

    def pool_totals(self) -> tuple[int, int, int, int, int, int]:
        """(pools, capacity, held, waiting requests) over every pool, and the give-back
        requests and revocations this machine applied (replays included)."""
        return self._m.pool_totals()

    def timings(self) -> Timings:
        """Wait and hold times observed by this machine, in batch-time ms (metrics).

        A wait is observed at each grant (0 for one granted at once), a hold when it
        ends (release, close, expiry, withdrawal, revocation). They are not state: not
        in snapshots nor compared, kept across :meth:`restore`; contenders restored from
        a snapshot have no known arrival or grant time, so their wait or hold is not
        observed (their later grant and hold are).

        >>> m, b = LockMachine(), BatchBuilder()
        >>> b.open_session(ttl_ms=5_000), b.open_session(ttl_ms=5_000)
        (0, 1)
        >>> _ = m.apply(b.build(time_ms=0)); b.clear()
        >>> b.acquire(1, "k"), b.acquire(2, "k", wait=True)
        (0, 1)
        >>> token = m.apply(b.build(time_ms=10)).results[0].token; b.clear()
        >>> b.release(1, "k", token)
        0
        >>> _ = m.apply(b.build(time_ms=310))
        >>> t = m.timings()
        >>> sum(t.waits["exclusive"][0]), t.waits["exclusive"][1], t.holds["exclusive"][1]
        (2, 300, 300)
        """
        return Timings(*self._m.timings())

    def clear_timings(self) -> None:
        """Forget the observed times (a service does once its log is replayed)."""
        self._m.clear_timings()

    def check_invariants(self) -> None:
        """Verify the internal structures and the lock rules (AssertionError if broken).

        Debug builds (``COORDCORE_DEBUG=1``) run this after every batch.
        """
        self._m.check_invariants()

    def __repr__(self) -> str:
        return (f"<LockMachine revision={self.revision} time_ms={self.time_ms} "
                f"sessions={self.session_count} keys={self.key_count}>")
