"""The server's budget of buffered bytes and its register of incomplete requests.

Every connection counts its unparsed input plus its unsent output here (as changes
of what it last counted). Over ``limit`` in all, each connection holding more than
:data:`FLOOR` stops reading (:meth:`Budget.pause`) until the sweep counts the total
back under 3/4 of the limit; small ones (a prober's PING) go on. The sweep also closes
connections whose incomplete request sat at the head of their input for longer than
the idle timeout (:meth:`Budget.incomplete` registers one).

>>> budget = Budget(100, None)
>>> budget.change(150); budget.over()
True
>>> budget.change(-150); budget.buffered, budget.over()
(0, False)
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from coordcore.server.log import StructLog

__all__ = ["FLOOR", "Budget", "Budgeted"]

#: While the server is over its buffer budget, a connection holding more than this
#: (input + output) stops reading; smaller ones (a prober's PING) are still served.
FLOOR = 64 << 10


class Budgeted(Protocol):
    """A connection as the budget's sweep sees it."""

    def recount(self) -> None:
        """Count its buffered bytes again (output buffers shrink unseen as clients read)."""

    def resume_budget(self) -> None:
        """The server is back under its budget: read again."""

    def idle_close(self, seconds: float) -> None:
        """Its incomplete request sat unfinished for ``seconds``: close it."""


class Budget:
    """Bytes buffered for all connections, and the connections paused over it."""

    def __init__(self, limit: int, log: StructLog | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.log = log
        #: Loop time (the server sets the loop's clock once it runs).
        self.clock = clock
        #: Bytes buffered for all connections as last counted.
        self.buffered = 0
        #: Connections that stopped reading because the server was over its budget.
        self.paused: set[Budgeted] = set()
        #: Connections with an incomplete request at the head of their input, and since.
        self.partial: dict[Budgeted, float] = {}
        #: Buffered bytes released since memory was last handed back to the system.
        self.released = 0
        self._logged = float("-inf")

    def change(self, delta: int) -> None:
        """A connection now buffers ``delta`` bytes more (or fewer) than it last counted."""
        self.buffered += delta
        if delta < 0:
            self.released -= delta

    def over(self) -> bool:
        return self.buffered > self.limit

    def pause(self, conn: Budgeted) -> None:
        """``conn`` stopped reading over the budget: the sweep resumes it."""
        if not self.paused:
            # At most one line per 10 s: under a sustained flood this flaps each sweep.
            now = self.clock()
            if now - self._logged >= 10.0:
                self._logged = now
                if self.log is not None:
                    self.log.warning("buffer budget exceeded, pausing the largest readers", buffered=self.buffered,
                                     budget=self.limit)
        self.paused.add(conn)

    def incomplete(self, conn: Budgeted) -> float:
        """``conn`` has an incomplete request at the head of its input from now on; the
        loop time it was registered at."""
        since = self.partial[conn] = self.clock()
        return since

    def complete(self, conn: Budgeted) -> None:
        self.partial.pop(conn, None)

    def forget(self, conn: Budgeted) -> None:
        """``conn`` has gone (it counted its bytes out already)."""
        self.partial.pop(conn, None)
        self.paused.discard(conn)

    def sweep(self, connections: Iterable[Budgeted], idle_timeout: float) -> None:
        """Close connections whose incomplete request sat past ``idle_timeout``;
        recount the budget (output buffers shrink unseen as clients read) and let
        paused connections read again once under 3/4 of it."""
        now = self.clock()
        if idle_timeout and self.partial:
            for conn, since in list(self.partial.items()):
                if now - since > idle_timeout:
                    del self.partial[conn]
                    conn.idle_close(now - since)
        if self.paused or self.buffered > self.limit // 2:
            for conn in list(connections):
                conn.recount()
            if self.paused and self.buffered <= self.limit * 3 // 4:
                paused = list(self.paused)
                self.paused.clear()
                if self.log is not None:
                    self.log.debug("buffer budget: reading again", connections=len(paused), buffered=self.buffered)
                for conn in paused:
                    conn.resume_budget()

    def take_released(self, threshold: int) -> bool:
        """Whether more than ``threshold`` bytes were released since the last time this
        said so (then hand freed memory back to the system)."""
        if self.released > threshold:
            self.released = 0
            return True
        return False
