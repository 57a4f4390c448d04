"""Which coordcore server is the cluster's writer: etcd's election pattern, with terms.

Each server puts a candidate key ``<prefix>/leader/<lease id hex>`` (value: its
advertise address) attached to its session's lease. The candidate with the lowest
create revision leads; its **term** is that create revision. Revisions only grow, so a
key created later never sorts before the leader's: once a server has seen that no key
older than its own exists, it stays leader until its own key goes (lease expired or
revoked, or it resigns). Every write of a leader is a Txn that compares its key's create
revision with its term (:meth:`Leadership.guard`): once the key is gone no such Txn can
succeed again, whatever the old leader believes.

A candidate waits for the deletion of the key just before its own (not for the
leader's), so a leader change wakes one server, not all of them.

Locally, a leader acts only while its session is alive (:meth:`Leadership.alive`),
which ends at a monotonic deadline before etcd could have expired the lease.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from coordcore.cluster.errors import EtcdCompacted, EtcdRequestFailed, EtcdUnavailable, LeadershipLost
from coordcore.cluster.etcd import Compare, Etcd, Op, TxnResult, created_at, delete, get, put, sleep_backoff
from coordcore.cluster.keys import Keys
from coordcore.cluster.session import Session

__all__ = ["LeaderInfo", "Leadership", "Election", "current_leader"]


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """The current leader as etcd has it: where it serves, its term, its lease."""

    address: str
    term: int
    lease_id: int


class Leadership:
    """This server's term as the writer; ends with its session or :meth:`resign`."""

    def __init__(self, session: Session, key: bytes, term: int, address: str) -> None:
        self.session = session
        self.key = key
        self.term = term
        self.address = address
        self._resigned = False

    def alive(self) -> bool:
        """True while this server may act as the leader (session alive, not resigned)."""
        return not self._resigned and self.session.alive()

    @property
    def deadline(self) -> float:
        """Monotonic time until which this leadership is safe (it may move later)."""
        return self.session.deadline

    def guard(self) -> Compare:
        """The compare every leader write carries: my key still has my term."""
        return created_at(self.key, self.term)

    async def write(self, ops: Sequence[Op], *, timeout: float) -> TxnResult:
        """One Txn of ``ops`` under :meth:`guard`, sent again after an unknown outcome
        until etcd answers or ``timeout`` passes. Only for ops that are the same when
        applied twice (puts of the same bytes, deletes). Raises :class:`LeadershipLost`
        if the guard fails, :class:`EtcdUnavailable` past the timeout."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            try:
                r = await self.session.etcd.txn([self.guard()], ops)
            except EtcdUnavailable:
                if time.monotonic() > deadline:
                    raise
                await sleep_backoff(attempt)
                attempt += 1
                continue
            if not r.succeeded:
                raise LeadershipLost(f"no longer the writer: my leader key (term {self.term}) is gone")
            return r

    async def resign(self) -> None:
        """Give up leadership, keeping the session (and so the worker ID)."""
        self._resigned = True
        with contextlib.suppress(EtcdUnavailable, EtcdRequestFailed):
            await self.session.etcd.txn([self.guard()], [delete(self.key)])


async def current_leader(etcd: Etcd, keys: Keys) -> LeaderInfo | None:
    """The leader etcd has now (the oldest candidate), or None if there is no candidate."""
    r = await etcd.range(keys.leader_prefix, keys.end(keys.leader_prefix), order="create-asc", limit=1)
    if not r.kvs:
        return None
    kv = r.kvs[0]
    return LeaderInfo(kv.value.decode(), kv.create_revision, kv.lease)


class Election:
    """Campaign for the writer's role with ``session`` (see the module docs)."""

    def __init__(self, etcd: Etcd, keys: Keys, session: Session, address: str) -> None:
        self.etcd = etcd
        self.keys = keys
        self.session = session
        self.address = address
        self.key = keys.leader(session.lease_id)

    async def campaign(self) -> Leadership:
        """Become a candidate and wait until this server leads. Raises
        :class:`LeadershipLost` if the session ends first."""
        lost = asyncio.ensure_future(self.session.lost.wait())
        win = asyncio.ensure_future(self._campaign())
        try:
            await asyncio.wait({lost, win}, return_when=asyncio.FIRST_COMPLETED)
            if win.done():
                return win.result()
            raise LeadershipLost(f"session ended while campaigning: {self.session.reason}")
        finally:
            for task in (lost, win):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, LeadershipLost):
                        await task

    async def _campaign(self) -> Leadership:
        term = await self._candidacy()
        attempt = 0
        while True:
            try:
                if await self._wait_predecessor(term):
                    return Leadership(self.session, self.key, term, self.address)
                attempt = 0
            except (EtcdUnavailable, EtcdCompacted):
                await sleep_backoff(attempt)
                attempt += 1

    async def _candidacy(self) -> int:
        """Create my candidate key (or find it); its create revision is my term. The Txn
        creates the key only if absent and reads it otherwise, so repeating it after an
        unknown outcome is safe."""
        attempt = 0
        while True:
            try:
                r = await self.etcd.txn([created_at(self.key, 0)],
                                        [put(self.key, self.address.encode(), self.session.lease_id)],
                                        [get(self.key)])
            except EtcdUnavailable:
                await sleep_backoff(attempt)
                attempt += 1
                continue
            if r.succeeded:
                return r.revision
            return r.ranges[0].kvs[0].create_revision

    async def _wait_predecessor(self, term: int) -> bool:
        """True if I lead now; else wait until the candidate just before me is gone."""
        keys = self.keys
        first = await self.etcd.range(keys.leader_prefix, keys.end(keys.leader_prefix),
                                      order="create-asc", limit=1)
        if not first.kvs or first.kvs[0].create_revision > term:
            raise LeadershipLost("my candidate key is gone (lease expired?)")
        if first.kvs[0].key == self.key:
            return True
        before = await self.etcd.range(keys.leader_prefix, keys.end(keys.leader_prefix),
                                       order="create-desc", limit=1, max_create_revision=term - 1)
        if not before.kvs:
            return False  # it went between the two reads: look again
        pred = before.kvs[0].key
        async for batch in self.etcd.watch(pred, b"", before.revision + 1, progress_notify=False):
            if any(ev.kind == "delete" for ev in batch.events):
                return False
        return False
