"""coordcore._native.lockwire: the server's native lock wire helpers, checked against the
reference (BatchBuilder, decode_results, decode_events) byte for byte."""
from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordcore.errors import BadArgument
from coordcore.locks.machine import (
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

_U64 = 2**64 - 1
keys = st.binary(min_size=1, max_size=40)
u64 = st.integers(0, _U64)
sessions = st.integers(1, _U64)

acquire_cmd = st.tuples(st.just("acquire"), sessions, keys, st.booleans(), st.booleans(), u64,
                        st.binary(max_size=20))
release_cmd = st.tuples(st.just("release"), sessions, keys, u64, u64)


@given(st.lists(st.one_of(acquire_cmd, release_cmd), max_size=30), st.integers(0, 2**40))
def test_assembled_batch_is_byte_identical_to_batch_builder(cmds: list[tuple], time_ms: int) -> None:
    b = BatchBuilder()
    parts = []
    for c in cmds:
        if c[0] == "acquire":
            _, s, k, shared, wait, rid, value = c
            b.acquire(s, k, shared=shared, wait=wait, request_id=rid, value=value)
            parts.append(lw.encode_acquire(s, k, shared=shared, wait=wait, request_id=rid, value=value))
        else:
            _, s, k, token, rid = c
            b.release(s, k, token, request_id=rid)
            parts.append(lw.encode_release(s, k, token, rid))
    assert lw.assemble(time_ms, parts, len(parts)) == b.build(time_ms)
    # parts may also carry several commands each (what the service does for
    # BatchBuilder-made commands)
    assert lw.assemble(time_ms, [b"".join(parts)], len(parts)) == b.build(time_ms)


@pytest.mark.parametrize("call", [
    lambda: lw.encode_acquire(0, b"k"),
    lambda: lw.encode_acquire(2**64, b"k"),
    lambda: lw.encode_acquire(1, b""),
    lambda: lw.encode_acquire(1, b"x" * 1025),
    lambda: lw.encode_acquire(1, "k"),
    lambda: lw.encode_acquire(1, b"k", value=b"v" * 4097),
    lambda: lw.encode_release(1, b"k", -1),
    lambda: lw.encode_release(1, b"k", 0, 2**64),
    lambda: lw.encode_release(1.0, b"k"),
    lambda: lw.assemble(-1, [], 0),
    lambda: lw.assemble(2**62 + 1, [], 0),
    lambda: lw.assemble(0, [b"x", 1], 0),
    lambda: lw.fast_reply(b"\0" * 24, 1, 1),
    lambda: lw.fast_reply(b"\0" * 24, -1, 1),
    lambda: lw.fast_reply(b"\0" * 24, 0, 3),
    lambda: lw.filter_events(b"\0" * 39, Event, {}),
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


def test_fast_reply_matches_decoded_results(rng: random.Random) -> None:
    for raw_results, _, acquires in _workload(rng, LockMachine()):
        results = decode_results(raw_results)
        for i, r in enumerate(results):
            for kind in (1, 2):
                reply = lw.fast_reply(raw_results, i, kind)
                if r.status != Status.OK:
                    assert reply is None
                elif kind == 1:
                    assert reply == b":%d\r\n" % r.value
                else:
                    assert reply == b"+OK\r\n"
    assert lw.fast_reply(b"\0" * 8 + (_U64).to_bytes(8, "little") + b"\0" * 8, 0, 1) == b":%d\r\n" % _U64


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
        assert lw.filter_events(raw_events, Event, parked) == want
        assert all(type(e) is Event for e in lw.filter_events(raw_events, Event, parked))
    assert {EventKind.GRANT, EventKind.RELEASE, EventKind.CLOSE} <= seen_kinds
