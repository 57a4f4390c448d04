"""IDs: coordcore's Snowflake beside uuid-utils, python-ulid, snowflake-id, stdlib uuid and a
plain pure-Python Snowflake with a threading.Lock, all in this one process and run.

Also IDs per ms over one second against the 4096/ms ceiling, counted from the IDs' own
timestamps: bench/plots/ids_per_ms.png (``--no-plots``: none).

Run: ./dev bench ids
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from itertools import repeat

import numpy as np
import snowflake as snowflake_id  # the `snowflake-id` package
import ulid
import uuid_utils

import _plots
from _report import Report, measure, progress
from coordcore.ids import Snowflake

CEILING = 4_096_000  # IDs/s per worker under the 41/10/12 ms layout
CALLS = 20_000
WAIT_GEN = Snowflake(9, clock="wait")  # the time series' generator


class LockedSnowflake:
    """What people write by hand: a Snowflake behind a threading.Lock."""

    def __init__(self, worker: int) -> None:
        self.worker = worker
        self.lock = threading.Lock()
        self.last_ms = -1
        self.seq = 0

    def next_id(self) -> int:
        with self.lock:
            now = time.time_ns() // 1_000_000
            if now == self.last_ms:
                self.seq = (self.seq + 1) & 4095
                if self.seq == 0:
                    while now <= self.last_ms:
                        now = time.time_ns() // 1_000_000
            else:
                self.seq = 0
            self.last_ms = now
            return ((now - 1288834974657) << 22) | (self.worker << 12) | self.seq


def per_call(fn) -> dict[str, float]:  # type: ignore[no-untyped-def]
    def batch() -> int:
        for _ in repeat(None, CALLS):
            fn()
        return CALLS
    return measure(batch)


def two_threads(fn, seconds: float = 1.0) -> float:  # type: ignore[no-untyped-def]
    """Total calls/s of two threads calling ``fn`` at once."""
    counts = [0, 0]
    go = threading.Barrier(3)
    stop = time.perf_counter() + seconds + 0.05

    def work(k: int) -> None:
        go.wait()
        n = 0
        while time.perf_counter() < stop:
            for _ in repeat(None, 2000):
                fn()
            n += 2000
        counts[k] = n

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def one_thread(fn, seconds: float = 1.0) -> float:  # type: ignore[no-untyped-def]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in repeat(None, 2000):
            fn()
        n += 2000
    return n / (time.perf_counter() - t0)


def ids_per_ms(make_ids: Callable[[], np.ndarray], seconds: float) -> np.ndarray:
    """IDs issued in each millisecond of a ``seconds`` run of ``make_ids``: the IDs' own
    timestamps, counted (the first and last, partial, milliseconds dropped)."""
    chunks = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        chunks.append(make_ids())
    ms = WAIT_GEN.decode_many(np.concatenate(chunks))["timestamp_ms"]
    counts = np.bincount(ms - ms[0])
    return counts[1:-1]


def id_series(report: Report, seconds: float = 1.0) -> None:
    """IDs per ms over a second, one call at a time and in batches, against the ceiling;
    bench/plots/ids_per_ms.png."""
    progress("ids: IDs per ms over time")
    buf = np.empty(4096, dtype=np.int64)
    batched = ids_per_ms(lambda: WAIT_GEN.next_ids(out=buf).copy(), seconds)

    def calls() -> np.ndarray:
        return np.fromiter((WAIT_GEN.next_id() for _ in repeat(None, 2000)), dtype=np.int64, count=2000)

    single = ids_per_ms(calls, seconds)
    for name, series in (("next_ids(out=) batches of 4096", batched), ("next_id() one call at a time", single)):
        report.row(f"IDs per ms, {name}: median over {len(series)} ms vs ceiling", "IDs/ms",
                   float(np.median(series)), "ceiling", CEILING / 1000, min_ms=int(series.min()),
                   max_ms=int(series.max()))
    panels = []
    for title, series, key in (("next_ids(out=), batches of 4096", batched, "coordcore"),
                               ("next_id(), one call at a time", single, "redis-aof")):
        at = float(np.mean(series >= 4096)) * 100
        label = f"median {np.median(series):,.0f} IDs/ms; {at:.0f}% of the ms at the ceiling"
        panels.append(_plots.Panel(title, "time (ms since the first full ms)", "IDs issued in that ms",
                                   [_plots.Line(label, np.arange(len(series)), series, key=key, marker="", width=0.8)],
                                   hlines=[("ceiling: 4096 IDs/ms per worker", 4096)], ylim=(0, 4096 * 1.25)))
    _plots.save("ids_per_ms", "Snowflake IDs per ms over 1 s (clock=\"wait\", one worker, one thread; "
                "a gap: the thread did not run)", panels)


def main() -> None:
    report = Report("ids", peers={"uuid7": "uuid-utils", "ulid": "python-ulid", "snowflake": "snowflake-id"})
    wait = Snowflake(1, clock="wait")
    logical = Snowflake(2, clock="logical")
    u7 = per_call(uuid_utils.uuid7)
    print(f"  uuid_utils.uuid7(): {u7['cpu_ns_per_op']:.1f} ns CPU per call")

    # -- next_id(), one call at a time --------------------------------------------------
    ours = per_call(wait.next_id)
    report.row("next_id() wait: IDs/s vs the 4096/ms ceiling", "IDs/s", ours["ops_per_s"],
               "ceiling", CEILING)
    ours = per_call(logical.next_id)
    report.row("next_id() logical: calls/s vs uuid_utils.uuid7()", "calls/s", ours["ops_per_s"],
               "uuid_utils.uuid7", u7["ops_per_s"])
    report.row("next_id() logical: CPU ns/ID vs uuid7", "ns", ours["cpu_ns_per_op"],
               "uuid_utils.uuid7", u7["cpu_ns_per_op"], higher_is_better=False)

    # -- peers, one call at a time -------------------------------------------------------
    sf = snowflake_id.SnowflakeGenerator(3)
    nones = 0

    def sf_next() -> None:
        nonlocal nones
        if next(sf) is None:
            nones += 1

    peer = per_call(sf_next)
    total = peer["ops"]
    print(f"  snowflake-id returned None on {nones} of {total:,.0f} calls (counted as no ID)")
    report.row("next_id() wait vs snowflake-id next()", "IDs/s", per_call(wait.next_id)["ops_per_s"],
               "snowflake-id", peer["ops_per_s"] * (1 - nones / max(total, 1)),
               note=f"snowflake-id returned None on {nones} calls")
    for name, fn in [("python-ulid ULID()", ulid.ULID), ("uuid.uuid4()", uuid.uuid4), ("uuid.uuid1()", uuid.uuid1),
                     ("pure-Python Snowflake + Lock", LockedSnowflake(4).next_id)]:
        peer = per_call(fn)
        report.row(f"next_id() logical vs {name}", "calls/s", per_call(logical.next_id)["ops_per_s"],
                   name, peer["ops_per_s"])

    # -- next_ids(): batches into numpy --------------------------------------------------
    out = np.empty(4096 * 16, dtype=np.int64)

    def fill_wait() -> int:
        wait.next_ids(out=out)
        return len(out)

    def fill_logical() -> int:
        logical.next_ids(out=out)
        return len(out)

    r = measure(fill_wait, min_seconds=1.0, repeat=3)
    report.row("next_ids(out=) wait: IDs/s vs ceiling", "IDs/s", r["ops_per_s"], "ceiling", CEILING)
    r = measure(fill_logical)
    report.row("next_ids(out=) logical: CPU ns/ID (budget 2)", "ns", r["cpu_ns_per_op"], None, None)

    def numpy_compose() -> int:
        # The floor for composing a tick's IDs with a numpy vector op (what PEERS.md quotes).
        seqs = np.arange(4096, dtype=np.int64)
        for _ in range(16):
            np.bitwise_or(seqs, (int(time.time_ns() // 1_000_000 - 1288834974657) << 22) | (2 << 12),
                          out=out[:4096])
        return 4096 * 16

    n = measure(numpy_compose)
    report.row("next_ids logical vs numpy vector compose", "ns", r["cpu_ns_per_op"], "numpy compose",
               n["cpu_ns_per_op"], higher_is_better=False)

    # -- two threads on one generator ------------------------------------------------------
    for label, gen in (("wait", Snowflake(5, clock="wait")), ("logical", Snowflake(6, clock="logical"))):
        solo = one_thread(gen.next_id)
        duo = two_threads(gen.next_id)
        report.row(f"two threads / one thread, next_id() {label}", "ratio", duo / solo, None, None)
    locked = LockedSnowflake(7)
    solo = one_thread(locked.next_id)
    duo = two_threads(locked.next_id)
    report.row("two threads / one thread, pure-Python + Lock", "ratio", duo / solo, None, None)

    id_series(report)
    report.finish()


if __name__ == "__main__":
    main()
