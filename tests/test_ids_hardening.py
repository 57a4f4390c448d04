"""The ID generator at its edges: clocks and layouts near int64 limits, waits that must
stay interruptible, and fork while other threads hold the generator's lock.

Anything that could hang runs in a child interpreter with a timeout, so a regression
fails in seconds instead of stalling the suite.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from coordcore.errors import BadArgument, ClockMovedBackwards, Unavailable
from coordcore.ids import Layout, SkewClock, Snowflake

ROOT = Path(__file__).resolve().parents[1]
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def run_python(code: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def full_layout() -> Layout:
    """All 63 bits used by timestamp and sequence (no worker bits): tick << sequence_bits
    reaches the sign bit as soon as the tick passes the field's end."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Layout(timestamp_bits=41, datacenter_bits=0, worker_bits=0, sequence_bits=22,
                      epoch_ms=1288834974657)


@pytest.mark.parametrize("clock", ["wait", "raise", "logical"])
def test_a_clock_past_the_layouts_end_raises_instead_of_repeating(clock: str) -> None:
    # The tick was shifted before the end-of-field check: past the end, a full 63-bit
    # layout issued the same negative ID on every call.
    skew = SkewClock()
    gen = Snowflake(0, layout=full_layout(), clock=clock, clock_source=skew)  # type: ignore[arg-type]
    assert gen.next_id() > 0
    skew.jump(2.0**41 + 10)
    for _ in range(3):
        with pytest.raises(Unavailable, match="run out of timestamp bits"):
            gen.next_id()
        with pytest.raises(Unavailable):
            gen.next_ids(10)


@pytest.mark.parametrize("offset", [INT64_MAX, INT64_MAX - 10**9, 2**62])
def test_a_test_clock_far_ahead_raises_exhausted(offset: int) -> None:
    # wall clock + offset overflowed int64 (undefined) and the generator waited forever.
    result = run_python(f"""
        from coordcore.ids import Snowflake, SkewClock
        from coordcore.errors import Unavailable
        gen = Snowflake(1, clock_source=SkewClock(offset_ns={offset}))
        try:
            gen.next_id()
        except Unavailable:
            print("exhausted")
    """, timeout=30)
    assert result.stdout.strip() == "exhausted", result.stderr


@pytest.mark.parametrize("clock", ["wait", "raise"])
def test_a_test_clock_before_the_epoch_is_a_bounded_regression(clock: str) -> None:
    # Before the layout's epoch with nothing issued, the generator waited for the epoch
    # however far away it was; now it is a regression like any other (bounded wait).
    result = run_python(f"""
        from coordcore.ids import Snowflake, SkewClock
        from coordcore.errors import ClockMovedBackwards
        for offset in ({INT64_MIN}, {INT64_MIN} + 1, -10**18):
            gen = Snowflake(1, clock={clock!r}, max_backward_ms=50, clock_source=SkewClock(offset_ns=offset))
            try:
                gen.next_id()
            except ClockMovedBackwards as exc:
                assert exc.drift_ms > 1e9, exc.drift_ms
                print("behind")
    """, timeout=30)
    assert result.stdout.split() == ["behind"] * 3, result.stderr


def test_a_clock_just_before_the_epoch_waits_for_it() -> None:
    skew = SkewClock()
    gen = Snowflake(1, clock="wait", max_backward_ms=1000, clock_source=skew)
    skew.offset_ns = -(skew.now_ms() - gen.layout.epoch_ms) * 1_000_000 - 20_000_000  # 20 ms early
    assert 0 <= gen.decode(gen.next_id()).timestamp_ms - gen.layout.epoch_ms < 1000
    under_raise = Snowflake(1, clock="raise", clock_source=SkewClock(offset_ns=skew.offset_ns - 10**9))
    with pytest.raises(ClockMovedBackwards):
        under_raise.next_id()
    logical = Snowflake(1, clock="logical", clock_source=SkewClock(offset_ns=skew.offset_ns - 10**9))
    ids = logical.next_ids(5000)
    assert ids[0] > 0 and bool((ids[1:] > ids[:-1]).all())


def test_test_clock_jumps_saturate() -> None:
    skew = SkewClock(offset_ns=INT64_MAX - 5)
    skew.jump(1e300)
    assert skew.offset_ns == INT64_MAX
    for _ in range(3):
        skew.jump(-1e300)
    assert skew.offset_ns == INT64_MIN
    assert isinstance(skew.now_ms(), int)
    with pytest.raises(BadArgument):
        skew.jump(float("nan"))


@pytest.mark.parametrize("ahead", [float("inf"), 1e16, 9.3e12, 2**70])
def test_max_ahead_without_a_representable_bound_is_no_bound(ahead: float) -> None:
    # These raised OverflowError from the float -> int64 conversion.
    gen = Snowflake(1, clock="logical", max_ahead_ms=ahead)
    ids = gen.next_ids(3 * 4096)
    assert bool((ids[1:] > ids[:-1]).all())


def test_max_ahead_nan_is_refused() -> None:
    with pytest.raises(BadArgument, match="max_ahead_ms"):
        Snowflake(1, clock="logical", max_ahead_ms=float("nan"))


def test_a_long_clock_wait_is_interruptible() -> None:
    # The wait for a clock that went back (up to max_backward_ms, an hour at most) was one
    # uninterrupted sleep: Ctrl-C took effect only when it ended.
    result = run_python("""
        import os, signal, threading, time
        from coordcore.ids import Snowflake, SkewClock
        skew = SkewClock()
        gen = Snowflake(1, clock="wait", max_backward_ms=600_000, clock_source=skew)
        gen.next_id()
        skew.jump(-120_000)  # two minutes back: a two-minute wait
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        t0 = time.monotonic()
        try:
            gen.next_id()
        except KeyboardInterrupt:
            print("interrupted", time.monotonic() - t0 < 60)
    """, timeout=60)
    assert result.stdout.split() == ["interrupted", "True"], result.stderr


def test_out_arrays_of_the_wrong_kind_are_refused() -> None:
    gen = Snowflake(1)
    for bad in (np.zeros(4, dtype=np.int32), np.zeros(4, dtype=np.uint64), np.zeros((2, 2), dtype=np.int64),
                [0, 0]):
        with pytest.raises((BadArgument, TypeError)):
            gen.next_ids(out=bad)  # type: ignore[arg-type]
    ro = np.zeros(4, dtype=np.int64)
    ro.flags.writeable = False
    strided = np.zeros(8, dtype=np.int64)[::2]
    for bad in (ro, strided):
        with pytest.raises(BadArgument):
            gen.next_ids(out=bad)
    assert gen.next_ids(0).shape == (0,)
    assert gen.next_ids(out=np.zeros(0, dtype=np.int64)).shape == (0,)
    big_endian = np.zeros(4, dtype=">i8")
    with pytest.raises((BadArgument, TypeError)):
        gen.next_ids(out=big_endian)
