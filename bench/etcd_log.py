#!/usr/bin/env python
"""EtcdLog appends on a real 3-member etcd cluster (loopback), beside a bare guarded etcd
Txn of the same size: what the record header, hash chain and leader guard cost.

Both run one append in flight, as the commit pipeline does (group commit puts many lock
operations in one record). Also prints the etcd database size after the run and after a
snapshot truncated the log and compacted etcd.

Run: .venv/bin/python bench/etcd_log.py [--seconds 3] [--sizes 16384,65536]
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


async def main(endpoints: list[str], seconds: float, sizes: list[int], report: Report) -> None:
    etcd = await Etcd(endpoints, timeout=5.0).connect()
    session = await Session.open(etcd, 5.0)
    try:
        for size in sizes:
            keys = Keys(f"/bench/{size}")
            lead = await Election(etcd, keys, session, "bench:0").campaign()
            log = EtcdLog(etcd, keys, max_record_bytes=max(size, 256 * 1024))
            log.lead(lead)
            await log.replay(lambda i, p: None, lambda i, p: None)
            payload = os.urandom(size)
            await timed(0.3, lambda: log.append(payload))  # warm up
            rate, lat = await timed(seconds, lambda: log.append(payload))

            raw = Keys(f"/bench-raw/{size}")
            seq = iter(range(1, 10**9))

            async def bare_txn() -> None:
                key = raw.log(next(seq))
                await etcd.txn([lead.guard(), ops.created_at(key, 0)], [ops.put(key, payload)])

            await timed(0.3, bare_txn)
            peer_rate, peer_lat = await timed(seconds, bare_txn)
            kib = size // 1024
            report.row(f"append {kib} KiB, 3 members, 1 in flight", "appends/s", rate, "bare guarded Txn", peer_rate,
                       p50_ms=pct(lat, 50), p99_ms=pct(lat, 99), peer_p50_ms=pct(peer_lat, 50))
            print(f"    EtcdLog p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms, {rate * size / 2**20:.1f} MiB/s;"
                  f" bare Txn p50 {pct(peer_lat, 50):.2f} ms", flush=True)

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
    ap.add_argument("--sizes", default="16384,65536")
    args = ap.parse_args()
    report = Report("etcd_log", {"aetcd": "aetcd", "grpcio": "grpcio"})
    report.versions["etcd"] = etcd_version()
    with tempfile.TemporaryDirectory(prefix="bench-etcd-") as d, EtcdCluster(d) as cluster:
        uvloop.run(main(cluster.endpoints, args.seconds, [int(s) for s in args.sizes.split(",")], report))
    report.finish()
