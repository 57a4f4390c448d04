#!/usr/bin/env python
"""A/B of the durable lock hot path: this checkout against another built checkout of
coordcore (say the previous commit, in a git worktree), in one run, rounds interleaved.

    git worktree add ../cc-base HEAD~1 && (cd ../cc-base && python setup.py build_ext --inplace)
    python bench/ab_lockpath.py --base ../cc-base [--rounds 5] [--clients 32] [--keys 1000]

Each round starts a fresh `python -m coordcore.server` (fsync on, data in a temporary
directory, 127.0.0.1) from each tree and drives it with that tree's own C load
generator (bench/loadgen, whose protocol follows the tree's), alternating which goes
first. It prints cycles/s and p99 per round and the ratio ours/base with its spread,
and writes bench/out/ab_lockpath.json. (The cost of ``--metrics-port``, this checkout
against itself, is bench/ab_metrics.py.)
"""
from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def start_server(tree: Path, data: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.Popen([sys.executable, "-m", "coordcore.server", "--port", "0", "--data-dir", str(data),
                             "--worker-id", "1", "--announce-port", "--log-level", "warning", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=tree)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else b""
    if not line.startswith(b"PORT "):
        proc.kill()
        raise SystemExit(f"the server from {tree} did not start: {line!r}")
    return proc, int(line.split()[1])


def measure(tree: Path, clients: int, keys: int, seconds: float) -> dict[str, float]:
    """One server from ``tree``, driven by ``tree``'s load generator."""
    with tempfile.TemporaryDirectory(prefix="cc-ab-") as tmp:
        proc, port = start_server(tree, Path(tmp) / "data", [])
        try:
            code = ("import sys, json; sys.path.insert(0, sys.argv[1]); import _loadgen; "
                    "s = _loadgen.run(int(sys.argv[2]), 'coordcore', clients=int(sys.argv[3]), "
                    "keys=int(sys.argv[4]), seconds=float(sys.argv[5]), warmup=1.0); "
                    "print(json.dumps({'cycles_per_s': s.cycles_per_s, 'p99_ms': s.p99_ms}))")
            out = subprocess.run([sys.executable, "-c", code, str(tree / "bench"), str(port), str(clients), str(keys),
                                  str(seconds)], capture_output=True, text=True, check=True, cwd=tree / "bench")
            got: dict[str, float] = json.loads(out.stdout)
            return got
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="another built coordcore checkout")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    ours = HERE.parent
    base = args.base.resolve()
    ratios, rows = [], []
    for r in range(args.rounds):
        order = [("ours", ours), ("base", base)] if r % 2 == 0 else [("base", base), ("ours", ours)]
        got = {name: measure(tree, args.clients, args.keys, args.seconds) for name, tree in order}
        ratio = got["ours"]["cycles_per_s"] / got["base"]["cycles_per_s"]
        ratios.append(ratio)
        rows.append({"round": r, **{f"{k}_{m}": v for k, d in got.items() for m, v in d.items()}, "ratio": ratio})
        print(f"round {r}: ours {got['ours']['cycles_per_s']:9.0f} cycles/s (p99 {got['ours']['p99_ms']:.2f} ms)"
              f"  base {got['base']['cycles_per_s']:9.0f} (p99 {got['base']['p99_ms']:.2f} ms)  ratio {ratio:.3f}",
              flush=True)
        time.sleep(0.5)
    print(f"ours/base over {len(ratios)} rounds: median {statistics.median(ratios):.3f}, "
          f"min {min(ratios):.3f}, max {max(ratios):.3f}  ({args.clients} clients x {args.keys} keys, fsync)")
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "ab_lockpath.json").write_text(json.dumps({"rows": rows, "base": str(base)}, indent=1))


if __name__ == "__main__":
    main()
