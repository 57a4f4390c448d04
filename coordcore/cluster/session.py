"""A coordcore server's etcd lease, kept alive, with the local deadline it is safe until.

Everything a server holds in etcd (its leader candidacy, its worker ID) is attached to
one lease, and ends with it. The session is judged on the server's own monotonic clock,
conservatively: etcd counts a lease's TTL from when its leader *received* a keep-alive,
which is after we *sent* it, so "last confirmed keep-alive sent + TTL" never outlives
etcd's view (an etcd leader change only renews leases). The session stops at
``sent + safety * TTL``; the margin covers the two clocks running at slightly different
rates and the time to act on the deadline.

A session ends once, for good: when that deadline passes without a newer confirmed
keep-alive, when etcd answers that the lease is gone, or on :meth:`close`. After that
:meth:`alive` is false and :attr:`lost` is set; a server that wants to go on opens a new
session (and so a new term, a new worker-ID claim).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from coordcore.cluster.errors import EtcdRequestFailed, EtcdUnavailable
from coordcore.cluster.etcd import Etcd

__all__ = ["Session"]

log = logging.getLogger(__name__)


class Session:
    """An etcd lease of ``ttl`` seconds, kept alive (see the module docs).

    Open with :meth:`open`. ``safety`` (0 < safety < 1) is the fraction of the TTL
    after the last confirmed keep-alive was sent at which the session gives up.
    """

    def __init__(self, etcd: Etcd, lease_id: int, ttl: int, granted_at: float, safety: float) -> None:
        self.etcd = etcd
        self.lease_id = lease_id
        self.ttl = ttl
        self.safety = safety
        self._deadline = granted_at + safety * ttl
        self.lost = asyncio.Event()
        self.reason = ""
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, etcd: Etcd, ttl: float = 5.0, *, safety: float = 0.8) -> Session:
        if not 0 < safety < 1:
            raise ValueError(f"safety must be in (0, 1), got {safety!r}")
        sent = time.monotonic()
        lease_id, granted = await etcd.lease_grant(max(1, round(ttl)))
        session = cls(etcd, lease_id, granted, sent, safety)
        session._task = asyncio.get_running_loop().create_task(session._keep_alive())
        return session

    @property
    def deadline(self) -> float:
        """Monotonic time until which etcd cannot have expired the lease (as far as we
        know now: it moves later with each confirmed keep-alive)."""
        return self._deadline

    def alive(self) -> bool:
        return not self.lost.is_set() and time.monotonic() < self._deadline

    def _end(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()
            log.warning("etcd session %x ended: %s", self.lease_id, reason)

    async def _keep_alive(self) -> None:
        interval = self.ttl / 3
        next_send = time.monotonic() + interval
        while True:
            now = time.monotonic()
            if now >= self._deadline:
                self._end("no keep-alive confirmed before the local deadline")
                return
            if now < next_send:
                await asyncio.sleep(min(next_send, self._deadline) - now)
                continue
            sent = time.monotonic()
            try:
                # Bounded by the deadline: past it the answer no longer matters.
                ttl = await self.etcd.lease_keepalive(self.lease_id, timeout=max(0.05, self._deadline - sent))
            except (EtcdUnavailable, EtcdRequestFailed) as e:
                log.info("etcd session %x: keep-alive failed (%s); retrying", self.lease_id, e)
                next_send = sent + min(interval, 0.2)
                continue
            if ttl <= 0:
                self._end("etcd says the lease expired")
                return
            self._deadline = max(self._deadline, sent + self.safety * ttl)
            next_send = sent + interval

    async def close(self, *, revoke: bool = True) -> None:
        """End the session; with ``revoke`` also revoke the lease (its keys go at once)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        was_alive = self.alive()
        self._end("closed")
        if revoke and was_alive:
            with contextlib.suppress(EtcdUnavailable, EtcdRequestFailed):
                await self.etcd.lease_revoke(self.lease_id)

    def stop_keepalive(self) -> None:
        """Testing aid: stop refreshing the lease, as a paused or partitioned server would;
        the session then ends at its deadline and etcd expires the lease after its TTL."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        delay = max(0.0, self._deadline - time.monotonic()) + 0.01
        asyncio.get_running_loop().call_later(delay, self._end, "keep-alive stopped")
