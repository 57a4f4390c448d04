"""The value types of coordcore's lock API, one set for the embedded
:class:`~coordcore.locks.LockService` and both clients, so code written against one
works with the others (and ``mypy --strict`` agrees).

This module imports nothing of the client, the server or the native code: importing
it is cheap.

Keys
----
One rule everywhere: **a key goes in as** ``str`` **or** ``bytes``, a ``str`` standing for
its UTF-8 encoding (``"jobs/42"`` and ``b"jobs/42"`` are the same key); **a key comes
back as** ``bytes``, always: in a :class:`Grant`, in lock info, in watch events.

>>> key_bytes("jobs/42") == key_bytes(b"jobs/42") == b"jobs/42"
True
>>> g = Grant(b"jobs/42", token=7, session=3)
>>> g.kind, g.shared, g.ticket
('lock', False, 0)
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["Grant", "GrantKind", "Key", "Leader", "SessionLike", "key_bytes"]

#: A key as callers give it (see the rule above).
Key = str | bytes

#: What a :class:`Grant` holds: a lock (exclusive or shared), a semaphore permit, or the
#: leadership of an election (the names of the lock machine's key kinds).
GrantKind = Literal["lock", "semaphore", "election"]


def key_bytes(key: Key) -> bytes:
    """A key as coordcore hands it back: a ``str`` as its UTF-8 bytes."""
    return key.encode() if isinstance(key, str) else key


@dataclass(frozen=True, slots=True)
class Grant:
    """A held lock, semaphore permit or leadership. ``token`` is the fencing token: the
    revision at grant time, strictly increasing across all grants and never reused, so
    a resource can refuse a stale holder (pass it with each write). ``session`` is the
    id of the session that holds it; ``ticket`` the revision at which the request
    queued, where known (0 for a grant that came over the wire, which carries only the
    token; release and resign go by the token)."""

    key: bytes
    token: int
    session: int
    kind: GrantKind = "lock"
    shared: bool = False
    ticket: int = 0


@dataclass(frozen=True, slots=True)
class Leader:
    """An election's leader: its session id, its current (last proclaimed) value and
    its fencing token."""

    session: int
    value: bytes
    token: int


class SessionLike(Protocol):
    """What every live session object offers, whichever transport made it: the
    embedded service's :class:`coordcore.locks.Session`, the blocking client's
    :class:`coordcore.client.Session` and the asyncio client's
    :class:`coordcore.client.AsyncSession`. (They differ in how they act: embedded and
    asyncio sessions have coroutine methods, the blocking one plain methods.)"""

    @property
    def id(self) -> int:
        """The session's public id (what grants, lock info and watches show)."""

    @property
    def ttl(self) -> float:
        """Seconds the session lives past its last keep-alive."""

    @property
    def credential(self) -> bytes:
        """``b"<id>.<secret>"``: what acts for the session over the wire."""

    @property
    def expired(self) -> bool:
        """True once the session is known to have ended by expiry."""

    def on_lost(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(reason)`` once when the session ends (at once if it has);
        returns a function that unregisters it. (Each session also has a ``done``
        future of the reason: an asyncio one for the embedded and asyncio sessions, a
        ``concurrent.futures`` one for the blocking client's.)"""

    def holds(self, grant: Grant) -> bool:
        """Whether ``grant`` is still held, as far as this process can know."""
