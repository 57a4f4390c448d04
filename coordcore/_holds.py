"""What a lock's holder needs on the caller's side, shared by the embedded service and
both clients.

Reentrant locks: a hold count over one grant, kept by whoever hands grants out (the
embedded service and each client), so the lock machine stays a plain FIFO lock.

A session's reentrant acquire of a lock it already holds through a reentrant acquire
returns the same grant and counts one more hold; a release counts one down and only
the last one releases on the server. An exclusive hold covers a nested shared acquire;
a shared hold does not cover an exclusive one (that is an upgrade: the lock machine
refuses it with :class:`~coordcore.errors.AlreadyHeld`). The count belongs to the
session, not to a thread or task: two tasks sharing a session share its holds.

>>> from coordcore.types import Grant
>>> holds = HoldCounts()
>>> g = Grant(b"k", token=7, session=1)
>>> holds.enter(1, "k", shared=False) is None
True
>>> holds.add(g); holds.enter(1, "k", shared=True) == g
True
>>> holds.leave(g), holds.leave(g), holds.leave(g)
(False, True, True)
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable

from coordcore.errors import SessionExpired
from coordcore.types import Grant, Key, key_bytes

__all__ = ["HoldCounts", "LostCallbacks", "cancelled_on_loss"]

logger = logging.getLogger("coordcore.sessions")


class HoldCounts:
    """Hold counts of reentrant grants by (session, key); thread safe."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held: dict[tuple[int, bytes], tuple[Grant, int]] = {}

    def enter(self, session: int, key: Key, *, shared: bool) -> Grant | None:
        """The grant a reentrant acquire may reuse (its count raised), or None."""
        k = (session, key_bytes(key))
        with self._mutex:
            found = self._held.get(k)
            if found is None or (found[0].shared and not shared):
                return None
            self._held[k] = (found[0], found[1] + 1)
            return found[0]

    def add(self, grant: Grant) -> None:
        """A reentrant acquire that reached the server was granted: count 1."""
        with self._mutex:
            self._held[(grant.session, grant.key)] = (grant, 1)

    def leave(self, grant: Grant) -> bool:
        """Count a release down; True when the server must release (the last hold, or
        a grant that was never reentrant)."""
        k = (grant.session, grant.key)
        with self._mutex:
            found = self._held.get(k)
            if found is None or found[0] != grant:
                return True
            if found[1] > 1:
                self._held[k] = (grant, found[1] - 1)
                return False
            del self._held[k]
            return True

    def forget(self, session: int) -> None:
        """The session ended: its holds went with it."""
        with self._mutex:
            for k in [k for k in self._held if k[0] == session]:
                del self._held[k]


@contextlib.asynccontextmanager
async def cancelled_on_loss(session_id: int, done: asyncio.Future[str]) -> AsyncIterator[None]:
    """Run the block in the current task, cancelled if ``done`` (a session's) resolves
    meanwhile; the block then raises SessionExpired instead of CancelledError, so a lost
    lock is neither silent nor mistaken for a cancellation from outside."""
    task = asyncio.current_task()
    assert task is not None, "cancel_on_loss needs a task"
    lost: list[str] = []

    def cancel(fut: asyncio.Future[str]) -> None:
        lost.append(fut.result() if not fut.cancelled() else "cancelled")
        task.cancel()

    done.add_done_callback(cancel)
    try:
        yield
    except asyncio.CancelledError:
        if not lost:
            raise
        task.uncancel()
    else:
        if not lost:
            return
        task.uncancel()  # lost as the body finished: the cancel is still pending
    finally:
        done.remove_done_callback(cancel)
    raise SessionExpired(f"session {session_id} ended ({lost[0]}) while the block held its lock: "
                         "the body was cancelled")


class LostCallbacks:
    """A session's ``on_lost`` callbacks: each called once with the reason it ended."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[str], None]] = []
        self.reason: str | None = None

    def add(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Register ``callback`` (called at once if the session has ended); returns a
        function that unregisters it."""
        if self.reason is not None:
            callback(self.reason)
            return lambda: None
        self._callbacks.append(callback)

        def unregister() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)
        return unregister

    def fire(self, reason: str, session_id: int) -> None:
        """The session ended: call every callback once (later ones are called at once)."""
        if self.reason is not None:
            return
        self.reason = reason
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            try:
                cb(reason)
            except Exception:  # one broken callback must not keep the others from hearing
                logger.exception("on_lost callback of session %d failed", session_id)
