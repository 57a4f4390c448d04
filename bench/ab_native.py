#!/usr/bin/env python
"""A/B of the native cores' hot paths, in-process: this checkout against another built
checkout of coordcore (say the previous commit), in one run, rounds interleaved.

    mkdir ../cc-base && git archive HEAD~1 | tar -x -C ../cc-base
    (cd ../cc-base && python setup.py build_ext --inplace -j 2)
    python bench/ab_native.py --base ../cc-base [--rounds 5]

Each round runs every case once in a fresh interpreter per tree (alternating which tree
goes first), each case the best of a few repeats, in CPU time. The cases: the lock machine applying
records of acquires and releases (each key free, and each key contended by two sessions,
the second waiting for the first's release), the lane's hot path (parse, encode, cut, assemble,
resolve), a ring lookup of one str key and of a million, hash64 of one str key and jump
hash of a million. It prints ns per operation per round and the median ratio ours/base
(below 1: ours is faster) with its spread, and writes bench/out/ab_native.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Run inside the tree under test (its directory first on sys.path); prints one JSON
# object: case -> best ns per operation.
CASES = r'''
import json, sys, time
import numpy as np
from coordcore.locks.machine import BatchBuilder, LockMachine
from coordcore.ring import HashRing, hash64, jump_hash_many
from coordcore._native import lockmachine as lm, lockwire as lw

def best(fn, ops, repeat=5):
    # CPU time of this thread, not wall time: on a shared machine a descheduled slice
    # is another process's, not ours.
    times = []
    for _ in range(repeat):
        t = time.thread_time_ns(); fn(); times.append(time.thread_time_ns() - t)
    return min(times) / ops

out = {}
N = 1000
b = BatchBuilder()
for _ in range(N):
    b.open_session(ttl_ms=3_600_000)
opens = b.build(1)
b.clear()
for s in range(1, N + 1):
    b.acquire(s, b"key/%04d" % s)
acq = b.build(2)
b.clear()
for s in range(1, N + 1):
    b.release(s, b"key/%04d" % s)
rel = b.build(3)
m = LockMachine(); m.apply_raw(opens)
def machine():
    for _ in range(20):
        m.apply_raw(acq); m.apply_raw(rel)
out["machine acquire+release (per command)"] = best(machine, 40 * N)

# Contended: two sessions per key, the second waits and is granted at the first's release.
half = N // 2
b.clear()
for s in range(1, half + 1):
    b.acquire(s, b"key/%04d" % s); b.acquire(s + half, b"key/%04d" % s)
cacq = b.build(4)
b.clear()
for s in range(1, half + 1):
    b.release(s, b"key/%04d" % s)
crel1 = b.build(5)
b.clear()
for s in range(1, half + 1):
    b.release(s + half, b"key/%04d" % s)
crel2 = b.build(6)
def contended():
    for _ in range(20):
        m.apply_raw(cacq); m.apply_raw(crel1); m.apply_raw(crel2)
out["machine contended acquire+release (per command)"] = best(contended, 20 * 4 * half)

secret = b"0123456789abcdef" * 2
lane = lw.WireLane(None, lambda *a: None, [])
lane.verify = lambda h: int(h.partition(b".")[0]) if h.endswith(secret) else 0
conns = [lw.WireConn(None, 16, 1 << 16) for _ in range(32)]
reqs = [b"".join(b"*3\r\n$12\r\nLOCK.RELEASE\r\n$8\r\nkey/%04d\r\n$%d\r\n%s\r\n"
                 % (i * 8 + j, len(h), h) for j in range(8))
        for i, h in enumerate(b"%d.%s" % (s + 1, secret) for s in range(32))]
fake = bytes(24) * 256
def wire():
    for _ in range(50):
        for c, r in zip(conns, reqs):
            c.feed(r); c.run_hot(lane, 100)
        batch = lane.cut(1 << 20)
        lm.assemble(5, [batch.commands], batch.count)
        batch.resolve(fake, 0)
        for c in conns:
            c.take_output()
out["lane hot release (per command)"] = best(wire, 50 * 32 * 8)

ring = HashRing([f"node-{i}" for i in range(10)], vnodes=160)
keys = [f"user:{i}" for i in range(1_000_000)]
def one():
    for k in keys[:100_000]:
        ring.node_for(k)
out["ring node_for str key"] = best(one, 100_000)
out["ring node_for_many 1M str keys (per key)"] = best(lambda: ring.node_for_many(keys), len(keys))
def h():
    for k in keys[:100_000]:
        hash64(k)
out["hash64 str key"] = best(h, 100_000)
u = np.arange(1_000_000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
out["jump_hash_many 1M, 10 buckets (per key)"] = best(lambda: jump_hash_many(u, 10), len(u))
json.dump(out, sys.stdout)
'''


def run(tree: Path) -> dict[str, float]:
    code = f"import sys; sys.path.insert(0, {str(tree)!r})\n" + CASES
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the cases failed in {tree}:\n{done.stderr}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="another built coordcore checkout")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ours_tree, base_tree = HERE.parent, args.base.resolve()
    rounds: list[tuple[dict[str, float], dict[str, float]]] = []
    for r in range(args.rounds):
        if r % 2:
            base = run(base_tree)
            ours = run(ours_tree)
        else:
            ours = run(ours_tree)
            base = run(base_tree)
        rounds.append((ours, base))
        print(f"round {r + 1}: " + "; ".join(f"{k}: {ours[k]:.1f} vs {base[k]:.1f} ns" for k in ours), flush=True)
    report = {}
    print(f"\n{'case':45} {'ours ns':>9} {'base ns':>9} {'ratio':>6}  spread")
    for case in rounds[0][0]:
        ratios = [o[case] / b[case] for o, b in rounds]
        o_med = statistics.median(o[case] for o, _ in rounds)
        b_med = statistics.median(b[case] for _, b in rounds)
        report[case] = {"ours_ns": o_med, "base_ns": b_med, "ratio_median": statistics.median(ratios),
                        "ratio_min": min(ratios), "ratio_max": max(ratios)}
        print(f"{case:45} {o_med:9.2f} {b_med:9.2f} {statistics.median(ratios):6.2f}  "
              f"{min(ratios):.2f}-{max(ratios):.2f}")
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "ab_native.json").write_text(json.dumps({"base": str(base_tree), "rounds": args.rounds,
                                                    "cases": report}, indent=2))


if __name__ == "__main__":
    main()
