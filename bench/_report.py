"""How every coordcore benchmark reports: our figure beside a peer's, measured in the same
run, as a ratio, with versions, and as JSON (bench/out/<name>.json) that feeds RESULTS.md.

A peer that cannot be imported or started is an error, never a silent skip.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"
_T0 = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr, with the seconds since this process started and the
    machine's load average (1 min), so a long run shows where it is, and how busy the
    machine was, without mixing into the figures on stdout."""
    print(f"[{time.monotonic() - _T0:7.1f} s, load {os.getloadavg()[0]:4.1f}] {message}", file=sys.stderr, flush=True)


def version_of(dist: str) -> str:
    """Installed version of a distribution; raises if the peer is missing (no silent skip)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"benchmark peer {dist!r} is not installed: run ./dev bench (it installs the bench extra)")


def cpu_seconds() -> float:
    """CPU time of this process (user + system), all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(fn: Callable[[], int], *, min_seconds: float = 0.5, repeat: int = 5) -> dict[str, float]:
    """Run ``fn`` (which returns how many operations it did) until ``min_seconds`` pass,
    ``repeat`` times; report the best rate (least disturbed by other load) and CPU ns/op."""
    best: dict[str, float] = {}
    for _ in range(repeat):
        ops = 0
        c0, t0 = cpu_seconds(), time.perf_counter()
        while True:
            ops += fn()
            t1 = time.perf_counter()
            if t1 - t0 >= min_seconds:
                break
        c1 = cpu_seconds()
        rate = ops / (t1 - t0)
        if rate > best.get("ops_per_s", 0.0):
            best = {"ops_per_s": rate, "cpu_ns_per_op": (c1 - c0) / ops * 1e9, "ops": ops}
    return best


class Report:
    """Collects rows of (case, ours, peer) and prints them with ratios."""

    def __init__(self, name: str, peers: dict[str, str]) -> None:
        self.name = name
        self.versions = {"coordcore": version_of("coordcore"), **{p: version_of(p) for p in peers.values()}}
        self.rows: list[dict[str, Any]] = []

    def row(self, case: str, unit: str, ours: float, peer_name: str | None, peer: float | None,
            *, higher_is_better: bool = True, **extra: Any) -> None:
        ratio = None
        if peer:
            ratio = ours / peer if higher_is_better else peer / ours
        self.rows.append({"case": case, "unit": unit, "coordcore": ours, "peer": peer_name,
                          "peer_value": peer, "ratio": ratio, **extra})
        vs = f"{peer_name} {peer:,.1f}  ->  {ratio:.2f}x" if peer else "(no peer for this row)"
        print(f"  {case:<48} {ours:>16,.1f} {unit:<10} vs. {vs}", flush=True)

    def finish(self) -> Path:
        OUT.mkdir(exist_ok=True)
        path = OUT / f"{self.name}.json"
        doc = {
            "name": self.name,
            "date": _dt.date.today().isoformat(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "platform": platform.platform()},
            "versions": self.versions,
            "rows": self.rows,
        }
        path.write_text(json.dumps(doc, indent=2))
        print(f"  versions: {', '.join(f'{k} {v}' for k, v in self.versions.items())}")
        print(f"  wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
        return path
