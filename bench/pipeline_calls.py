#!/usr/bin/env python
"""Python calls and CPU per lock cycle through the commit pipeline on a FileStore, this
checkout against another built checkout (``--base``), in one run, trees alternating.

The embedded service (no TCP, no fsync: ``durability="unsafe-no-fsync"``), 32 tasks each
doing acquire + release cycles on 1000 keys. The call count (``sys.setprofile``'s "call"
events per cycle) is the steady figure: it does not move with the machine's load, so a
change to the writer's per-batch path shows even when the TCP A/B (bench/ab_lockpath.py)
swings 2x from round to round.

Run: PYTHONPATH=. .venv/bin/python bench/pipeline_calls.py --base ../cc-base [--rounds 4]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


async def workload(tasks: int, cycles: int, count: bool) -> tuple[float, float, int]:
    from coordcore.locks.service import LockService

    with tempfile.TemporaryDirectory(prefix="cc-calls-") as d:
        async with await LockService.open(d, durability="unsafe-no-fsync") as svc:
            sessions = [await svc.open_session(ttl=60, keepalive=False) for _ in range(tasks)]

            async def worker(i: int) -> None:
                for n in range(cycles):
                    g = await svc.acquire(f"k{(i * 7 + n) % 1000}", sessions[i])
                    await svc.release(g)

            calls = 0

            def profile(frame: object, event: str, arg: object) -> None:
                nonlocal calls
                if event == "call":
                    calls += 1

            if count:
                sys.setprofile(profile)
            t0 = time.process_time()
            try:
                await asyncio.gather(*(worker(i) for i in range(tasks)))
            finally:
                sys.setprofile(None)
            cpu = time.process_time() - t0
            return calls / (tasks * cycles), cpu / (tasks * cycles) * 1e6, svc.stats.batches


def child(tasks: int, cycles: int) -> None:
    import uvloop

    calls, _, batches = uvloop.run(workload(tasks, cycles, True))
    cpu = [uvloop.run(workload(tasks, cycles, False))[1] for _ in range(5)]
    print(json.dumps({"calls": calls, "cpu_us": statistics.median(cpu), "batches": batches}))


def measure(tree: Path, tasks: int, cycles: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, __file__, "--child", str(tasks), str(cycles)], cwd=tree, env=env,
                         capture_output=True, text=True, check=True, timeout=600).stdout
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="another built coordcore checkout")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--cycles", type=int, default=200)
    args = ap.parse_args()
    here = Path(__file__).resolve().parent.parent
    got: dict[str, list[dict[str, float]]] = {"ours": [], "base": []}
    for rnd in range(args.rounds):
        order = [("ours", here), ("base", args.base.resolve())]
        for name, tree in (order if rnd % 2 == 0 else order[::-1]):
            r = measure(tree, args.tasks, args.cycles)
            got[name].append(r)
            print(f"round {rnd}: {name:<4} {r['calls']:6.1f} Python calls/cycle  {r['cpu_us']:6.1f} us CPU/cycle"
                  f"  ({r['batches']} batches)", flush=True)
    for name, rows in got.items():
        print(f"{name}: calls/cycle {statistics.median(r['calls'] for r in rows):.1f}, CPU/cycle median "
              f"{statistics.median(r['cpu_us'] for r in rows):.1f} us over {len(rows)} rounds")


if __name__ == "__main__":
    main()
