"""The C lock load generator (bench/loadgen/lockload.c), built on demand and run as a
subprocess: ``run(port, "coordcore", clients=32, keys=1000, seconds=3, warmup=1)``.

The generator is one epoll thread in C, so it can drive far more lock cycles per
second than the servers under test, where the asyncio + hiredis driver it replaces
spent most of a core of its own. It prints one JSON object; here that becomes a
:class:`LoadStats` that ``_lockbench.measure`` reads like its own ``Stats``. Its CPU
(``client_cpu``) is the generator's own getrusage, so the server's CPU per cycle,
which ``measure`` reads from /proc, is the server's alone.

Also a command line: ``python bench/_loadgen.py [--sanitize] LOCKLOAD-ARGS...`` builds
and runs the generator (``--sanitize``: an ASan + UBSan build) and prints its JSON.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import _peers

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "loadgen" / "lockload.c"
OUT = HERE / "out"
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror")
SANITIZE_CFLAGS = ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                   "-fno-sanitize-recover=all", "-Wall", "-Wextra", "-Werror")
PROTOCOLS = ("coordcore", "redis-lock")


@dataclass(frozen=True)
class LoadStats:
    """One run of the generator: what ``_lockbench.measure`` needs of a ``Stats``."""

    cycles: int            # granted in the measured window
    all_cycles: int        # warm-up and wind-down included: the divisor of server CPU
    elapsed: float         # seconds measured
    cycles_per_s: float
    p50_ms: float          # acquire latency percentiles of the measured window (nan: none)
    p99_ms: float
    client_cpu: float      # the generator's own CPU seconds (user + system)
    quantiles_ms: tuple[float, ...] = ()  # acquire latency at quantiles 0.001 .. 0.999 (empty: none)

    def percentiles_ms(self) -> tuple[float, float]:
        return self.p50_ms, self.p99_ms


def build(*, sanitize: bool = False) -> Path:
    """bench/out/lockload (or lockload-asan), compiled with gcc when missing or older
    than its source."""
    binary = OUT / ("lockload-asan" if sanitize else "lockload")
    if binary.exists() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    _peers.ensure_packages({"gcc": "gcc"})
    OUT.mkdir(exist_ok=True)
    tmp = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")  # two builds at once cannot collide
    flags = SANITIZE_CFLAGS if sanitize else CFLAGS
    res = subprocess.run(["gcc", *flags, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"building the load generator failed: gcc {' '.join(flags)} {SOURCE}\n{res.stderr}")
    tmp.replace(binary)
    return binary


def run(port: int, protocol: str, *, clients: int, keys: int, seconds: float, warmup: float,
        seed: int = 0, drain: float = 30.0, sanitize: bool = False,
        auth: tuple[str, str] | None = None) -> LoadStats:
    """Drive lock cycles against 127.0.0.1:port; raises if the generator reports any
    error (an error reply, an unexpected reply, a lost connection, a failed check).
    ``auth``: (user, password) to AUTH with first on every connection."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    argv = [str(build(sanitize=sanitize)), "--port", str(port), "--protocol", protocol,
            "--clients", str(clients), "--keys", str(keys), "--seconds", repr(seconds),
            "--warmup", repr(warmup), "--seed", str(seed), "--drain", repr(drain)]
    if auth is not None:
        argv += ["--user", auth[0], "--password", auth[1]]
    what = f"lockload {' '.join(argv[1:])}"
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=warmup + seconds + drain + 30)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what}: no result within {exc.timeout:.0f} s (killed)") from None
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {res.returncode}):\n{res.stderr.strip()}")
    if res.stderr.strip():  # a sanitizer report, say: never let it pass unseen
        raise RuntimeError(f"{what} wrote to stderr:\n{res.stderr.strip()}")
    doc = json.loads(res.stdout)
    return LoadStats(
        cycles=doc["cycles"], all_cycles=doc["all_cycles"], elapsed=doc["elapsed"],
        cycles_per_s=doc["cycles_per_s"],
        p50_ms=math.nan if doc["p50_ms"] is None else doc["p50_ms"],
        p99_ms=math.nan if doc["p99_ms"] is None else doc["p99_ms"],
        client_cpu=doc["cpu_user_s"] + doc["cpu_sys_s"], quantiles_ms=tuple(doc["quantiles_ms"]))


def main(argv: list[str]) -> int:
    sanitize = "--sanitize" in argv
    args = [a for a in argv if a != "--sanitize"]
    return subprocess.run([str(build(sanitize=sanitize)), *args]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
