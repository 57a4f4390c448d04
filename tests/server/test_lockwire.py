"""coordcore._native.lockwire: the server's native lock wire path, checked against the
references: BatchBuilder, decode_results and decode_events byte for byte, hiredis for
request parsing."""
from __future__ import annotations

import random
from typing import Any

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordcore._native import require
from coordcore.errors import BadArgument, RequestTooLarge
from coordcore.locks.machine import (
    BATCH_HEADER_SIZE,
    BatchBuilder,
    Event,
    EventKind,
    LockMachine,
    Status,
    decode_events,
    decode_results,
)
from coordcore.server import lockcmds

lw = lockcmds._lw
lm = require("lockmachine")

_U64 = 2**64 - 1
keys = st.binary(min_size=1, max_size=40)
u64 = st.integers(0, _U64)
sessions = st.integers(1, _U64)

acquire_cmd = st.tuples(st.just("acquire"), sessions, keys, st.booleans(), st.booleans(), u64,
                        st.binary(max_size=20))
release_cmd = st.tuples(st.just("release"), sessions, keys, u64, u64)


def _one(add: Any) -> bytes:
    """One command as BatchBuilder encodes it (without the batch header)."""
    one = BatchBuilder()
    add(one)
    return one.build(0)[BATCH_HEADER_SIZE:]


@given(st.lists(st.one_of(acquire_cmd, release_cmd), max_size=30), st.integers(0, 2**40))
def test_assembled_batch_is_byte_identical_to_batch_builder(cmds: list[tuple], time_ms: int) -> None:
    b = BatchBuilder()
    parts = []
    for c in cmds:
        if c[0] == "acquire":
            _, s, k, shared, wait, rid, value = c
            b.acquire(s, k, shared=shared, wait=wait, request_id=rid, value=value)
            parts.append(_one(lambda one: one.acquire(s, k, shared=shared, wait=wait, request_id=rid,
                                                      value=value)))
        else:
            _, s, k, token, rid = c
            b.release(s, k, token, request_id=rid)
            parts.append(_one(lambda one: one.release(s, k, token, request_id=rid)))
    assert lm.assemble(time_ms, parts, len(parts)) == b.build(time_ms)
    # parts may also carry several commands each (what the service does for
    # BatchBuilder-made commands)
    assert lm.assemble(time_ms, [b"".join(parts)], len(parts)) == b.build(time_ms)


@pytest.mark.parametrize("call", [
    lambda: lm.assemble(-1, [], 0),
    lambda: lm.assemble(2**62 + 1, [], 0),
    lambda: lm.assemble(0, [b"x", 1], 0),
    lambda: lw.WireConn(None, 0, 100),
    lambda: lw.WireConn(None, 10, 0),
    lambda: lm.filter_events(b"\0" * 39, Event, {}),
])
def test_bad_input_is_a_clear_error(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadArgument):
        call()


def _workload(rng: random.Random, m: LockMachine) -> list[tuple[bytes, bytes, list[int]]]:
    """Random batches of opens, acquires, releases and closes; returns each batch's raw
    results and events, and which results are acquires."""
    out = []
    b = BatchBuilder()
    b.open_session(60_000)
    b.open_session(60_000)
    b.open_session(60_000)
    m.apply_raw(b.build(1))
    t = 2
    for _ in range(60):
        b.clear()
        acquires = []
        for _ in range(rng.randrange(1, 12)):
            s, k = rng.randrange(1, 5), b"k%d" % rng.randrange(3)
            r = rng.random()
            if r < 0.45:
                acquires.append(b.acquire(s, k, wait=rng.random() < 0.8))
            elif r < 0.9:
                b.release(s, k, rng.choice([0, 0, rng.randrange(1, 50)]))
            elif r < 0.95:
                b.close_session(s)
            else:
                b.open_session(60_000)
        raw_results, raw_events = m.apply_raw(b.build(t))
        t += 1
        out.append((raw_results, raw_events, acquires))
    return out


def test_filter_events_keeps_what_the_service_acts_on(rng: random.Random) -> None:
    seen_kinds = set()
    for _, raw_events, _ in _workload(rng, LockMachine()):
        events = decode_events(raw_events)
        seen_kinds.update(e.kind for e in events)
        tickets = [e.ticket for e in events if e.kind in (EventKind.GRANT, EventKind.CANCEL)]
        parked = {t: None for t in tickets if rng.random() < 0.5}
        want = [e for e in events
                if e.kind in (EventKind.CLOSE, EventKind.EXPIRE)
                or (e.kind in (EventKind.GRANT, EventKind.CANCEL) and e.ticket in parked)]
        assert lm.filter_events(raw_events, Event, parked) == want
        assert all(type(e) is Event for e in lm.filter_events(raw_events, Event, parked))
    assert {EventKind.GRANT, EventKind.RELEASE, EventKind.CLOSE} <= seen_kinds


# --- WireConn: request parsing -------------------------------------------------------------

args = st.lists(st.binary(max_size=12), min_size=1, max_size=6)


def _pack(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _requests(wire: lw.WireConn) -> list[list[bytes]]:
    out = []
    while (req := wire.next_request()) not in (False, None):
        assert isinstance(req, list)
        out.append(req)
    return out


@given(st.lists(args, max_size=8), st.lists(st.integers(1, 40), max_size=20))
def test_requests_parse_as_hiredis_parses_them_in_any_split(reqs: list[list[bytes]], cuts: list[int]) -> None:
    stream = b"".join(_pack(*r) for r in reqs)
    wire = lw.WireConn(None, 16, 1 << 16)
    got: list[list[bytes]] = []
    pos = 0
    for n in cuts + [len(stream)]:
        wire.feed(stream[pos:pos + n])
        pos += n
        got += _requests(wire)
    reader = hiredis.Reader()
    reader.feed(stream)
    want = []
    while (r := reader.gets()) is not False:
        want.append(r)
    assert got == want == reqs
    assert wire.buffered == 0


@pytest.mark.parametrize("data", [
    b":5\r\n", b"*0\r\n", b"*-1\r\n", b"*1\r\n:1\r\n", b"*1\r\n$-1\r\n", b"GET / HTTP/1.1\r\n",
    b"*1\r\n$3\r\nabcX\r\n", b"*x\r\n", b"*1\n", b"*2\r\n$1\r\na\r\n*1\r\n",
])
def test_other_frames_are_left_to_hiredis_whole(data: bytes) -> None:
    wire = lw.WireConn(None, 16, 4096)
    wire.feed(_pack(b"PING") + data)
    assert wire.next_request() == [b"PING"]
    assert wire.next_request() is None
    assert wire.take_input() == data  # nothing of the foreign frame was consumed


def test_bounds_are_checked_on_the_headers() -> None:
    for data in (b"*9\r\n", b"*4000000000\r\n", b"*1\r\n$5000\r\n", b"*1\r\n$99999999999999999999999\r\n",
                 b"*2\r\n$4000\r\n" + b"x" * 4000 + b"\r\n$200\r\n"):
        wire = lw.WireConn(None, 8, 4096)
        wire.feed(data)
        with pytest.raises(RequestTooLarge):
            wire.next_request()
    wire = lw.WireConn(None, 8, 4096)
    wire.feed(b"*1\r\n$4000\r\n" + b"x" * 3000)  # under the bound: wait for the rest
    assert wire.next_request() is False
    wire.feed(memoryview(b"x" * 1000 + b"\r\n"))
    assert wire.next_request() == [b"x" * 4000]


# --- WireConn + WireLane + WireBatch: the hot path -------------------------------------------

class _Owner:
    def __init__(self, name: str) -> None:
        self.name = name


def _lane(replies: dict[int, bytes | None] | None = None) -> tuple[lw.WireLane, list[Any], list[tuple]]:
    calls: list[tuple] = []
    wakes: list[int] = []

    def other(batch: Any, i: int, owner: Any, error: BaseException | None) -> bytes | None:
        calls.append((batch.entry(i), owner.conn.name if owner.conn else None,
                      error if error is not None else decode_results(batch.result(i))[0]))
        return b"-OTHER %d\r\n" % i

    dirty: list[Any] = []
    lane = lw.WireLane(lambda: wakes.append(1), other, dirty)
    lane.verify = _verify
    return lane, dirty, calls


_SECRET = b"0123456789abcdef" * 2


def _h(session: int) -> bytes:
    """A session handle the test lane accepts."""
    return b"%d.%s" % (session, _SECRET)


def _verify(handle: bytes) -> int:
    sid, _, secret = handle.partition(b".")
    return int(sid) if secret == _SECRET else 0


u63 = st.integers(1, 2**63 - 1)
maybe = st.one_of(st.none(), u63)
hot = st.one_of(
    st.tuples(st.just("acq"), u63, st.binary(min_size=1, max_size=30), st.booleans(), maybe, st.booleans()),
    st.tuples(st.just("rel"), u63, st.binary(min_size=1, max_size=30), st.one_of(st.none(), st.integers(0, 2**63 - 1)),
              maybe, st.booleans()),
)


@given(st.lists(hot, min_size=1, max_size=20), st.sampled_from([b"LOCK.", b"lock.", b"Lock."]))
def test_hot_commands_encode_as_batch_builder_does(cmds: list[tuple], prefix: bytes) -> None:
    lane, _, _ = _lane()
    want = []
    for c in cmds:
        wire = lw.WireConn(_Owner("c"), 16, 4096)
        kind, session, key, first, request_id, swap = c
        options: list[tuple[bytes, ...]] = []
        if request_id is not None:
            options.append((b"reqid" if swap else b"REQID", b"%d" % request_id))
        if kind == "acq":
            if first:
                options.append((b"shared" if swap else b"SHARED",))
            want.append(_one(lambda b: b.acquire(session, key, shared=first, request_id=request_id or 0)))
        else:
            if first is not None:
                options.append((b"Token" if swap else b"TOKEN", b"%d" % first))
            want.append(_one(lambda b: b.release(session, key, first or 0, request_id=request_id or 0)))
        if swap:
            options.reverse()
        name = prefix + (b"ACQUIRE" if kind == "acq" else b"RELEASE")
        wire.feed(_pack(name, key, _h(session), *(w for o in options for w in o)))
        assert wire.run_hot(lane, 100) == 1
        assert wire.outstanding == 1 and wire.parked == (kind == "acq") and wire.buffered == 0
    batch = lane.cut(1000)
    assert batch is not None and len(lane) == 0
    assert batch.count == len(cmds) and batch.commands == b"".join(want)


def test_a_cut_holds_at_most_max_bytes_of_whole_commands() -> None:
    """A store with small records (etcd's) bounds a batch by bytes: the lane hands out
    whole commands up to the bound, in order, and keeps the rest for the next cut."""
    lane, _, _ = _lane()
    want = []
    for i in range(6):
        key = b"k%d" % i + b"x" * (10 * i)
        wire = lw.WireConn(_Owner(f"c{i}"), 16, 4096)
        wire.feed(_pack(b"LOCK.RELEASE", key, _h(7)))
        assert wire.run_hot(lane, 100) == 1
        want.append(_one(lambda b: b.release(7, key, 0)))
    sizes = [len(w) for w in want]
    assert lane.cut(10, sizes[0] - 1) is None and len(lane) == 6  # the first does not fit
    first = lane.cut(10, sizes[0] + sizes[1] + sizes[2] - 1)
    assert first is not None and first.count == 2 and first.commands == want[0] + want[1]
    rest = lane.cut(10, sum(sizes))
    assert rest is not None and rest.count == 4 and rest.commands == b"".join(want[2:]) and len(lane) == 0


@pytest.mark.parametrize("req", [
    [b"LOCK.ACQUIRE", b"k", b"0"], [b"LOCK.ACQUIRE", b"k", b"+5"], [b"LOCK.ACQUIRE", b"k", b" 5"],
    [b"LOCK.ACQUIRE", b"k", b"9223372036854775808"], [b"LOCK.ACQUIRE", b"", b"5"],
    [b"LOCK.ACQUIRE", b"k" * 1025, b"5"], [b"LOCK.ACQUIRE", b"k", b"5", b"SHARE"],
    [b"LOCK.ACQUIRE", b"k", b"5", b"TIMEOUT", b"0"], [b"LOCK.ACQUIRE", b"k", b"5", b"TIMEOUT", b"2592000001"],
    [b"LOCK.ACQUIRE", b"k", b"5", b"TIMEOUT", b"-1"], [b"LOCK.ACQUIRE", b"k", b"5", b"TIMEOUT", b"1", b"TIMEOUT", b"1"],
    [b"LOCK.RELEASE", b"k", b"5", b"TIMEOUT", b"10"], [b"LOCK.ACQUIRE", b"k", b"5", b"LABEL", b"x"],
    [b"LOCK.ACQUIRE", b"k", b"5", b"SHARED", b"SHARED"], [b"LOCK.ACQUIRE", b"k", b"5", b"REQID", b"0"],
    [b"LOCK.ACQUIRE", b"k", b"5", b"REQID", b"1", b"REQID", b"2"], [b"LOCK.ACQUIRE", b"k", b"5", b"TOKEN", b"1"],
    [b"LOCK.ACQUIRE", b"k", b"5", b"REQID"], [b"LOCK.RELEASE", b"k", b"5", b"SHARED"],
    [b"LOCK.RELEASE", b"k", b"5", b"TOKEN", b"-1"], [b"LOCK.RELEASE", b"k", b"5", b"TOKEN"],
    [b"LOCK.RELEASE", b"k", b"5", b"TOKEN", b"1", b"TOKEN", b"1"],
    [b"SEM.ACQUIRE", b"k", b"5"], [b"SEM.ACQUIRE", b"k", b"5", b"0"], [b"SEM.ACQUIRE", b"k", b"5", b"1000001"],
    [b"SEM.ACQUIRE", b"k", b"5", b"2", b"SHARED"], [b"SEM.ACQUIRE", b"k", b"5", b"2", b"LABEL", b"x"],
    [b"SEM.ACQUIRE", b"k", b"5", b"2", b"TIMEOUT", b"0"], [b"SEM.RELEASE", b"k", b"5", b"SHARED"],
    [b"LOCK.RELEASE", b"k", b"5", b"TOKEN", b"1", b"REQID", b"2", b"X"],
    [b"LOCK.RELEASEX", b"k", b"5"], [b"LOCK\x0eACQUIRE", b"k", b"5"], [b"PING"],
])
def test_anything_else_is_left_for_the_command_table(req: list[bytes]) -> None:
    lane, _, _ = _lane()
    wire = lw.WireConn(_Owner("c"), 16, 4096)
    wire.feed(_pack(*req))
    assert wire.run_hot(lane, 100) == 0
    assert len(lane) == 0 and wire.outstanding == 0
    assert wire.next_request() == req


@pytest.mark.parametrize("number", [b"18446744073709551617", b"18446744073709551616", b"99999999999999999999"])
@pytest.mark.parametrize("option", [b"TOKEN", b"REQID"])
def test_numbers_past_64_bits_are_left_for_the_command_table(option: bytes, number: bytes) -> None:
    """20 digits can pass 2**64 and wrap (2**64 + 1 would read as 1): the hot path must
    leave them to the command table, which refuses them, rather than take another number."""
    lane, _, _ = _lane()
    wire = lw.WireConn(_Owner("c"), 16, 4096)
    req = [b"LOCK.RELEASE", b"k", _h(5), option, number]
    wire.feed(_pack(*req))
    assert wire.run_hot(lane, 100) == 0
    assert len(lane) == 0 and wire.next_request() == req


def test_run_hot_stops_after_an_acquire_and_at_its_limit() -> None:
    lane, _, _ = _lane()
    wire = lw.WireConn(_Owner("c"), 16, 4096)
    rel = _pack(b"LOCK.RELEASE", b"a", _h(1))
    wire.feed(rel * 3 + _pack(b"LOCK.ACQUIRE", b"b", _h(1)) + rel + _pack(b"PING"))
    assert wire.run_hot(lane, 2) == 2
    assert wire.run_hot(lane, 100) == 2 and wire.parked and wire.outstanding == 4
    assert wire.run_hot(lane, 100) == 0  # parked: nothing more until it is answered
    assert lane.cut(3).count == 3 and len(lane) == 1
    assert lane.cut(0) is None
    assert lane.cut(5).count == 1 and lane.cut(5) is None


def test_resolve_answers_in_request_order_and_hands_the_rest_to_other() -> None:
    m = LockMachine()
    b = BatchBuilder()
    b.open_session(60_000)
    b.open_session(60_000)
    m.apply_raw(b.build(1))
    lane, dirty, calls = _lane()
    o1, o2 = _Owner("one"), _Owner("two")
    w1, w2 = lw.WireConn(o1, 16, 4096), lw.WireConn(o2, 16, 4096)
    w1.feed(_pack(b"LOCK.RELEASE", b"x", _h(1)) + _pack(b"LOCK.ACQUIRE", b"k", _h(1)))  # not held: error
    w2.feed(_pack(b"LOCK.ACQUIRE", b"k", _h(2)))  # waits behind session 1
    w1.run_hot(lane, 10)
    w2.run_hot(lane, 10)
    batch = lane.cut(100)
    assert batch is not None
    raw_results, _ = m.apply_raw(lm.assemble(2, [batch.commands], batch.count))
    batch.resolve(raw_results, 0)
    assert dirty == [o1, o2]
    assert w1.take_output() == b"-OTHER 0\r\n:%d\r\n" % decode_results(raw_results)[1].value
    assert w2.take_output() == b"-OTHER 2\r\n"
    assert [c[0] for c in calls] == [(lw.RELEASE, 1, b"x", "lock", 0, None), (lw.ACQUIRE, 2, b"k", "lock", 0, None)]
    assert calls[0][2].status == Status.NOTHOLDER and calls[1][2].status == Status.WAITING
    assert (w1.outstanding, w1.parked, w2.outstanding, w2.parked) == (0, False, 0, False)
    # A connection that has gone: its acquire goes to other() even when granted; no
    # reply is queued and it is not listed for a flush.
    dirty.clear()
    calls.clear()
    w1.take_flush()
    w1.feed(_pack(b"LOCK.ACQUIRE", b"free", _h(1)))
    w1.run_hot(lane, 10)
    w1.close()
    batch = lane.cut(100)
    assert batch is not None
    raw_results, _ = m.apply_raw(lm.assemble(3, [batch.commands], batch.count))
    batch.resolve(raw_results, 0)
    assert dirty == [] and w1.take_output() is None
    assert len(calls) == 1 and calls[0][2].status == Status.OK
    with pytest.raises(BadArgument):
        batch.resolve(raw_results, 1)  # results that do not cover the batch


def test_fail_answers_every_command() -> None:
    lane, dirty, calls = _lane()
    owner = _Owner("c")
    wire = lw.WireConn(owner, 16, 4096)
    wire.feed(_pack(b"LOCK.RELEASE", b"a", _h(1)) + _pack(b"LOCK.ACQUIRE", b"b", _h(1)))
    assert wire.run_hot(lane, 10) == 2
    batch = lane.cut(10)
    assert batch is not None
    error = RuntimeError("disk")
    batch.fail(error)
    assert [c[2] for c in calls] == [error, error] and dirty == [owner]
    assert wire.take_output() == b"-OTHER 0\r\n-OTHER 1\r\n"
    assert (wire.outstanding, wire.parked) == (0, False)
    lane.closed = True
    wire.feed(_pack(b"LOCK.RELEASE", b"a", _h(1)))
    assert wire.run_hot(lane, 10) == 0  # a closed lane takes nothing


def test_acquire_timeouts_ride_the_lane_with_their_clock() -> None:
    import time

    lane, _, calls = _lane()
    wire = lw.WireConn(_Owner("c"), 16, 4096)
    wire.feed(_pack(b"LOCK.ACQUIRE", b"k", _h(5), b"timeout", b"2592000000", b"SHARED", b"REQID", b"9"))
    assert wire.run_hot(lane, 10) == 1
    batch = lane.cut(10)
    assert batch is not None
    assert batch.commands == _one(lambda b: b.acquire(5, b"k", shared=True, request_id=9, timeout_ms=2592000000))
    wire2 = lw.WireConn(_Owner("d"), 16, 4096)
    wire2.feed(_pack(b"LOCK.ACQUIRE", b"k", _h(5), b"TIMEOUT", b"250"))
    assert wire2.run_hot(lane, 10) == 1
    time.sleep(0.05)
    batch = lane.cut(10)
    assert batch is not None
    kind, session, key, what, timeout_ms, left = batch.entry(0)
    assert (kind, session, key, what, timeout_ms) == (lw.ACQUIRE, 5, b"k", "lock", 250)
    assert left is not None and 0.1 < left <= 0.2  # the time since it was read is counted


def test_id_next_is_answered_natively_in_order() -> None:
    ids = iter(range(100, 200))
    lane, _, _ = _lane()
    wire = lw.WireConn(_Owner("c"), 16, 4096)
    wire.id_next = lambda: next(ids)
    wire.feed(_pack(b"ID.NEXT") + _pack(b"id.next") + _pack(b"LOCK.RELEASE", b"a", _h(1)) + _pack(b"ID.NEXT")
              + _pack(b"PING"))
    assert wire.run_hot(lane, 10) == 3  # the second ID.NEXT waits: a release is in flight
    assert wire.take_output() == b":100\r\n:101\r\n"
    assert wire.next_request() == [b"ID.NEXT"]
    # Without a lane (an ID-only worker) IDs are still hot, lock commands are not.
    wire = lw.WireConn(_Owner("d"), 16, 4096)
    wire.id_next = lambda: next(ids)
    wire.feed(_pack(b"ID.NEXT") + _pack(b"ID.NEXT", b"x") + _pack(b"ID.NEXT"))
    assert wire.run_hot(None, 10) == 1 and wire.has_output
    assert wire.next_request() == [b"ID.NEXT", b"x"]  # arguments: the table's error to give
    wire.feed(_pack(b"LOCK.RELEASE", b"a", _h(1)))
    assert wire.run_hot(None, 10) == 1 and wire.outstanding == 0
    assert wire.take_output() == b":102\r\n:103\r\n"
    assert wire.next_request() == [b"LOCK.RELEASE", b"a", _h(1)]


def test_a_failing_id_generator_leaves_the_request_to_the_table() -> None:
    def broken() -> int:
        raise RuntimeError("clock moved backwards")

    wire = lw.WireConn(_Owner("c"), 16, 4096)
    wire.id_next = broken
    wire.feed(_pack(b"ID.NEXT"))
    assert wire.run_hot(None, 10) == 0 and not wire.has_output
    assert wire.next_request() == [b"ID.NEXT"]
    wire.id_next = lambda: -1  # not an ID: refused the same way
    wire.feed(_pack(b"ID.NEXT"))
    assert wire.run_hot(None, 10) == 0


@given(st.lists(st.tuples(st.booleans(), u63, st.binary(min_size=1, max_size=20), st.integers(1, 1_000_000),
                          maybe, st.one_of(st.none(), st.integers(0, 2**63 - 1)), st.booleans()),
                min_size=1, max_size=12))
def test_semaphore_commands_encode_as_batch_builder_does(cmds: list[tuple]) -> None:
    lane, _, _ = _lane()
    b = BatchBuilder()
    for acquire, session, key, permits, request_id, token, timeout in cmds:
        wire = lw.WireConn(_Owner("c"), 16, 4096)
        options = [] if request_id is None else [b"REQID", b"%d" % request_id]
        if acquire:
            if timeout:
                options += [b"TIMEOUT", b"100"]
            wire.feed(_pack(b"SEM.ACQUIRE", key, _h(session), b"%d" % permits, *options))
            b.sem_acquire(session, key, permits, request_id=request_id or 0, timeout_ms=100 if timeout else 0)
        else:
            if token is not None:
                options += [b"TOKEN", b"%d" % token]
            wire.feed(_pack(b"sem.release", key, _h(session), *options))
            b.sem_release(session, key, token or 0, request_id=request_id or 0)
        assert wire.run_hot(lane, 10) == 1 and wire.parked == acquire
    batch = lane.cut(100)
    assert batch is not None
    assert lm.assemble(7, [batch.commands], batch.count) == b.build(7)
    whats = {batch.entry(i)[3] for i in range(batch.count)}
    assert whats == {"semaphore"}


def test_hot_commands_need_a_handle_the_lock_service_accepts() -> None:
    """A bare session id, a wrong secret or a malformed handle never enters the lane: the
    command table answers it (-NOSESSION). An accepted handle is remembered per
    connection, so the service checks it once, not per command."""
    lane, _, _ = _lane()
    checked: list[bytes] = []

    def verify(handle: bytes) -> int:
        checked.append(handle)
        return _verify(handle)

    lane.verify = verify
    for bad in (b"1", b"1.", b"1." + b"0" * 31, b"1." + b"0" * 33, b"1." + b"A" * 32, b"0." + _SECRET,
                b"x." + _SECRET, b"1.fedcba9876543210fedcba9876543210", b"1_0." + _SECRET):
        wire = lw.WireConn(_Owner("c"), 16, 4096)
        wire.feed(_pack(b"LOCK.RELEASE", b"a", bad))
        assert wire.run_hot(lane, 10) == 0, bad
        assert wire.next_request() == [b"LOCK.RELEASE", b"a", bad]
    assert len(lane) == 0
    checked.clear()
    wire = lw.WireConn(_Owner("c"), 16, 4096)
    wire.feed(_pack(b"LOCK.RELEASE", b"a", _h(7)) * 3 + _pack(b"LOCK.RELEASE", b"a", _h(8)))
    assert wire.run_hot(lane, 10) == 4
    assert checked == [_h(7), _h(8)]
    # After another session's handle, a look-alike of the first with one byte changed
    # is checked again (and refused), not taken from the memory.
    forged = _h(7)[:-1] + b"0"
    wire.feed(_pack(b"LOCK.RELEASE", b"a", forged))
    assert wire.run_hot(lane, 10) == 0 and checked[-1] == forged


@pytest.mark.parametrize("lane_first", [True, False])
def test_a_frame_missing_its_last_byte_is_incomplete_even_over_stale_buffer_bytes(lane_first: bool) -> None:
    """The buffer keeps the bytes of consumed requests behind the live ones: a frame
    check one byte short would read that stale '\\n' and take an incomplete frame (a
    mutant that survived the split tests, which took "incomplete" and "not mine" alike)."""
    lane, _, _ = _lane()
    # Over half the buffer's first allocation (256 bytes), so the second feed compacts it
    # and lands on the first frame's bytes.
    payload = b"k" * 180
    frame = _pack(b"LOCK.RELEASE", payload, _h(1)) if lane_first else _pack(b"ECHO", payload)
    wire = lw.WireConn(_Owner("c"), 16, 4096)
    wire.feed(frame)
    if lane_first:
        assert wire.run_hot(lane, 10) == 1
        wire = _resolved(wire, lane)
    else:
        assert wire.next_request() == [b"ECHO", payload]
    wire.feed(frame[:-1])  # the same request again, all but its final '\n'
    assert wire.run_hot(lane, 10) == 0
    assert wire.next_request() is False  # incomplete: not a request, not foreign
    wire.feed(frame[-1:])
    if lane_first:
        assert wire.run_hot(lane, 10) == 1
    else:
        assert wire.next_request() == [b"ECHO", payload]


def _resolved(wire: lw.WireConn, lane: lw.WireLane) -> lw.WireConn:
    """The connection with its one hot command answered (as a batch that failed does)."""
    batch = lane.cut(10)
    assert batch is not None
    batch.fail(RuntimeError("not committed"))
    assert wire.outstanding == 0 and wire.take_output() == b"-OTHER 0\r\n"
    return wire
