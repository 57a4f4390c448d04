"""Fencing: how a storage service refuses writes from a client that lost its lock.

A lock lease can end while its holder is paused (a GC pause, a stopped VM, a slow disk):
the session expires, another client gets the lock, and then the first one wakes up and
writes as if nothing happened. No lock service can stop that write; the storage can,
if every write carries the writer's **fencing token** (``grant.token``: the lock
service's revision at grant time, strictly increasing) and the storage refuses a token
older than the newest it has seen for that key. :class:`FencedResource` is that check.

The paused-client scenario, with an embedded lock service on a manual clock:

>>> import asyncio
>>> from coordcore.errors import NotLockHolder
>>> from coordcore.locks.service import LockService, ManualClock
>>> async def paused_client() -> list[str]:
...     clock = ManualClock()
...     storage = FencedResource()
...     seen = []
...     async with LockService.in_memory(clock=clock) as svc:
...         s1 = await svc.open_session(ttl=5.0, keepalive=False)
...         g1 = await svc.acquire("jobs/42", s1)
...         storage.write("jobs/42", g1.token, "from client 1")
...         # Client 1 pauses for 30 s: no keep-alive, its lease runs out.
...         clock.advance(30.0)
...         await svc.tick()
...         seen.append(f"client 1 session expired: {s1.expired}")
...         s2 = await svc.open_session(ttl=5.0, keepalive=False)
...         g2 = await svc.acquire("jobs/42", s2)
...         seen.append(f"client 2 token is higher: {g2.token > g1.token}")
...         storage.write("jobs/42", g2.token, "from client 2")
...         # Client 1 wakes up and finishes its write with its old token.
...         try:
...             storage.write("jobs/42", g1.token, "late write from client 1")
...         except NotLockHolder:
...             seen.append("late write refused")
...         seen.append(f"stored: {storage.read('jobs/42')!r}")
...     return seen
>>> for line in asyncio.run(paused_client()):
...     print(line)
client 1 session expired: True
client 2 token is higher: True
late write refused
stored: 'from client 2'
"""
from __future__ import annotations

import threading
from typing import Generic, TypeVar

from coordcore.errors import BadArgument, NotFound, NotLockHolder, WrongType

__all__ = ["FencedResource"]

V = TypeVar("V")
Key = str | bytes


def _key(key: object) -> bytes:
    """One key, however it is spelled: a ``str`` is its UTF-8 bytes, as for the lock
    service (``"jobs/42"`` and ``b"jobs/42"`` are one lock, so they are one fence)."""
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    raise WrongType(f"a fenced key is str or bytes, not {type(key).__name__}")


def _check_args(key: object, token: object) -> bytes:
    k = _key(key)
    if isinstance(token, bool) or not isinstance(token, int):
        raise WrongType(f"a fencing token is an int, not {type(token).__name__}")
    if token < 0:
        raise BadArgument(f"a fencing token is >= 0, not {token}")
    return k


class FencedResource(Generic[V]):
    """Per-key newest-token bookkeeping (and, optionally, the values themselves).

    A write with a token at least the newest seen for its key is admitted (the same
    holder may write many times with one token); an older token raises
    :class:`~coordcore.errors.NotLockHolder` and changes nothing. A key given as ``str``
    and as its UTF-8 ``bytes`` is the same key. Thread-safe.

    >>> r = FencedResource[int]()
    >>> r.check("k", 7); r.check("k", 7); r.newest("k")
    7
    >>> r.check("k", 3)
    Traceback (most recent call last):
    ...
    coordcore.errors.NotLockHolder: token 3 for 'k' is older than the newest seen (7): the writer lost its lock
    >>> r.write("k", 9, 100); r.read("k"), r.newest(b"k"), r.newest("other")
    (100, 9, None)
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._newest: dict[bytes, int] = {}
        self._values: dict[bytes, V] = {}

    def check(self, key: Key, token: int) -> None:
        """Admit ``token`` for ``key`` (and remember it if it is the newest) or raise
        :class:`~coordcore.errors.NotLockHolder` if a newer token was seen."""
        k = _check_args(key, token)
        with self._mutex:
            self._admit(k, token, key)

    def _admit(self, key: bytes, token: int, spelled: Key) -> None:
        newest = self._newest.get(key)
        if newest is not None and token < newest:
            raise NotLockHolder(
                f"token {token} for {spelled!r} is older than the newest seen ({newest}): "
                "the writer lost its lock")
        self._newest[key] = token

    def write(self, key: Key, token: int, value: V) -> None:
        """Check ``token`` and store ``value`` under ``key``, atomically."""
        k = _check_args(key, token)
        with self._mutex:
            self._admit(k, token, key)
            self._values[k] = value

    def read(self, key: Key) -> V:
        """The value last written under ``key`` (:class:`~coordcore.errors.NotFound` if none)."""
        k = _key(key)
        with self._mutex:
            try:
                return self._values[k]
            except KeyError:
                raise NotFound(f"nothing was written under {key!r}") from None

    def newest(self, key: Key) -> int | None:
        """The newest token seen for ``key``, or None."""
        k = _key(key)
        with self._mutex:
            return self._newest.get(k)

    def __len__(self) -> int:
        with self._mutex:
            return len(self._newest)

    def __repr__(self) -> str:
        return f"<FencedResource keys={len(self)}>"
