#!/usr/bin/env python
"""EtcdLog appends on a real 3-member etcd cluster (loopback), beside a bare guarded etcd
Txn of the same size: what the record header, hash chain and leader guard cost.

The bare Txn runs one in flight; EtcdLog runs with each of ``--in-flight`` appends
outstanding (a window: the next starts when the oldest resolves), which is what the
commit pipeline may do with ``max_in_flight``. A lock command is ~50 bytes in a record,
so 2 KiB is a batch of ~32 operations, 64 KiB of ~1000. Also prints the etcd database
size after the run and after a snapshot truncated the log and compacted etcd.

Run: .venv/bin/python bench/etcd_log.py [--seconds 3] [--sizes 2048,16384,65536] [--in-flight 1,4]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop  # noqa: E402
from _report import Report  # noqa: E402

from coordcore.cluster import Election, Etcd, EtcdLog, Keys, Session  # noqa: E402
from coordcore.cluster import etcd as ops  # noqa: E402
from coordcore.cluster.testing import EtcdCluster  # noqa: E402


def etcd_version() -> str:
    out = subprocess.run(["etcd", "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[2]


async def timed(seconds: float, once: "object") -> tuple[float, list[float]]:
    """Call ``once()`` (a coroutine function) back to back for ``seconds``; rate and latencies."""
    lat: list[float] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        s = time.perf_counter()
        await once()  # type: ignore[operator]
        lat.append(time.perf_counter() - s)
    return len(lat) / (time.perf_counter() - t0), lat


def pct(lat: list[float], q: float) -> float:
    return statistics.quantiles(lat, n=100)[int(q) - 1] * 1e3 if len(lat) >= 100 else max(lat) * 1e3


async def windowed(seconds: float, depth: int, start: "object") -> tuple[float, list[float]]:
    """Keep ``depth`` calls of ``start()`` (returning a future) outstanding for ``seconds``."""
    lat: list[float] = []
    window: list[tuple[float, asyncio.Future[int]]] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if len(window) == depth:
            s, fut = window.pop(0)
            await fut
            lat.append(time.perf_counter() - s)
        window.append((time.perf_counter(), start()))  # type: ignore[operator]
    for s, fut in window:
        await fut
        lat.append(time.perf_counter() - s)
    return len(lat) / (time.perf_counter() - t0), lat


async def main(endpoints: list[str], seconds: float, sizes: list[int], depths: list[int], report: Report) -> None:
    etcd = await Etcd(endpoints, timeout=5.0).connect()
    session = await Session.open(etcd, 5.0)
    try:
        for size in sizes:
            keys = Keys(f"/bench/{size}")
            lead = await Election(etcd, keys, session, "bench:0").campaign()
            log = EtcdLog(etcd, keys, max_record_bytes=max(size, 64 * 1024), max_in_flight=max(depths))
            log.lead(lead)
            await log.replay(lambda i, p: None, lambda i, p: None)
            payload = os.urandom(size)
            await timed(0.3, lambda: log.append(payload))  # warm up
            by_depth = {d: await windowed(seconds, d, lambda: log.append(payload)) for d in depths}
            rate, lat = by_depth[depths[0]]

            raw = Keys(f"/bench-raw/{size}")
            seq = iter(range(1, 10**9))

            async def bare_txn() -> None:
                key = raw.log(next(seq))
                await etcd.txn([lead.guard(), ops.created_at(key, 0)], [ops.put(key, payload)])

            await timed(0.3, bare_txn)
            peer_rate, peer_lat = await timed(seconds, bare_txn)
            kib = size // 1024
            for d, (rate, lat) in by_depth.items():
                report.row(f"append {kib} KiB, 3 members, {d} in flight", "appends/s", rate,
                           "bare guarded Txn, 1 in flight", peer_rate,
                           p50_ms=pct(lat, 50), p99_ms=pct(lat, 99), peer_p50_ms=pct(peer_lat, 50))
                print(f"    EtcdLog x{d}: p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms, "
                      f"{rate * size / 2**20:.1f} MiB/s; bare Txn p50 {pct(peer_lat, 50):.2f} ms", flush=True)

            before = await etcd.status()
            await log.write_snapshot(log.next_index - 1, b"state")
            await etcd.txn([], [ops.delete(raw.log_prefix, raw.end(raw.log_prefix))])
            await etcd.compact((await etcd.range(b"/")).revision)
            await asyncio.sleep(1.0)  # compaction runs in the background
            after = await etcd.status()
            report.row(f"etcd db in use after {kib} KiB run", "MiB", before.db_size_in_use / 2**20, None, None,
                       higher_is_better=False, db_file_mib=before.db_size / 2**20)
            report.row(f"etcd db in use after truncation ({kib} KiB)", "MiB", after.db_size_in_use / 2**20, None, None,
                       higher_is_better=False, db_file_mib=after.db_size / 2**20)
            await lead.resign()
    finally:
        await session.close()
        await etcd.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--sizes", default="2048,16384,65536")
    ap.add_argument("--in-flight", default="1,4", help="EtcdLog appends outstanding, one row each")
    args = ap.parse_args()
    report = Report("etcd_log", {"aetcd": "aetcd", "grpcio": "grpcio"})
    report.versions["etcd"] = etcd_version()
    with tempfile.TemporaryDirectory(prefix="bench-etcd-") as d, EtcdCluster(d) as cluster:
        uvloop.run(main(cluster.endpoints, args.seconds, [int(s) for s in args.sizes.split(",")],
                        [int(d) for d in args.in_flight.split(",")], report))
    report.finish()
