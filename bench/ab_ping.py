#!/usr/bin/env python
"""A/B of the table path of the read loop (RESP arrays that are not hot commands, such
as PING): this checkout against another built checkout of coordcore, in one run,
rounds interleaved, both driven by redis-benchmark.

    python bench/ab_ping.py --base ../cc-base [--rounds 6] [--requests 300000]

Each round starts a fresh server from each tree (bench/ab_lockpath.py's start_server,
fsync on, data in a temporary directory) and runs ``redis-benchmark -c 50 -P 16 PING``
(an array request: *1 $4 PING), alternating which tree goes first. It prints requests/s
per round and the ratio ours/base with its spread, and writes bench/out/ab_ping.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ab_lockpath import start_server  # noqa: E402


def measure(tree: Path, requests: int) -> float:
    with tempfile.TemporaryDirectory(prefix="cc-ab-") as tmp:
        proc, port = start_server(tree, Path(tmp) / "data")
        try:
            out = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", "50", "-P", "16",
                                  "-n", str(requests), "--csv", "PING"], capture_output=True, text=True,
                                 timeout=600, check=True).stdout
            row = [line for line in out.splitlines() if line.startswith('"') and not line.startswith('"test"')][-1]
            return float(row.split(",")[1].strip('"'))
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="another built coordcore checkout")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=300_000)
    args = ap.parse_args()
    ours, base = HERE.parent, args.base.resolve()
    ratios, rows = [], []
    for r in range(args.rounds):
        order = [("ours", ours), ("base", base)] if r % 2 == 0 else [("base", base), ("ours", ours)]
        got = {name: measure(tree, args.requests) for name, tree in order}
        ratio = got["ours"] / got["base"]
        ratios.append(ratio)
        rows.append({"round": r, **got, "ratio": ratio})
        print(f"round {r}: ours {got['ours']:10.0f} req/s  base {got['base']:10.0f}  ratio {ratio:.3f}", flush=True)
        time.sleep(0.5)
    print(f"ours/base over {len(ratios)} rounds: median {statistics.median(ratios):.3f}, "
          f"min {min(ratios):.3f}, max {max(ratios):.3f}  (redis-benchmark -c 50 -P 16 PING)")
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "ab_ping.json").write_text(json.dumps({"rows": rows, "base": str(base)}, indent=1))


if __name__ == "__main__":
    main()
