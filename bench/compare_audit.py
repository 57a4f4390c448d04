"""What the audit trail costs, in one run: `bench/run audit`.

1. The commit path: lock cycles (the C load generator, 32 clients x 1000 keys) against
   ``coordcore serve --audit-key`` (every record hashed and journaled, a signed
   checkpoint every 10,000 records) beside the same server without it, durable
   (fsync per batch) and with ``--unsafe-no-fsync`` (CPU-bound: the audit's share of
   the work is at its largest there). Rounds alternate, in ABBA order so a drifting
   machine favours neither; medians with the spread, and the server's CPU per cycle.
   Budget: audited >= 0.95x.
2. The same in one process (the embedded service on a file log without fsync, 32 tasks
   x 1000 lock cycles each), audited vs not, in CPU time per cycle: no network, no
   other process, so the audit's share of the work is at its largest and the figure is
   the least disturbed by a shared machine.
3. Export and verify: the audited server's journal exported with proofs, and the export
   verified (proofs, signatures, a replay through the machine), in records/s; a plain
   replay of the same records through the machine beside them, as the floor.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _loadgen  # noqa: E402
import _peers  # noqa: E402
from _report import Report  # noqa: E402

from coordcore.audit.checkpoint import load_public_key, write_keypair  # noqa: E402
from coordcore.audit.history import export  # noqa: E402
from coordcore.audit.journal import JOURNAL, JournalReader  # noqa: E402
from coordcore.audit.verify import verify_lines  # noqa: E402
from coordcore.locks.machine import LockMachine  # noqa: E402

QUICK = os.environ.get("COORDCORE_BENCH_QUICK") == "1"
ROUNDS = 1 if QUICK else int(os.environ.get("ROUNDS", "6"))


def spread(values: list[float]) -> str:
    """The median's company: the interquartile range from 4 rounds on, else the range."""
    if len(values) >= 4:
        q = statistics.quantiles(values, n=4)
        return f"median of {len(values)}, IQR {q[0]:,.0f}..{q[2]:,.0f}"
    return f"median of {len(values)}, {min(values):,.0f}..{max(values):,.0f}"


def paired_ratios(ours: list[float], peer: list[float]) -> str:
    """Each round's ratio (the two runs of a round share the machine's load of the moment)."""
    r = sorted(a / b for a, b in zip(ours, peer))
    q = statistics.quantiles(r, n=4) if len(r) >= 4 else [r[0], 0, r[-1]]
    return f"per-round ratio median {statistics.median(r):.3f}x, IQR {q[0]:.3f}..{q[2]:.3f}"


def alternate(cases: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each case once per round, the order reversed every other round (ABBA)."""
    out: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds):
        for name in (list(cases) if r % 2 == 0 else list(reversed(cases))):
            out[name].append(cases[name]())
    return out


def bench_commit_path(report: Report, *flags: str, rounds: int) -> tuple[Path, Path]:
    seconds = 1.5 if QUICK else 4.0
    key = _peers.tmpdir("audit-key") / "audit.key"
    pub = write_keypair(key)
    plain, plain_port, _ = _peers.start_coordcore(*flags)
    audited, audited_port, data = _peers.start_coordcore("--audit-key", str(key), *flags)
    cpu: dict[int, list[float]] = {audited_port: [], plain_port: []}

    def cycles(proc: subprocess.Popen[bytes], port: int) -> float:
        cpu0 = _peers.cpu_seconds_of(proc.pid)
        stats = _loadgen.run(port, "coordcore", clients=32, keys=1000, seconds=seconds, warmup=1.0)
        cpu[port].append((_peers.cpu_seconds_of(proc.pid) - cpu0) / stats.all_cycles * 1e9)
        return stats.cycles_per_s

    runs = alternate({"audit": lambda: cycles(audited, audited_port), "none": lambda: cycles(plain, plain_port)},
                     rounds)
    how = "no fsync" if flags else "durable"
    report.row(f"lock cycles 32 x 1000 keys, {how}, audited", "cycles/s", statistics.median(runs["audit"]),
               "not audited", statistics.median(runs["none"]),
               spread_ours=spread(runs["audit"]), spread_peer=spread(runs["none"]))
    report.row(f"  server CPU per cycle, {how}, audited vs not", "ns", statistics.median(cpu[audited_port]),
               "not audited", statistics.median(cpu[plain_port]), higher_is_better=False,
               spread_ours=spread(cpu[audited_port]), spread_peer=spread(cpu[plain_port]))
    print(f"   throughput {paired_ratios(runs['audit'], runs['none'])}; server CPU per cycle "
          f"{paired_ratios(cpu[audited_port], cpu[plain_port])}", flush=True)
    for proc in (plain, audited):
        _peers.stop(proc)  # a clean stop signs a last checkpoint over everything
    return data / "audit", pub


def bench_embedded(report: Report) -> None:
    import asyncio

    from coordcore.audit.trail import AuditedStore
    from coordcore.locks.service import LockService
    from coordcore.locks.store import FileStore
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    cycles = 200 if QUICK else 1000

    async def one(audited: bool) -> float:
        d = _peers.tmpdir("audit-embedded")
        store: Any = await FileStore.open(d / "locks", durability="unsafe-no-fsync")
        if audited:
            store = await AuditedStore.open(store, d / "audit", key=Ed25519PrivateKey.generate())
        svc = await LockService.open_store(store)
        sessions = [await svc.open_session(ttl=60, keepalive=False) for _ in range(32)]

        async def client(i: int) -> None:
            for _ in range(cycles):
                await svc.release(await svc.acquire(f"bench/{i}", sessions[i]))

        cpu0 = time.process_time()
        await asyncio.gather(*(client(i) for i in range(32)))
        cpu = time.process_time() - cpu0
        await svc.close()
        return cpu / (32 * cycles) * 1e9

    runs: dict[str, list[float]] = {"audit": [], "none": []}
    for r in range(ROUNDS + 2):
        for name in (["audit", "none"] if r % 2 == 0 else ["none", "audit"]):
            runs[name].append(asyncio.run(one(name == "audit")))
    report.row("embedded, 32 x %d lock cycles, CPU per cycle, audited" % cycles, "ns",
               statistics.median(runs["audit"]), "not audited", statistics.median(runs["none"]),
               higher_is_better=False, spread_ours=spread(runs["audit"]), spread_peer=spread(runs["none"]))


def bench_export_verify(report: Report, audit_dir: Path, pub: Path) -> None:
    # An export holds what the last checkpoint covers (what it can prove).
    records = sum(1 for _ in JournalReader(audit_dir / JOURNAL).entries())
    t0 = time.perf_counter()
    lines = list(export(audit_dir))
    t_export = time.perf_counter() - t0
    exported = sum(1 for line in lines if line.startswith('{"type":"record"'))
    t0 = time.perf_counter()
    result = verify_lines(lines, load_public_key(pub))
    t_verify = time.perf_counter() - t0
    if not result.ok:
        raise SystemExit(f"the export does not verify: {result.problems[:3]}")
    m = LockMachine()
    t0 = time.perf_counter()
    for entry in JournalReader(audit_dir / JOURNAL).entries():
        if entry.index > exported:
            break
        m.apply_raw(entry.record)
    t_replay = time.perf_counter() - t0
    print(f"   journal: {records:,} records, {exported:,} covered by the last checkpoint")
    report.row("audit export (events + proofs)", "records/s", exported / t_export, "plain replay",
               exported / t_replay)
    report.row("audit verify (proofs, signatures, replay)", "records/s", exported / t_verify, "plain replay",
               exported / t_replay)


def main() -> None:
    report = Report("audit", {})
    report.versions.update(_peers.versions())
    try:
        print("-- commit path: lock cycles audited vs not, durable and without fsync")
        audit_dir, pub = bench_commit_path(report, rounds=ROUNDS + 2)
        bench_commit_path(report, "--unsafe-no-fsync", rounds=ROUNDS)
        print("-- the same in one process: CPU per cycle")
        bench_embedded(report)
        print("-- export and verify rates")
        bench_export_verify(report, audit_dir, pub)
    finally:
        _peers.stop_all()
    report.finish()


if __name__ == "__main__":
    main()
