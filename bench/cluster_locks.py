#!/usr/bin/env python
"""Durable lock cycles through a coordcore cluster beside etcd's own lock API, on the same
3-member etcd cluster (loopback), in one run.

* coordcore: two ``coordcore serve --etcd`` servers; the C load generator
  (bench/loadgen/lockload.c) drives the leader: ``LOCK.ACQUIRE`` (parked, woken on
  commit) then ``LOCK.RELEASE ... TOKEN t``; every batch is one guarded etcd Txn.
* etcd: v3lock ``Lock``/``Unlock`` with a lease over the JSON gateway of one member (all
  three members listen on 127.0.0.1, where that driver connects), one
  keep-alive HTTP connection per client (bench/_lockbench.py's light asyncio driver).

Each case runs each driver ``--rounds`` times (default 2) in alternating order; the report
keeps each one's best and prints the spread of the per-round ratio. CPU per cycle is the
sum over the three etcd members (and, for coordcore, its leader too).

``--base TREE`` also runs two cluster servers from another built checkout (a git worktree
of the previous commit, say) as their own coordcore cluster on the same etcd, in the same
rounds: an A/B of the cluster path, printed as ours / base.

Run: PYTHONPATH=. .venv/bin/python bench/cluster_locks.py [--seconds 3] [--rounds 2] [--quick] [--base TREE]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop  # noqa: E402

import _loadgen  # noqa: E402
import _lockbench  # noqa: E402
import _peers  # noqa: E402
from _report import Report  # noqa: E402

from coordcore.cluster import Election, Etcd, Keys, Session  # noqa: E402
from coordcore.cluster import etcd as ops  # noqa: E402
from coordcore.cluster.testing import EtcdCluster  # noqa: E402

CASES = [(1, 1000), (32, 1000)]


def etcd_version() -> str:
    out = subprocess.run(["etcd", "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[2]


def role(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"*1\r\n$4\r\nINFO\r\n")
        data = b""
        while b"# Cluster" not in data or not data.endswith(b"\r\n"):
            data += s.recv(65536)
    text = data.decode(errors="replace")
    return text.split("# Cluster", 1)[1].split("role:", 1)[1].split("\r\n", 1)[0]


def start_servers(cluster: EtcdCluster, base: Path, n: int, *, name: str = "bench",
                  tree: Path | None = None) -> tuple[list[subprocess.Popen[bytes]], int, int]:
    """``n`` cluster-mode servers of cluster ``name`` (from checkout ``tree``, default this
    one); the processes, and the leader's port and PID."""
    procs, ports = [], []
    env = dict(os.environ, PYTHONPATH=str(tree)) if tree is not None else None
    for i in range(n):
        port = _peers.free_port()
        data = base / f"{name}-cc{i}"
        argv = [sys.executable, "-m", "coordcore.server", "--port", str(port), "--data-dir", str(data),
                "--etcd", ",".join(cluster.endpoints), "--cluster", name, "--log-level", "warning"]
        procs.append(_peers.start(argv, port=port, what="coordcore serve --etcd", log=base / f"{name}-cc{i}.log",
                                  cwd=str(tree) if tree is not None else None, env=env))
        ports.append(port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for proc, port in zip(procs, ports):
            if role(port) == "leader":
                return procs, port, proc.pid
        time.sleep(0.05)
    raise SystemExit("no coordcore leader within 30 s")


async def guarded_txn_p50_ms(endpoints: list[str], n: int = 300) -> float:
    """p50 of one guarded Txn (leader compare + key absent, a 64-byte put), one in flight:
    the floor of one acquire through the cluster."""
    etcd = await Etcd(endpoints).connect()
    session = await Session.open(etcd, 5.0)
    try:
        keys = Keys("/bench-txn")
        lead = await Election(etcd, keys, session, "bench:0").campaign()
        lat = []
        for i in range(n):
            key = keys.log(i + 1)
            t0 = time.perf_counter()
            await etcd.txn([lead.guard(), ops.created_at(key, 0)], [ops.put(key, b"x" * 64)])
            lat.append(time.perf_counter() - t0)
        await lead.resign()
        return sorted(lat)[len(lat) // 2] * 1e3
    finally:
        await session.close()
        await etcd.close()


def measure(name: str, pids: list[int], fn: Callable[[], Any]) -> dict[str, float]:
    cpu0 = sum(_peers.cpu_seconds_of(p) for p in pids)
    stats = fn()
    cpu = sum(_peers.cpu_seconds_of(p) for p in pids) - cpu0
    p50, p99 = stats.percentiles_ms() if hasattr(stats, "percentiles_ms") else (stats.p50_ms, stats.p99_ms)
    out = {"cycles_per_s": stats.cycles_per_s, "p50_ms": p50, "p99_ms": p99,
           "cpu_us_per_cycle": cpu / max(stats.all_cycles, 1) * 1e6}
    print(f"    {name:<22} {out['cycles_per_s']:>9,.0f} cycles/s  p50 {p50:7.2f} ms  p99 {p99:8.2f} ms  "
          f"CPU {out['cpu_us_per_cycle']:7.1f} us/cycle", flush=True)
    return out


def spread_of(rounds: list[dict[str, dict[str, float]]], ours: str, theirs: str) -> list[float]:
    """The ratio ours / theirs (cycles/s) of each round."""
    return [r[ours]["cycles_per_s"] / r[theirs]["cycles_per_s"] for r in rounds]


def fmt_spread(ratios: list[float]) -> str:
    return (f"median {statistics.median(ratios):.2f}x, min {min(ratios):.2f}x, max {max(ratios):.2f}x"
            f" over {len(ratios)} round(s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one round, shorter")
    ap.add_argument("--base", type=Path, help="also run the cluster servers of this built checkout (A/B)")
    args = ap.parse_args()
    seconds = 1.5 if args.quick else args.seconds
    rounds = 1 if args.quick else args.rounds
    warmup = _lockbench.warmup_of(seconds)
    report = Report("cluster_locks", {"aetcd": "aetcd"})
    report.versions["etcd"] = etcd_version()
    _loadgen.build()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as d, EtcdCluster(Path(d) / "etcd", hosts=["127.0.0.1"] * 3) as cluster:
        etcd_pids = [m.proc.pid for m in cluster.members if m.proc is not None]
        procs, port, leader_pid = start_servers(cluster, Path(d), 2)
        etcd_port = cluster.members[0].client_port
        try:
            runners: dict[str, tuple[list[int], Callable[[int, int], Any]]] = {
                "coordcore cluster": ([leader_pid, *etcd_pids], lambda c, k: _loadgen.run(
                    port, "coordcore", clients=c, keys=k, seconds=seconds, warmup=warmup)),
                "etcd lock API": (etcd_pids, lambda c, k: uvloop.run(
                    _lockbench.drive(_lockbench.etcd_client, etcd_port, c, k, seconds))),
            }
            if args.base is not None:
                base_procs, base_port, base_pid = start_servers(cluster, Path(d), 2, name="bench-base",
                                                                tree=args.base.resolve())
                procs += base_procs
                runners["coordcore cluster (base)"] = ([base_pid, *etcd_pids], lambda c, k: _loadgen.run(
                    base_port, "coordcore", clients=c, keys=k, seconds=seconds, warmup=warmup))
            for n_clients, n_keys in CASES:
                print(f"  {n_clients} clients, {n_keys} keys", flush=True)
                best: dict[str, dict[str, float]] = {}
                per_round: list[dict[str, dict[str, float]]] = []
                order = list(runners)
                for rnd in range(rounds):
                    this: dict[str, dict[str, float]] = {}
                    for name in (order if rnd % 2 == 0 else order[::-1]):
                        pids, fn = runners[name]
                        out = this[name] = measure(name, pids, lambda: fn(n_clients, n_keys))
                        if name not in best or out["cycles_per_s"] > best[name]["cycles_per_s"]:
                            best[name] = out
                    per_round.append(this)
                spread = spread_of(per_round, "coordcore cluster", "etcd lock API")
                print(f"    per-round ratio vs etcd lock API: {fmt_spread(spread)}", flush=True)
                ab = spread_of(per_round, "coordcore cluster", "coordcore cluster (base)") if args.base else None
                if ab is not None:
                    print(f"    per-round ratio vs base:          {fmt_spread(ab)}", flush=True)
                ours, theirs = best["coordcore cluster"], best["etcd lock API"]
                report.row(f"durable lock cycles, {n_clients} clients, {n_keys} keys, 3 etcd members", "cycles/s",
                           ours["cycles_per_s"], "etcd lock API (v3lock)", theirs["cycles_per_s"],
                           coordcore_p50_ms=ours["p50_ms"], coordcore_p99_ms=ours["p99_ms"],
                           coordcore_cpu_us=ours["cpu_us_per_cycle"], peer_p50_ms=theirs["p50_ms"],
                           peer_p99_ms=theirs["p99_ms"], peer_cpu_us=theirs["cpu_us_per_cycle"],
                           round_ratios=spread, rounds=per_round)
                if ab is not None:
                    report.row(f"A/B {n_clients} clients, {n_keys} keys: this tree vs --base", "cycles/s",
                               ours["cycles_per_s"], "coordcore cluster (base)",
                               best["coordcore cluster (base)"]["cycles_per_s"], round_ratios=ab)
                if n_clients == 1:
                    txn = uvloop.run(guarded_txn_p50_ms(cluster.endpoints))
                    print(f"    one guarded etcd Txn     p50 {txn:7.2f} ms", flush=True)
                    report.row("1 client: acquire p50 vs one guarded etcd Txn p50", "ms", ours["p50_ms"],
                               "guarded Txn", txn, higher_is_better=False)
        finally:
            for p in procs:
                _peers.stop(p)
    report.finish()


if __name__ == "__main__":
    main()
