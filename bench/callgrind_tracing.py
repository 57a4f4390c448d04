#!/usr/bin/env python
"""Instructions per lock cycle with tracing off, counted by valgrind (callgrind), so a
shared, noisy machine cannot blur the answer: this checkout against ``--base`` (a
built checkout without the tracing code).

    python bench/callgrind_tracing.py --base /path/to/checkout [--cycles 2000]

Each tree runs a fixed workload under ``valgrind --tool=callgrind`` twice, with 0 and
with ``--cycles`` cycles; the difference over the cycles is the cost of one cycle with
start-up taken out. The workload: an in-process server (uvloop, lock log without
fsync) and one raw RESP connection on the same loop doing, per cycle, a hot
``LOCK.ACQUIRE``/``LOCK.RELEASE`` (the native lane) and a table-path
``LOCK.TRY``/``LOCK.RELEASE ... TOKEN`` (the Python command table and commit pipeline).
Prints instructions per cycle for both trees and their ratio; JSON in bench/out.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

WORKLOAD = r"""
import asyncio, sys, tempfile
from pathlib import Path
import hiredis, uvloop
from coordcore.server import Server, ServerConfig
cycles = int(sys.argv[1])
def pack(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)
async def main():
    server = Server(ServerConfig(port=0, data_dir=Path(tempfile.mkdtemp()), worker_id=1, fsync=False,
                                 log_level="warning"))
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    parser = hiredis.Reader()
    async def call(*args):
        writer.write(pack(*args))
        while True:
            reply = parser.gets()
            if reply is not False:
                return reply
            parser.feed(await reader.read(65536))
    cred = await call("SESSION.OPEN", 30000)
    for i in range(cycles):
        key = "k/%d" % (i % 64)
        await call("LOCK.ACQUIRE", key, cred)
        await call("LOCK.RELEASE", key, cred)
        token = await call("LOCK.TRY", key, cred, "LABEL", "x")
        await call("LOCK.RELEASE", key, cred, "TOKEN", token)
    writer.close()
    await server.close()
uvloop.run(main())
"""


def instructions(tree: Path, cycles: int) -> int:
    with tempfile.TemporaryDirectory(prefix="cc-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c",
                        WORKLOAD, str(cycles)], check=True, capture_output=True,
                       env=dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0"), cwd=tmp)
        match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(errors="replace"), re.M)
        if match is None:
            raise SystemExit("no totals in callgrind's output")
        return int(match.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--cycles", type=int, default=2000)
    args = ap.parse_args()
    trees = {"ours": HERE.parent, "base": args.base.resolve()}
    per: dict[str, float] = {}
    raw: dict[str, list[int]] = {}
    for name, tree in trees.items():
        zero, full = instructions(tree, 0), instructions(tree, args.cycles)
        raw[name] = [zero, full]
        per[name] = (full - zero) / args.cycles
        print(f"{name}: {per[name]:,.0f} instructions per cycle (start-up {zero:,}, total {full:,})", flush=True)
    print(f"ours/base (tracing off vs absent): {per['ours'] / per['base']:.4f}")
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "callgrind_tracing.json").write_text(json.dumps({"per_cycle": per, "raw": raw,
                                                                     "cycles": args.cycles}, indent=1))


if __name__ == "__main__":
    main()
