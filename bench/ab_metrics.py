#!/usr/bin/env python
"""The cost of ``--metrics-port`` on durable lock cycles (issue 14: on >= 0.97x off).

    python bench/ab_metrics.py [--rounds 20] [--seconds 2] [--clients 32] [--keys 1000]
    python bench/ab_metrics.py --callgrind [--reps 2] [--seconds 8]

Wall clock (default): each round starts two fresh servers of this checkout (fsync on,
temporary data, 127.0.0.1), one with ``--metrics-port 0`` scraped once a second
(``/metrics``) while it is measured and one without, and drives each in turn with the
C load generator (bench/loadgen), alternating which goes first. It prints each round,
then the on/off ratio of cycles/s and of server CPU per cycle as median and
interquartile range, with the load average sampled every round: on this shared
machine single rounds move by far more than the 3% in question, so only the
distribution of many interleaved rounds says anything.

``--callgrind``: instructions executed by the server process per lock cycle, which
other load on the machine changes far less. An "on" and an "off" server run under
``valgrind --tool=callgrind`` at the same time; after a warm-up load both counters are
zeroed, both are loaded at once for ``--seconds`` (the "on" one scraped), and a dump
gives the instructions of exactly that window, divided by the cycles the generator
completed. Running the pair at once matters: a server also spends instructions per
wall-clock second (timers, idle wake-ups), so its figure per cycle rises when it gets
less CPU; the pair shares the machine's state. Scrapes come once a wall-clock second,
and under valgrind a second holds ~20x fewer cycles than at full speed, so the cost of
one scrape is measured apart (10 scrapes of an idle server) and the result is also
given per cycle at a real rate (``--rate`` cycles/s, one scrape a second). The
functions whose instructions per cycle differ most between on and off are listed.

``--together`` loads on and off in the same window each round (two generators at once)
instead of one after the other: each round's ratio then compares the two under the same
momentary load, though each gets about half the machine.

They write bench/out/ab_metrics.json (ab_metrics_together.json, ab_metrics_callgrind.json).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
TREE = HERE.parent
sys.path.insert(0, str(HERE))

import _callgrind  # noqa: E402
import _loadgen  # noqa: E402
import _peers  # noqa: E402
from _report import progress  # noqa: E402


def start_server(data: Path, metrics: bool, wrap: Sequence[str] = (), timeout: float = 60) -> tuple[subprocess.Popen[bytes], int]:
    """A server of this checkout on a free port; ``wrap`` runs it under another program."""
    return _callgrind.start_server(data, ["--metrics-port", "0"] if metrics else [], wrap, timeout)


def metrics_port(port: int) -> int:
    import redis

    return int(redis.Redis(port=port).info("server")["metrics_port"])


def scrape(mport: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=60) as reply:
        body = reply.read()
    if b"coordcore_" not in body:
        raise SystemExit("the /metrics reply has no coordcore_ metric")
    return len(body)


class Scraper:
    """Scrapes /metrics once a second while running (a thread), counting the scrapes."""

    def __init__(self, mport: int) -> None:
        self.mport = mport
        self.count = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            scrape(self.mport)
            self.count += 1

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(120)


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, med, q3


def median_interval(xs: list[float], resamples: int = 5000) -> tuple[float, float]:
    """A 95% interval for the median of ``xs`` (percentile bootstrap, fixed seed)."""
    rnd = random.Random(14)
    meds = sorted(statistics.median(rnd.choices(xs, k=len(xs))) for _ in range(resamples))
    return meds[int(resamples * 0.025)], meds[int(resamples * 0.975) - 1]


stop = _callgrind.stop


# --- wall clock ---------------------------------------------------------------------------


def load_one(name: str, proc: subprocess.Popen[bytes], port: int, args: argparse.Namespace) -> dict[str, float]:
    """One measured load of one server ("on": scraped once a second meanwhile)."""
    scraper = Scraper(metrics_port(port)) if name == "on" else None
    cpu0 = _peers.cpu_seconds_of(proc.pid)
    if scraper is not None:
        scraper.__enter__()
    try:
        s = _loadgen.run(port, "coordcore", clients=args.clients, keys=args.keys, seconds=args.seconds, warmup=0.5)
    finally:
        if scraper is not None:
            scraper.__exit__()
    cpu = _peers.cpu_seconds_of(proc.pid) - cpu0
    got = {"cycles_per_s": s.cycles_per_s, "p99_ms": s.p99_ms, "cpu_us_per_cycle": cpu / s.all_cycles * 1e6}
    if scraper is not None:
        if scraper.count == 0:
            raise SystemExit("the metrics port was never scraped during the load")
        got["scrapes"] = scraper.count
    return got


def wall_clock(args: argparse.Namespace) -> dict[str, object]:
    rows = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="cc-abm-") as tmp:
            first = ("on", "off") if r % 2 == 0 else ("off", "on")  # who starts, and is loaded, first
            servers = {n: start_server(Path(tmp) / n, n == "on") for n in first}
            try:
                got: dict[str, dict[str, float]] = {}
                if args.together:  # both loaded in the same window: they share whatever else runs
                    threads = [threading.Thread(target=lambda n=n: got.__setitem__(n, load_one(n, *servers[n], args)))
                               for n in servers]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    if len(got) != 2:
                        raise SystemExit("a load failed (see above)")
                else:
                    for name in first:
                        got[name] = load_one(name, *servers[name], args)
            finally:
                for proc, _ in servers.values():
                    stop(proc)
        load1 = os.getloadavg()[0]
        row = {"round": r, "load1": load1, **{f"{n}_{k}": v for n, d in got.items() for k, v in d.items()},
               "ratio": got["on"]["cycles_per_s"] / got["off"]["cycles_per_s"],
               "cpu_ratio": got["on"]["cpu_us_per_cycle"] / got["off"]["cpu_us_per_cycle"]}
        rows.append(row)
        progress(f"round {r + 1}/{args.rounds}: on {got['on']['cycles_per_s']:8.0f} cycles/s "
                 f"({got['on']['cpu_us_per_cycle']:5.1f} us CPU/cycle)  off {got['off']['cycles_per_s']:8.0f} "
                 f"({got['off']['cpu_us_per_cycle']:5.1f} us)  on/off {row['ratio']:.3f}")
    summary = {}
    for key, what in (("ratio", "cycles/s on/off"), ("cpu_ratio", "server CPU per cycle on/off")):
        xs = [row[key] for row in rows]
        q1, med, q3 = quartiles(xs)  # type: ignore[arg-type]
        lo, hi = median_interval(xs)  # type: ignore[arg-type]
        summary[key] = {"q1": q1, "median": med, "q3": q3, "median_95": [lo, hi]}
        print(f"{what} over {len(rows)} rounds: median {med:.3f} (95% interval {lo:.3f}-{hi:.3f}), "
              f"IQR {q1:.3f}-{q3:.3f}, "
              f"min {min(row[key] for row in rows):.3f}, max {max(row[key] for row in rows):.3f}")
    loads = [row["load1"] for row in rows]
    print(f"load average (1 min) during the rounds: median {statistics.median(loads):.2f}, "
          f"{min(loads):.2f}-{max(loads):.2f}; {args.clients} clients x {args.keys} keys, fsync, "
          f"{args.seconds} s per measurement")
    return {"mode": "wall-clock together" if args.together else "wall-clock", "rows": rows, "summary": summary}


# --- callgrind ------------------------------------------------------------------------------


callgrind_total = _callgrind.callgrind_total
self_cost_by_function = _callgrind.self_cost_by_function


def callgrind_pair(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, object]]:
    """One "on" and one "off" server under callgrind, loaded at the same time (so that the
    machine's load, and the per-second costs of a server that does not depend on its
    load, fall on both alike): instructions and cycles of one window each."""
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name in ("on", "off"):
            procs[name] = _callgrind.start_under_callgrind(tmp, name, ["--metrics-port", "0"] if name == "on" else [])
        mport = metrics_port(procs["on"][1])
        scrape(mport)
        ports = {n: port for n, (_, port) in procs.items()}
        # warm-up: first-use costs (imports, allocations, caches) stay out of the window
        _callgrind.load_at_once(ports, clients=args.clients, keys=args.keys, seconds=2.0)
        for proc, _ in procs.values():
            _callgrind.zero(proc.pid)
        with Scraper(mport) as scraper:
            stats = _callgrind.load_at_once(ports, clients=args.clients, keys=args.keys, seconds=args.seconds)
        dumps = _callgrind.dump_all(tmp, procs, "load")
        out: dict[str, dict[str, object]] = {}
        for name in procs:
            out[name] = {"instructions": callgrind_total(dumps[name]), "cycles": stats[name].all_cycles,
                         "scrapes": scraper.count if name == "on" else 0,
                         "functions": self_cost_by_function(dumps[name])}
        # One scrape's instructions, apart: under valgrind a second holds few cycles.
        before = set(tmp.glob("cg-*"))
        pid = procs["on"][0].pid
        _callgrind.zero(pid)
        for _ in range(10):
            scrape(mport)
        _callgrind.dump(pid, "scrapes")
        (idle,) = _callgrind.wait_dumps(tmp, before, 1)
        out["on"]["instructions_per_scrape"] = callgrind_total(idle) / 10
        out["on"]["scrape_functions"] = {fn: c / 10 for fn, c in self_cost_by_function(idle).items()}
        return out
    finally:
        for proc, _ in procs.values():
            stop(proc)


def callgrind(args: argparse.Namespace) -> dict[str, object]:
    _peers.ensure_packages({"valgrind": "valgrind"})
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="cc-abm-cg-") as tmp:
        for rep in range(args.reps):
            progress(f"callgrind pair {rep + 1}/{args.reps}: on and off at once (starting under valgrind: ~30 s)")
            pair = callgrind_pair(args, Path(tmp))
            for name, got in pair.items():
                got.update(rep=rep, name=name)
                runs.append(got)
            pc = {n: g["instructions"] / g["cycles"] for n, g in pair.items()}  # type: ignore[operator]
            progress(f"  on {pc['on']:,.0f} instructions/cycle ({pair['on']['cycles']:,} cycles, "
                     f"{pair['on']['scrapes']} scrapes), off {pc['off']:,.0f} ({pair['off']['cycles']:,} cycles)")
    off = [r for r in runs if r["name"] == "off"]
    on = [r for r in runs if r["name"] == "on"]
    per_scrape = statistics.median(r["instructions_per_scrape"] for r in on)  # type: ignore[misc]
    off_pc = [r["instructions"] / r["cycles"] for r in off]  # type: ignore[operator]
    on_pc = [r["instructions"] / r["cycles"] for r in on]  # type: ignore[operator]
    hot_pc = [(r["instructions"] - r["scrapes"] * per_scrape) / r["cycles"] for r in on]  # type: ignore[operator]
    real_pc = [h + per_scrape / args.rate for h in hot_pc]
    print(f"instructions per lock cycle of the server ({args.clients} clients x {args.keys} keys, fsync, "
          f"{len(off)} pairs run at once; on/off as a rate, off/on instructions, per pair):")

    def show(label: str, xs: list[float]) -> None:
        ratios = [o / x for o, x in zip(off_pc, xs)]
        print(f"  {label:<40} {statistics.median(xs):10,.0f}  (pairs: {', '.join(f'{x:,.0f}' for x in xs)})"
              + ("" if xs is off_pc else f"  on/off {statistics.median(ratios):.3f} "
                 f"({min(ratios):.3f}-{max(ratios):.3f})"))

    show("off", off_pc)
    show("on, scraped 1/s under valgrind", on_pc)
    print(f"  {'one scrape of /metrics':<40} {per_scrape:10,.0f}")
    show("on, the scrapes subtracted", hot_pc)
    show(f"on at {args.rate:,.0f} cycles/s and 1 scrape/s", real_pc)

    def per_cycle(rs: list[dict[str, object]]) -> dict[str, float]:
        acc: dict[str, float] = defaultdict(float)
        for r in rs:
            for fn, c in r["functions"].items():  # type: ignore[attr-defined]
                acc[fn] += c / r["cycles"] / len(rs)  # type: ignore[operator]
            for fn, c in r.get("scrape_functions", {}).items():  # type: ignore[attr-defined]
                acc[fn] -= c * r["scrapes"] / r["cycles"] / len(rs)  # type: ignore[operator]
        return acc

    f_on, f_off = per_cycle(on), per_cycle(off)
    diffs = _callgrind.differences(f_on, f_off)
    print("  functions whose instructions per cycle differ most (on - off, self cost, mean of the pairs, "
          "scrapes subtracted):")
    for d, fn in diffs[:15]:
        print(f"    {d:+9.0f}  {fn[:110]}")
    _callgrind.trim_functions(runs, ("functions", "scrape_functions"))
    return {"mode": "callgrind", "runs": runs, "per_cycle": {
        "off": off_pc, "on": on_pc, "on_without_scrapes": hot_pc, "on_at_rate": real_pc,
        "per_scrape": per_scrape, "rate": args.rate}, "top_differences": [(fn, d) for d, fn in diffs[:40]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--callgrind", action="store_true",
                    help="count the server's instructions per cycle under valgrind instead of timing")
    ap.add_argument("--rounds", type=int, default=20, help="wall clock: interleaved on/off rounds")
    ap.add_argument("--together", action="store_true",
                    help="wall clock: load on and off in the same window each round instead of one after the other")
    ap.add_argument("--reps", type=int, default=2, help="callgrind: runs of each of on and off")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=None,
                    help="length of each measured load (default 2 s; under callgrind 8 s)")
    ap.add_argument("--rate", type=float, default=40_000.0,
                    help="callgrind: full-speed cycles/s to project one scrape a second onto")
    args = ap.parse_args()
    if args.rounds < 2 or args.reps < 1:
        ap.error("--rounds must be >= 2 and --reps >= 1")
    if args.seconds is None:
        args.seconds = 8.0 if args.callgrind else 2.0
    if not 0 < args.seconds <= 3600 or args.rate <= 0:
        ap.error("--seconds must be in (0, 3600] and --rate > 0")
    _loadgen.build()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    doc = callgrind(args) if args.callgrind else wall_clock(args)
    doc.update(clients=args.clients, keys=args.keys, seconds=args.seconds, started=started,
               ended=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    (HERE / "out").mkdir(exist_ok=True)
    name = ("ab_metrics_callgrind.json" if args.callgrind
            else "ab_metrics_together.json" if args.together else "ab_metrics.json")
    (HERE / "out" / name).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
