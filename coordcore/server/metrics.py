"""Prometheus metrics of a running server, read from its counters when scraped.

Nothing here runs per request. The hot lane and the ID generator count in native
counters (``WireLane.counts``, ``lockwire.hot_ids_issued``, ``Generator._counters``),
the commit pipeline in its :class:`~coordcore.locks.pipeline.BatchStats`, the file log
in its :class:`~coordcore.locks.store.SyncTimes`; the lock machine's gauges are native
reads. :class:`ServerCollector` turns them into metric families at scrape time. Only
commands served by the command table (the slow path, already a Python call each) are
counted by a wrapper, :class:`CommandCounts`, installed when metrics are on.

Names follow the Prometheus and etcd conventions: a ``coordcore_`` prefix, base units
(seconds, bytes), ``_total`` on counters, no per-key or per-session labels.
``prometheus-client`` is the ``coordcore[metrics]`` extra: it is imported only when a
server is given ``--metrics-port``.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

from coordcore.errors import CoordcoreError
from coordcore.server.core import Client, Command, CommandTable, Reply

__all__ = ["CommandCounts", "ServerCollector", "registry_for", "require_prometheus"]


def require_prometheus() -> Any:
    """``prometheus_client``, or an error that names the extra to install."""
    try:
        import prometheus_client
    except ImportError:
        raise CoordcoreError("--metrics-port needs prometheus-client: pip install 'coordcore[metrics]'") from None
    return prometheus_client


class CommandCounts:
    """Commands served by the command table, by name and outcome ("ok" or "error")."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def wrap(self, table: CommandTable) -> CommandTable:
        """The same table, each handler counting its calls' outcomes."""
        return {name: Command(self._counting(name.decode("ascii", "replace"), cmd), cmd.flags)  # type: ignore[arg-type]
                for name, cmd in table.items()}

    def _bump(self, name: str, outcome: str) -> None:
        key = (name, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1

    def _counting(self, name: str, cmd: Command) -> Any:
        handler = cmd.handler

        def counted(conn: Client, req: list[bytes]) -> Reply:
            try:
                reply = handler(conn, req)
            except Exception:
                self._bump(name, "error")
                raise
            if isinstance(reply, bytes):
                self._bump(name, "error" if reply[:1] == b"-" else "ok")
                return reply
            fut = asyncio.ensure_future(reply)  # (the read loop's ensure_future returns it as is)
            fut.add_done_callback(lambda f: self._bump(
                name, "ok" if not f.cancelled() and f.exception() is None and f.result()[:1] != b"-" else "error"))
            return fut

        return counted


def _histogram(buckets: list[tuple[float, int]], total: float) -> tuple[list[tuple[str, float]], float]:
    """Per-bucket counts as prometheus_client's cumulative ``(le, count)`` list."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in buckets:
        running += count
        out.append((repr(float(bound)), running))
    return out, total


def _timings(t: Any) -> Iterator[Any]:
    """The lock machine's wait and hold histograms (native counts, ms) in seconds."""
    from prometheus_client.core import HistogramMetricFamily

    for name, text, per_kind in (
            ("coordcore_lock_wait_seconds", "How long contenders waited for a grant (0 for one granted at once), "
             "by kind, in batch time, since the service opened.", t.waits),
            ("coordcore_lock_hold_seconds", "How long holds lasted until released, closed, expired, withdrawn "
             "or revoked, by kind, in batch time, since the service opened.", t.holds)):
        fam = HistogramMetricFamily(name, text, labels=["kind"])
        for kind, (counts, sum_ms) in per_kind.items():
            cum, _ = _histogram([(b / 1000, n) for b, n in zip(t.bounds_ms, counts)], 0.0)
            cum.append(("+Inf", sum(counts)))
            fam.add_metric([kind], cum, sum_value=sum_ms / 1000)
        yield fam


class ServerCollector:
    """A prometheus_client collector reading ``server``'s counters (see the module)."""

    def __init__(self, server: Any, counts: CommandCounts) -> None:
        self.server = server
        self.counts = counts

    def describe(self) -> list[Any]:
        return []  # no registration-time scrape: collect() reads live objects

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        srv = self.server
        info = GaugeMetricFamily("coordcore_server_info", "The server's version and role (always 1).",
                                 labels=["version", "role"])
        info.add_metric([srv.version, srv.role], 1)
        yield info
        yield GaugeMetricFamily("coordcore_connections", "Client connections open now.", value=len(srv.connections))
        yield CounterMetricFamily("coordcore_connections_accepted_total", "Client connections accepted.",
                                  value=srv.connections_total)
        yield GaugeMetricFamily("coordcore_connections_max", "The most client connections served at once.",
                                value=srv.config.max_connections)
        yield GaugeMetricFamily("coordcore_buffered_bytes", "Bytes buffered for all connections (input and output).",
                                value=srv.budget.buffered)
        yield from self._commands()
        from coordcore.server.status import lock_service

        svc = lock_service(srv)
        if svc is not None:
            yield from self._locks(svc)
        yield from self._ids()
        yield from self._audit(srv, svc)
        if srv.cluster is not None:
            yield from self._cluster(srv.cluster)

    def _cluster(self, cluster: Any) -> Iterator[Any]:
        """The node's role; the leader's log position, or a follower's replica (its lock
        figures are the leader's, in :meth:`_locks`, read there)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily("coordcore_cluster_is_leader", "1 while this server leads its cluster.",
                                value=1 if cluster.role == "leader" else 0)
        role = GaugeMetricFamily("coordcore_cluster_role", "This server's role in its cluster (always 1).",
                                 labels=["role"])
        role.add_metric([cluster.role], 1)
        yield role
        yield GaugeMetricFamily("coordcore_cluster_term", "The leadership term this server last saw.",
                                value=cluster.term)
        yield CounterMetricFamily("coordcore_cluster_terms_led_total", "Terms this server has led.",
                                  value=cluster.terms_led)
        index = cluster.log_index
        if index is not None:
            yield GaugeMetricFamily("coordcore_cluster_log_index",
                                    "The leader's last record known to be in etcd.", value=index)
        replica = cluster.replica
        if replica is None:
            return
        yield GaugeMetricFamily("coordcore_replica_ready",
                                "1 while this follower's replica is loaded and applies the log.",
                                value=1 if replica.ready and replica.failed is None else 0)
        yield GaugeMetricFamily("coordcore_replica_applied_index", "The last log record this replica applied.",
                                value=replica.index)
        yield GaugeMetricFamily("coordcore_replica_revision", "The revision of this replica's lock state.",
                                value=replica.revision)
        lag = cluster.replica_lag()
        if lag is not None:
            yield GaugeMetricFamily("coordcore_replica_lag_records",
                                    "Records this replica is behind the newest in etcd's log (read each second).",
                                    value=lag)

    def _commands(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        from coordcore._native import lockwire

        fam = CounterMetricFamily("coordcore_commands", "Commands answered, by name and outcome.",
                                  labels=["command", "outcome"])
        totals = dict(self.counts.counts)
        lane = self.server.lane
        if lane is not None:
            for name, (ok, other) in lane.counts().items():
                for outcome, n in (("ok", ok), ("error", other)):
                    totals[(name, outcome)] = totals.get((name, outcome), 0) + n
        hot_ids = lockwire.hot_ids_issued()
        if hot_ids:
            totals[("ID.NEXT", "ok")] = totals.get(("ID.NEXT", "ok"), 0) + hot_ids
        for (name, outcome), n in sorted(totals.items()):
            fam.add_metric([name, outcome], n)
        yield fam
        yield CounterMetricFamily("coordcore_requests_total", "Requests read, all paths and connections together.",
                                  value=self.server.commands_total)

    def _locks(self, svc: Any) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        g = svc.gauges()
        yield GaugeMetricFamily("coordcore_sessions", "Live sessions.", value=g["sessions"])
        yield CounterMetricFamily("coordcore_sessions_opened_total", "Sessions opened (over the log's life).",
                                  value=g["sessions_opened"])
        ended = CounterMetricFamily("coordcore_sessions_ended_total",
                                    "Sessions ended since the server started, by reason.", labels=["reason"])
        for reason, n in sorted(svc.sessions_ended.items()):
            ended.add_metric([reason], n)
        yield ended
        yield GaugeMetricFamily("coordcore_keys_held",
                                "Keys with at least one holder (locks, semaphores, elections).", value=g["keys"])
        yield GaugeMetricFamily("coordcore_waiters", "Contenders waiting for a lock, permits or leadership.",
                                value=g["waiters"])
        yield GaugeMetricFamily("coordcore_revision", "The revision of the last committed change.",
                                value=svc.revision)
        pools = svc.pools.totals()  # every pool together: no per-pool or per-tenant labels
        yield GaugeMetricFamily("coordcore_pools", "Quota pools defined.", value=pools.pools)
        yield GaugeMetricFamily("coordcore_pool_capacity_units", "Capacity of every quota pool together.",
                                value=pools.capacity)
        yield GaugeMetricFamily("coordcore_pool_held_units", "Units leased from every quota pool together.",
                                value=pools.held)
        yield GaugeMetricFamily("coordcore_pool_waiting_requests", "Requests waiting for quota pool units.",
                                value=pools.waiting)
        yield CounterMetricFamily("coordcore_pool_preemptions_total",
                                  "Pool leases asked to give back (preempted) since the server started.",
                                  value=pools.preemptions)
        yield CounterMetricFamily("coordcore_pool_revocations_total",
                                  "Pool leases revoked after their give-back grace since the server started.",
                                  value=pools.revocations)
        st = svc.stats
        yield CounterMetricFamily("coordcore_batches_total", "Batch records committed (ticks included).",
                                  value=st.batches)
        yield CounterMetricFamily("coordcore_batch_commands_total", "Commands in committed batches.",
                                  value=st.commands)
        yield CounterMetricFamily("coordcore_ticks_total", "Empty batches (lease expiry ticks).", value=st.ticks)
        yield CounterMetricFamily("coordcore_fsyncs_total", "fdatasync calls of the lock log.", value=st.fsyncs)
        yield CounterMetricFamily("coordcore_log_written_bytes_total", "Batch record bytes written to the log.",
                                  value=st.bytes)
        yield CounterMetricFamily("coordcore_snapshots_total", "Snapshots written.", value=st.snapshots)
        # Commands per batch: the pipeline buckets by powers of two (1, 2-3, 4-7, ...).
        sizes = sorted((b, n) for b, n in st.sizes.items() if b)
        buckets = [(2 * b - 1, n) for b, n in sizes]
        cum, _ = _histogram(buckets, 0.0)
        cum.append(("+Inf", st.batches - st.ticks))
        yield HistogramMetricFamily("coordcore_batch_size_commands",
                                    "Commands per non-empty batch (buckets by powers of two).",
                                    buckets=cum, sum_value=st.commands)
        yield from _timings(svc.timings())
        times = svc.sync_times
        if times is not None:
            cum, total = _histogram(list(zip(times.BOUNDS, times.counts)), times.sum)
            cum.append(("+Inf", times.count))
            yield HistogramMetricFamily("coordcore_fsync_duration_seconds",
                                        "How long the lock log's fdatasync took.", buckets=cum, sum_value=total)
        path = svc.log_path
        if path is not None:
            log_bytes = snap_bytes = 0
            try:
                with os.scandir(path) as entries:  # a few segments and snapshots
                    for entry in entries:
                        if entry.name.endswith(".log"):
                            log_bytes += entry.stat().st_size
                        elif entry.name.endswith(".snap"):
                            snap_bytes += entry.stat().st_size
            except OSError:
                pass
            yield GaugeMetricFamily("coordcore_log_size_bytes", "Bytes of the lock log's segments on disk.",
                                    value=log_bytes)
            yield GaugeMetricFamily("coordcore_snapshot_size_bytes", "Bytes of the lock log's snapshots on disk.",
                                    value=snap_bytes)

    def _audit(self, srv: Any, svc: Any) -> Iterator[Any]:
        """The audit trail (``--audit-key``): a cluster server's, or the single server's."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        audit = srv.cluster.audit if srv.cluster is not None else None
        if audit is not None:
            trail, mismatches = audit.trail, audit.mismatches
        else:
            from coordcore.audit import wire

            store = wire.find_store(svc) if svc is not None else None
            if store is None:
                return
            trail, mismatches = store.trail, 0
        yield GaugeMetricFamily("coordcore_audit_tree_size", "Records in the audit trail's Merkle tree.",
                                value=trail.tree.size)
        yield GaugeMetricFamily("coordcore_audit_checkpoint_size",
                                "Records the newest signed audit checkpoint covers.",
                                value=trail.checkpoints[-1].size if trail.checkpoints else 0)
        yield CounterMetricFamily("coordcore_audit_checkpoints_total",
                                  "Audit checkpoints signed or checked and kept since start.",
                                  value=trail.checkpoints_kept)
        yield CounterMetricFamily("coordcore_audit_checkpoint_mismatches_total",
                                  "Audit checkpoints refused since start (another root, first record or key).",
                                  value=mismatches)

    def _ids(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        counters = getattr(self.server.ids, "_counters", None)
        if counters is None:
            return
        issued, waits, regressions = counters
        yield CounterMetricFamily("coordcore_ids_issued_total", "IDs issued by this server's generator.",
                                  value=issued)
        yield CounterMetricFamily("coordcore_id_sequence_waits_total",
                                  "Waits for the next tick: the sequence ran out (or the clock ran too far ahead).",
                                  value=waits)
        yield CounterMetricFamily("coordcore_id_clock_regressions_total",
                                  "Times the clock was found behind the last issued ID.", value=regressions)


def registry_for(server: Any, counts: CommandCounts) -> Any:
    """A registry with the server's collector and the process collector (CPU, memory,
    open files), separate from prometheus_client's global one."""
    prom = require_prometheus()
    registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server, counts))
    prom.ProcessCollector(registry=registry)
    return registry

