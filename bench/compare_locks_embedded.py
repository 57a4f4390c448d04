"""Embedded durable lock service: acquire+release cycles/s, latency and group commit,
beside redis-py's Lock on a Redis server started here, measured in the same run.

    ./dev bench locks_embedded

coordcore: `LockService.open(tmpdir)` with fsync on (one fdatasync per batch), uvloop,
N tasks each with its own session, cycling `acquire(key)` + `release(grant)` on 1 key or
on 1000 keys (a random key per cycle). Reported: cycles/s, p50/p99 of a whole cycle and
of the acquire, fsyncs per cycle and the batch-size distribution.

Peer: redis-py's asyncio `Lock` (SET NX PX + a Lua release, blocking acquire polls every
0.1 s, its default) against redis-server on 127.0.0.1 started with a temp dir in two
modes: `--save ''` (no persistence) and `--appendonly yes --appendfsync always` (durable).
The script installs redis-server (apt-get) if it is missing and stops what it started.
"""
from __future__ import annotations

import asyncio
import collections
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from _report import Report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import redis.asyncio as aredis  # noqa: E402

from coordcore.locks.service import LockService  # noqa: E402

DURATION = float(os.environ.get("BENCH_SECONDS", "3.0"))
WARMUP = 0.5
TASKS = (1, 8, 32)
KEYSETS = (1, 1000)
NOPERSIST = "redis-py Lock, Redis no persistence"
AOF = "redis-py Lock, Redis AOF fsync always"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        print("  installing redis-server (apt-get) ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        path = shutil.which("redis-server")
    if path is None:
        raise SystemExit("redis-server is not available: the peer is missing (no silent skip)")
    return path


class RedisServer:
    """redis-server on 127.0.0.1 with a temp data dir; stopped by its PID."""

    def __init__(self, binary: str, mode: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="coordcore-bench-redis-")
        self.port = free_port()
        args = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.dir,
                "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning"]
        if mode == "aof":
            args += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server did not start: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
                time.sleep(0.05)
        self.version = client.info("server")["redis_version"]
        client.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


async def drive(n_tasks: int, n_keys: int,
                cycle: Callable[[int, str], Awaitable[tuple[float, float]]]) -> dict[str, float]:
    """Run ``n_tasks`` tasks doing cycles for WARMUP + DURATION seconds; measure after warm-up."""
    cycles: list[float] = []
    acquires: list[float] = []
    stop_at = [0.0]
    start_at = [0.0]

    async def task(i: int) -> None:
        rng = random.Random(i)
        while True:
            now = time.perf_counter()
            if now >= stop_at[0]:
                return
            key = "bench/0" if n_keys == 1 else f"bench/{rng.randrange(n_keys)}"
            t_acq, t_cycle = await cycle(i, key)
            if now >= start_at[0]:
                acquires.append(t_acq)
                cycles.append(t_cycle)

    t0 = time.perf_counter()
    start_at[0] = t0 + WARMUP
    stop_at[0] = start_at[0] + DURATION
    await asyncio.gather(*(task(i) for i in range(n_tasks)))
    elapsed = time.perf_counter() - start_at[0]
    c = np.array(cycles) * 1e3
    a = np.array(acquires) * 1e3
    return {"cycles_per_s": len(cycles) / elapsed, "cycles": len(cycles),
            "p50_ms": float(np.percentile(c, 50)), "p99_ms": float(np.percentile(c, 99)),
            "acquire_p50_ms": float(np.percentile(a, 50)), "acquire_p99_ms": float(np.percentile(a, 99))}


async def bench_coordcore(n_tasks: int, n_keys: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="coordcore-bench-locks-") as d:
        async with LockService.open(d) as svc:
            sessions = [await svc.open_session(ttl=60) for _ in range(n_tasks)]

            async def cycle(i: int, key: str) -> tuple[float, float]:
                t0 = time.perf_counter()
                g = await svc.acquire(key, sessions[i])
                t1 = time.perf_counter()
                await svc.release(g)
                return t1 - t0, time.perf_counter() - t0

            before = (svc.stats.batches, svc.stats.fsyncs, svc.stats.commands,
                      collections.Counter(svc.stats.sizes))
            out = await drive(n_tasks, n_keys, cycle)
            st = svc.stats
            sizes = collections.Counter(st.sizes)
            sizes.subtract(before[3])
            out["batches"] = st.batches - before[0]
            out["fsyncs"] = st.fsyncs - before[1]
            out["commands"] = st.commands - before[2]
            out["sizes"] = {k: v for k, v in sorted(sizes.items()) if v > 0}
            return out


async def bench_redis(port: int, n_tasks: int, n_keys: int) -> dict[str, Any]:
    client = aredis.Redis(host="127.0.0.1", port=port, max_connections=max(64, 2 * n_tasks))
    try:
        async def cycle(i: int, key: str) -> tuple[float, float]:
            lock = client.lock(key, timeout=10)
            t0 = time.perf_counter()
            await lock.acquire()
            t1 = time.perf_counter()
            await lock.release()
            return t1 - t0, time.perf_counter() - t0

        return await drive(n_tasks, n_keys, cycle)
    finally:
        await client.aclose()


def size_label(b: int) -> str:
    return "0 (tick)" if b == 0 else "1" if b == 1 else f"{b}-{2 * b - 1}"


def main() -> None:
    binary = ensure_redis_server()
    rep = Report("locks_embedded", peers={"redis-py": "redis"})
    servers = {NOPERSIST: RedisServer(binary, "none"), AOF: RedisServer(binary, "aof")}
    try:
        rep.versions["redis-server"] = servers[NOPERSIST].version
        rep.versions["uvloop"] = uvloop.__version__
        for n_keys in KEYSETS:
            for n_tasks in TASKS:
                case = f"{n_tasks} task{'s' if n_tasks > 1 else ''}, {n_keys} key{'s' if n_keys > 1 else ''}"
                ours = uvloop.run(bench_coordcore(n_tasks, n_keys))
                peers = {name: uvloop.run(bench_redis(srv.port, n_tasks, n_keys))
                         for name, srv in servers.items()}
                ops = 2 * ours["cycles"]
                dist = ", ".join(f"{size_label(k)}: {v}" for k, v in ours["sizes"].items())
                print(f"  -- {case}: coordcore p50 {ours['p50_ms']:.2f} ms, p99 {ours['p99_ms']:.2f} ms, "
                      f"acquire p50 {ours['acquire_p50_ms']:.2f} ms; {ours['fsyncs']} fsyncs for "
                      f"{ours['commands']} commands ({ours['commands'] / max(ours['fsyncs'], 1):.1f} "
                      f"per fsync); batch sizes {{{dist}}}", flush=True)
                extra = {"coordcore_detail": ours, "peers_detail": peers, "ops_measured": ops}
                rep.row(f"{case}: cycles/s", "cycles/s", ours["cycles_per_s"], NOPERSIST,
                        peers[NOPERSIST]["cycles_per_s"], **extra)
                rep.row(f"{case}: cycles/s (durable peer)", "cycles/s", ours["cycles_per_s"], AOF,
                        peers[AOF]["cycles_per_s"])
                rep.row(f"{case}: cycle p50", "ms", ours["p50_ms"], NOPERSIST,
                        peers[NOPERSIST]["p50_ms"], higher_is_better=False)
                rep.row(f"{case}: cycle p99", "ms", ours["p99_ms"], NOPERSIST,
                        peers[NOPERSIST]["p99_ms"], higher_is_better=False)
                rep.row(f"{case}: cycle p99 (durable peer)", "ms", ours["p99_ms"], AOF,
                        peers[AOF]["p99_ms"], higher_is_better=False)
                rep.row(f"{case}: commands per fsync", "cmds", ours["commands"] / max(ours["fsyncs"], 1),
                        None, None)
    finally:
        for srv in servers.values():
            srv.stop()
    rep.finish()


if __name__ == "__main__":
    main()
