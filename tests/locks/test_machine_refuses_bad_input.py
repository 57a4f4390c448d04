"""Bad input: clear errors, never a crash, and the state unchanged.

Three layers: BatchBuilder refuses bad arguments before writing anything; a
structurally malformed record raises before anything is applied; a well-formed record
carrying out-of-range arguments (not made by BatchBuilder) gets a BADARG result for
that command only. Snapshots that are damaged refuse to load.
"""
from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from coordcore import errors
from coordcore.locks import BatchBuilder, Command, LockMachine, Op, Status
from coordcore.locks.machine import (
    MAX_BATCH_COMMANDS,
    MAX_KEY_SIZE,
    MAX_PERMITS,
    MAX_TIME_MS,
    MAX_TTL_MS,
    MAX_VALUE_SIZE,
    Detail,
)
from tests.models.lock_model import LockModel

HEADER = struct.Struct("<4sBBHQI")
CMD = struct.Struct("<BBHIQQQ")


def record(time_ms: int, *commands: tuple[int, int, int, int, int, bytes, bytes]) -> bytes:
    """A hand-packed record: (op, flags, session, request id, arg, key, value)..."""
    body = b"".join(CMD.pack(op, fl, len(k), len(v), s, r, a) + k + v for op, fl, s, r, a, k, v in commands)
    return HEADER.pack(b"CCLB", 1, 0, 0, time_ms, len(commands)) + body


@pytest.fixture
def busy() -> LockMachine:
    """A machine with some state: two sessions, a held lock with a waiter, an election."""
    m = LockMachine()
    b = BatchBuilder()
    b.open_session(10_000)
    b.open_session(10_000)
    b.acquire(1, "k", request_id=1)
    b.acquire(2, "k", request_id=1)
    b.campaign(2, "e", "v")
    m.apply(b.build(100))
    return m


# --- BatchBuilder ----------------------------------------------------------------------

BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], type[Exception]]] = [
    ("open_session", (0,), {}, errors.BadArgument),
    ("open_session", (-5,), {}, errors.BadArgument),
    ("open_session", (MAX_TTL_MS + 1,), {}, errors.BadArgument),
    ("open_session", (10**30,), {}, errors.BadArgument),
    ("open_session", (1.5,), {}, errors.WrongType),
    ("open_session", ("10",), {}, errors.WrongType),
    ("open_session", (True,), {}, errors.WrongType),
    ("keepalive", (0,), {}, errors.BadArgument),
    ("keepalive", (-1,), {}, errors.BadArgument),
    ("keepalive", (2**64,), {}, errors.BadArgument),
    ("keepalive", (None,), {}, errors.WrongType),
    ("close_session", ("1",), {}, errors.WrongType),
    ("acquire", (1, ""), {}, errors.BadArgument),
    ("acquire", (1, "x" * (MAX_KEY_SIZE + 1)), {}, errors.BadArgument),
    ("acquire", (1, "é" * (MAX_KEY_SIZE // 2 + 1)), {}, errors.BadArgument),  # 2 bytes each in UTF-8
    ("acquire", (1, 42), {}, errors.WrongType),
    ("acquire", (1, None), {}, errors.WrongType),
    ("acquire", (1, "k"), {"shared": 1}, errors.WrongType),
    ("acquire", (1, "k"), {"wait": "no"}, errors.WrongType),
    ("acquire", (1, "k"), {"request_id": -1}, errors.BadArgument),
    ("acquire", (1, "k"), {"value": b"v" * (MAX_VALUE_SIZE + 1)}, errors.BadArgument),
    ("acquire", (1, "k"), {"value": 3}, errors.WrongType),
    ("release", (1, "k", -1), {}, errors.BadArgument),
    ("release", (1, "k", "3"), {}, errors.WrongType),
    ("sem_acquire", (1, "s", 0), {}, errors.BadArgument),
    ("sem_acquire", (1, "s", MAX_PERMITS + 1), {}, errors.BadArgument),
    ("campaign", (1, "e", None), {}, errors.WrongType),
    ("proclaim", (1, "e", "x" * (MAX_VALUE_SIZE + 1)), {}, errors.BadArgument),
    ("cancel", (1, "k", 0), {}, errors.BadArgument),
]


@pytest.mark.parametrize(("method", "args", "kwargs", "exc"), BAD_CALLS)
def test_builder_refuses_bad_arguments(method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                                       exc: type[Exception]) -> None:
    b = BatchBuilder()
    b.open_session(10)
    before = b.build(1)
    with pytest.raises(exc):
        getattr(b, method)(*args, **kwargs)
    assert len(b) == 1 and b.build(1) == before  # nothing was written


def test_builder_accepts_integer_like_and_bytes_like() -> None:
    import numpy as np

    b = BatchBuilder()
    b.acquire(np.uint64(3), bytearray(b"k"), request_id=np.int32(4), value=memoryview(b"v"))
    b.open_session(np.int64(10))
    reference = BatchBuilder()
    reference.acquire(3, b"k", request_id=4, value=b"v")
    reference.open_session(10)
    assert b.build(1) == reference.build(1)
    with pytest.raises(errors.BadArgument):
        b.keepalive(np.int64(-1))


def test_builder_limits_are_inclusive() -> None:
    b = BatchBuilder()
    b.acquire(1, "x" * MAX_KEY_SIZE, value=b"v" * MAX_VALUE_SIZE)
    b.open_session(MAX_TTL_MS)
    b.sem_acquire(1, "s", MAX_PERMITS)
    b.build(MAX_TIME_MS)
    with pytest.raises(errors.BadArgument):
        b.build(MAX_TIME_MS + 1)
    with pytest.raises(errors.BadArgument):
        b.build(-1)
    with pytest.raises(errors.UnknownCommand):
        b.add(Command(99, 0, 1, 0, 0, b"k", b""))
    with pytest.raises(errors.BadArgument):
        b.add(Command(Op.ACQUIRE, 8, 1, 0, 0, b"k", b""))
    m = LockMachine()
    results = m.apply(b.build(5)).results
    assert results[0].status == Status.NOSESSION  # well-formed: only the session is missing


# --- malformed records: raise before applying anything ----------------------------------

GOOD = record(200, (Op.OPEN, 0, 0, 0, 100, b"", b""), (Op.ACQUIRE, 2, 1, 5, 0, b"k2", b""))

MALFORMED: list[tuple[str, bytes, type[Exception]]] = [
    ("empty", b"", errors.BadArgument),
    ("short header", GOOD[:19], errors.BadArgument),
    ("bad magic", b"XXXX" + GOOD[4:], errors.BadArgument),
    ("future version", GOOD[:4] + b"\x06" + GOOD[5:], errors.BadArgument),  # 4: pool commands, 5: pool DETACH
    ("header flags", GOOD[:5] + b"\x01" + GOOD[6:], errors.BadArgument),
    ("reserved", GOOD[:6] + b"\x01\x00" + GOOD[8:], errors.BadArgument),
    ("time too large", GOOD[:8] + struct.pack("<Q", MAX_TIME_MS + 1) + GOOD[16:], errors.BadArgument),
    ("count too large", GOOD[:16] + struct.pack("<I", MAX_BATCH_COMMANDS + 1) + GOOD[20:], errors.BadArgument),
    ("count too small", GOOD[:16] + struct.pack("<I", 1) + GOOD[20:], errors.BadArgument),
    ("count too big", GOOD[:16] + struct.pack("<I", 3) + GOOD[20:], errors.BadArgument),
    ("truncated command", GOOD[:-1], errors.BadArgument),
    ("truncated header", GOOD[:20 + 32 + 10], errors.BadArgument),
    ("trailing byte", GOOD + b"\x00", errors.BadArgument),
    ("unknown op 0", GOOD[:52] + b"\x00" + GOOD[53:], errors.UnknownCommand),
    ("unknown op 200", GOOD[:52] + b"\xc8" + GOOD[53:], errors.UnknownCommand),
    ("unknown flag", GOOD[:53] + b"\x04" + GOOD[54:], errors.BadArgument),
    ("key length past end", GOOD[:54] + struct.pack("<H", 60000) + GOOD[56:], errors.BadArgument),
    ("value length past end", GOOD[:56] + struct.pack("<I", 2**32 - 1) + GOOD[60:], errors.BadArgument),
]


@pytest.mark.parametrize(("name", "blob", "exc"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_record_raises_and_changes_nothing(busy: LockMachine, name: str, blob: bytes,
                                                     exc: type[Exception]) -> None:
    before = busy.snapshot()
    with pytest.raises(exc, match="malformed batch"):
        busy.apply(blob)
    assert busy.snapshot() == before
    with pytest.raises(exc):
        LockModel.parse(blob)
    assert busy.apply(GOOD).results[1].ok  # the machine still works


@pytest.mark.parametrize("blob", [None, 42, "CCLB", ["x"], object()])
def test_apply_wrong_type(busy: LockMachine, blob: object) -> None:
    with pytest.raises(errors.WrongType):
        busy.apply(blob)  # type: ignore[arg-type]


def test_apply_accepts_bytes_like(busy: LockMachine) -> None:
    assert len(busy.apply(bytearray(GOOD)).results) == 2
    assert len(busy.apply(memoryview(GOOD)).results) == 2


# --- well-formed records with bad arguments: BADARG for that command only -----------------

BADARG: list[tuple[str, tuple[int, int, int, int, int, bytes, bytes], int]] = [
    ("open ttl 0", (Op.OPEN, 0, 0, 0, 0, b"", b""), Detail.TTL),
    ("open ttl huge", (Op.OPEN, 0, 0, 0, 2**63, b"", b""), Detail.TTL),
    ("open with session", (Op.OPEN, 0, 5, 0, 10, b"", b""), Detail.SESSION),
    ("open with key", (Op.OPEN, 0, 0, 0, 10, b"k", b""), Detail.KEY),
    ("open with flags", (Op.OPEN, 2, 0, 0, 10, b"", b""), Detail.FLAGS),
    ("keepalive session 0", (Op.KEEPALIVE, 0, 0, 0, 0, b"", b""), Detail.SESSION),
    ("keepalive with arg", (Op.KEEPALIVE, 0, 1, 0, 5, b"", b""), Detail.ARG),
    ("acquire empty key", (Op.ACQUIRE, 0, 1, 0, 0, b"", b""), Detail.KEY),
    ("acquire long key", (Op.ACQUIRE, 0, 1, 0, 0, b"k" * (MAX_KEY_SIZE + 1), b""), Detail.KEY),
    ("acquire long value", (Op.ACQUIRE, 0, 1, 0, 0, b"k", b"v" * (MAX_VALUE_SIZE + 1)), Detail.VALUE),
    ("acquire with arg", (Op.ACQUIRE, 0, 1, 0, 7, b"k", b""), Detail.ARG),
    ("release with value", (Op.RELEASE, 0, 1, 0, 0, b"k", b"v"), Detail.VALUE),
    ("release shared flag", (Op.RELEASE, 1, 1, 0, 0, b"k", b""), Detail.FLAGS),
    ("sem shared flag", (Op.SEM_ACQUIRE, 1, 1, 0, 2, b"s", b""), Detail.FLAGS),
    ("sem permits 0", (Op.SEM_ACQUIRE, 0, 1, 0, 0, b"s", b""), Detail.PERMITS),
    ("sem permits huge", (Op.SEM_ACQUIRE, 0, 1, 0, MAX_PERMITS + 1, b"s", b""), Detail.PERMITS),
    ("cancel ticket 0", (Op.CANCEL, 0, 1, 0, 0, b"k", b""), Detail.ARG),
    ("close session 0", (Op.CLOSE, 0, 0, 0, 0, b"", b""), Detail.SESSION),
]


@pytest.mark.parametrize(("name", "command", "detail"), BADARG, ids=[b[0] for b in BADARG])
def test_bad_arguments_in_a_record_give_badarg(busy: LockMachine, name: str,
                                               command: tuple[int, int, int, int, int, bytes, bytes],
                                               detail: int) -> None:
    before = busy.snapshot()
    ok_cmd = (Op.KEEPALIVE, 0, 1, 0, 0, b"", b"")
    applied = busy.apply(record(busy.time_ms, command, ok_cmd))
    r = applied.results[0]
    assert (r.status, r.detail) == (Status.BADARG, detail)
    assert isinstance(r.exception(), errors.BadArgument) and r.message
    assert applied.events == [] and applied.results[1].ok
    assert busy.snapshot() == before  # keep-alive at the same time changes nothing either


def test_releasing_what_you_do_not_hold(busy: LockMachine) -> None:
    before = busy.snapshot()
    b = BatchBuilder()
    b.release(2, "k")          # 2 only waits
    b.release(1, "k", 4)       # 4 is session 2's ticket, not a token of 1
    b.release(1, "other")
    b.release(99, "k")         # no such session
    b.resign(1, "e")           # 1 is not the leader
    applied = busy.apply(b.build(busy.time_ms))
    assert [r.status for r in applied.results] == [Status.NOTHOLDER] * 3 + [Status.NOSESSION, Status.NOTLEADER]
    assert applied.events == [] and busy.snapshot() == before
    with pytest.raises(errors.NotLockHolder):
        applied.results[0].unwrap()
    with pytest.raises(errors.SessionExpired):
        applied.results[3].unwrap()


@settings(max_examples=300)
@given(data=st.data())
def test_mutated_records_native_and_model_agree(data: st.DataObject) -> None:
    """Flip, cut and splice bytes of valid records: the native machine and the model
    raise the same error class or apply the same way; never a crash."""
    base = data.draw(st.sampled_from([GOOD, record(5, (Op.OPEN, 0, 0, 0, 3, b"", b""),
                                                   (Op.CAMPAIGN, 2, 1, 1, 0, b"e", b"val"),
                                                   (Op.SEM_ACQUIRE, 2, 1, 2, 2, b"s", b""))]))
    blob = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        how = data.draw(st.integers(0, 2))
        if how == 0 and blob:
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
        elif how == 1:
            i = data.draw(st.integers(0, len(blob)))
            del blob[i:i + data.draw(st.integers(0, 8))]
        else:
            i = data.draw(st.integers(0, len(blob)))
            blob[i:i] = data.draw(st.binary(max_size=8))
    # Format version 4 adds the pool commands, which the lock model leaves to the pool
    # model (tests/locks/test_pool_machine.py).
    assume(len(blob) < 5 or blob[4] != 4)
    m, model = LockMachine(), LockModel()
    try:
        applied = m.apply(bytes(blob))
    except errors.CoordcoreError as exc:
        with pytest.raises(type(exc)):
            model.apply(bytes(blob))
        assert m.snapshot() == LockMachine().snapshot()
        return
    results, events = model.apply(bytes(blob))
    assert [tuple(r) for r in applied.results] == results
    assert [tuple(e) for e in applied.events] == events
    assert m.snapshot() == model.snapshot()
    m.check_invariants()


# --- snapshots ---------------------------------------------------------------------------


def test_damaged_snapshots_refuse_to_load(busy: LockMachine) -> None:
    snap = busy.snapshot()
    other = LockMachine()
    b = BatchBuilder()
    b.open_session(5)
    other.apply(b.build(1))
    kept = other.snapshot()
    bad = [b"", b"CCLS", snap[:-1], snap + b"\x00", b"XXXX" + snap[4:], snap[:4] + b"\x03" + snap[5:]]
    bad += [snap[:i] + bytes([snap[i] ^ 0x40]) + snap[i + 1:] for i in range(0, len(snap), 7)]
    for blob in bad:
        with pytest.raises(errors.LogCorrupted):
            other.restore(blob)
        assert other.snapshot() == kept  # a failed restore changes nothing
    for wrong in ("snapshot", None, 5):
        with pytest.raises(errors.WrongType):
            other.restore(wrong)  # type: ignore[arg-type]
    from coordcore._native.lockmachine import crc32c

    with pytest.raises(errors.WrongType):
        crc32c(None)  # type: ignore[arg-type]


def _resealed(body: bytes) -> bytes:
    from coordcore._native.lockmachine import crc32c

    return body + struct.pack("<I", crc32c(body))


def test_snapshots_with_a_valid_checksum_but_impossible_state(busy: LockMachine) -> None:
    """A snapshot written by something else (or a bug) must not load an impossible state."""
    snap = busy.snapshot()
    body = bytearray(snap[:-4])
    # the header: time, revision, next session id, session count
    assert body[:8] == b"CCLS\x02\x00\x00\x00"
    cases = []
    low_revision = bytearray(body)
    low_revision[16:24] = struct.pack("<Q", 1)  # tokens above the revision
    cases.append(low_revision)
    low_next = bytearray(body)
    low_next[24:32] = struct.pack("<Q", 2)  # session 2 at or beyond the id counter
    cases.append(low_next)
    no_next = bytearray(body)
    no_next[24:32] = struct.pack("<Q", 0)
    cases.append(no_next)
    for case in cases:
        with pytest.raises(errors.LogCorrupted):
            LockMachine.from_snapshot(_resealed(bytes(case)))
    assert LockMachine.from_snapshot(_resealed(bytes(body))).snapshot() == snap
