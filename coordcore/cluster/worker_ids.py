"""Worker IDs leased in etcd: ``<prefix>/ids/<worker>`` created with a server's lease.

A claim takes the lowest free ID with a Txn that creates its key only if absent, so two
servers never hold one ID at once: the loser of a race sees the key exists and tries the
next. The key goes when the lease does; the holder stops issuing IDs at its session's
local deadline (:meth:`WorkerLease.safe_until`), before etcd can expire the lease and
hand the ID to someone else.
"""
from __future__ import annotations

from dataclasses import dataclass

from coordcore.cluster.errors import EtcdRequestFailed, EtcdUnavailable
from coordcore.cluster.etcd import Etcd, created_at, delete, get, put, sleep_backoff
from coordcore.cluster.keys import Keys
from coordcore.cluster.session import Session
from coordcore.errors import WorkerIdUnavailable

__all__ = ["WorkerLease", "claim_worker_id"]


@dataclass(frozen=True, slots=True)
class WorkerLease:
    worker_id: int
    key: bytes
    create_revision: int
    session: Session

    def valid(self) -> bool:
        """True while IDs may be issued with this worker ID."""
        return self.session.alive()

    def safe_until(self) -> float:
        """Monotonic time until which issuing IDs with this worker ID is safe (it moves
        later with each confirmed keep-alive; re-read it)."""
        return self.session.deadline

    async def release(self) -> None:
        """Free the ID now (also freed when the session's lease ends)."""
        try:
            await self.session.etcd.txn([created_at(self.key, self.create_revision)], [delete(self.key)])
        except (EtcdUnavailable, EtcdRequestFailed):
            pass  # the lease will free it


async def claim_worker_id(etcd: Etcd, keys: Keys, session: Session, *, worker_ids: range = range(1024),
                          owner: str = "") -> WorkerLease:
    """Claim the lowest free ID in ``worker_ids`` under ``session``'s lease; ``owner``
    (e.g. the advertise address) is stored as the key's value for operators.

    Raises :class:`~coordcore.errors.WorkerIdUnavailable` if every ID is held."""
    attempt = 0
    while True:
        if not session.alive():
            raise WorkerIdUnavailable(f"session ended while claiming a worker ID: {session.reason}")
        try:
            taken: set[int] = set()
            async for page in etcd.pages(keys.ids_prefix, keys.end(keys.ids_prefix), page_size=1000,
                                         keys_only=True):
                taken.update(keys.worker_of(kv.key) for kv in page.kvs)
            free = next((w for w in worker_ids if w not in taken), None)
            if free is None:
                raise WorkerIdUnavailable(f"all {len(worker_ids)} worker IDs are held")
            key = keys.worker(free)
            # Creates the key only if absent, else reads it: after an unknown outcome the
            # same Txn tells whether our earlier attempt got it (the key has our lease).
            while True:
                try:
                    r = await etcd.txn([created_at(key, 0)], [put(key, owner.encode(), session.lease_id)],
                                       [get(key)])
                    break
                except EtcdUnavailable:
                    if not session.alive():
                        raise
                    await sleep_backoff(attempt)
                    attempt += 1
            if r.succeeded:
                return WorkerLease(free, key, r.revision, session)
            held = r.ranges[0].kvs
            if held and held[0].lease == session.lease_id:
                return WorkerLease(free, key, held[0].create_revision, session)
            # Someone else took it between our read and our Txn: look again.
        except EtcdUnavailable:
            await sleep_backoff(attempt)
            attempt += 1
