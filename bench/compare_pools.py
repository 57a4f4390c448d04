"""Quota pools: allocation decisions per second, and what fairness costs beside a plain
semaphore of the same size, measured in the same run.

A *decision* is one waiting request granted because units came back. Native: a pool of
100 units and 1,000 waiting one-unit requests from three tenants (weights 1:2:1); each
batch returns 100 leases and queues 100 new requests (demand stays constant), so every
batch makes 100 grant decisions among three tenants' queues (demand 5:2:1). The semaphore case is the
same shape on a 100-permit semaphore (FIFO, no tenants). Only ``apply`` is timed (the
records are built between timings). Server: 48 asyncio connections through redis-py
each cycle POOL.ACQUIRE/POOL.RELEASE (three tenants) or SEM.ACQUIRE/SEM.RELEASE of one
unit on 8 units, so most acquires wait and each release is a decision; the connections
ask 5:2:1 (a, b, c) and fairness is the tenants' share of the units held against the
2:4:2 their 1:2:1 weights are owed (a semaphore serves them in arrival order: ~5:2:1).

    PYTHONPATH=. .venv/bin/python bench/compare_pools.py
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from _peers import start_coordcore, stop
from _report import Report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordcore.locks import BatchBuilder, EventKind, LockMachine  # noqa: E402

N, CAP, K = 1000, 100, 100  # waiting requests, units, leases returned per batch
TENANTS = [(b"a", 1), (b"b", 2), (b"c", 1)]
SKEW = "aaaaabbc"  # who asks: demand 5:2:1 against weights 1:2:1


def native(kind: str, seconds: float = 2.0) -> dict[str, float]:
    m, b = LockMachine(), BatchBuilder()
    for _ in range(N + CAP):
        b.open_session(3_600_000)
    if kind == "pool":
        b.pool_set("gpu", CAP, patience=65535)
        for name, w in TENANTS:
            b.tenant_set("gpu", name, weight=w)
    sids = [r.session_id for r in m.apply(b.build(1)).results if r.session_id]
    b.clear()
    held: list[tuple[int, int]] = []  # (session, token), oldest first

    def acquire(sid: int) -> None:
        if kind == "pool":
            b.cap_acquire(sid, "gpu", SKEW[sid % 8], 1)  # a session asks for its own tenant, again and again
        else:
            b.sem_acquire(sid, "sem", CAP)

    for sid in sids:
        acquire(sid)
    events = m.apply(b.build(2)).events
    held += [(e.session, e.token) for e in events if e.kind == EventKind.GRANT]
    spent, decisions, t = 0.0, 0, 3
    grants = dict.fromkeys((n for n, _ in TENANTS), 0)
    while spent < seconds:
        b.clear()
        back, held = held[:K], held[K:]
        for sid, token in back:
            if kind == "pool":
                b.cap_release(sid, "gpu", token)
            else:
                b.sem_release(sid, "sem", token)
        for sid, _ in back:
            acquire(sid)
        record = b.build(t)
        t += 1
        t0 = time.perf_counter()
        events = m.apply(record).events
        spent += time.perf_counter() - t0
        new = [e for e in events if e.kind == EventKind.GRANT]
        decisions += len(new)
        held += [(e.session, e.token) for e in new]
        if kind == "pool":
            for e in new:
                grants[e.value] += 1
    out = {"decisions_per_s": decisions / spent, "decisions": decisions}
    if kind == "pool":
        info = m.pool("gpu")
        assert info is not None
        out["held"] = {t.name.decode(): t.held for t in info.tenants}  # type: ignore[assignment]
    return out


async def server(port: int, kind: str, seconds: float = 3.0, clients: int = 48, units: int = 8) -> dict[str, float]:
    import redis.asyncio

    r = redis.asyncio.Redis(port=port)
    name = f"{kind}-{time.monotonic_ns()}"
    if kind == "pool":
        await r.execute_command("POOL.DEFINE", name, units, "PATIENCE", 65535)
        for t, w in TENANTS:
            await r.execute_command("POOL.TENANT", name, t, "WEIGHT", w)
    stop_at = time.monotonic() + seconds
    counts: dict[str, int] = {"a": 0, "b": 0, "c": 0}
    held_time: dict[str, float] = {"a": 0.0, "b": 0.0, "c": 0.0}

    async def client(i: int) -> None:
        c = redis.asyncio.Redis(port=port)
        s = await c.execute_command("SESSION.OPEN", 60)
        tenant = SKEW[i % 8]
        while time.monotonic() < stop_at:
            if kind == "pool":
                token = await c.execute_command("POOL.ACQUIRE", name, s, tenant, 1)
                t0 = time.monotonic()
                await asyncio.sleep(0.001)
                await c.execute_command("POOL.RELEASE", name, s, token)
            else:
                token = await c.execute_command("SEM.ACQUIRE", name, s, units)
                t0 = time.monotonic()
                await asyncio.sleep(0.001)
                await c.execute_command("SEM.RELEASE", name, s, "TOKEN", token)
            counts[tenant] += 1
            held_time[tenant] += time.monotonic() - t0
        await c.execute_command("SESSION.CLOSE", s)
        await c.aclose()

    t0 = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.monotonic() - t0
    await r.aclose()
    total = sum(held_time.values())
    # The tenants' shares of unit-time held, against the 1:2:1 they are owed (in units of 8).
    share = {t: round(held_time[t] / total * units, 2) for t in counts}
    return {"decisions_per_s": sum(counts.values()) / elapsed, "shares_of_8": share}  # type: ignore[dict-item]


def main() -> None:
    report = Report("compare_pools", {"redis-py": "redis"})
    print("native apply: allocation decisions (grants as units come back), 100 units, 1000 waiting")
    pool, sem = native("pool"), native("semaphore")
    report.row("native: fair-share pool vs FIFO semaphore", "decisions/s", pool["decisions_per_s"],
               "semaphore", sem["decisions_per_s"], held=pool["held"])
    proc, port, _ = start_coordcore()
    try:
        print("through the server: 48 connections, 8 units, acquire / 1 ms / release")
        sp = asyncio.run(server(port, "pool"))
        ss = asyncio.run(server(port, "semaphore"))
        report.row("server: POOL.ACQUIRE/RELEASE vs SEM.ACQUIRE/RELEASE", "cycles/s", sp["decisions_per_s"],
                   "semaphore", ss["decisions_per_s"], pool_shares=sp["shares_of_8"], sem_shares=ss["shares_of_8"])
        print(f"  shares of 8 units held (owed 2 : 4 : 2): pool {sp['shares_of_8']}, semaphore {ss['shares_of_8']}")
    finally:
        stop(proc)
    report.finish()


if __name__ == "__main__":
    main()
