"""The ID generator at its edges: clocks and layouts near int64 limits, waits that must
stay interruptible, and fork while other threads hold the generator's lock.

Anything that could hang runs in a child interpreter with a timeout, so a regression
fails in seconds instead of stalling the suite.
"""
from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from coordcore.errors import BadArgument, ClockMovedBackwards, StateFileError, Unavailable
from coordcore.ids import Layout, SkewClock, Snowflake, _StateFile

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


def write_state(path: Path, layout: Layout, tick: int) -> None:
    body = _StateFile._SLOT.pack(_StateFile._MAGIC, 1, 0, layout.fingerprint(), tick, 1)
    path.write_bytes((body + struct.pack("<I", zlib.crc32(body))).ljust(_StateFile._SIZE, b"\0"))


@pytest.mark.parametrize("tick", [2**41, 2**51, 2**62 - 1, 2**63 - 1, -2, -(2**63)])
def test_a_state_file_tick_outside_the_layout_is_corrupt(tmp_path: Path, tick: int) -> None:
    # (tick + 1) << sequence_bits overflowed for such ticks: the resume was skipped and
    # the generator issued IDs below the file's mark (restart protection silently off).
    state = tmp_path / "s"
    write_state(state, Layout.preset("twitter"), tick)
    with pytest.raises(StateFileError, match="out of range"):
        Snowflake(1, state_file=state)
    write_state(state, Layout.preset("twitter"), 5)  # the file is not kept open
    with Snowflake(1, state_file=state) as gen:
        assert gen.next_id() > 0


def test_a_state_file_at_the_last_tick_of_a_full_layout(tmp_path: Path) -> None:
    lay = full_layout()
    last = 2**lay.timestamp_bits - 1
    state = tmp_path / "s"
    write_state(state, lay, last)
    with Snowflake(0, layout=lay, state_file=state, clock="logical") as gen, \
            pytest.raises(Unavailable, match="run out of timestamp bits"):
        gen.next_id()
    write_state(state, lay, last - 1)
    with Snowflake(0, layout=lay, state_file=state, clock="logical") as gen:
        first = gen.next_id()
        assert first > 0 and gen.decode(first).timestamp_ms == lay.epoch_ms + last
        with pytest.raises(Unavailable, match="run out of timestamp bits"):
            gen.next_ids(2**22)  # the rest of the field and one more


def test_the_largest_id_of_a_full_layout(tmp_path: Path) -> None:
    # Issuing 2**63 - 1 overflowed start + avail - 1 (undefined; a segfault in the debug
    # build), and the resulting state equalled the "sealed" marker: the generator then
    # claimed to be closed, and close() did not record its last tick.
    lay = full_layout()
    last = 2**lay.timestamp_bits - 1
    state = tmp_path / "s"
    write_state(state, lay, last - 1)
    with Snowflake(0, layout=lay, state_file=state, clock="logical") as gen:
        ids = gen.next_ids(2**22)  # every ID of the field's last tick
        assert int(ids[-1]) == 2**63 - 1 and bool((ids[1:] > ids[:-1]).all())
        for _ in range(2):
            with pytest.raises(Unavailable, match="run out of timestamp bits"):
                gen.next_id()
        assert not gen._sealed
    with Snowflake(0, layout=lay, state_file=state, clock="logical") as gen, \
            pytest.raises(Unavailable, match="run out of timestamp bits"):
        gen.next_id()


# --- fork ---------------------------------------------------------------------------------


def test_a_forked_childs_close_keeps_the_parents_high_water_mark(tmp_path: Path) -> None:
    # close() in a child wrote the parent's last tick into the parent's state file,
    # below the mark the parent had reserved ahead; the parent, trusting its mark, kept
    # issuing above the file's value, so after a crash a restart with the clock set back
    # reissued the parent's IDs.
    state = tmp_path / "state"
    first = run_python(f"""
        import os, time
        from coordcore.ids import Snowflake
        gen = Snowflake(3, state_file={str(state)!r}, reserve_ms=60_000)
        gen.next_id()
        pid = os.fork()
        if pid == 0:
            gen.close()
            os._exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        time.sleep(0.05)
        print(int(gen.next_ids(10_000).max()))
        os._exit(0)  # a crash: no close(), the file keeps the reservation
    """)
    assert first.returncode == 0, first.stderr
    issued_max = int(first.stdout)
    restart = run_python(f"""
        from coordcore.ids import Snowflake, SkewClock
        # The clock set back 30 s: only the state file stands between us and reissue.
        gen = Snowflake(3, state_file={str(state)!r}, clock="logical", clock_source=SkewClock(offset_ns=-30 * 10**9))
        print(gen.next_id())
        gen.close()
    """)
    assert restart.returncode == 0, restart.stderr
    assert int(restart.stdout) > issued_max


def test_a_forked_child_does_not_release_the_parents_worker_id(tmp_path: Path) -> None:
    result = run_python("""
        import os
        from coordcore.ids import Snowflake, WorkerIdSource, WorkerAssignment

        class Leases(WorkerIdSource):
            def __init__(self): self.released = []
            def acquire(self, layout, on_lost): return WorkerAssignment(7)
            def release(self, a): self.released.append((os.getpid(), a.worker_id))

        src = Leases()
        gen = Snowflake(src)
        pid = os.fork()
        if pid == 0:
            gen.close()  # never asked for an ID here: nothing of ours to release
            os._exit(10 + len(src.released))
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        gen.close()
        print(src.released == [(os.getpid(), 7)])
    """)
    assert result.stdout.split() == ["10", "True"], result.stderr


def test_a_fork_that_bypasses_os_fork_is_still_seen() -> None:
    # The fork generation was bumped by an os.register_at_fork handler only: a child made
    # by fork() from C (a library, ctypes) went on issuing its parent's IDs.
    result = run_python("""
        import ctypes, os
        from coordcore.ids import Snowflake
        from coordcore.errors import ForkedGenerator
        gen = Snowflake(3)
        gen.next_id()
        pid = ctypes.PyDLL(None).fork()
        if pid == 0:
            try:
                gen.next_id()
            except ForkedGenerator:
                os._exit(42)
            os._exit(1)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        gen.next_id()
    """)
    assert result.stdout.strip() == "42", result.stderr


def test_a_lock_held_by_another_thread_at_fork_does_not_deadlock_the_child(tmp_path: Path) -> None:
    result = run_python(f"""
        import os, threading, time
        from coordcore.ids import Snowflake, HostWorkerIds
        gens = [Snowflake(3, state_file={str(tmp_path / 's')!r}),
                Snowflake(HostWorkerIds({str(tmp_path / 'w')!r}, worker_ids=range(4)))]
        for gen in gens:
            held, go = threading.Event(), threading.Event()
            def hold():
                with gen._lock:
                    held.set()
                    go.wait(10)
            t = threading.Thread(target=hold)
            t.start()
            held.wait()
            pid = os.fork()
            if pid == 0:
                if gen._state is None:
                    gen.next_id()  # takes a fresh worker ID under the lock
                gen.close()
                os._exit(0)
            for _ in range(200):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    print(os.waitstatus_to_exitcode(status))
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                print("deadlock")
            go.set()
            t.join()
    """)
    assert result.stdout.split() == ["0", "0"], result.stderr


def test_threads_of_a_forked_child_take_one_worker_id_between_them(tmp_path: Path) -> None:
    # Each thread replaced the lock before taking it, so several threads of the child
    # took a worker ID each: all but one leaked until the child exited.
    result = run_python(f"""
        import os, threading
        import numpy as np
        from coordcore.ids import Snowflake, HostWorkerIds
        gen = Snowflake(HostWorkerIds({str(tmp_path / 'w')!r}, worker_ids=range(16)))
        pid = os.fork()
        if pid == 0:
            start = threading.Barrier(6)
            out = []
            def work():
                start.wait()
                out.append(gen.next_ids(1000))
            threads = [threading.Thread(target=work) for _ in range(6)]
            for t in threads: t.start()
            for t in threads: t.join()
            every = np.concatenate(out)
            assert len(np.unique(every)) == len(every)
            workers = {{gen.decode(int(i)).worker for i in every}}
            os._exit(len(HostWorkerIds._held_here) * 10 + len(workers))
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """)
    assert result.stdout.strip() == "11", result.stderr


def test_threads_creating_generators_get_distinct_worker_ids(tmp_path: Path) -> None:
    # POSIX record locks do not exclude the locking process itself: two threads racing
    # between HostWorkerIds' "held here?" check and its insert locked the same file and
    # both got that worker ID, so their generators issued the same IDs.
    import threading

    from coordcore.ids import HostWorkerIds

    for trial in range(10):
        gens: list[Snowflake] = []
        start = threading.Barrier(8)

        def make(directory: Path = tmp_path / str(trial)) -> None:
            start.wait()
            gens.append(Snowflake(HostWorkerIds(directory, worker_ids=range(32))))

        threads = [threading.Thread(target=make) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({g.worker_id for g in gens}) == 8
        ids = np.concatenate([g.next_ids(1000) for g in gens])
        assert len(np.unique(ids)) == len(ids)
        for g in gens:
            g.close()


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
