"""The audit's cost on the commit path as a load-independent count: `python bench/audit_instructions.py`.

A shared machine swings lock-cycle throughput by 2x between runs of the same code
(bench/RESULTS.md, "Audit trail"), so a <= 5% budget cannot be shown from wall clock.
This counts instructions instead (valgrind's callgrind: ``perf stat -e instructions``
is not supported on this VM): the embedded lock service on a file log without fsync,
32 tasks x 1000 lock cycles (acquire + release) each, audited (every record SHA-256'd
into the RFC 6962 tree and written to the journal; a signed checkpoint every 10,000
records) vs not. Only the cycles are counted (instrumentation is switched on just
before them and off just after, with ``callgrind_control``), in every thread of the
process (the log's writer thread included). Runs alternate audited / not, in ABBA order.

The embedded service is the server's commit path without its wire: the same pipeline,
store and journal code. Its ratio is NOT an upper bound for a server's: here the 32
client tasks are Python in the same process (~160k instructions per cycle in all),
while a server's clients are the C load generator in another process and its wire is
native (~38k per cycle), so the audit's cost, about the same in instructions per cycle
in both, is a larger share of a server's. bench/callgrind_audit.py counts the server.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CLIENTS, CYCLES = 32, 1000
QUICK = os.environ.get("COORDCORE_BENCH_QUICK") == "1"


def callgrind(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], check=True,
                   stdout=subprocess.DEVNULL)


async def workload(audited: bool, d: Path, cycles: int) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from coordcore.audit.trail import AuditedStore, attach
    from coordcore.locks.service import LockService
    from coordcore.locks.store import FileStore

    store: Any = await FileStore.open(d / "locks", durability="unsafe-no-fsync")
    if audited:
        store = await AuditedStore.open(store, d / "audit", key=Ed25519PrivateKey.generate())
    svc = await LockService.open_store(store)
    if audited:
        attach(svc, store)
    sessions = [await svc.open_session(ttl=600, keepalive=False) for _ in range(CLIENTS)]
    await asyncio.sleep(0.1)

    async def client(i: int) -> None:
        for _ in range(cycles):
            await svc.release(await svc.acquire(f"bench/{i}", sessions[i]))

    callgrind(True)
    await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    callgrind(False)
    print(f"batches {svc.stats.batches}", flush=True)
    await svc.close()


def child(mode: str, cycles: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(workload(mode == "audit", Path(d), cycles))


def measure(mode: str, cycles: int, out: Path) -> tuple[int, int]:
    """(instructions, batches) of one run under callgrind."""
    r = subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                        sys.executable, __file__, "--child", mode, str(cycles)],
                       capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"callgrind run failed:\n{r.stderr[-3000:]}")
    total = sum(int(m.group(1)) for m in re.finditer(r"^totals: (\d+)", "\n".join(
        p.read_text() for p in out.parent.glob(out.name + "*")), re.M))
    batches = int(re.search(r"batches (\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    for p in out.parent.glob(out.name + "*"):
        p.unlink()
    return total, batches


def quartiles(values: list[float]) -> str:
    if len(values) < 4:
        return f"median of {len(values)}, range {min(values):,.0f}..{max(values):,.0f}"
    q = statistics.quantiles(values, n=4)
    return f"median of {len(values)}, IQR {q[0]:,.0f}..{q[2]:,.0f}"


def main() -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind (with callgrind_control) is needed: apt-get install valgrind")
    rounds = 2 if QUICK else int(os.environ.get("ROUNDS", "4"))
    cycles = 200 if QUICK else CYCLES
    per: dict[str, list[float]] = {"audit": [], "none": []}
    batches: dict[str, list[int]] = {"audit": [], "none": []}
    with tempfile.TemporaryDirectory() as d:
        for r in range(rounds):
            for mode in (["audit", "none"] if r % 2 == 0 else ["none", "audit"]):
                ins, b = measure(mode, cycles, Path(d) / "cg.out")
                per[mode].append(ins / (CLIENTS * cycles))
                batches[mode].append(b)
                print(f"  round {r + 1} {mode:5}: {ins:,} instructions, {ins / (CLIENTS * cycles):,.0f} per "
                      f"cycle, {b} batches", flush=True)
    a, n = statistics.median(per["audit"]), statistics.median(per["none"])
    print(f"instructions per lock cycle, embedded, {CLIENTS} x {cycles}: audited {a:,.0f} "
          f"({quartiles(per['audit'])}) vs not audited {n:,.0f} ({quartiles(per['none'])}): "
          f"{a / n:.3f}x, audit costs {100 * (a / n - 1):+.1f}%")
    print(f"batches: audited {batches['audit']}, not audited {batches['none']}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
