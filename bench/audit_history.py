"""What one AUDIT.HISTORY page costs, with the history index and without: `python bench/audit_history.py`.

An audited journal of N records (the embedded service on a file log without fsync, lock
cycles on 50 keys), then pages of 100 events from the middle of the history (an
``after`` cursor half way through): through a warm :class:`HistoryIndex` (as the server
keeps one; the first query built it) and with none (a replay from the journal's start,
what every page cost before). At 10k and 100k records: the indexed page should cost
about the same at both sizes, the unindexed one ten times more.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from coordcore.audit.history import HistoryIndex, query
from coordcore.audit.trail import AuditedStore, attach
from coordcore.locks.service import LockService
from coordcore.locks.store import FileStore

QUICK = os.environ.get("COORDCORE_BENCH_QUICK") == "1"


async def build(d: Path, records: int) -> None:
    inner = await FileStore.open(d / "locks", durability="unsafe-no-fsync")
    store = await AuditedStore.open(inner, d / "audit")
    svc = await LockService.open_store(store)
    attach(svc, store)
    s = await svc.open_session(ttl=3600, keepalive=False)
    i = 0
    while store.trail.tree.size < records:
        await svc.release(await svc.acquire(f"k/{i % 50}", s))
        i += 1
    await svc.close()


def page_time(d: Path, index: HistoryIndex | None, after: int, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        events, nxt = query(d / "audit", b"k/", after=after, limit=100, index=index)
        out.append(time.perf_counter() - t0)
        assert len(events) == 100 and nxt, (len(events), nxt)
    return out


def main() -> None:
    sizes = [2_000, 20_000] if QUICK else [10_000, 100_000]
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            t0 = time.perf_counter()
            asyncio.run(build(d, n))
            built = time.perf_counter() - t0
            full, _ = query(d / "audit", b"", limit=10**9)
            after = full[len(full) // 2].revision
            index = HistoryIndex()
            query(d / "audit", b"k/", after=after, limit=100, index=index)  # builds it: one replay
            indexed = page_time(d, index, after, 7)
            plain = page_time(d, None, after, 3)
            rows.append((n, statistics.median(indexed), statistics.median(plain), len(index)))
            print(f"  {n:,} records (built in {built:.1f} s): page of 100 indexed {1e3 * rows[-1][1]:.1f} ms "
                  f"(median of 7, {1e3 * min(indexed):.1f}..{1e3 * max(indexed):.1f}), unindexed "
                  f"{1e3 * rows[-1][2]:.1f} ms (median of 3, {1e3 * min(plain):.1f}..{1e3 * max(plain):.1f}), "
                  f"{len(index)} stops", flush=True)
    (n0, i0, p0, _), (n1, i1, p1, _) = rows
    print(f"history page, {n1:,} vs {n0:,} records: indexed {i1 / i0:.2f}x, unindexed {p1 / p0:.2f}x; "
          f"at {n1:,}: indexed {p1 / i1:.1f}x faster")


if __name__ == "__main__":
    main()
