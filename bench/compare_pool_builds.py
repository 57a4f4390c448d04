"""Quota pools: native allocation decisions per second of two builds, in one run.

Each round runs bench/compare_pools.py's native case (a pool and a semaphore) once per
build, each in its own process (two builds of one extension cannot share a process),
in ABBA order so drift from the other work on the machine falls on both. Prints the
median and range of each, and the new/old ratio per round.

    # a tree with the old build: a checkout with its .so files built, and this bench/ copied in
    PYTHONPATH=. .venv/bin/python bench/compare_pool_builds.py /tmp/old-tree . --rounds 8
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys
sys.argv = ["compare_pools"]
import compare_pools as cp
print(json.dumps({k: cp.native(k, %r)["decisions_per_s"] for k in ("pool", "semaphore")}))
"""


def run(tree: Path, seconds: float) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD % seconds], cwd=tree / "bench", capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.0)
    a = ap.parse_args()
    got: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for i in range(a.rounds):
        order = ["old", "new"] if i % 2 == 0 else ["new", "old"]
        for which in order:
            got[which].append(run(getattr(a, which), a.seconds))
        print(f"round {i + 1}: " + ", ".join(f"{w} pool {got[w][-1]['pool']:,.0f}/s sem {got[w][-1]['semaphore']:,.0f}/s"
                                             for w in ("old", "new")), flush=True)

    def spread(xs: list[float]) -> str:
        return f"{statistics.median(xs):,.0f} ({min(xs):,.0f}..{max(xs):,.0f})"

    summary = {}
    for w in ("old", "new"):
        pool = [r["pool"] for r in got[w]]
        sem = [r["semaphore"] for r in got[w]]
        ratio = [p / s for p, s in zip(pool, sem)]
        summary[w] = {"pool": pool, "semaphore": sem}
        print(f"{w}: pool {spread(pool)}/s, semaphore {spread(sem)}/s, "
              f"pool/semaphore {statistics.median(ratio):.3f} ({min(ratio):.3f}..{max(ratio):.3f})")
    speedup = [n["pool"] / o["pool"] for n, o in zip(got["new"], got["old"])]
    print(f"new/old pool decisions per round: {statistics.median(speedup):.2f}x "
          f"({min(speedup):.2f}..{max(speedup):.2f})")
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "compare_pool_builds.json").write_text(json.dumps({"rounds": got, "new_over_old": speedup}, indent=1))


if __name__ == "__main__":
    main()
