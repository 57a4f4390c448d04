"""Lock acquire+release cycles: coordcore (fsync on) vs Redis (redis-py's Lock protocol,
no persistence and AOF fsync always), etcd's lock API and kazoo's Lock on ZooKeeper.

coordcore and Redis are driven by the same C load generator, bench/loadgen/lockload.c
(through _loadgen.py): one epoll thread, one connection per client, so the server is
what is measured. The asyncio + hiredis driver it replaced spent most of a core of its
own at 32 clients and capped what any server could show. What it sends, per client:

* coordcore: ``SESSION.OPEN``, then ``LOCK.ACQUIRE key session`` (blocking, parked
  server side, woken on commit) and, when the token comes, ``LOCK.RELEASE key session
  TOKEN t`` in the same write as the next acquire; ``SESSION.CLOSE`` at the end.
* Redis, exactly what redis-py's ``Lock`` sends: ``SET key token NX PX ttl``, polling
  every 0.1 s (redis-py's default ``sleep``) while the key is held, and the
  compare-and-delete Lua script (``EVALSHA``, loaded once) to release.

The others run in this process, as their users run them:

* Redis once more with redis-py's own asyncio ``Lock`` (what its users get).
* etcd: its lock API (v3lock ``Lock``/``Unlock`` with a lease) over the gRPC JSON
  gateway, one keep-alive HTTP/1.1 connection per client (asyncio, light).
* ZooKeeper: kazoo's ``Lock`` recipe (threads: kazoo has no light mode).

Each case reports cycles/s, acquire latency p50/p99 and the server's CPU per cycle,
and prints the load generator's own CPU per cycle beside it, to show that the
generator is not the bottleneck. The latency distributions and cycles/s become
bench/plots/locks_latency_cdf.png and locks_throughput.png (their data:
bench/out/locks_plot.json; ``python bench/_lockbench.py`` redraws them).
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import resource
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

import _loadgen
import _peers
import _plots
from _report import Report, progress

CASES = [(1, 1), (8, 1), (32, 1), (1, 1000), (8, 1000), (32, 1000)]


class Stats:
    """Cycles counted by an in-process driver (see _loadgen.LoadStats for the C one)."""

    def __init__(self) -> None:
        self.cycles = 0
        self.all_cycles = 0  # warm-up and wind-down included: for CPU per cycle
        self.latencies: list[float] = []
        self.measuring = False
        self.elapsed = math.nan
        self.client_cpu: float | None = None  # None: the driver is this process

    def done(self, acquire_latency: float) -> None:
        self.all_cycles += 1
        if self.measuring:
            self.cycles += 1
            self.latencies.append(acquire_latency)

    @property
    def cycles_per_s(self) -> float:
        return self.cycles / self.elapsed

    @property
    def quantiles_ms(self) -> list[float]:
        return [q * 1e3 for q in _plots.quantiles(self.latencies)]

    def percentiles_ms(self) -> tuple[float, float]:
        lat = sorted(self.latencies) or [math.nan]
        return statistics.median(lat) * 1e3, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3


def warmup_of(seconds: float) -> float:
    return min(1.0, seconds / 3)


def pick(n_keys: int, rnd: random.Random) -> bytes:
    return b"bench/%d" % (rnd.randrange(n_keys) if n_keys > 1 else 0)


async def redispy_client(port: int, n_keys: int, stats: Stats, stop: asyncio.Event, seed: int) -> None:
    """redis-py's own asyncio ``Lock`` (what a user of redis-py gets: a heavy client)."""
    import redis.asyncio

    rnd = random.Random(seed)
    r = redis.asyncio.Redis(port=port)
    while not stop.is_set():
        lock = r.lock(pick(n_keys, rnd), timeout=10, sleep=0.1)
        t0 = time.perf_counter()
        await lock.acquire()
        stats.done(time.perf_counter() - t0)
        await lock.release()
    await r.aclose()


class Http(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 JSON client for etcd's gRPC gateway."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.buf = b""
        self.waiter: asyncio.Future[Any] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(rest) < length:
            return
        body, self.buf = rest[:length], rest[length:]
        status = int(head.split(b" ", 2)[1])
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, json.loads(body or b"{}")))

    async def post(self, path: str, doc: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(doc).encode()
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.port, len(body), body))
        status, reply = await self.waiter
        if status != 200:
            raise RuntimeError(f"etcd {path}: HTTP {status} {reply}")
        return reply  # type: ignore[no-any-return]


async def etcd_client(port: int, n_keys: int, stats: Stats, stop: asyncio.Event, seed: int) -> None:
    rnd = random.Random(seed)
    _, http = await asyncio.get_running_loop().create_connection(lambda: Http(port), "127.0.0.1", port)
    lease = (await http.post("/v3/lease/grant", {"TTL": 30}))["ID"]
    while not stop.is_set():
        name = base64.b64encode(pick(n_keys, rnd)).decode()
        t0 = time.perf_counter()
        held = await http.post("/v3/lock/lock", {"name": name, "lease": lease})
        stats.done(time.perf_counter() - t0)
        await http.post("/v3/lock/unlock", {"key": held["key"]})
    assert http.transport is not None
    http.transport.close()


Client = Callable[[int, int, Stats, asyncio.Event, int], Awaitable[None]]


async def drive(client: Client, port: int, n_clients: int, n_keys: int, seconds: float) -> Stats:
    stats = Stats()
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(client(port, n_keys, stats, stop, i)) for i in range(n_clients)]
    await asyncio.sleep(warmup_of(seconds))
    stats.measuring = True
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    stats.measuring = False
    stats.elapsed = time.perf_counter() - t0
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return stats


def kazoo_run(port: int, n_clients: int, n_keys: int, seconds: float) -> Stats:
    from kazoo.client import KazooClient

    stats = Stats()
    stop = threading.Event()
    clients = [KazooClient(hosts=f"127.0.0.1:{port}", timeout=30) for _ in range(n_clients)]
    for c in clients:
        c.start(timeout=30)
    lock = threading.Lock()

    def work(i: int, zk: Any) -> None:
        rnd = random.Random(i)
        while not stop.is_set():
            key = pick(n_keys, rnd).decode()
            t0 = time.perf_counter()
            lk = zk.Lock(f"/{key}", f"c{i}")
            lk.acquire()
            dt = time.perf_counter() - t0
            lk.release()
            with lock:
                stats.done(dt)

    threads = [threading.Thread(target=work, args=(i, c), daemon=True) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    time.sleep(warmup_of(seconds))
    stats.measuring = True
    t0 = time.perf_counter()
    time.sleep(seconds)
    stats.measuring = False
    stats.elapsed = time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join(30)
    for c in clients:
        c.stop()
        c.close()
    return stats


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(name: str, pid: int, fn: Callable[[], Stats | _loadgen.LoadStats]) -> dict[str, Any]:
    """Run one case; the server's CPU is read from /proc around the whole run and
    divided by every cycle of the run (warm-up included). The load generator's CPU
    per cycle is printed beside it: the C generator's own, else this process's."""
    cpu0, own0 = _peers.cpu_seconds_of(pid), _own_cpu()
    stats = fn()
    cpu, own = _peers.cpu_seconds_of(pid) - cpu0, _own_cpu() - own0
    gen_cpu = own if stats.client_cpu is None else stats.client_cpu
    p50_ms, p99_ms = stats.percentiles_ms()
    cycles = max(stats.all_cycles, 1)
    out = {"cycles_per_s": stats.cycles_per_s, "p50_ms": p50_ms, "p99_ms": p99_ms,
           "cpu_us_per_cycle": cpu / cycles * 1e6, "quantiles_ms": list(stats.quantiles_ms)}
    print(f"    {name:<28} {out['cycles_per_s']:>10,.0f} cycles/s  p50 {out['p50_ms']:7.2f} ms  "
          f"p99 {out['p99_ms']:8.2f} ms  server CPU {out['cpu_us_per_cycle']:7.1f} us/cycle  "
          f"gen. CPU {gen_cpu / cycles * 1e6:6.1f} us/cycle", flush=True)
    return out


def run(report: Report, *, quick: bool = False,
        peers: tuple[str, ...] = ("redis-py", "redis", "redis-aof", "etcd", "zk")) -> None:
    """All servers run side by side; each case measures every system back to back
    (and, unless quick, twice in alternating order, keeping each system's best), so
    the disk and CPU noise of this shared machine hits them alike."""
    seconds = 1.5 if quick else 3.0
    rounds = 1 if quick else 2
    _loadgen.build()  # before any server starts: a build failure ends the run at once

    def light(protocol: str, port: int) -> Callable[[int, int], _loadgen.LoadStats]:
        return lambda c, k: _loadgen.run(port, protocol, clients=c, keys=k, seconds=seconds,
                                         warmup=warmup_of(seconds))

    cc_proc, cc_port, _ = _peers.start_coordcore()
    servers: dict[str, tuple[Any, Callable[[int, int], Stats | _loadgen.LoadStats]]] = {
        "coordcore": (cc_proc, light("coordcore", cc_port))}
    for peer in peers:
        if peer == "redis-py":
            proc, port = _peers.start_redis()
            servers[peer] = (proc, lambda c, k, p=port: uvloop.run(drive(redispy_client, p, c, k, seconds)))
        elif peer in ("redis", "redis-aof"):
            proc, port = _peers.start_redis(aof=peer == "redis-aof")
            servers[peer] = (proc, light("redis-lock", port))
        elif peer == "etcd":
            proc, port = _peers.start_etcd()
            servers[peer] = (proc, lambda c, k, p=port: uvloop.run(drive(etcd_client, p, c, k, seconds)))
        else:
            proc, port = _peers.start_zookeeper()
            servers[peer] = (proc, lambda c, k, p=port: kazoo_run(p, c, k, seconds))
    results: dict[tuple[int, int], dict[str, dict[str, Any]]] = {case: {} for case in CASES}
    try:
        for i, (n_clients, n_keys) in enumerate(CASES):
            progress(f"locks: case {i + 1}/{len(CASES)}, {n_clients} clients x {n_keys} key(s), "
                     f"{len(servers)} systems x {rounds} round(s)")
            print(f"  locks: {n_clients} clients, {n_keys} key(s)", flush=True)
            order = list(servers)
            for rnd in range(rounds):
                for name in (order if rnd % 2 == 0 else order[::-1]):
                    proc, runner = servers[name]
                    out = measure(name, proc.pid, lambda: runner(n_clients, n_keys))
                    best = results[(n_clients, n_keys)].get(name)
                    if best is None or out["cycles_per_s"] > best["cycles_per_s"]:
                        results[(n_clients, n_keys)][name] = out
    finally:
        for proc, _ in servers.values():
            _peers.stop(proc)
    names = {"redis-py": "redis-py Lock, no persistence",
             "redis": "Lock protocol, light gen., no persistence",
             "redis-aof": "Lock protocol, light gen., AOF always",
             "etcd": "etcd lock API", "zk": "kazoo Lock"}
    for (n_clients, n_keys), by_peer in results.items():
        ours = by_peer["coordcore"]
        case = f"lock cycles, {n_clients} clients, {n_keys} key{'s' if n_keys > 1 else ''}"
        print(f"  {case}: coordcore p50 {ours['p50_ms']:.2f} ms, p99 {ours['p99_ms']:.2f} ms, "
              f"server CPU {ours['cpu_us_per_cycle']:.1f} us/cycle", flush=True)
        for peer in peers:
            theirs = by_peer[peer]
            report.row(case, "cycles/s", ours["cycles_per_s"], names[peer], theirs["cycles_per_s"],
                       coordcore_p50_ms=ours["p50_ms"], coordcore_p99_ms=ours["p99_ms"],
                       coordcore_cpu_us=ours["cpu_us_per_cycle"], peer_p50_ms=theirs["p50_ms"],
                       peer_p99_ms=theirs["p99_ms"], peer_cpu_us=theirs["cpu_us_per_cycle"])
    _loadgen.OUT.mkdir(exist_ok=True)
    PLOT_DATA.write_text(json.dumps({"systems": ["coordcore", *peers], "cases": [
        {"clients": c, "keys": k, "by_system": by} for (c, k), by in results.items()]}))
    plot(results, ["coordcore", *peers])


PLOT_DATA = _loadgen.OUT / "locks_plot.json"  # what plot() draws: `python bench/_lockbench.py` redraws it
# Redis's Lock on one key is no handoff: the releaser re-takes it while the others poll.
ONE_KEY = {1: " (Redis: one client re-taking the lock)", 1000: ""}
LABELS = {"coordcore": "coordcore serve (fsync on)", "redis-py": "Redis, redis-py Lock",
          "redis": "Redis, Lock protocol, no persistence", "redis-aof": "Redis, Lock protocol, AOF always",
          "etcd": "etcd lock API", "zk": "ZooKeeper, kazoo Lock"}


def plot(results: dict[tuple[int, int], dict[str, dict[str, Any]]], systems: list[str]) -> None:
    """bench/plots/locks_latency_cdf.png and locks_throughput.png (see _plots)."""
    cdfs = []
    for n_clients, n_keys in ((32, 1000), (8, 1)):
        lines = [_plots.cdf_line(LABELS[s], results[(n_clients, n_keys)][s]["quantiles_ms"], key=s)
                 for s in systems if results[(n_clients, n_keys)][s]["quantiles_ms"]]
        cdfs.append(_plots.Panel(f"{n_clients} clients, {n_keys} key{'s' if n_keys > 1 else ''}{ONE_KEY[n_keys]}",
                                 "acquire latency (ms, log scale)", "cycles at or below (percentile, logit scale)",
                                 lines, xscale="log", yscale="logit"))
    _plots.save("locks_latency_cdf", "Lock acquire latency CDF (acquire + release cycles, loopback)", cdfs,
                shared_legend=True)
    panels = []
    for n_keys in (1, 1000):
        lines = []
        for s in systems:
            pts = sorted((c, by[s]["cycles_per_s"]) for (c, k), by in results.items() if k == n_keys)
            lines.append(_plots.Line(LABELS[s], [c for c, _ in pts], [v for _, v in pts], key=s))
        panels.append(_plots.Panel(f"{n_keys} key{'s' if n_keys > 1 else ''}{ONE_KEY[n_keys]}", "clients (log scale)",
                                   "lock cycles/s (log scale)", lines, xscale="log", yscale="log",
                                   xticks=sorted({c for c, _ in CASES})))
    _plots.save("locks_throughput", "Lock cycles/s vs clients (one process each, 2 shared cores)", panels,
                shared_legend=True)


if __name__ == "__main__":
    doc = json.loads(PLOT_DATA.read_text())
    plot({(c["clients"], c["keys"]): c["by_system"] for c in doc["cases"]}, doc["systems"])
