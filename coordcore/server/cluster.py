"""Cluster mode of the server (``coordcore serve --etcd ... --cluster NAME``).

Every server of a cluster holds one etcd :class:`~coordcore.cluster.Session`, issues
IDs under a worker ID leased in etcd with it, and campaigns in the
:class:`~coordcore.cluster.Election`. The winner replays the lock log from etcd
(:class:`~coordcore.cluster.EtcdLog`, after ``lead()``: no older writer can append any
more) and serves the lock service on it. The others keep a
:class:`~coordcore.cluster.replica.Replica` (the log applied in order, a local snapshot
in the data dir) and answer reads from it (``LOCK.INFO``, ``SEM.INFO``, ``SESSION.INFO``,
``ELECT.LEADER``, ``LOCKS.*``, ``WATCH``): ``LOCKS.REVISION`` says the revision they
reflect, ``INFO`` the record. Writes get ``-MOVED host:port`` of the leader
(``-UNAVAILABLE`` while none is known); ``PING`` and ``ID.*`` are served everywhere.

Redirect, not forward: a forwarded acquire would need its own retry and re-attach
logic on the follower; the client has it already (request ids), and one hop is cheaper.

A leader steps down when its session's local deadline passes or etcd refuses a write.
It drops every client connection first, so that no client is told ``CLOSED`` for a
wait that the next leader still has: clients retry there with the same request ids.
The service clock resumes at the last batch's time (``count_downtime=False``), so the
time without a leader never counts against a session, and the new leader's first records
renew every session (a whole TTL from then, as etcd renews leases at a leader change), so
a client that reaches the new leader within its TTL keeps its session.

``CLUSTER.SNAPSHOT`` (admin, on the leader) writes a snapshot into etcd now and truncates
the log below it. ``CLUSTER.STATE`` (admin) answers ``[index, revision, sha256]``: the last record the
server's machine reflects, its revision and the SHA-256 of the machine's snapshot bytes,
so that a test or an operator can check that a follower agrees with the leader.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from coordcore.cluster import (
    Election,
    Etcd,
    EtcdLog,
    Keys,
    Leadership,
    LeadershipLost,
    Session,
    WorkerLease,
    claim_worker_id,
    current_leader,
)
from coordcore.cluster.errors import EtcdCompacted, EtcdRequestFailed, EtcdUnavailable
from coordcore.cluster.etcd import sleep_backoff
from coordcore.cluster.replica import Replica
from coordcore.errors import CoordcoreError, Moved, Unavailable, WorkerIdUnavailable, WorkerLeaseLost
from coordcore.ids import DecodedId, Layout, Snowflake
from coordcore.locks.service import LockService
from coordcore.server import resp
from coordcore.server.commands import require_args
from coordcore.server.core import Client, Command, CommandTable, Flag
from coordcore.server.lockcmds import LockCommands, encode_event, push_watch_error
from coordcore.server.log import StructLog

if TYPE_CHECKING:
    from coordcore.audit.cluster import ClusterAudit

__all__ = ["ClusterHost", "ClusterNode", "FollowerReads", "LeasedIds"]


class _Connection(Protocol):
    def abort(self) -> None: ...


class ClusterHost(Protocol):
    """What a cluster node needs of its server: the settings, the log, where the lock
    service and its lane are served from (None while following), the connections to
    drop at a step-down, and the worker ID to report."""

    config: Any  # a ServerConfig (the cluster settings are read from it)
    log: StructLog
    locks: Any
    lane: Any
    worker_id: int
    #: The spans of traced commands (None: the server does not trace).
    tracer: Any

    @property
    def connections(self) -> Iterable[_Connection]: ...

#: How often a follower asks etcd who leads (for its redirects).
LEADER_POLL = 0.25
#: How often a follower reads the log's newest record index in etcd (its lag, in metrics).
LOG_HEAD_POLL = 1.0
#: How often a leader checks that its leadership and service still stand.
LEADER_CHECK = 0.05
#: How long a step-down waits for etcd to take its resignation (else the lease ends it).
RESIGN_TIMEOUT = 2.0


class LeasedIds:
    """The server's ID generator in cluster mode: a Snowflake on a worker ID leased in
    etcd, issuing only while :meth:`WorkerLease.safe_until` lies ahead. Checked on each
    call (not only when the session task notices): a stalled loop must not issue IDs
    under a lease that may have passed to another server meanwhile."""

    def __init__(self) -> None:
        self._gen: Snowflake | None = None
        self._lease: WorkerLease | None = None
        self._layout = Layout.preset("twitter")

    @property
    def max_worker(self) -> int:
        return self._layout.max_worker

    def use(self, gen: Snowflake, lease: WorkerLease) -> None:
        self.close()
        self._gen, self._lease = gen, lease

    def _live(self) -> Snowflake:
        gen, lease = self._gen, self._lease
        if gen is None or lease is None or not lease.valid() or time.monotonic() >= lease.safe_until():
            raise WorkerLeaseLost("no live worker ID lease in etcd: ID issuance paused until it is renewed")
        return gen

    def next_id(self) -> int:
        return self._live().next_id()

    def next_run(self, max_count: int) -> tuple[int, int]:
        return self._live().next_run(max_count)

    def decode(self, id: int) -> DecodedId:
        return self._layout.decode(id)

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
        self._gen = self._lease = None


class FollowerReads(LockCommands):
    """The read commands of :class:`LockCommands`, served from a follower's replica.

    The read handlers call only the replica's LockService-named methods (``info``,
    ``session_info``, ``leader``, ``scan_keys``, ``revision``, ``watch``); nothing here
    attaches to a commit pipeline, and the write handlers are never bound."""

    def __init__(self, replica: Replica, *, log: StructLog, max_reply_items: int) -> None:
        # Not LockCommands.__init__: that attaches the native lane to a service.
        self.svc = replica  # type: ignore[assignment]  # duck-typed: the read methods only
        self.log = log
        self.max_items = max_reply_items

    async def _forward(self, conn: Client, watch: Any) -> None:
        try:
            async for ev in watch:
                conn.push(encode_event(ev, conn.resp3))
        except CoordcoreError as exc:
            # The replica jumped (reloaded a snapshot), stopped, or this server now leads:
            # the events stop here, so the client must re-read and watch again.
            push_watch_error(conn, f"{exc.code} {exc}")
            conn.abort()


class LeaderAdmin:
    """The leader's maintenance commands (admin group)."""

    @staticmethod
    def cmd_snapshot(served: LockCommands, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
        """``CLUSTER.SNAPSHOT``: write a snapshot into etcd now, delete the log below it and
        compact etcd (also automatic); answers the revision it covers."""
        require_args(req, 0, 0)
        svc = served.svc

        async def run() -> bytes:
            await svc.snapshot()
            return resp.encode_int(svc.revision)

        return run()


class ClusterNode:
    """One server's part in a cluster (see the module docs). ``await start()`` before
    the listener opens (a session and a worker ID), :meth:`run` once it listens."""

    def __init__(self, server: ClusterHost) -> None:
        cfg = server.config
        self.server = server
        self.config = cfg
        self.keys = Keys(f"/coordcore/{cfg.cluster}")
        self.etcd = Etcd(list(cfg.etcd), timeout=cfg.etcd_timeout)
        self.ids = LeasedIds()
        self.session: Session | None = None
        self.worker_id = -1
        self.advertise = cfg.advertise or ""
        #: The leader's advertise address as last seen in etcd (None: unknown).
        self.leader: str | None = None
        self.role = "follower"
        self.term = 0
        self.terms_led = 0
        self._served: LockCommands | None = None
        self._store: EtcdLog | None = None
        self._leadership: Leadership | None = None
        #: While following: the replica, its read commands and the task applying the log.
        self.replica: Replica | None = None
        self._reads: FollowerReads | None = None
        self._following: asyncio.Task[None] | None = None
        #: While following: the newest record index in etcd's log as last read (None: unknown).
        self.log_head: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        #: The audit trail (``--audit-key``): every server journals what it applies.
        self.audit: ClusterAudit | None = None

    # --- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        await self.etcd.connect()
        cfg = self.config
        if cfg.audit_key is not None:
            from coordcore.audit.cluster import ClusterAudit
            from coordcore.audit.wire import archiver

            self.audit = await ClusterAudit.open(
                cfg.data_dir, cfg.audit_key, self.etcd, self.keys, every=cfg.audit_every, fsync=cfg.fsync,
                segment_bytes=cfg.audit_segment_bytes,
                archive=archiver(cfg.audit_archive_dir, cfg.audit_archive_command), trusted=cfg.audit_trusted_keys)
        await self._new_session()

    def run(self, advertise: str) -> None:
        self.advertise = self.advertise or advertise
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._serve()), loop.create_task(self._watch_leader())]
        if self.audit is not None:
            self._tasks.append(loop.create_task(self.audit.poll()))

    async def close(self) -> None:
        """Step down (resigning, so the next leader need not wait out the lease), free
        the worker ID and the session."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        replica = self.replica
        await self._stop_following()
        if replica is not None and replica.ready and replica.failed is None:
            with contextlib.suppress(OSError):
                await replica.save()  # a restart then resumes from here
        self.ids.close()
        if self.audit is not None:
            await self.audit.close()
        if self.session is not None:
            await self.session.close()
        await self.etcd.close()

    async def _new_session(self) -> None:
        """A new etcd session and a worker ID under it; waits (with backoff) for etcd."""
        log = self.server.log
        cfg = self.config
        attempt = 0
        while True:
            try:
                session = await Session.open(self.etcd, cfg.etcd_ttl)
                try:
                    lease = await claim_worker_id(self.etcd, self.keys, session,
                                                  worker_ids=range(self.ids.max_worker + 1), owner=self.advertise)
                except BaseException:
                    await session.close()
                    raise
                break
            except (EtcdUnavailable, EtcdRequestFailed) as exc:
                log.warning("etcd unreachable; retrying", endpoints=",".join(cfg.etcd), error=str(exc),
                            attempt=attempt)
            except WorkerIdUnavailable as exc:
                if "held" in str(exc):
                    raise  # every worker ID is taken: more servers than IDs
                log.warning("worker ID claim failed; retrying", error=str(exc))
            await sleep_backoff(attempt, base=0.1, cap=2.0)
            attempt += 1
        ids_dir = cfg.data_dir / "ids"
        ids_dir.mkdir(parents=True, exist_ok=True)
        gen = Snowflake(lease.worker_id, datacenter_id=cfg.datacenter_id or 0,
                        state_file=ids_dir / f"worker-{cfg.datacenter_id or 0}-{lease.worker_id}.state")
        self.ids.use(gen, lease)
        self.session = session
        self.worker_id = self.server.worker_id = lease.worker_id
        log.info("etcd session open", lease=f"{session.lease_id:x}", worker_id=lease.worker_id,
                 ttl=session.ttl)

    # --- the campaign loop -------------------------------------------------------------

    async def _serve(self) -> None:
        log = self.server.log
        attempt = 0
        while not self._closing:
            session = self.session
            if session is None or not session.alive():
                self.ids.close()
                await self._new_session()
                continue
            self._start_following()
            try:
                leadership = await Election(self.etcd, self.keys, session, self.advertise).campaign()
            except LeadershipLost as exc:
                log.warning("campaign ended", error=str(exc))
                continue
            except (EtcdUnavailable, EtcdRequestFailed, EtcdCompacted) as exc:
                log.warning("campaign failed; retrying", error=str(exc))
                await sleep_backoff(attempt, cap=2.0)
                attempt += 1
                continue
            served = self.terms_led
            try:
                await self._stop_following()
                await self._lead(leadership.session, leadership)
            except CoordcoreError as exc:
                log.warning("leadership ended", term=leadership.term, error=f"{type(exc).__name__}: {exc}")
            except Exception:
                log.exception("leadership failed", term=leadership.term)
            finally:
                await self._step_down(leadership)
            if self.terms_led == served:
                # Won but never served (the log would not replay, etcd refused the first
                # record): do not churn through the election.
                await sleep_backoff(attempt, base=0.2, cap=5.0)
                attempt += 1
            else:
                attempt = 0

    async def _lead(self, session: Session, leadership: Leadership) -> None:
        server, cfg = self.server, self.config
        won = time.monotonic()
        store = self._store = EtcdLog(self.etcd, self.keys)
        store.lead(leadership)
        audit = self.audit
        audited = audit.lead(store, leadership) if audit is not None else None
        svc = await LockService.open_store(audited or store, count_downtime=False, waiter_grace=cfg.waiter_grace)
        if audit is not None and audited is not None:
            from coordcore.audit import wire
            from coordcore.audit.trail import attach

            # Replayed to the log's end: before signing anything, the journal must extend
            # the cluster's last checkpoint (coordcore.audit.cluster).
            try:
                await audit.check_before_signing(audited)
            except BaseException:
                await svc.close()
                raise
            attach(svc, audited, users=False)
            wire.register(svc, audited, [cfg.audit_archive_dir] if cfg.audit_archive_dir else [])
        served = self._served = LockCommands(svc, log=server.log, max_reply_items=cfg.max_reply_items,
                                             tracer=server.tracer.tracer if server.tracer is not None else None)
        # The term's first records, before any client is answered: they prove the guard
        # holds, and give every session a whole TTL from now (as etcd renews its leases
        # at a leader change). The clock resumed at the last batch's time, so no session
        # expired meanwhile; without the renewal one whose client kept it alive just
        # before the crash would have only what was left, counted from now.
        renewed = await svc.renew_sessions()
        await svc.tick()
        svc.set_limits(max_sessions=cfg.max_sessions, max_contenders_per_session=cfg.max_locks_per_session)
        # Connections made from now on take the hot path; older ones (made while
        # following) reach the same service through the command table.
        server.locks, server.lane = svc, served.lane
        self.role, self.leader, self.term = "leader", self.advertise, leadership.term
        self._leadership = leadership
        self.terms_led += 1
        server.log.info("leading", term=leadership.term, revision=svc.revision, sessions_renewed=renewed,
                        took_ms=round((time.monotonic() - won) * 1000))
        while leadership.alive() and not svc.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.lost.wait(), LEADER_CHECK)
        raise LeadershipLost("session lapsed" if not leadership.alive() else "the lock service stopped")

    async def _step_down(self, leadership: Leadership) -> None:
        if self._closing and self.audit is not None and self._served is not None and leadership.alive():
            # A clean stop signs what this term added (as a single server does), while
            # it still leads: before the connections go and before resigning.
            with contextlib.suppress(Exception):
                await self.audit.final_checkpoint(self._served.svc, leadership)
        served, self._served = self._served, None
        self._leadership = None
        if self.audit is not None:
            self.audit.step_down()
        server = self.server
        led = self.role == "leader"
        if led:
            server.log.warning("stepping down", term=self.term)
        self.role, self.leader = "follower", None
        server.locks = None
        server.lane = None
        # Before the service closes: it would answer parked acquires CLOSED, which the
        # next leader may still hold for them. Dropped, clients retry there.
        for conn in list(server.connections) if led else ():
            conn.abort()
        if leadership.alive():
            # Closing, or a healthy session whose service stopped: let another candidate
            # lead now, not after our lease, nor after the service's close (which may
            # wait for an append's unknown outcome). Our appends still in flight then
            # fail their guard; whatever etcd took before is in the log the next reads.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leadership.resign(), RESIGN_TIMEOUT)
        if served is not None:
            await served.close()

    # --- following ---------------------------------------------------------------------

    def _start_following(self) -> None:
        """Tail the log into a fresh replica (from the local snapshot, if it is still on
        the log), unless one runs. Fresh after a term of ours: that machine is gone."""
        if self._following is not None and not self._following.done():
            return
        replica = self.replica = Replica(self.etcd, self.keys, self.config.data_dir,
                                         on_record=self.audit.on_record if self.audit is not None else None)
        self._reads = FollowerReads(replica, log=self.server.log, max_reply_items=self.config.max_reply_items)
        self._following = asyncio.get_running_loop().create_task(self._follow(replica))

    async def _follow(self, replica: Replica) -> None:
        try:
            await replica.run()
        except CoordcoreError as exc:  # a broken log: reads stay unavailable here
            self.server.log.error("follower stopped applying the log", error=f"{type(exc).__name__}: {exc}")

    async def _stop_following(self) -> None:
        task, replica = self._following, self.replica
        self._following = self.replica = self._reads = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if replica is not None:
            replica.restart_watches("this server stopped following (it leads now, or stops): watch again")

    async def _watch_leader(self) -> None:
        head_due = 0.0
        while True:
            if self.role != "leader":
                try:
                    info = await current_leader(self.etcd, self.keys)
                    # Our own candidacy first, but not serving yet: no leader to name.
                    self.leader = info.address if info is not None and info.address != self.advertise else None
                    if time.monotonic() >= head_due:
                        head_due = time.monotonic() + LOG_HEAD_POLL
                        self.log_head = await self._read_log_head()
                except (EtcdUnavailable, EtcdRequestFailed):
                    pass  # keep the last known leader
            else:
                self.log_head = None
            await asyncio.sleep(LEADER_POLL)

    async def _read_log_head(self) -> int | None:
        """The newest record's index in etcd's log (one key, no value), or None if the
        log holds no record (all below a snapshot): what a follower's lag is against."""
        prefix = self.keys.log_prefix
        found = await self.etcd.range(prefix, self.keys.end(prefix), limit=1, keys_only=True, order="key-desc")
        return self.keys.log_seq(found.kvs[0].key) if found.kvs else None

    # --- what the metrics and the status page read --------------------------------------

    @property
    def lock_service(self) -> LockService | None:
        """The lock service this server serves while it leads (its leadership alive),
        else None: a follower has only its :attr:`replica`."""
        served, lead = self._served, self._leadership
        return served.svc if served is not None and lead is not None and lead.alive() else None

    @property
    def log_index(self) -> int | None:
        """While leading: the last record known to be in etcd; else None."""
        store = self._store
        return store.next_index - 1 if self.lock_service is not None and store is not None else None

    def replica_lag(self) -> int | None:
        """While following: how many records the replica is behind the newest one in
        etcd as last read (up to LOG_HEAD_POLL old, so 0 may hide a few), or None if
        either is unknown (no replica loaded, no record in etcd's log)."""
        replica, head = self.replica, self.log_head
        if self.role == "leader" or replica is None or not replica.ready or head is None:
            return None
        return max(0, head - replica.index)

    # --- commands ----------------------------------------------------------------------

    def not_here(self) -> CoordcoreError:
        """The reply to a lock command on a server that is not the leader."""
        if self.leader is not None and self.role != "leader":
            return Moved(self.leader)
        return Unavailable("no cluster leader is serving yet; retry shortly")

    def lock_commands(self) -> CommandTable:
        """The lock commands, each answering MOVED unless this server leads, else served
        by the current leadership's :class:`LockCommands`."""
        def guard(handler: Any) -> Any:
            def guarded(conn: Client, req: list[bytes]) -> Any:
                # Also past the session's deadline before the step-down ran (a loop that
                # was paused): the state may be stale, and another server may lead.
                served, lead = self._served, self._leadership
                if served is None or lead is None or not lead.alive():
                    raise self.not_here()
                return handler(served, conn, req)
            return guarded

        def read_guard(handler: Any) -> Any:
            def guarded(conn: Client, req: list[bytes]) -> Any:
                served, lead = self._served, self._leadership
                if served is not None and lead is not None and lead.alive():
                    return handler(served, conn, req)
                # A follower's state may lag: only for clients that asked (READONLY), so
                # that the others read their own writes, from the leader.
                reads = self._following_reads() if conn.readonly else None
                if reads is None:
                    raise self.not_here()
                return handler(reads, conn, req)
            return guarded

        reading = Flag.READS | Flag.WATCH
        table = {name: Command(read_guard(handler) if flags & reading else guard(handler), flags)
                 for name, (handler, flags) in LockCommands.SPEC.items()}
        table[b"CLUSTER.STATE"] = Command(self._cmd_state, Flag.READS)
        table[b"CLUSTER.SNAPSHOT"] = Command(guard(LeaderAdmin.cmd_snapshot), Flag.WRITES)
        return table

    def _following_reads(self) -> FollowerReads | None:
        """The replica's read commands while it is loaded and applying, else None."""
        replica, reads = self.replica, self._reads
        if self.role != "follower" or replica is None or reads is None or not replica.ready \
                or replica.failed is not None:
            return None
        return reads

    def _cmd_state(self, conn: Client, req: list[bytes]) -> bytes:
        """``CLUSTER.STATE`` -> ``[index, revision, sha256 hex]`` of the machine served here."""
        require_args(req, 0, 0)
        served, lead, store = self._served, self._leadership, self._store
        if served is not None and lead is not None and lead.alive() and store is not None:
            index, revision, state = store.next_index - 1, served.svc.revision, served.svc.state_snapshot()
        elif self._following_reads() is not None and self.replica is not None:
            replica = self.replica
            index, revision, state = replica.index, replica.revision, replica.state_snapshot()
        else:
            raise self.not_here()
        return resp.encode_array([resp.encode_int(index), resp.encode_int(revision),
                                  resp.encode_bulk(hashlib.sha256(state).hexdigest().encode())])

    def info_lines(self) -> list[str]:
        lines = ["# Cluster", f"cluster:{self.config.cluster}", f"role:{self.role}",
                 f"advertise:{self.advertise}", f"leader:{self.leader or ''}", f"term:{self.term}",
                 f"terms_led:{self.terms_led}", f"worker_id:{self.worker_id}",
                 f"etcd:{','.join(self.config.etcd)}", ""]
        replica = self.replica
        if replica is not None:
            state = "failed" if replica.failed is not None else "ready" if replica.ready else "loading"
            lag = self.replica_lag()
            lines[-1:-1] = [f"replica:{state}", f"replica_loaded_from:{replica.loaded_from}",
                            f"applied_index:{replica.index}",
                            f"applied_revision:{replica.revision}",
                            f"replica_lag_records:{'' if lag is None else lag}"]
        if self.audit is not None:
            lines[-1:-1] = self.audit.info_lines()
        if self._served is not None:
            lines += self._served.info_lines()
        return lines
