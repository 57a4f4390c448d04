"""Worker IDs leased from a coordcore server, for ID generators across many hosts.

Worker ``n`` of datacenter ``d`` is the lock ``<prefix><d>/<n>`` on the server, held by a
session of this source. While the session lives, no other :class:`ServerWorkerIds`
gets that ID; when the process dies its session expires after ``ttl`` seconds and the ID
becomes free again.

The lease is judged on the client's own clock, conservatively: the server keeps a
session for ``ttl`` after it *received* a keep-alive, which is after the client *sent*
it, so the client's view (last keep-alive sent + ttl) never outlives the server's. A
watchdog seals the generator (it raises :class:`~coordcore.errors.WorkerLeaseLost` from
then on) once the session is known lost or ``safety * ttl`` has passed since the last
confirmed keep-alive was sent, before the server could hand the ID to anyone else.

Usage::

    client = Client(port=7379)
    gen = Snowflake(ServerWorkerIds(client, ttl=10))
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

from coordcore.client.sync import Client, Session
from coordcore.errors import BadArgument, WorkerIdUnavailable
from coordcore.ids import Layout, WorkerAssignment, WorkerIdSource
from coordcore.types import Grant

__all__ = ["ServerWorkerIds"]


class _Lease:
    def __init__(self, session: Session, grant: Grant) -> None:
        self.session = session
        self.grant = grant
        self.released = threading.Event()


class ServerWorkerIds(WorkerIdSource):
    """Lease a worker ID as a lock on a coordcore server (see the module docs).

    ``worker_ids`` limits the IDs tried (default: every ID the layout allows);
    ``safety`` (0 < safety < 1) is the fraction of the TTL after the last confirmed
    keep-alive at which the lease is given up for lost.
    """

    def __init__(self, client: Client, *, ttl: float = 10.0, datacenter_id: int = 0,
                 prefix: str = "coordcore/worker-ids/", worker_ids: range | None = None,
                 safety: float = 0.8) -> None:
        if not 0 < safety < 1:
            raise BadArgument(f"safety must be in (0, 1), got {safety!r}")
        self.client = client
        self.ttl = ttl
        self.datacenter_id = datacenter_id
        self.prefix = prefix
        self.worker_ids = worker_ids
        self.safety = safety
        self._leases: dict[WorkerAssignment, _Lease] = {}

    @property
    def can_reacquire_after_fork(self) -> bool:
        # A forked child shares the parent's sockets: it must build its own Client.
        return False

    def key(self, worker_id: int) -> str:
        return f"{self.prefix}{self.datacenter_id}/{worker_id}"

    def acquire(self, layout: Layout, on_lost: Callable[[], None]) -> WorkerAssignment:
        ids = self.worker_ids if self.worker_ids is not None else range(layout.max_worker + 1)
        session = self.client.session(self.ttl)
        for worker in ids:
            grant = self.client.try_acquire(self.key(worker), session=session)
            if grant is not None:
                assignment = WorkerAssignment(worker, self.datacenter_id)
                lease = self._leases[assignment] = _Lease(session, grant)
                threading.Thread(target=self._watch, args=(lease, on_lost), daemon=True,
                                 name=f"coordcore-worker-id-{worker}").start()
                return assignment
        session.close()
        raise WorkerIdUnavailable(f"every worker ID in {ids} is leased on the server (prefix {self.prefix!r})")

    def _watch(self, lease: _Lease, on_lost: Callable[[], None]) -> None:
        session, limit = lease.session, self.safety * self.ttl
        while not lease.released.wait(min(self.ttl / 20, 0.5)):
            if session.expired or session.closed or time.monotonic() - session.last_keepalive > limit:
                on_lost()
                return

    def release(self, assignment: WorkerAssignment) -> None:
        lease = self._leases.pop(assignment, None)
        if lease is None:
            return
        lease.released.set()
        lease.session.close()  # closing the session releases the lock with it
