#!/usr/bin/env python
"""A/B of the server's read loop in process (no sockets, so a loaded machine disturbs it
less than a network benchmark): this checkout against another built checkout.

    python bench/ab_readloop.py --base ../cc-base [--rounds 8]

Each round runs, in a fresh interpreter per tree, one connection of a server that does
not listen (a transport that drops what is written) fed pipelined chunks of 64 requests:
``PING`` arrays (the command table's path), ``ID.NEXT`` arrays (the native hot path),
and in this tree also inline ``PING`` lines. It reports CPU ns per request (best of 5
repeats), trees alternating, and the ratio ours/base per path; JSON to
bench/out/ab_readloop.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r'''
import asyncio, json, sys, tempfile, time
from pathlib import Path
from coordcore.ids import Snowflake
from coordcore.server.log import configure
from coordcore.server.protocol import Connection
from coordcore.server.server import Server, ServerConfig

class Sink:
    def write(self, data): pass
    def close(self): pass
    abort = close
    def is_closing(self): return False
    def pause_reading(self): pass
    def resume_reading(self): pass
    def get_extra_info(self, name, default=None): return default
    def set_write_buffer_limits(self, high=None, low=None): pass
    def get_write_buffer_size(self): return 0

async def main():
    server = Server(ServerConfig(port=0, data_dir=Path(tempfile.mkdtemp())),
                    log=configure("kv", "critical", name="coordcore.server.bench"))
    server.ids = Snowflake(1, clock="logical")
    server.worker_id, server.datacenter_id = 1, 0
    server.commands = server.base_commands()
    conn = Connection(server)
    conn.connection_made(Sink())
    chunks = {"ping_array": b"*1\r\n$4\r\nPING\r\n" * 64, "id_next_array": b"*1\r\n$7\r\nID.NEXT\r\n" * 64}
    if hasattr(conn.wire, "take_inline"):
        chunks["ping_inline"] = b"PING\r\n" * 64
    out = {}
    for name, chunk in chunks.items():
        best = float("inf")
        for _ in range(5):
            t = time.process_time()
            for _ in range(2000):
                conn.data_received(chunk)
            best = min(best, (time.process_time() - t) / (2000 * 64) * 1e9)
        out[name] = best
    print(json.dumps(out))

asyncio.run(main())
'''


def measure(tree: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, cwd=tree,
                         env=env)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="another built coordcore checkout")
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    ours, base = HERE.parent, args.base.resolve()
    rows = []
    for r in range(args.rounds):
        order = [("ours", ours), ("base", base)] if r % 2 == 0 else [("base", base), ("ours", ours)]
        got = {name: measure(tree) for name, tree in order}
        rows.append({"round": r, **got})
        print(f"round {r}: " + "  ".join(f"{path} {got['ours'][path]:.0f}/{got['base'][path]:.0f} ns"
                                         for path in got["base"]) +
              (f"  ping_inline {got['ours']['ping_inline']:.0f} ns (ours only)" if "ping_inline" in got["ours"]
               else ""), flush=True)
    for path in rows[0]["base"]:
        ratios = [row["ours"][path] / row["base"][path] for row in rows]
        print(f"{path}: ours/base CPU per request over {len(ratios)} rounds: median {statistics.median(ratios):.3f}, "
              f"min {min(ratios):.3f}, max {max(ratios):.3f}")
    inline = [row["ours"]["ping_inline"] for row in rows if "ping_inline" in row["ours"]]
    if inline:
        print(f"ping_inline (ours): median {statistics.median(inline):.0f} ns per request")
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "ab_readloop.json").write_text(json.dumps({"rows": rows, "base": str(base)}, indent=1))


if __name__ == "__main__":
    main()
