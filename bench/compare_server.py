"""coordcore serve beside Redis (and etcd, ZooKeeper) in one run: `./dev bench server`.

1. redis-benchmark: coordcore ID.NEXT vs redis-server INCR, same flags (-c 50, with and
   without -P 16), alternating rounds, best of each; server CPU per request.
2. ID.RANGE: IDs per ms from one worker process (ceiling 4096/ms) and from two.
3. Locks (see _lockbench.py): acquire+release cycles/s and latency percentiles with 1,
   8, 32 clients on 1 key and 1000 keys (plots: bench/plots/locks_latency_cdf.png,
   locks_throughput.png; ``--no-plots``: none); coordcore (fsync on) vs redis-py Lock on Redis
   (no persistence, and AOF always), etcd's lock API, kazoo's Lock on ZooKeeper.
   coordcore and the Redis Lock protocol are driven by a C load generator
   (bench/loadgen/lockload.c, built with gcc into bench/out/ on first use).

The machine is shared and has 2 cores: the load generators run on the same cores as
the servers, so compare within one run, as ratios.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import hiredis
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _peers  # noqa: E402
from _report import Report, progress  # noqa: E402

QUICK = os.environ.get("COORDCORE_BENCH_QUICK") == "1"


def redis_benchmark(port: int, pid: int, command: list[str], *, pipeline: int, requests: int) -> tuple[float, float]:
    """(requests/s, server CPU ns per request) of one redis-benchmark run."""
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", "50", "-n", str(requests),
            "-P", str(pipeline), "--csv", *command]
    cpu0 = _peers.cpu_seconds_of(pid)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout
    cpu1 = _peers.cpu_seconds_of(pid)
    line = [ln for ln in out.strip().splitlines() if ln.startswith('"') and not ln.startswith('"test"')][-1]
    rps = float(line.split(",")[1].strip('"'))
    return rps, (cpu1 - cpu0) / requests * 1e9


def bench_id_next(report: Report, cc: tuple[int, int], rd: tuple[int, int]) -> None:
    rounds = 1 if QUICK else 3
    for pipeline, n_ours in ((1, 200_000), (16, 2_000_000)):
        n = n_ours // (4 if QUICK else 1)
        best: dict[str, tuple[float, float]] = {}
        for _ in range(rounds):
            for name, (port, pid), cmd in (("coordcore", cc, ["ID.NEXT"]), ("redis", rd, ["INCR", "k"])):
                progress(f"  redis-benchmark -P {pipeline}: {name}")
                rps, cpu = redis_benchmark(port, pid, cmd, pipeline=pipeline, requests=n)
                if rps > best.get(name, (0.0, 0.0))[0]:
                    best[name] = (rps, cpu)
        flags = f"-c 50 -P {pipeline}"
        report.row(f"ID.NEXT vs INCR, redis-benchmark {flags}", "req/s", best["coordcore"][0],
                   "redis INCR", best["redis"][0])
        report.row(f"  server CPU per request ({flags})", "ns", best["coordcore"][1], "redis INCR",
                   best["redis"][1], higher_is_better=False)


class _Load(asyncio.Protocol):
    """A light pipelined load generator: keeps `depth` requests in flight."""

    def __init__(self, request: bytes, depth: int, on_reply: object) -> None:
        self.request = request
        self.depth = depth
        self.on_reply = on_reply
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.stopping = False
        self.inflight = 0
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.inflight = self.depth
        self.transport.write(self.request * self.depth)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        n = 0
        while (reply := self.reader.gets()) is not False:
            self.on_reply(reply)  # type: ignore[operator]
            n += 1
        self.inflight -= n
        if not self.stopping:
            self.inflight += n
            assert self.transport is not None
            self.transport.write(self.request * n)
        elif self.inflight == 0 and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def id_range_rate(ports: list[int], seconds: float) -> float:
    """IDs per ms served over `ports` (one pipelined connection per port)."""
    loop = asyncio.get_running_loop()
    total = [0]

    def count(reply: list[list[int]]) -> None:
        total[0] += sum(c for _, c in reply)

    request = hiredis.pack_command(("ID.RANGE", 4096))
    loads = []
    for port in ports:
        _, proto = await loop.create_connection(lambda: _Load(request, 4, count), "127.0.0.1", port)
        loads.append(proto)
    await asyncio.sleep(0.3)  # warm up
    start_ids, t0 = total[0], time.perf_counter()
    await asyncio.sleep(seconds)
    ids, t1 = total[0] - start_ids, time.perf_counter()
    for proto in loads:
        proto.stopping = True
    await asyncio.gather(*(p.done for p in loads))
    for proto in loads:
        assert proto.transport is not None
        proto.transport.close()
    return ids / ((t1 - t0) * 1000)


def bench_id_range(report: Report) -> None:
    seconds = 1.0 if QUICK else 3.0
    proc, port, _ = _peers.start_coordcore("--id-workers", "2")
    try:
        one = uvloop.run(id_range_rate([port], seconds))
        two = uvloop.run(id_range_rate([port, port + 1], seconds))
    finally:
        _peers.stop(proc)
    report.row("ID.RANGE 4096, 1 worker process", "IDs/ms", one, "format ceiling 4096/ms", 4096.0)
    report.row("ID.RANGE 4096, 2 worker processes (2 cores)", "IDs/ms", two, "format ceiling 8192/ms", 8192.0)


def fsync_probe(report: Report, when: str) -> None:
    """fdatasync latency of this disk now: durable lock cycles are bounded by it."""
    import tempfile

    d = _peers.tmpdir("fsync")
    fd, path = tempfile.mkstemp(dir=d)
    times = []
    try:
        for _ in range(200):
            os.write(fd, b"x" * 128)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    report.row(f"fdatasync latency p50 ({when})", "ms", times[100] * 1e3, None, None)
    report.row(f"fdatasync latency p99 ({when})", "ms", times[197] * 1e3, None, None)


def main() -> None:
    report = Report("server", peers={"redis-py": "redis", "kazoo": "kazoo", "hiredis": "hiredis",
                                     "uvloop": "uvloop"})
    _peers.ensure_packages({"redis-server": "redis-server", "redis-benchmark": "redis-tools"})
    print(f"  peers: {_peers.versions()}", flush=True)
    try:
        cc_proc, cc_port, _ = _peers.start_coordcore()
        rd_proc, rd_port = _peers.start_redis()
        try:
            progress("server: ID.NEXT vs INCR with redis-benchmark")
            bench_id_next(report, (cc_port, cc_proc.pid), (rd_port, rd_proc.pid))
        finally:
            _peers.stop(cc_proc)
            _peers.stop(rd_proc)
        progress("server: ID.RANGE, 1 and 2 worker processes")
        bench_id_range(report)
        try:
            import _lockbench
        except ImportError as exc:
            raise SystemExit(f"lock benchmark unavailable: {exc}") from exc
        fsync_probe(report, "before the lock cases")
        progress("server: lock cycles (6 cases x 6 systems; a few minutes)")
        _lockbench.run(report, quick=QUICK)
        fsync_probe(report, "after the lock cases")
    finally:
        _peers.stop_all()
    report.finish()


if __name__ == "__main__":
    main()
