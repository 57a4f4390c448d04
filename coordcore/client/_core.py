"""The sans-I/O core of both clients: what a client knows of its own holds and waits,
and how a blocking acquire gets back to its wait after its connection broke.

Neither class does I/O or sleeps: :class:`~coordcore.client.Client` (threads, blocking
sockets) and :class:`~coordcore.client.AsyncClient` (asyncio) drive them, so a rule of
reconciliation is written once.

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
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from coordcore.client._common import (
    RELEASE_COMMAND,
    GrantKind,
    LockInfo,
    key_bytes,
    stray_holds,
    stray_waiters,
)
from coordcore.client._wire import Arg, Endpoint, parse_endpoint
from coordcore.errors import ConnectionLost, CoordcoreError, Moved, Unavailable

__all__ = ["FAILOVER_WINDOW", "REATTACH_WINDOW", "Endpoints", "Ledger", "Reattach"]

#: After a connection breaks under a waiting acquire, how long (seconds, at least) the
#: client keeps reconnecting to re-attach to the wait (a server restart takes about a
#: second; the server keeps a detached wait for a few).
REATTACH_WINDOW = 5.0
#: The longest pause between two reconnects.
MAX_RETRY_DELAY = 0.5

#: With several servers: how long (seconds) a command keeps trying them while the
#: cluster is between leaders (a dead leader's etcd lease runs out first).
FAILOVER_WINDOW = 15.0

LedgerKey = tuple[int, bytes]


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

    def moved(self, exc: Moved) -> None:
        ep = parse_endpoint(exc.address)
        if ep not in self.all:
            self.all.append(ep)
        self.current = ep

    def retry_delay(self, exc: CoordcoreError, *, idempotent: bool, attempt: int, since: float, now: float,
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
        self._unsettled: dict[LedgerKey, tuple[str | bytes, GrantKind]] = {}

    def begin(self, sid: int, key: str | bytes) -> LedgerKey:
        """An acquire of ``key`` for session ``sid`` is on its way."""
        k = (sid, key_bytes(key))
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

    def broke_off(self, k: LedgerKey, key: str | bytes, kind: GrantKind) -> None:
        """It ended without an answer: settle the key once the server can be asked."""
        with self._mutex:
            self._inflight[k] -= 1
            self._unsettled[k] = (key, kind)

    def unsettle(self, sid: int, key: str | bytes, kind: GrantKind) -> None:
        """A release went unanswered: settle the key too (its hold, no longer known,
        is released then if the release never arrived)."""
        with self._mutex:
            self._unsettled[(sid, key_bytes(key))] = (key, kind)

    def hold(self, sid: int, key: str | bytes, token: int) -> None:
        """A grant that did not wait (a try)."""
        with self._mutex:
            self._held.setdefault((sid, key_bytes(key)), set()).add(token)

    def released(self, sid: int, key: str | bytes, token: int) -> None:
        with self._mutex:
            self._held.get((sid, key_bytes(key)), set()).discard(token)

    def unsettled(self, sid: int) -> list[tuple[LedgerKey, str | bytes, GrantKind]]:
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
        sid, key = k
        with self._mutex:
            known = set(self._held.get(k, set()))
        out: list[list[Arg]] = [[RELEASE_COMMAND[kind], key, credential, "TOKEN", token, "REQID", reqid()]
                                for token in stray_holds(info, sid, known)]
        out += [["LOCK.CANCEL", key, credential, "TICKET", ticket, "REQID", reqid()]
                for ticket in stray_waiters(info, sid)]
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
