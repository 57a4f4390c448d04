"""The audit trail of a cluster server (``serve --etcd ... --audit-key KEY``).

Every server of a cluster applies the same records in the same order, so each keeps
its own journal and Merkle tree in ``<data_dir>/audit`` of the records it applied (a
follower through its replica's hook, :meth:`ClusterAudit.on_record`; the leader through
an :class:`~coordcore.audit.trail.AuditedStore` over the term's etcd log that shares the
same trail), and the trees of all servers agree.

**Who signs.** Every server is given the same key (``--audit-key`` on each): any of
them may become leader, and the leader signs. After a key rotation each server is also
given the old public keys (``--audit-trusted-key``), whose checkpoints it still accepts. It publishes each checkpoint in etcd at
``<prefix>/audit/cp/<tree size>`` under its leadership's guard (a deposed leader cannot
add one). Every server reads them (a poll every :data:`POLL`), rebuilds its own root at
that size from its journal *on disk* (:meth:`AuditTrail.tree_at
<coordcore.audit.trail.AuditTrail.tree_at>`, so an edited journal shows) and keeps a
checkpoint that matches in its own ``checkpoints.jsonl``: ``coordcore audit verify`` of
any server's data dir then checks the leader's signatures over that server's records. A
checkpoint that does not match (another root, another first record, another key) is
refused: logged as an error, counted in INFO (``audit_mismatches``, ``audit_state``).

**A new leader** reads the newest checkpoint in etcd before it serves and checks it the
same way; if its journal does not extend it, it signs nothing (``AUDIT.CHECKPOINT``
answers ``UNAVAILABLE``; ``audit_state:refusing``), so no two signed checkpoints of the
cluster are inconsistent.

Limits: the journal holds no user names in cluster mode (only the leader sees who
opened a session, and every server must hash the same leaves). The servers must begin
their audit at the same record (set up together, or a new one's audit directory copied
from another server's): a checkpoint of a tree with another first record counts as a
mismatch. A server that would have to skip records (its journal ends before records in
etcd that a snapshot truncated while it was away) stops applying the log with
:class:`~coordcore.errors.LogCorrupted`; move its audit directory aside to start anew.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from coordcore.audit.checkpoint import MAX_LINE, Checkpoint, load_private_key, load_public_key
from coordcore.audit.trail import AuditedStore, AuditTrail
from coordcore.cluster.election import Leadership
from coordcore.cluster.errors import EtcdRequestFailed, EtcdUnavailable, LeadershipLost
from coordcore.cluster.etcd import Etcd, prefix_end, put
from coordcore.cluster.keys import Keys
from coordcore.errors import BadArgument, CoordcoreError, LogCorrupted
from coordcore.locks.store import LogStore

if TYPE_CHECKING:
    from coordcore.locks.service import LockService

__all__ = ["ClusterAudit", "POLL"]

logger = logging.getLogger("coordcore.audit")

#: How often a server reads new checkpoints from etcd (seconds).
POLL: Final = 0.5
#: How long a leader tries to publish a checkpoint in etcd.
PUBLISH_TIMEOUT: Final = 5.0


class ClusterAudit:
    """One server's audit trail in a cluster (see the module docs)."""

    def __init__(self, trail: AuditTrail, etcd: Etcd, keys: Keys) -> None:
        if trail.key is None:
            raise BadArgument("a cluster audit trail needs the signing key")
        self.trail = trail
        self.etcd = etcd
        self._prefix = keys.prefix + b"/audit/cp/"
        #: Checkpoints read from etcd whose size this server's tree has not reached yet.
        self._pending: dict[int, Checkpoint] = {}
        self._read_to = trail.checkpoints[-1].size if trail.checkpoints else 0
        self.verified = 0
        self.mismatches = 0
        self.last_problem = ""
        #: The store of the term this server leads, while it leads.
        self.store: AuditedStore | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, data_dir: Path, key_path: Path, etcd: Etcd, keys: Keys, *, every: int,
                   fsync: bool, segment_bytes: int = 0,
                   archive: Callable[[Path], None] | None = None,
                   trusted: Sequence[Path] = ()) -> ClusterAudit:
        key = load_private_key(key_path)
        olds = [load_public_key(p) for p in trusted]
        trail = await asyncio.get_running_loop().run_in_executor(
            None, lambda: AuditTrail.load(data_dir / "audit", key=key, every=every, fsync=fsync,
                                          segment_bytes=segment_bytes, archive=archive, trusted=olds))
        return cls(trail, etcd, keys)

    def cp_key(self, size: int) -> bytes:
        return self._prefix + b"%020d" % size

    # --- following ----------------------------------------------------------------------

    def on_record(self, index: int, payload: bytes, state: Callable[[], bytes]) -> None:
        """The replica's hook: journal each record before it is applied (``state``: the
        machine's state before it, for a journal that starts there)."""
        try:
            self.trail.take(index, payload, state)
        except OSError as exc:  # a full disk: the replica stops rather than skip a record
            raise LogCorrupted(f"audit {self.trail.directory}: cannot journal record {index} ({exc})") from exc

    async def poll(self) -> None:
        """Read new checkpoints from etcd and check those this tree has reached, forever."""
        while True:
            try:
                await self.read_new()
            except (EtcdUnavailable, EtcdRequestFailed) as exc:
                logger.debug("audit: cannot read checkpoints from etcd (%s)", exc)
            await self.check_pending()
            await asyncio.sleep(POLL)

    async def read_new(self) -> None:
        r = await self.etcd.range(self.cp_key(self._read_to + 1), prefix_end(self._prefix), limit=256)
        for kv in r.kvs:
            size = int(kv.key[len(self._prefix):])
            self._read_to = max(self._read_to, size)
            cp = self._parse(kv.value, size)
            if cp is not None:
                self._pending[size] = cp

    def _parse(self, value: bytes, size: int) -> Checkpoint | None:
        try:
            if len(value) > MAX_LINE:
                raise BadArgument("too long")
            cp = Checkpoint.from_json(json.loads(value))
            if cp.size != size:
                raise BadArgument(f"it says size {cp.size}")
        except (ValueError, BadArgument) as exc:
            self._alarm(f"the checkpoint in etcd at size {size} is not one ({exc})")
            return None
        return cp

    async def check_pending(self) -> None:
        """Check (and keep, or refuse) each pending checkpoint the tree has reached."""
        for size in sorted(self._pending):
            if size > self.trail.tree.size:
                break
            cp = self._pending.pop(size)
            problem = await self.problem(cp)
            if problem is not None:
                self._alarm(problem)

    async def problem(self, cp: Checkpoint) -> str | None:
        """Why ``cp`` does not describe this server's journal, or None (it is then kept).
        Rehashing the journal's records up to it (about ``every`` of them, from disk) and
        the fsync before keeping it run in a thread, off the event loop."""
        trail = self.trail
        unsigned = trail.keyring.problem(cp)
        if unsigned is not None:
            return (f"the checkpoint of size {cp.size} {unsigned}: neither this server's --audit-key nor "
                    "an --audit-trusted-key")
        if cp.first_index != trail.origin:
            return (f"the checkpoint of size {cp.size} is of a tree from record {cp.first_index}; this "
                    f"server's journal starts at record {trail.origin}")
        if cp.size > trail.tree.size:
            return f"the checkpoint has {cp.size} records, this server's journal only {trail.tree.size}"
        mine = next((c for c in reversed(trail.checkpoints) if c.size == cp.size), None)
        if mine is not None:
            return None if mine.root == cp.root else \
                f"the checkpoint of size {cp.size} has another root than the one this server kept"
        loop = asyncio.get_running_loop()
        job = trail.rebuild(cp.size)
        tree = await loop.run_in_executor(None, job) if job is not None else None
        if tree is None:
            logger.info("audit: checkpoint of size %d lies before this server's live journal: not checked",
                        cp.size)
            return None
        if tree.root() != cp.root:
            return (f"this server's journal (records {cp.first_index}..{cp.last_index}) has root "
                    f"{tree.root().hex()}, the checkpoint of size {cp.size} {cp.root.hex()}: one of them "
                    "was altered")
        kept = await loop.run_in_executor(None, trail.begin_adopt(cp))
        if kept is not None:
            trail.kept(kept, tree)
        self.verified += 1
        return None

    def _alarm(self, problem: str) -> None:
        self.mismatches += 1
        self.last_problem = problem
        logger.error("audit: checkpoint refused: %s", problem)

    # --- leading ------------------------------------------------------------------------

    def lead(self, log: LogStore, leadership: Leadership) -> AuditedStore:
        """The audited store of a term over ``log``; :meth:`check_before_signing` once
        the service replayed it."""
        store = self.store = AuditedStore(log, self.trail, owns_trail=False)
        store.on_checkpoint = lambda cp: self._publish(cp, leadership)
        return store

    async def check_before_signing(self, store: AuditedStore) -> None:
        """A new leader's check: its journal (replayed to the log's end) must extend the
        newest checkpoint in etcd, or it signs nothing this term."""
        r = await self.etcd.range(self._prefix, prefix_end(self._prefix), limit=1, order="key-desc")
        if not r.kvs:
            return
        size = int(r.kvs[0].key[len(self._prefix):])
        cp = self._parse(r.kvs[0].value, size)
        problem = await self.problem(cp) if cp is not None else "the newest checkpoint in etcd is damaged"
        if problem is not None:
            store.refuse_signing = f"its journal does not extend the cluster's last checkpoint: {problem}"
            self._alarm(problem)
            logger.error("audit: this leader signs no checkpoint (%s)", store.refuse_signing)

    def _publish(self, cp: Checkpoint, leadership: Leadership) -> None:
        value = json.dumps(cp.to_json(), separators=(",", ":")).encode()

        async def run() -> None:
            try:
                await leadership.write([put(self.cp_key(cp.size), value)], timeout=PUBLISH_TIMEOUT)
            except (LeadershipLost, EtcdUnavailable, EtcdRequestFailed) as exc:
                logger.warning("audit: checkpoint of size %d not published in etcd (%s); it stays in "
                               "this server's checkpoints only", cp.size, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def final_checkpoint(self, svc: LockService, leadership: Leadership) -> Checkpoint | None:
        """A clean stop of a leader that still leads: sign what the tree holds beyond the
        last checkpoint and publish it in etcd before resigning (None: nothing new, or
        not signed: deposed, refusing, or the tick or the publication failed). The
        checkpoint is taken after a tick committed under the leadership's guard, so only
        a leader that still led then signs it, and etcd takes it only if it still leads."""
        store, trail = self.store, self.trail
        last = trail.checkpoints[-1].size if trail.checkpoints else 0
        if store is None or store.refuse_signing is not None or not leadership.alive() \
                or svc.closed or trail.tree.size <= last:
            return None
        try:
            cp = await asyncio.wait_for(store.request_checkpoint(svc), PUBLISH_TIMEOUT)
        except (CoordcoreError, TimeoutError) as exc:
            logger.warning("audit: no final checkpoint (%s)", exc)
            return None
        if self._tasks:  # its publication in etcd
            await asyncio.wait(set(self._tasks), timeout=PUBLISH_TIMEOUT)
        return cp

    def step_down(self) -> None:
        self.store = None

    # --- reporting ----------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.store is not None and self.store.refuse_signing is not None:
            return "refusing"
        return "mismatch" if self.mismatches else "ok"

    def info_lines(self) -> list[str]:
        trail = self.trail
        last = trail.checkpoints[-1].size if trail.checkpoints else 0
        return [f"audit_state:{self.state}", f"audit_first_index:{trail.origin}",
                f"audit_tree_size:{trail.tree.size}", f"audit_checkpoint_size:{last}",
                f"audit_checkpoints_verified:{self.verified}", f"audit_mismatches:{self.mismatches}",
                f"audit_last_problem:{self.last_problem.replace(chr(10), ' ')[:300]}"]

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=PUBLISH_TIMEOUT)
        await asyncio.get_running_loop().run_in_executor(None, self.trail.close)
