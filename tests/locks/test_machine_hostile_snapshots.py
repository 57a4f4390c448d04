"""Hostile input for the native lock machine: snapshots with a valid checksum but crafted
fields, random bytes, and structure-aware mutations. Whatever the bytes, the machine
raises a coordcore error or loads a state that keeps its invariants; it never crashes.

These run under the sanitizer build too (COORDCORE_SANITIZE=1, see setup.py).
"""
from __future__ import annotations

import random
import struct
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordcore import errors
from coordcore._native.lockmachine import crc32c, live_blocks
from coordcore.locks.machine import MAX_TIME_MS, BatchBuilder, LockMachine, decode_events, decode_results

HEADER = 36  # magic, version, time, revision, next session id, session count
SESSION = 60  # id, ttl, deadline, request count, credential digest (32 bytes)
REQUEST = 32
KEY = 16  # klen, kind, 0, permits, holders, waiters (then the key bytes)
CONTENDER = 40  # session, ticket, token, mode, detached, 0, value length, wait deadline (then the value)


def _reseal(body: bytes | bytearray) -> bytes:
    return bytes(body) + struct.pack("<I", crc32c(bytes(body)))


def _one_lock() -> tuple[LockMachine, bytes]:
    """Session 1 holds lock b"k"; the snapshot has exactly one contender."""
    m = LockMachine()
    b = BatchBuilder()
    b.open_session(10_000)
    m.apply(b.build(1_000))
    b.clear()
    b.acquire(1, b"k")
    m.apply(b.build(1_001))
    return m, m.snapshot()


def _contender_offset() -> int:
    return HEADER + SESSION + 4 + KEY + 1


def test_restore_refuses_a_contender_of_session_zero() -> None:
    # Session id 0 is the session map's empty marker: looking it up used to "find" an
    # empty slot and return its uninitialised value, a wild index (segfault on restore).
    _, snap = _one_lock()
    body = bytearray(snap[:-4])
    off = _contender_offset()
    assert struct.unpack_from("<Q", body, off)[0] == 1
    struct.pack_into("<Q", body, off, 0)
    with pytest.raises(errors.LogCorrupted):
        LockMachine.from_snapshot(_reseal(body))


@pytest.mark.parametrize("field", ["revision", "next_session"])
@pytest.mark.parametrize("value", [2**62 + 1, 2**63, 2**64 - 1])
def test_restore_refuses_counters_that_could_wrap(field: str, value: int) -> None:
    # A revision or session counter near 2**64 wrapped on the next command: tokens were
    # handed out again from 0 and a session got id 0.
    m, snap = _one_lock()
    body = bytearray(snap[:-4])
    struct.pack_into("<Q", body, 16 if field == "revision" else 24, value)
    with pytest.raises(errors.LogCorrupted, match="header out of range"):
        LockMachine.from_snapshot(_reseal(body))
    # The largest accepted counters still work, and keep rising.
    body = bytearray(snap[:-4])
    struct.pack_into("<Q", body, 16 if field == "revision" else 24, 2**62)
    big = LockMachine.from_snapshot(_reseal(body))
    b = BatchBuilder()
    b.open_session(100)
    b.acquire(1, b"other")
    res = big.apply(b.build(1_002)).results
    assert res[0].session_id > 1 and res[1].token > m.revision
    big.check_invariants()


@pytest.mark.parametrize(("holders", "waiters"), [(1, 0xFFFFFFFF), (0xFFFFFFFF, 1), (0xFFFFFFFF, 0xFFFFFFFF),
                                                   (0, 0)])
def test_restore_refuses_contender_counts_that_wrap(holders: int, waiters: int) -> None:
    # The check was written as a wrapped nh + nw < nh: right in release, but debug
    # builds (overflowcheck) raised OverflowError instead of LogCorrupted.
    _, snap = _one_lock()
    body = bytearray(snap[:-4])
    key = HEADER + SESSION + 4
    struct.pack_into("<II", body, key + 8, holders, waiters)
    with pytest.raises(errors.LogCorrupted):
        LockMachine.from_snapshot(_reseal(body))


def test_session_zero_is_never_found() -> None:
    m, _ = _one_lock()
    assert m.session(0) is None
    b = BatchBuilder()
    b._add(4, 0, 0, 0, 0, b"k", b"")  # session 0 bypassing the builder's check
    assert m.apply(b.build(1_002)).results[0].status == 14  # BADARG
    m.check_invariants()


@pytest.mark.parametrize("prefix", [3, 10**13, [97], None, 1.5])
def test_keys_refuses_a_prefix_that_is_not_text(prefix: object) -> None:
    # bytes(prefix) turned an int n into n zero bytes (MemoryError for a large n) and a
    # list of ints into bytes.
    m, _ = _one_lock()
    with pytest.raises(errors.WrongType):
        m.keys(prefix)  # type: ignore[arg-type]
    assert m.keys("k") == m.keys(b"k") == m.keys(b"") == [b"k"]


def test_threads_sharing_a_machine_do_not_corrupt_it() -> None:
    # Documented as one-owner, but a misuse must serialise, not tear the C structures:
    # with the GIL nothing runs in parallel; on free-threaded builds every public method
    # takes a critical section on the machine. Batches arrive as bytearrays, which apply
    # copies before trusting pass 1's checks.
    m = LockMachine()
    b = BatchBuilder()
    for _ in range(8):
        b.open_session(60_000)
    m.apply(b.build(1))
    errors_seen: list[BaseException] = []
    start = threading.Barrier(4)

    def writer(k: int) -> None:
        rng = random.Random(k)
        start.wait()
        try:
            for i in range(300):
                w = BatchBuilder()
                sid = rng.randint(1, 8)
                w.acquire(sid, f"k{rng.randrange(4)}", shared=rng.random() < 0.5, wait=rng.random() < 0.5)
                w.release(sid, f"k{rng.randrange(4)}")
                m.apply(bytearray(w.build(2 + i)))  # type: ignore[arg-type]
        except BaseException as exc:  # pragma: no cover - reported below
            errors_seen.append(exc)

    def reader() -> None:
        start.wait()
        try:
            for _ in range(300):
                m.keys(b"k")
                m.info(b"k1")
                m.next_deadline()
                m.session(3)
                m.snapshot()
        except BaseException as exc:  # pragma: no cover - reported below
            errors_seen.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors_seen
    m.check_invariants()
    assert LockMachine.from_snapshot(m.snapshot()).snapshot() == m.snapshot()


def test_failed_restores_free_what_they_built() -> None:
    # A restore builds a whole machine before its last check can fail; everything it
    # allocated (4 MiB of values here) must go with it. Counted in C blocks, not resident
    # memory: that also holds under ASan, whose quarantine keeps freed memory resident.
    m = LockMachine()
    b = BatchBuilder()
    b.open_session(60_000)
    for i in range(1_000):
        b.acquire(1, f"k{i:04d}", value=b"v" * 4096)
    m.apply(b.build(1))
    body = bytearray(m.snapshot()[:-4])
    body[-4096 - 16] = 99  # the last contender's mode: refused after everything is built
    bad = _reseal(body)
    with pytest.raises(errors.LogCorrupted, match="mode"):
        LockMachine.from_snapshot(bad)
    target = LockMachine()
    before = live_blocks()
    for _ in range(150):
        with pytest.raises(errors.LogCorrupted):
            target.restore(bad)
    assert live_blocks() == before


# --- structure-aware snapshot mutation ----------------------------------------------------


def _busy(rng: random.Random) -> LockMachine:
    m = LockMachine()
    b = BatchBuilder()
    for _ in range(rng.randint(1, 4)):
        b.open_session(rng.randint(1, 5_000))
    t = 1_000
    m.apply(b.build(t))
    for _ in range(rng.randint(1, 5)):
        b.clear()
        t += rng.randint(0, 50)
        for _ in range(rng.randint(1, 8)):
            sid = rng.randint(1, m.next_session_id)
            k = rng.choice([b"a", b"b", b"sem", b"el"])
            if k == b"sem":
                b.sem_acquire(sid, k, 2, request_id=rng.randint(0, 5), value=b"v" * rng.randint(0, 3))
            elif k == b"el":
                b.campaign(sid, k, b"val", request_id=rng.randint(0, 5))
            elif rng.random() < 0.3:
                b.release(sid, k, request_id=rng.randint(0, 5))
            else:
                b.acquire(sid, k, shared=rng.random() < 0.5, request_id=rng.randint(0, 9))
        m.apply(b.build(t))
    return m


def _fields(snap: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every integer field of a snapshot."""
    out = [(8, 8), (16, 8), (24, 8), (32, 4)]
    pos = HEADER
    for _ in range(struct.unpack_from("<I", snap, 32)[0]):
        out += [(pos, 8), (pos + 8, 8), (pos + 16, 8), (pos + 24, 4)]
        nreq = struct.unpack_from("<I", snap, pos + 24)[0]
        pos += SESSION
        for _ in range(nreq):
            out += [(pos, 8), (pos + 8, 1), (pos + 9, 1), (pos + 10, 1), (pos + 16, 8), (pos + 24, 8)]
            pos += REQUEST
    out.append((pos, 4))
    nkeys = struct.unpack_from("<I", snap, pos)[0]
    pos += 4
    for _ in range(nkeys):
        klen, _kind, _, _permits, nh, nw = struct.unpack_from("<HBBIII", snap, pos)
        out += [(pos, 2), (pos + 2, 1), (pos + 4, 4), (pos + 8, 4), (pos + 12, 4)]
        pos += KEY + klen
        for _ in range(nh + nw):
            vlen = struct.unpack_from("<I", snap, pos + 28)[0]
            out += [(pos, 8), (pos + 8, 8), (pos + 16, 8), (pos + 24, 1), (pos + 25, 1), (pos + 28, 4),
                    (pos + 32, 8)]
            pos += CONTENDER + vlen
    assert pos == len(snap) - 4
    return out


INTERESTING = [0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
               2**62, 2**63 - 1, 2**63, 2**64 - 1]


def _use(rng: random.Random, m: LockMachine) -> None:
    """Drive a restored machine with random commands, checking it after every batch."""
    m.check_invariants()
    b = BatchBuilder()
    t = m.time_ms
    for _ in range(12):
        b.clear()
        for _ in range(rng.randint(0, 6)):
            sid = rng.randint(1, m.next_session_id)
            k = rng.choice([b"a", b"b", b"sem", b"el"])
            c = rng.randrange(7)
            if c == 0:
                b.open_session(rng.randint(1, 3_000))
            elif c == 1:
                b.close_session(sid)
            elif c == 2:
                b.keepalive(sid)
            elif c == 3:
                b.release(sid, k, rng.choice([0, rng.randint(1, 40)]), request_id=rng.randint(0, 5))
            elif c == 4:
                b.cancel(sid, k, rng.randint(1, 40))
            elif c == 5:
                b.acquire(sid, k, shared=rng.random() < 0.5, request_id=rng.randint(0, 9))
            else:
                b.proclaim(sid, k, b"p", rng.choice([0, rng.randint(1, 40)]))
        t = min(t + rng.randint(0, 2_000), MAX_TIME_MS)
        m.apply(b.build(t))
        m.check_invariants()
    if m.revision <= 2**62 and m.next_session_id <= 2**62:  # restore's sanity bound
        assert LockMachine.from_snapshot(m.snapshot()).snapshot() == m.snapshot()


@given(st.randoms(use_true_random=False))
def test_resealed_mutated_snapshots_load_sane_or_refuse(rng: random.Random) -> None:
    m = _busy(rng)
    snap = m.snapshot()
    fields = _fields(snap)
    for _ in range(8):
        body = bytearray(snap[:-4])
        for _ in range(rng.randint(1, 3)):
            off, size = rng.choice(fields)
            top = 2 ** (8 * size) - 1
            old = int.from_bytes(body[off:off + size], "little")
            value = rng.choice([rng.choice(INTERESTING) & top, (old + rng.randint(-3, 3)) & top,
                                rng.randint(0, top)])
            body[off:off + size] = value.to_bytes(size, "little")
        try:
            loaded = LockMachine.from_snapshot(_reseal(body))
        except errors.LogCorrupted:
            continue
        _use(rng, loaded)


@given(st.binary(max_size=300))
def test_random_bytes_never_crash(blob: bytes) -> None:
    m = LockMachine()
    for data in (blob, b"CCLS\x01\x00\x00\x00" + blob, _reseal(b"CCLS\x01\x00\x00\x00" + blob)):
        try:
            m.restore(data)
        except errors.LogCorrupted:
            pass
        else:
            _use(random.Random(len(data)), m)
    for data in (blob, b"CCLB\x01\x00\x00\x00" + blob):
        try:
            m.apply(data)
        except (errors.BadArgument, errors.UnknownCommand):
            pass
        m.check_invariants()
    try:
        decode_events(blob)
    except errors.BadArgument:
        pass
    try:
        decode_results(blob)
    except errors.BadArgument:
        pass
