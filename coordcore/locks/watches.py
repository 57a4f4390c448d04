"""Watches: bounded, ordered streams of the lock machine's events for a key prefix."""
from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from coordcore.errors import WatchLagged
from coordcore.locks.machine import Event

__all__ = ["DEFAULT_WATCH_BUFFER", "Watch", "WatchHub"]

#: How many events a watch buffers for a slow reader before it is stopped (WatchLagged).
DEFAULT_WATCH_BUFFER = 10_000


class WatchHub:
    """The live watches of one service. ``on_change(sink)`` is told the callable that
    takes each batch's events while there are watches, and None when there are none
    (so a service without watches decodes only the events it acts on)."""

    def __init__(self, on_change: Callable[[Callable[[list[Event]], None] | None], None]) -> None:
        self._watches: set[Watch] = set()
        self._on_change = on_change

    def __len__(self) -> int:
        return len(self._watches)

    def add(self, prefix: bytes, buffer: int, start_revision: int) -> Watch:
        w = Watch(self, prefix, buffer, start_revision)
        self._watches.add(w)
        if len(self._watches) == 1:
            self._on_change(self.offer)
        return w

    def _remove(self, w: Watch) -> None:
        if w in self._watches:
            self._watches.discard(w)
            if not self._watches:
                self._on_change(None)

    def offer(self, events: list[Event]) -> None:
        """A committed batch's events, in order, to every watch whose prefix they match."""
        watches = tuple(self._watches)
        for ev in events:
            key = ev.key
            for w in watches:
                if key.startswith(w.prefix):
                    w._offer(ev)

    def fail_all(self, error: BaseException) -> None:
        for w in tuple(self._watches):
            w._fail(error)


class Watch:
    """An async iterator of :class:`~coordcore.locks.machine.Event` for keys starting with
    a prefix, in revision order, from the revision after :attr:`start_revision`.

    The buffer is bounded: a reader that falls more than ``buffer`` events behind gets
    :class:`~coordcore.errors.WatchLagged` (after the events it was sent) instead of
    unbounded memory. Iteration ends with :class:`~coordcore.errors.ServiceClosed` when
    the service closes; :meth:`close` ends it quietly.
    """

    def __init__(self, hub: WatchHub, prefix: bytes, buffer: int, start_revision: int) -> None:
        self.prefix = prefix
        self.start_revision = start_revision
        self._hub = hub
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
        self._hub._remove(self)
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
        self._hub._remove(self)
        self._wake()

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
