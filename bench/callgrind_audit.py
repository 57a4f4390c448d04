#!/usr/bin/env python
"""The audit trail's cost on the server's commit path, in instructions per lock cycle
(issue 16: hashing on the commit path, 32 x 1000 lock cycles, on vs off, <= 5%).

    python bench/callgrind_audit.py [--reps 3] [--seconds 8] [--modes durable,no-fsync]

Each pair is two ``coordcore serve`` processes of this checkout under ``valgrind
--tool=callgrind`` at the same time (bench/_callgrind.py, the machinery of
``ab_metrics.py --callgrind``): "on" with ``--audit-key K`` (a key written with
``coordcore.audit.checkpoint.write_keypair``), "off" without, both durable (fsync per
batch) or both ``--unsafe-no-fsync``. After a 2 s warm-up load both counters are
zeroed, both are loaded at once by the C load generator (32 clients x 1000 keys) for
``--seconds``, and both are dumped: instructions of that window (every thread) over the
cycles completed. The servers' INFO ``Log`` counters are read around the window, so
batches (records) per cycle and commands per batch are compared too: the lock
pipeline batches whatever commands arrived while the previous append was in flight,
so a slower server makes bigger batches, and a cost per batch (a write, an fsync, a
leaf hash) is then spread over more cycles. The functions whose instructions per
cycle differ most between on and off are listed (self cost, mean of the pairs).

Writes bench/out/callgrind_audit.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _callgrind  # noqa: E402
import _loadgen  # noqa: E402
import _peers  # noqa: E402
from _report import progress  # noqa: E402

MODES = {"durable": [], "no-fsync": ["--unsafe-no-fsync"]}
LOG_FIELDS = ("batches", "batch_commands", "ticks", "fsyncs", "log_written_bytes")


def log_counters(port: int) -> dict[str, int]:
    import redis

    info = redis.Redis(port=port, socket_timeout=120).info("log")
    return {k: int(info[k]) for k in LOG_FIELDS}


def pair(args: argparse.Namespace, tmp: Path, key: Path, flags: list[str], rep: int) -> dict[str, dict[str, object]]:
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    names = ("on", "off") if rep % 2 == 0 else ("off", "on")  # who starts first alternates
    try:
        for name in names:
            procs[name] = _callgrind.start_under_callgrind(
                tmp, f"{name}{rep}", [*flags, "--audit-key", str(key)] if name == "on" else flags)
        ports = {n: port for n, (_, port) in procs.items()}
        _callgrind.load_at_once(ports, clients=args.clients, keys=args.keys, seconds=2.0)  # warm-up
        for proc, _ in procs.values():
            _callgrind.zero(proc.pid)
        before = {n: log_counters(p) for n, p in ports.items()}
        t0 = time.monotonic()
        stats = _callgrind.load_at_once(ports, clients=args.clients, keys=args.keys, seconds=args.seconds)
        wall = time.monotonic() - t0
        after = {n: log_counters(p) for n, p in ports.items()}
        dumps = _callgrind.dump_all(tmp, {f"{n}{rep}": procs[n] for n in procs}, "load")
        out: dict[str, dict[str, object]] = {}
        for name in procs:
            d = dumps[f"{name}{rep}"]
            log = {k: after[name][k] - before[name][k] for k in LOG_FIELDS}
            out[name] = {"instructions": _callgrind.callgrind_total(d), "cycles": stats[name].all_cycles,
                         "cycles_per_s": stats[name].all_cycles / wall, "log": log,
                         "functions": _callgrind.self_cost_by_function(d)}
        return out
    finally:
        for proc, _ in procs.values():
            _callgrind.stop(proc)


def summarize(mode: str, runs: list[dict[str, object]], top: int) -> dict[str, object]:
    on = [r for r in runs if r["name"] == "on"]
    off = [r for r in runs if r["name"] == "off"]
    on_pc = [r["instructions"] / r["cycles"] for r in on]  # type: ignore[operator]
    off_pc = [r["instructions"] / r["cycles"] for r in off]  # type: ignore[operator]
    ratios = [a / b for a, b in zip(on_pc, off_pc)]

    def per_cycle(rs: list[dict[str, object]], k: str) -> list[float]:
        return [r["log"][k] / r["cycles"] for r in rs]  # type: ignore[index]

    def cmds_per_batch(rs: list[dict[str, object]]) -> list[float]:
        return [r["log"]["batch_commands"] / max(1, r["log"]["batches"] - r["log"]["ticks"])  # type: ignore[index]
                for r in rs]

    print(f"{mode}: instructions per lock cycle of the server, {len(on)} pairs run at once "
          f"(on = --audit-key; each pair's on/off):")
    print(f"  on  {statistics.median(on_pc):10,.0f}  (pairs: {', '.join(f'{x:,.0f}' for x in on_pc)})")
    print(f"  off {statistics.median(off_pc):10,.0f}  (pairs: {', '.join(f'{x:,.0f}' for x in off_pc)})")
    print(f"  on/off median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}; "
          f"pairs: {', '.join(f'{x:.3f}' for x in ratios)})")
    for label, metric in (("batches per cycle", lambda rs: per_cycle(rs, "batches")),
                      ("fsyncs per cycle", lambda rs: per_cycle(rs, "fsyncs")),
                      ("commands per batch", cmds_per_batch),
                      ("cycles/s under valgrind", lambda rs: [r["cycles_per_s"] for r in rs])):
        a, b = metric(on), metric(off)
        print(f"  {label:<24} on {', '.join(f'{x:.3f}' for x in a)}   off {', '.join(f'{x:.3f}' for x in b)}")
    diffs = _callgrind.differences(_callgrind.mean_per_cycle(on), _callgrind.mean_per_cycle(off))
    total = statistics.mean(on_pc) - statistics.mean(off_pc)
    print(f"  functions whose instructions per cycle differ most (on - off, self cost, mean of the pairs; "
          f"total {total:+,.0f}):")
    for d, fn in diffs[:top]:
        print(f"    {d:+9.0f}  {fn[:110]}")
    crypto = sum(d for d, fn in diffs if "libcrypto" in fn or "sha256" in fn.lower())
    batches = statistics.mean(per_cycle(on, "batches"))
    print(f"  of the {total:+,.0f}: {crypto:+,.0f} in libcrypto (SHA-256: valgrind does not offer SHA-NI, so "
          f"OpenSSL runs its software rounds), {total - crypto:+,.0f} elsewhere (Python, the journal's write "
          f"and CRC); per batch (record) {total / batches:+,.0f}, of which {crypto / batches:+,.0f} in libcrypto")
    return {"on": on_pc, "off": off_pc, "ratios": ratios, "top_differences": [(fn, d) for d, fn in diffs[:60]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="pairs per mode")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=8.0, help="length of the measured load")
    ap.add_argument("--modes", default="durable,no-fsync", help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--top", type=int, default=20, help="functions listed per mode")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="print the summary of an earlier run's JSON (bench/out/callgrind_audit.json) instead")
    args = ap.parse_args()
    if args.from_json is not None:
        old = json.loads(args.from_json.read_text())
        for mode, got in old["modes"].items():
            summarize(mode, got["runs"], args.top)
        return
    modes = args.modes.split(",")
    if args.reps < 1 or not 0 < args.seconds <= 3600 or any(m not in MODES for m in modes):
        ap.error("--reps >= 1, --seconds in (0, 3600], --modes of " + ", ".join(MODES))
    _peers.ensure_packages({"valgrind": "valgrind"})
    _loadgen.build()
    from coordcore.audit.checkpoint import write_keypair

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    loads: list[float] = []
    doc: dict[str, object] = {"clients": args.clients, "keys": args.keys, "seconds": args.seconds,
                              "started": started, "load1": loads, "modes": {}}
    with tempfile.TemporaryDirectory(prefix="cc-cga-") as tmp_s:
        tmp = Path(tmp_s)
        key = tmp / "audit.key"
        write_keypair(key)
        runs: dict[str, list[dict[str, object]]] = {m: [] for m in modes}
        for rep in range(args.reps):
            for mode in (modes if rep % 2 == 0 else list(reversed(modes))):
                progress(f"{mode} pair {rep + 1}/{args.reps}: on and off at once (starting under valgrind: ~30 s)")
                got = pair(args, tmp, key, MODES[mode], rep)
                load1 = os.getloadavg()[0]
                loads.append(load1)
                for name, r in got.items():
                    r.update(rep=rep, name=name, load1=load1)
                    runs[mode].append(r)
                pc = {n: g["instructions"] / g["cycles"] for n, g in got.items()}  # type: ignore[operator]
                progress(f"  on {pc['on']:,.0f} instructions/cycle ({got['on']['cycles']:,} cycles, "
                         f"{got['on']['log']['batches']:,} batches), off {pc['off']:,.0f} "  # type: ignore[index]
                         f"({got['off']['cycles']:,} cycles, {got['off']['log']['batches']:,} batches), "  # type: ignore[index]
                         f"on/off {pc['on'] / pc['off']:.3f}; load {load1:.2f}")
    for mode in modes:
        doc["modes"][mode] = summarize(mode, runs[mode], args.top)  # type: ignore[index]
        _callgrind.trim_functions(runs[mode])
        doc["modes"][mode]["runs"] = runs[mode]  # type: ignore[index]
    print(f"load average (1 min) after each pair: {min(loads):.2f}-{max(loads):.2f}; "
          f"{args.clients} clients x {args.keys} keys, {args.seconds} s windows")
    doc["ended"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "callgrind_audit.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
