"""coordcore.ids: uniqueness under threads, fork, restarts and clock regression; layouts."""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from array import array
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordcore.errors import (
    BadArgument,
    ClockMovedBackwards,
    CoordcoreError,
    ForkedGenerator,
    StateFileError,
    Unavailable,
    WorkerIdUnavailable,
    WorkerLeaseLost,
    WrongType,
)
from coordcore.ids import (
    LAYOUTS,
    HostWorkerIds,
    Layout,
    SkewClock,
    Snowflake,
    WorkerAssignment,
    WorkerIdSource,
    decode,
)

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh, single-threaded interpreter (fork from pytest's process would
    inherit its threads)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def strictly_increasing(ids: np.ndarray) -> bool:
    return bool((ids[1:] > ids[:-1]).all())


# --- basics ---------------------------------------------------------------------------


def test_ids_are_increasing_and_decode_to_their_fields() -> None:
    gen = Snowflake(5, datacenter_id=3)
    before = int(time.time() * 1000)
    ids = [gen.next_id() for _ in range(20_000)]
    after = int(time.time() * 1000)
    assert ids == sorted(set(ids))
    for i in (ids[0], ids[-1]):
        d = gen.decode(i)
        assert (d.worker, d.datacenter) == (5, 3)
        assert before - 1 <= d.timestamp_ms <= after + 1
        assert d.datetime.tzinfo is dt.timezone.utc
    # One tick never holds more than the sequence allows.
    ticks = np.array(ids) >> 22
    assert np.unique(ticks, return_counts=True)[1].max() <= 4096


def test_next_ids_fills_numpy_and_out() -> None:
    gen = Snowflake(1)
    a = gen.next_ids(50_000)
    assert a.dtype == np.int64 and len(a) == 50_000 and strictly_increasing(a)
    out = np.zeros(1000, dtype=np.int64)
    view = gen.next_ids(out=out)
    assert view.base is out or view is out
    assert strictly_increasing(out) and out[0] > a[-1]
    part = gen.next_ids(10, out=out)
    assert len(part) == 10 and part[0] > out[-1] and strictly_increasing(out[:10])
    assert len(gen.next_ids(0)) == 0


def test_next_ids_bad_arguments() -> None:
    gen = Snowflake(1)
    with pytest.raises(BadArgument):
        gen.next_ids()
    with pytest.raises(BadArgument):
        gen.next_ids(-1)
    with pytest.raises(WrongType):
        gen.next_ids(2.5)  # type: ignore[arg-type]
    with pytest.raises(WrongType):
        gen.next_ids(out=np.zeros(4, dtype=np.int32))  # type: ignore[arg-type]
    with pytest.raises(BadArgument):
        gen.next_ids(out=np.zeros(8, dtype=np.int64)[::2])
    with pytest.raises(BadArgument):
        gen.next_ids(9, out=np.zeros(8, dtype=np.int64))


def test_next_run_gives_consecutive_integers_within_one_tick() -> None:
    gen = Snowflake(2)
    first, count = gen.next_run(100_000)
    assert 1 <= count <= 4096
    last = first + count - 1
    assert gen.decode(first).timestamp_ms == gen.decode(last).timestamp_ms
    assert gen.decode(last).sequence == gen.decode(first).sequence + count - 1
    nxt = gen.next_id()
    assert nxt > last
    first2, count2 = gen.next_run(3)
    assert count2 <= 3 and first2 > nxt
    with pytest.raises(BadArgument):
        gen.next_run(0)
    with pytest.raises(BadArgument, match="lowest bits"):
        Snowflake(1, layout="sonyflake").next_run(10)


def test_sequence_exhaustion_waits_for_the_next_tick_under_wait() -> None:
    gen = Snowflake(1, clock="wait")
    ids = gen.next_ids(3 * 4096 + 5)
    assert strictly_increasing(ids)
    now_ms = int(time.time() * 1000)
    # No ID is stamped ahead of the wall clock (no borrowing under "wait").
    assert decode(int(ids[-1])).timestamp_ms <= now_ms + 1
    assert np.unique(ids >> 22, return_counts=True)[1].max() <= 4096


def test_logical_clock_borrows_ticks_and_stays_unique() -> None:
    gen = Snowflake(1, clock="logical")
    ids = gen.next_ids(200_000)
    assert strictly_increasing(ids)
    assert np.unique(ids >> 22, return_counts=True)[1].max() <= 4096


def test_logical_max_ahead_bounds_borrowing() -> None:
    gen = Snowflake(1, clock="logical", max_ahead_ms=2)
    ids = gen.next_ids(40_000)  # ~10 ms of the ceiling: must throttle, not run far ahead
    assert strictly_increasing(ids)
    assert decode(int(ids[-1])).timestamp_ms <= int(time.time() * 1000) + 3


def test_decode_presets_and_time_range_queries() -> None:
    for name, layout in LAYOUTS.items():
        gen = Snowflake(layout.max_worker, datacenter_id=layout.max_datacenter, layout=name)
        i = gen.next_id()
        d = decode(i, layout=name)
        assert (d.worker, d.datacenter) == (layout.max_worker, layout.max_datacenter), name
        t = d.datetime
        assert gen.min_id_at(t) <= i <= gen.max_id_at(t)
        assert gen.max_id_at(t - dt.timedelta(milliseconds=layout.unit_ms)) < i
        assert gen.min_id_at(t + dt.timedelta(milliseconds=layout.unit_ms)) > i
    with pytest.raises(BadArgument, match="timezone-aware"):
        Layout.preset("twitter").min_id_at(dt.datetime(2024, 1, 1))
    with pytest.raises(BadArgument, match="before the layout's epoch"):
        Layout.preset("twitter").min_id_at(dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))


def test_sonyflake_layout_matches_sonyflake_bit_order() -> None:
    lay = Layout.preset("sonyflake")
    # Sonyflake: time << 24 | sequence << 16 | machine id.
    i = lay.compose(tick=1000, datacenter=0, worker=0xBEEF, sequence=0x12)
    assert i == (1000 << 24) | (0x12 << 16) | 0xBEEF
    assert lay.decode(i).worker == 0xBEEF


def test_unknown_layout_policy_and_worker_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BadArgument, match="unknown layout"):
        Snowflake(1, layout="nope")
    with pytest.raises(WrongType):
        Snowflake(1, layout=42)  # type: ignore[arg-type]
    with pytest.raises(BadArgument, match="clock must be"):
        Snowflake(1, clock="sometimes")  # type: ignore[arg-type]
    with pytest.raises(BadArgument, match="worker_id must be in"):
        Snowflake(32)
    with pytest.raises(BadArgument, match="datacenter_id must be in"):
        Snowflake(1, datacenter_id=-1)
    with pytest.raises(WrongType):
        Snowflake("3")  # type: ignore[arg-type]
    with pytest.raises(BadArgument):
        Snowflake(1, max_backward_ms=-1)
    monkeypatch.delenv("COORDCORE_WORKER_ID", raising=False)
    with pytest.raises(WorkerIdUnavailable):
        Snowflake()
    monkeypatch.setenv("COORDCORE_WORKER_ID", "9")
    monkeypatch.setenv("COORDCORE_DATACENTER_ID", "4")
    gen = Snowflake()
    assert (gen.worker_id, gen.datacenter_id) == (9, 4)
    monkeypatch.setenv("COORDCORE_WORKER_ID", "nine")
    with pytest.raises(BadArgument, match="COORDCORE_WORKER_ID"):
        Snowflake()


def test_errors_are_one_hierarchy_and_builtins() -> None:
    assert issubclass(ClockMovedBackwards, CoordcoreError) and issubclass(ClockMovedBackwards, RuntimeError)
    assert issubclass(BadArgument, ValueError) and issubclass(WrongType, TypeError)


# --- layouts, with hypothesis ----------------------------------------------------------

bits = st.integers(min_value=0, max_value=30)


@given(ts=st.integers(40, 50), dc=bits, worker=bits, seq=st.integers(1, 30))
def test_layout_validation(ts: int, dc: int, worker: int, seq: int) -> None:
    total = ts + dc + worker + seq
    if total > 63:
        with pytest.raises(BadArgument, match="at most 63"):
            Layout(timestamp_bits=ts, datacenter_bits=dc, worker_bits=worker, sequence_bits=seq)
        return
    lay = Layout(timestamp_bits=ts, datacenter_bits=dc, worker_bits=worker, sequence_bits=seq,
                 epoch_ms=int(time.time() * 1000) - 1000)
    fields = dict(tick=(1 << ts) - 1, datacenter=lay.max_datacenter, worker=lay.max_worker,
                  sequence=lay.ids_per_tick - 1)
    i = lay.compose(**fields)
    assert 0 <= i < 2**63
    d = lay.decode(i)
    assert (d.datacenter, d.worker, d.sequence) == (fields["datacenter"], fields["worker"], fields["sequence"])


@given(st.one_of(st.text(max_size=3), st.floats(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2)))
def test_layout_rejects_wrong_types(value: object) -> None:
    with pytest.raises((WrongType, BadArgument)):
        Layout(timestamp_bits=value)  # type: ignore[arg-type]


def test_layout_epoch_rules() -> None:
    with pytest.raises(BadArgument, match="in the future"):
        Layout(epoch_ms=int(time.time() * 1000) + 60_000)
    with pytest.raises(BadArgument, match="ran out of timestamp bits"):
        Layout(timestamp_bits=30, epoch_ms=0)
    with pytest.warns(UserWarning, match="runs out of timestamp bits"):
        Layout(timestamp_bits=38, epoch_ms=int(time.time() * 1000) - 2**38 + 86_400_000)


@given(worker=st.integers(-(2**70), 2**70), dc=st.integers(-(2**70), 2**70))
def test_worker_and_datacenter_ranges(worker: int, dc: int) -> None:
    if 0 <= worker <= 31 and 0 <= dc <= 31:
        assert Snowflake(worker, datacenter_id=dc).worker_id == worker
    else:
        with pytest.raises(BadArgument):
            Snowflake(worker, datacenter_id=dc)


@given(st.integers(min_value=-(2**64), max_value=2**64))
def test_decode_range(value: int) -> None:
    if 0 <= value < 2**63:
        assert decode(value).id == value
    else:
        with pytest.raises(BadArgument):
            decode(value)


# --- threads and fork -----------------------------------------------------------------


@pytest.mark.slow
def test_eight_threads_and_four_forked_children_never_duplicate(tmp_path: Path) -> None:
    """8 threads x 1M IDs on one generator, then 4 forked children through a worker-ID
    source: every ID unique, every thread's IDs strictly increasing."""
    result = run_python(f"""
        import os, sys, threading
        from array import array
        import numpy as np
        from coordcore.ids import Snowflake, HostWorkerIds

        gen = Snowflake(HostWorkerIds({str(tmp_path / 'workers')!r}, worker_ids=range(8)))
        per_thread = [array('q') for _ in range(8)]
        start = threading.Barrier(8)

        def work(k):
            out, nxt = per_thread[k].append, gen.next_id
            start.wait()
            if k % 2:
                for _ in range(1_000_000):
                    out(nxt())
            else:  # half the threads take batches, so both paths race each other
                for _ in range(250):
                    per_thread[k].extend(gen.next_ids(4000).tolist())

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        for k, ids in enumerate(per_thread):
            a = np.frombuffer(ids, dtype=np.int64)
            assert len(a) == 1_000_000, (k, len(a))
            assert (a[1:] > a[:-1]).all(), f"thread {{k}} not strictly increasing"
        parent = np.concatenate([np.frombuffer(a, dtype=np.int64) for a in per_thread])

        children = []
        for c in range(4):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                ids = gen.next_ids(200_000)
                os.write(w, gen.worker_id.to_bytes(1, 'little'))
                with os.fdopen(w, 'wb') as f:
                    f.write(ids.tobytes())
                os._exit(0)
            os.close(w)
            children.append((pid, r))
        child_ids, child_workers = [], []
        for pid, r in children:
            with os.fdopen(r, 'rb') as f:
                data = f.read()
            assert os.waitpid(pid, 0)[1] == 0
            child_workers.append(data[0])
            child_ids.append(np.frombuffer(data[1:], dtype=np.int64))
        assert all(len(c) == 200_000 for c in child_ids)
        every = np.concatenate([parent, *child_ids])
        assert len(np.unique(every)) == len(every), "duplicate IDs"
        assert len(set(child_workers) | {{gen.worker_id}}) == 5, (child_workers, gen.worker_id)
        print("OK", len(every))
    """, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["OK", str(8_000_000 + 800_000)]


def test_forked_child_without_a_source_refuses() -> None:
    result = run_python("""
        import os
        from coordcore.ids import Snowflake
        from coordcore.errors import ForkedGenerator
        gen = Snowflake(3)
        gen.next_id()
        pid = os.fork()
        if pid == 0:
            try:
                gen.next_id()
            except ForkedGenerator as exc:
                os._exit(42 if "forked child" in str(exc) else 1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        gen.next_id()  # the parent goes on
        print(os.waitstatus_to_exitcode(status))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"


def test_host_worker_ids_lease_distinct_ids_and_free_them(tmp_path: Path) -> None:
    src = HostWorkerIds(tmp_path, worker_ids=range(2))
    a, b = Snowflake(src), Snowflake(src)
    assert {a.worker_id, b.worker_id} == {0, 1}
    # A different process sees both IDs as taken.
    code = f"""
        from coordcore.ids import Snowflake, HostWorkerIds
        from coordcore.errors import WorkerIdUnavailable
        try:
            Snowflake(HostWorkerIds({str(tmp_path)!r}, worker_ids=range(2)))
        except WorkerIdUnavailable:
            print("taken")
    """
    assert run_python(code).stdout.strip() == "taken"
    a.close()
    assert run_python(code).stdout.strip() == ""


def test_lost_lease_stops_issuance() -> None:
    class Leased(WorkerIdSource):
        on_lost = None

        def acquire(self, layout, on_lost):  # type: ignore[no-untyped-def]
            self.on_lost = on_lost
            return WorkerAssignment(4)

    src = Leased()
    gen = Snowflake(src)
    gen.next_id()
    src.on_lost()  # type: ignore[misc]
    with pytest.raises(WorkerLeaseLost):
        gen.next_id()
    with pytest.raises(WorkerLeaseLost):
        gen.next_ids(10)


def test_closed_generator_refuses() -> None:
    with Snowflake(1) as gen:
        gen.next_id()
    with pytest.raises(Unavailable, match="closed"):
        gen.next_id()


# --- clock regression -------------------------------------------------------------------


@pytest.mark.parametrize("jump_ms", [5, 5000])
def test_wait_policy(jump_ms: int) -> None:
    clock = SkewClock()
    gen = Snowflake(1, clock="wait", max_backward_ms=1000, clock_source=clock)
    before = gen.next_ids(5000)
    clock.jump(-jump_ms)
    if jump_ms <= 1000:
        after = gen.next_ids(5000)  # waits ~5 ms for the clock to catch up
        assert after[0] > before[-1] and strictly_increasing(after)
        assert decode(int(after[0])).timestamp_ms >= decode(int(before[-1])).timestamp_ms
    else:
        with pytest.raises(ClockMovedBackwards) as info:
            gen.next_id()
        assert jump_ms - 50 <= info.value.drift_ms <= jump_ms + 5
        clock.jump(jump_ms)  # the clock is put right: issuance resumes, still unique
        assert gen.next_id() > before[-1]


@pytest.mark.parametrize("jump_ms", [5, 5000])
def test_raise_policy(jump_ms: int) -> None:
    clock = SkewClock()
    gen = Snowflake(1, clock="raise", clock_source=clock)
    last = gen.next_id()
    for issue in (gen.next_id, lambda: int(gen.next_ids(3)[-1])):
        clock.jump(-jump_ms)
        jumped = time.monotonic()
        try:
            got = issue()
        except ClockMovedBackwards as exc:
            assert 0 < exc.drift_ms <= jump_ms + 5
        else:
            # Only possible if this thread stalled until the clock had caught up again.
            assert time.monotonic() - jumped >= (jump_ms - 1) / 1000
            assert got > last
        clock.jump(jump_ms)
        nxt = gen.next_id()
        assert nxt > last
        last = nxt


@pytest.mark.parametrize("jump_ms", [5, 5000])
def test_logical_policy(jump_ms: int) -> None:
    clock = SkewClock()
    gen = Snowflake(1, clock="logical", clock_source=clock)
    before = gen.next_ids(5000)
    clock.jump(-jump_ms)
    after = gen.next_ids(20_000)  # no wait, no error: issued after the last tick
    assert after[0] > before[-1] and strictly_increasing(after)
    assert decode(int(after[0])).timestamp_ms >= decode(int(before[-1])).timestamp_ms
    clock.jump(jump_ms + 10)  # the clock runs ahead again: IDs follow the clock
    tail = gen.next_id()
    assert tail > after[-1]
    assert abs(decode(tail).timestamp_ms - clock.now_ms()) <= 2


def test_threads_racing_never_see_a_false_regression() -> None:
    """Under "raise", two threads racing across tick boundaries must not raise: a claim by
    one thread at tick T+1 is not a clock regression for the other."""
    gen = Snowflake(1, clock="raise")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(300):
                gen.next_ids(700)
                gen.next_id()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --- restarts ----------------------------------------------------------------------------


def _issue_until_killed(state: Path, n_seen: int) -> np.ndarray:
    """Start a child that issues IDs with a state file and prints them; SIGKILL it once
    n_seen IDs were printed. Returns every ID the child let out."""
    code = f"""
        import sys
        from coordcore.ids import Snowflake
        gen = Snowflake(1, state_file={str(state)!r}, reserve_ms=200)
        out = sys.stdout
        while True:
            out.write(str(gen.next_id()) + "\\n")
            out.flush()
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = array("q")
    for line in proc.stdout:
        seen.append(int(line))
        if len(seen) >= n_seen:
            break
    proc.send_signal(signal.SIGKILL)
    rest = proc.stdout.read()
    proc.stdout.close()
    proc.wait()
    seen.extend(int(x) for x in rest.split())
    return np.frombuffer(seen, dtype=np.int64)


@pytest.mark.slow
def test_restart_with_clock_set_back_reissues_nothing(tmp_path: Path) -> None:
    state = tmp_path / "ids.state"
    old = _issue_until_killed(state, 50_000)
    assert strictly_increasing(old)
    # The clock is now set back by 2 s: a plain generator would reissue old timestamps.
    clock = SkewClock()
    clock.jump(-2000)
    with Snowflake(1, state_file=state, clock="logical", clock_source=clock) as gen:
        new = gen.next_ids(50_000)
    assert new[0] > old.max()
    # Under "raise" the restart refuses rather than reissue.
    with Snowflake(1, state_file=state, clock="raise", clock_source=clock) as gen:
        with pytest.raises(ClockMovedBackwards):
            gen.next_id()
    # Under "wait" with a bound wider than the drift, it waits and then issues above.
    clock.jump(1700)
    with Snowflake(1, state_file=state, clock="wait", max_backward_ms=3000, clock_source=clock) as gen:
        assert gen.next_id() > new.max()


def test_clean_close_records_the_true_last_tick(tmp_path: Path) -> None:
    state = tmp_path / "ids.state"
    with Snowflake(1, state_file=state, reserve_ms=60_000) as gen:
        last = gen.next_id()
    # The reservation was 60 s ahead, but a clean close wrote the real last tick: a
    # restart under "raise" does not have to refuse.
    with Snowflake(1, state_file=state, clock="raise") as gen:
        assert gen.next_id() > last


def test_state_file_errors(tmp_path: Path) -> None:
    state = tmp_path / "ids.state"
    with Snowflake(1, state_file=state) as gen:
        gen.next_id()
        with pytest.raises(StateFileError, match="in use"):
            Snowflake(2, state_file=state)
    with pytest.raises(StateFileError, match="different ID layout"):
        Snowflake(1, state_file=state, layout="discord")
    garbage = tmp_path / "garbage.state"
    garbage.write_bytes(os.urandom(128))
    with pytest.raises(StateFileError, match="corrupt"):
        Snowflake(1, state_file=garbage)
    with pytest.raises(StateFileError, match="cannot open"):
        Snowflake(1, state_file=tmp_path / "missing-dir" / "x.state")


def test_torn_state_write_keeps_the_other_slot(tmp_path: Path) -> None:
    """Each slot is a complete earlier record: whichever one a crash tore, the other
    still covers every ID issued (IDs are only issued after a reservation is durable)."""
    state = tmp_path / "ids.state"
    with Snowflake(1, state_file=state, reserve_ms=10) as gen:
        gen.next_ids(100_000)  # many reservations: both slots written
        last = gen.next_id()
    good = state.read_bytes()
    assert good[0:4] == good[64:68] == b"CCSF"
    for slot in (0, 64):
        torn = bytearray(good)
        torn[slot + 20] ^= 0xFF
        state.write_bytes(bytes(torn))
        with Snowflake(1, state_file=state, clock="logical") as gen:
            assert gen.next_id() > last


def test_forked_child_with_state_file_refuses(tmp_path: Path) -> None:
    result = run_python(f"""
        import os
        from coordcore.ids import Snowflake
        from coordcore.errors import ForkedGenerator
        gen = Snowflake(3, state_file={str(tmp_path / 's')!r})
        gen.next_id()
        pid = os.fork()
        if pid == 0:
            try:
                gen.next_id()
            except ForkedGenerator as exc:
                os._exit(42 if "state file" in str(exc) else 1)
            os._exit(0)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """)
    assert result.stdout.strip() == "42", result.stderr


# A step back of exactly one tick is a step back: a generator that let it through
# (comparing with ``<= last - 1``) survived mutation testing, since a 1 ms tick is gone
# before the next call looks. Ticks of one second make the window wide.
SLOW_TICKS = Layout(timestamp_bits=31, datacenter_bits=0, worker_bits=10, sequence_bits=22,
                    epoch_ms=1_600_000_000_000, unit_ms=1000)


def _early_in_a_second() -> None:
    while time.time() % 1.0 > 0.2:
        time.sleep(0.01)


def test_a_step_back_of_exactly_one_tick_raises_under_raise() -> None:
    clock = SkewClock()
    gen = Snowflake(1, layout=SLOW_TICKS, clock="raise", clock_source=clock)
    _early_in_a_second()
    last = gen.next_id()
    clock.jump(-1000)
    with pytest.raises(ClockMovedBackwards):
        gen.next_id()
    clock.jump(1000)
    assert gen.next_id() > last


def test_a_step_back_of_exactly_one_tick_waits_under_wait() -> None:
    clock = SkewClock()
    gen = Snowflake(1, layout=SLOW_TICKS, clock="wait", max_backward_ms=5000, clock_source=clock)
    _early_in_a_second()
    last = gen.next_id()
    clock.jump(-1000)
    started = time.monotonic()
    nxt = gen.next_id()
    assert nxt > last
    # It waited for the clock to reach the last tick again (the rest of the second).
    assert time.monotonic() - started >= 0.5
    assert gen.decode(nxt).timestamp_ms >= gen.decode(last).timestamp_ms


# --- numpy integers are ints (issue 13, item 8) ------------------------------------------


def test_numpy_integers_are_accepted_wherever_an_int_is() -> None:
    import numpy as np

    from coordcore.ids import Layout, Snowflake

    gen = Snowflake(np.int64(3), datacenter_id=np.uint8(1))
    ids = gen.next_ids(np.int32(5))
    assert len(ids) == 5
    for value in (ids[0], np.uint64(ids[0]), np.int32(7)):
        d = gen.decode(value)
        assert type(d.id) is int and d.id == int(value)
    assert gen.decode(ids[1]).worker == 3 and gen.decode(ids[1]).datacenter == 1
    lay = Layout(sequence_bits=np.int64(12), timestamp_bits=np.uint8(41))
    assert type(lay.sequence_bits) is int and lay.ids_per_tick == 4096
    assert lay.compose(np.int64(1), 0, np.uint16(2), 3) == lay.compose(1, 0, 2, 3)
    first, count = gen.next_run(np.int64(10))
    assert count >= 1
    assert gen.min_id_at(np.int64(lay.epoch_ms + 5)) == 5 << 22
    assert Snowflake(1, max_backward_ms=np.float32(5), reserve_ms=np.int64(10)).next_id() > 0
    with pytest.raises(WrongType):
        gen.decode(np.bool_(True))  # type: ignore[arg-type]
    with pytest.raises(WrongType):
        gen.decode(np.float64(1.0))  # type: ignore[arg-type]
    with pytest.raises(BadArgument):
        gen.decode(np.int64(-1))


def test_bad_types_in_ids_are_coordcore_errors() -> None:
    from coordcore.ids import Layout, Snowflake

    with pytest.raises(BadArgument, match="order"):
        Layout(order=5)  # type: ignore[arg-type]
    with pytest.raises(BadArgument, match="finite"):
        Snowflake(1).min_id_at(float("nan"))
    with pytest.raises(BadArgument, match="max_backward_ms"):
        Snowflake(1, max_backward_ms="10")  # type: ignore[arg-type]
    with pytest.raises(WrongType, match="datacenter_id"):
        Snowflake(1, datacenter_id="1")  # type: ignore[arg-type]


@pytest.mark.parametrize("preset", ["twitter", "sonyflake", "discord", "instagram"])
def test_decode_many_matches_decode(preset: str) -> None:
    from coordcore.ids import Layout, Snowflake, decode_many

    gen = Snowflake(3, layout=preset, clock="logical")
    ids = gen.next_ids(5000)
    cols = gen.decode_many(ids)
    assert set(cols) == {"timestamp_ms", "datacenter", "worker", "sequence"}
    assert all(c.dtype == np.int64 and c.shape == ids.shape for c in cols.values())
    for k in (0, 1, 2500, 4999):
        d = gen.decode(ids[k])
        assert (int(cols["timestamp_ms"][k]), int(cols["datacenter"][k]), int(cols["worker"][k]),
                int(cols["sequence"][k])) == (d.timestamp_ms, d.datacenter, d.worker, d.sequence)
    grid = decode_many(ids[:12].reshape(3, 4).astype(np.uint64), Layout.preset(preset))
    assert grid["worker"].shape == (3, 4) and bool((grid["worker"] == 3).all())
    assert decode_many(list(map(int, ids[:3])), preset)["sequence"].tolist() == cols["sequence"][:3].tolist()
    assert len(decode_many(np.empty(0, np.int64))["worker"]) == 0


def test_decode_many_refuses_what_is_not_an_id() -> None:
    from coordcore.ids import decode_many

    with pytest.raises(BadArgument, match=r"ids\[1\] = -5"):
        decode_many(np.array([1, -5, 3]))
    with pytest.raises(BadArgument, match="not an ID"):
        decode_many(np.array([2**63], dtype=np.uint64))
    with pytest.raises(WrongType, match="array of integers"):
        decode_many(np.array([1.5]))
    with pytest.raises(WrongType, match="array of integers"):
        decode_many(["a"])
