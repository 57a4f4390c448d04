"""What the status page and ``coordcore top`` show: a bounded view of the lock state.

Never the whole table: ``/status.json`` pages through the keys (``after``, ``count``,
``prefix``) and :func:`top` looks at most ``scan`` keys from a cursor for the busiest
(most holders and waiters) and the longest-waiting ones. A wait's age is given twice:
in revisions (a waiter's ticket is the revision at which it queued, so ``revision -
ticket`` is how many changes it has waited through) and in ms of batch time (the time
the next batch would carry minus that of the batch it arrived in), which is unknown
(null) for a waiter restored from a snapshot. Both order waits alike: revisions and
batch times rise together along the log.

``/status.json`` (documented in the README, "Metrics, status and logs")::

    {"server": {...}, "revision": n, "sessions": n, "keys": n, "waiters": n,
     "batches": {...}, "fsync": {...} | null, "cluster": {...} | null,
     "locks": [{"key", "kind", "permits", "mode", "holders": [...], "waiters": [...],
                "holder_count", "waiter_count", "oldest_wait_ms": ms | null}, ...],
     "next": cursor | null,
     "timings": {"bounds_ms": [...], "waits": {kind: summary}, "holds": {kind: summary}},
     "pool_totals": {"pools", "capacity", "held", "waiting", "preemptions", "revocations"},
     "pools": [{"pool", "capacity", "held", "waiting", "tenant_count",
                "tenants": [{"tenant", "weight", "min", "max", "band", "held", "waiting", "share"}, ...]},
               ...]}

``timings`` sums up the native wait and hold histograms (batch time, since the service
opened) by kind ("exclusive", "shared", "semaphore", "election", "pool"): each summary is
``{"count", "mean_ms", "p50_ms", "p99_ms"}``, the quantiles being the upper bound of the
bucket they fall in (null above the last bound, or with no observation).

``pools`` is the top ``pools=n`` (10, at most 100) by units held, then requests waiting,
among at most ``SCAN_MAX`` pools in name order, each with its first ``CONTENDERS_MAX``
tenants (by name; ``tenant_count`` is whole) and their fair share of the current demand.
"""
from __future__ import annotations

import heapq
import json
import os
import time
from typing import Any

from coordcore.errors import BadArgument
from coordcore.locks.machine import Contender, Kind, KeyInfo, Mode, Timings
from coordcore.server import resp
from coordcore.server.commands import parse_int, parse_options, require_args
from coordcore.server.core import Client, Command, CommandTable, Flag

__all__ = ["TOP_MAX", "TopEntry", "page_html", "status_json", "timings_json", "top", "top_commands", "top_pools"]

#: Most keys one page of /status.json lists, and most keys a top read scans.
PAGE_MAX = 500
SCAN_MAX = 100_000
TOP_MAX = 100
#: Holders and waiters listed per key (the counts are whole).
CONTENDERS_MAX = 16


def _text(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def _mode(c: Contender) -> str:
    return {int(Mode.SHARED): "shared"}.get(c.mode, "exclusive")


def key_json(info: KeyInfo, oldest_wait_ms: int | None = None) -> dict[str, Any]:
    """One key as /status.json lists it (the fields of LOCK.INFO, and how long its
    oldest waiter has waited: null without a waiter or when unknown)."""
    def contender(c: Contender) -> dict[str, Any]:
        return {"session": c.session, "ticket": c.ticket, "token": c.token, "mode": _mode(c)}

    return {"key": _text(info.key), "kind": Kind(info.kind).name.lower(), "permits": info.permits,
            "mode": _mode(info.holders[0]) if info.holders else "free",
            "holders": [contender(c) for c in info.holders], "waiters": [contender(c) for c in info.waiters],
            "holder_count": info.holder_count, "waiter_count": info.waiter_count,
            "oldest_wait_ms": oldest_wait_ms if info.waiters else None}


def _quantile(bounds: list[int], counts: list[int], total: int, q: float) -> int | None:
    """The upper bound of the bucket holding the ``q`` quantile (None: above the last
    bound, or nothing observed): a histogram can say no better."""
    if not total:
        return None
    rank, running = q * total, 0
    for bound, count in zip(bounds, counts):
        running += count
        if running >= rank:
            return bound
    return None


def timings_json(t: Timings) -> dict[str, Any]:
    """The wait and hold histograms summed up per kind (see the module docstring)."""
    def summary(counts: list[int], sum_ms: int) -> dict[str, Any]:
        total = sum(counts)
        return {"count": total, "mean_ms": round(sum_ms / total, 1) if total else None,
                "p50_ms": _quantile(t.bounds_ms, counts, total, 0.5),
                "p99_ms": _quantile(t.bounds_ms, counts, total, 0.99)}

    return {"bounds_ms": t.bounds_ms,
            "waits": {kind: summary(*v) for kind, v in t.waits.items()},
            "holds": {kind: summary(*v) for kind, v in t.holds.items()}}


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return parse_int(raw.encode(), name, low, high)
    except BadArgument as exc:
        raise ValueError(str(exc)) from None


def lock_service(server: Any) -> Any:
    """The lock service ``server`` serves (in cluster mode: while it leads), or None."""
    if server.locks is not None:
        return server.locks
    cluster = server.cluster
    return cluster.lock_service if cluster is not None else None


def status_json(server: Any, query: dict[str, str]) -> dict[str, Any]:
    """The /status.json document for ``server`` (see the module docstring)."""
    after = _int_param(query, "after", 0, 0, 2**63 - 1)
    count = _int_param(query, "count", 100, 1, PAGE_MAX)
    prefix = query.get("prefix", "").encode("utf-8", "surrogateescape")[:1024]
    out: dict[str, Any] = {
        "server": {"version": server.version, "role": server.role, "port": server.port, "pid": os.getpid(),
                   "uptime_seconds": round(time.monotonic() - server.started, 1),
                   "connections": len(server.connections), "requests": server.commands_total},
        "cluster": None, "locks": [], "next": None, "time": time.time(),
    }
    cluster = server.cluster
    if cluster is not None:
        out["cluster"] = {"role": cluster.role, "leader": cluster.leader, "term": cluster.term}
    svc = lock_service(server)
    if svc is None:
        return out
    st = svc.stats
    out.update(svc.gauges())
    out["revision"] = svc.revision
    out["batches"] = {"batches": st.batches, "commands": st.commands, "ticks": st.ticks, "fsyncs": st.fsyncs,
                      "bytes": st.bytes, "snapshots": st.snapshots, "sizes": st.bucket_counts()}
    times = svc.sync_times
    out["fsync"] = None if times is None else {
        "count": times.count, "seconds": round(times.sum, 6), "slowest_seconds": round(times.slowest, 6),
        "mean_seconds": round(times.sum / times.count, 6) if times.count else 0.0}
    out["timings"] = timings_json(svc.timings())
    out["pool_totals"] = svc.pools.totals()._asdict()
    out["pools"] = top_pools(svc, _int_param(query, "pools", 10, 0, TOP_MAX))
    cursor, keys = svc.scan_keys(prefix, after, count)
    for key in keys:
        info = svc.info(key, limit=CONTENDERS_MAX)
        if info is not None:
            out["locks"].append(key_json(info, svc.oldest_wait_ms(key) if info.waiters else None))
    out["next"] = cursor or None
    return out


def top_pools(svc: Any, n: int, scan: int = SCAN_MAX) -> list[dict[str, Any]]:
    """The ``n`` pools holding the most units (then with the most waiting requests) among
    the first ``scan`` by name, with their tenants' holdings and fair shares."""
    ranked: list[tuple[int, int, bytes]] = []
    for name in svc.pools.names()[:scan]:
        s = svc.pools.summary(name, shares=False)
        if s is not None:
            ranked.append((s.held, s.waiting, name))
    out = []
    for _, _, name in heapq.nlargest(n, ranked, key=lambda t: (t[0], t[1])):
        s = svc.pools.summary(name)
        if s is None:
            continue
        out.append({"pool": _text(s.name), "capacity": s.capacity, "held": s.held, "waiting": s.waiting,
                    "tenant_count": len(s.tenants),
                    "tenants": [{"tenant": _text(t.name), "weight": t.weight, "min": t.minimum, "max": t.maximum,
                                 "band": t.band, "held": t.held, "waiting": t.waiting,
                                 "share": round(float(t.share), 3)} for t in s.tenants[:CONTENDERS_MAX]]})
    return out


class TopEntry:
    """One key of a top read: holders, waiters, and the oldest waiter's age in revisions
    (0 without a waiter) and in ms of batch time (0 without a waiter, None if unknown)."""

    __slots__ = ("key", "holders", "waiters", "waited", "waited_ms")

    def __init__(self, key: bytes, holders: int, waiters: int, waited: int, waited_ms: int | None) -> None:
        self.key, self.holders, self.waiters, self.waited = key, holders, waiters, waited
        self.waited_ms = waited_ms

    def as_dict(self) -> dict[str, Any]:
        return {"key": _text(self.key), "holders": self.holders, "waiters": self.waiters,
                "waited_revisions": self.waited, "waited_ms": self.waited_ms}


def top(svc: Any, n: int = 10, scan: int = 10_000, after: int = 0) -> tuple[list[TopEntry], list[TopEntry], int]:
    """The ``n`` busiest keys (most contenders) and the ``n`` longest waits among at
    most ``scan`` keys from cursor ``after``; and the cursor to go on from (0: done)."""
    busiest: list[tuple[int, bytes, TopEntry]] = []
    longest: list[tuple[int, bytes, TopEntry]] = []
    revision = svc.revision
    cursor, seen = after, 0
    while seen < scan:
        cursor, keys = svc.scan_keys(b"", cursor, min(1000, scan - seen))
        seen += len(keys)
        for key in keys:
            info = svc.info(key, limit=1)
            if info is None:
                continue
            waited = revision - info.waiters[0].ticket if info.waiters else 0
            waited_ms = svc.oldest_wait_ms(key) if info.waiters else 0
            entry = TopEntry(key, info.holder_count, info.waiter_count, waited, waited_ms)
            heapq.heappush(busiest, (info.holder_count + info.waiter_count, key, entry))
            if len(busiest) > n:
                heapq.heappop(busiest)
            if info.waiters:
                heapq.heappush(longest, (waited, key, entry))
                if len(longest) > n:
                    heapq.heappop(longest)
        if not cursor:
            break
    return ([e for _, _, e in sorted(busiest, key=lambda t: (-t[0], t[1]))],
            [e for _, _, e in sorted(longest, key=lambda t: (-t[0], t[1]))], cursor)


def top_commands(svc: Any) -> CommandTable:
    """``LOCKS.TOP [COUNT n] [SCAN m] [AFTER cursor]`` -> ``[cursor, busiest, longest]``,
    each entry ``[key, holders, waiters, waited_revisions, waited_ms]`` (``waited_ms``
    nil: the oldest waiter's arrival is unknown, it was restored from a snapshot)."""

    def cmd_top(conn: Client, req: list[bytes]) -> bytes:
        require_args(req, 0, 6)
        o = parse_options(req[1:], {b"COUNT": (1, TOP_MAX), b"SCAN": (1, SCAN_MAX), b"AFTER": (0, 2**63 - 1)})
        busiest, longest, cursor = top(svc, o.get(b"COUNT", 10), o.get(b"SCAN", 10_000), o.get(b"AFTER", 0))

        def rows(entries: list[TopEntry]) -> bytes:
            return resp.encode_array([resp.encode_array([resp.encode_bulk(e.key), resp.encode_int(e.holders),
                                                         resp.encode_int(e.waiters), resp.encode_int(e.waited),
                                                         resp.encode_null(conn.resp3) if e.waited_ms is None
                                                         else resp.encode_int(e.waited_ms)])
                                      for e in entries])

        return resp.encode_array([resp.encode_bulk(str(cursor).encode()), rows(busiest), rows(longest)])

    return {b"LOCKS.TOP": Command(cmd_top, Flag.READS)}


def page_html() -> bytes:
    """The status page: one self-contained document (no CDN, no build step)."""
    from coordcore.server.status_page import PAGE

    return PAGE.encode()


def dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()
