#!/usr/bin/env python
"""A/B of OpenTelemetry tracing (issue 14, item 3): what it costs when it is off, and,
for information, when it is on. One run, rounds interleaved, the order alternating.

    python bench/ab_tracing.py --base /path/to/a/checkout/without/tracing [--rounds 5]

Part 1, "zero cost when off": 32 clients x 1000 keys of durable lock cycles (fsync on)
from the C load generator (bench/loadgen) against a fresh `python -m coordcore.server`
per measurement: "off" is this checkout (the tracing code present, not turned on),
"absent" the ``--base`` checkout (built, without the tracing code), "otel" this
checkout with ``--otel`` (spans exported nowhere: ``OTEL_TRACES_EXPORTER=none``) and
untraced requests, which must still take the native lane.

Part 2, tracing on (for information): the same server (``--otel``, spans made and
dropped by the SDK) driven by the Python ``AsyncClient`` (32 tasks, one lock cycle
after another each), once with ``tracing=`` an SDK tracer provider (every command
traced: client spans, the TRACEPARENT prefix, server and batch spans) and once without.

It prints each round and the median ratio with its spread; JSON in bench/out/ab_tracing.json.
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

from ab_lockpath import start_server

HERE = Path(__file__).resolve().parent
OURS = HERE.parent

#: Part 2's client: ``clients`` tasks doing lock cycles for ``seconds``; prints cycles/s.
CLIENT = r"""
import asyncio, json, sys, time
from coordcore.client import AsyncClient
port, clients, seconds, traced = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
provider = None
if traced:
    from opentelemetry.sdk.trace import TracerProvider
    provider = TracerProvider()  # spans are made, recorded and dropped (no processor)
async def main():
    async with AsyncClient(port=port, tracing=provider if traced else False) as client:
        done = [0]
        stop = time.monotonic() + seconds
        session = await client.session(ttl=30)
        async def worker(i):
            n = 0
            while time.monotonic() < stop:
                grant = await client.acquire(f"k/{i}/{n % 31}", session=session)
                await client.release(grant)
                n += 1
            done[0] += n
        began = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        print(json.dumps({"cycles_per_s": done[0] / (time.monotonic() - began)}))
asyncio.run(main())
"""


def loadgen(tree: Path, port: int, clients: int, keys: int, seconds: float) -> float:
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); import _loadgen; "
            "s = _loadgen.run(int(sys.argv[2]), 'coordcore', clients=int(sys.argv[3]), "
            "keys=int(sys.argv[4]), seconds=float(sys.argv[5]), warmup=1.0); print(json.dumps(s.cycles_per_s))")
    out = subprocess.run([sys.executable, "-c", code, str(tree / "bench"), str(port), str(clients), str(keys),
                          str(seconds)], capture_output=True, text=True, check=True, cwd=tree / "bench")
    return float(json.loads(out.stdout))


def serve(tree: Path, tmp: str, otel: bool) -> tuple[subprocess.Popen[bytes], int]:
    os.environ["OTEL_TRACES_EXPORTER"] = "none"
    return start_server(tree, Path(tmp) / "data", ["--otel"] if otel else [])


def measure_hot(tree: Path, otel: bool, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory(prefix="cc-abt-") as tmp:
        proc, port = serve(tree, tmp, otel)
        try:
            return loadgen(tree, port, args.clients, args.keys, args.seconds)
        finally:
            proc.terminate()
            proc.wait(30)


def measure_client(traced: bool, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory(prefix="cc-abt-") as tmp:
        proc, port = serve(OURS, tmp, True)
        try:
            out = subprocess.run([sys.executable, "-c", CLIENT, str(port), str(args.clients), str(args.seconds),
                                  "1" if traced else "0"], capture_output=True, text=True, check=True,
                                 env=dict(os.environ, PYTHONPATH=str(OURS)))
            return float(json.loads(out.stdout)["cycles_per_s"])
        finally:
            proc.terminate()
            proc.wait(30)


def spread(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3f}, min {min(xs):.3f}, max {max(xs):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="a built coordcore checkout without the tracing code")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    base = args.base.resolve()
    if not (base / "coordcore").is_dir() or (base / "coordcore" / "tracing.py").exists():
        raise SystemExit(f"{base} is not a coordcore checkout without the tracing code")
    rows = []
    for r in range(args.rounds):
        arms = [("off", OURS, False), ("absent", base, False), ("otel", OURS, True)]
        if r % 2:
            arms.reverse()
        got = {name: measure_hot(tree, otel, args) for name, tree, otel in arms}
        order = [False, True] if r % 2 == 0 else [True, False]
        client = {traced: measure_client(traced, args) for traced in order}
        row = {"round": r, **got, "client_untraced": client[False], "client_traced": client[True],
               "off_vs_absent": got["off"] / got["absent"], "otel_vs_absent": got["otel"] / got["absent"],
               "traced_vs_untraced": client[True] / client[False]}
        rows.append(row)
        print(f"round {r}: lane off {got['off']:8.0f}  absent {got['absent']:8.0f}  --otel {got['otel']:8.0f} "
              f"cycles/s (off/absent {row['off_vs_absent']:.3f}, otel/absent {row['otel_vs_absent']:.3f}); "
              f"client untraced {client[False]:6.0f}  traced {client[True]:6.0f} "
              f"(ratio {row['traced_vs_untraced']:.3f})", flush=True)
        time.sleep(0.5)
    print(f"off/absent over {len(rows)} rounds: {spread([r['off_vs_absent'] for r in rows])}")
    print(f"--otel (untraced requests)/absent: {spread([r['otel_vs_absent'] for r in rows])}")
    print(f"client traced/untraced (Python AsyncClient, {args.clients} tasks): "
          f"{spread([r['traced_vs_untraced'] for r in rows])}")
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "ab_tracing.json").write_text(json.dumps({"rows": rows, "base": str(base),
                                                              "clients": args.clients, "keys": args.keys}, indent=1))


if __name__ == "__main__":
    main()
