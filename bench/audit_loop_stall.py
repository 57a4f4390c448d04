"""How long the event loop stalls while the audit trail checkpoints: `python bench/audit_loop_stall.py`.

1. The leader: AUDIT.CHECKPOINT (``request_checkpoint``) on an audited lock service
   holding many sessions and locks (the state a checkpoint hashes is large), signed
   on the loop (``offload = False``: as before) and in a worker thread (the default).
   Taking the state's bytes stays on the loop (the state must be captured at the batch
   boundary): its time alone is printed as the floor.
2. A cluster follower's check of a checkpoint: rehashing ``every`` (10,000) records of
   its journal from disk, on the loop (``tree_at``) and in a thread (``rebuild``).

The figure is the loop's longest stall while one checkpoint is made or checked: a
ticker task sleeps 1 ms at a time and records how late it wakes. Rounds alternate
(ABBA), medians with the min..max over the rounds; the ratio is inline / threaded.
"""
from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordcore.audit.trail import AuditedStore, AuditTrail, attach
from coordcore.locks.service import LockService
from coordcore.locks.store import FileStore

SESSIONS = 20_000
RECORDS = 10_000
ROUNDS = 8


async def max_stall(work: Callable[[], Awaitable[object]]) -> float:
    """The loop's longest stall (seconds) while ``work`` runs."""
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - t - 0.001)

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.01)
    await work()
    done = True
    await task
    return worst


async def leader(d: Path) -> dict[str, list[float]]:
    inner = await FileStore.open(d / "locks", durability="unsafe-no-fsync")
    store = await AuditedStore.open(inner, d / "audit", key=Ed25519PrivateKey.generate(), every=10**9)
    out: dict[str, list[float]] = {"inline": [], "thread": []}
    async with LockService.open_store(store) as svc:
        attach(svc, store)
        for i in range(SESSIONS):
            s = await svc.open_session(ttl=3600, keepalive=False)
            await svc.acquire(f"job/{i}", s)
        print(f"state: {len(svc.state_snapshot()) / 1e6:.1f} MB, {SESSIONS} sessions each holding a lock",
              flush=True)
        out["snapshot (floor)"] = []
        for r in range(ROUNDS):
            for mode in (("inline", "thread") if r % 2 == 0 else ("thread", "inline")):
                store.offload = mode == "thread"
                out[mode].append(await max_stall(lambda: store.request_checkpoint(svc)))
            # What stays on the loop: taking the state's bytes (a consistent copy).
            t = time.perf_counter()
            svc.state_snapshot()
            out["snapshot (floor)"].append(time.perf_counter() - t)
    return out


async def follower(d: Path) -> dict[str, list[float]]:
    trail = AuditTrail.load(d / "follower", key=None, fsync=False)
    trail.start(1, None)
    for i in range(1, RECORDS + 1):
        trail.add(i, b"r%06d" % i + b"x" * 200, ())
    loop = asyncio.get_running_loop()
    out: dict[str, list[float]] = {"inline": [], "thread": []}

    async def inline() -> object:
        return trail.tree_at(RECORDS)

    async def thread() -> object:
        job = trail.rebuild(RECORDS)
        assert job is not None
        return await loop.run_in_executor(None, job)

    for r in range(ROUNDS):
        for mode in (("inline", "thread") if r % 2 == 0 else ("thread", "inline")):
            out[mode].append(await max_stall(inline if mode == "inline" else thread))
    trail.close()
    return out


def show(name: str, out: dict[str, list[float]]) -> None:
    med = {k: statistics.median(v) for k, v in out.items()}
    for k, v in out.items():
        print(f"{name} {k:16s}: longest stall median {med[k] * 1000:7.2f} ms  "
              f"(min {min(v) * 1000:.2f} .. max {max(v) * 1000:.2f}, {len(v)} rounds)")
    print(f"{name} inline / thread: {med['inline'] / med['thread']:.1f}x")


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        show("leader checkpoint", await leader(Path(d)))
        show("follower check   ", await follower(Path(d)))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
