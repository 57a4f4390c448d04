"""UUIDv7 (RFC 9562) and ULID generators: layout, order, uniqueness, fork, text forms, errors."""
from __future__ import annotations

import os
import threading
import time
import uuid

import numpy as np
import pytest

from coordcore.errors import BadArgument, CoordcoreError, WrongType
from coordcore.ids import SkewClock
from coordcore.uuids import ID_DTYPE, ULIDGenerator, UUIDv7Generator, timestamp_ms, ulid, uuid7

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
V7_COUNTER_MAX = 2**42 - 1


def ulid_decode(text: str) -> int:
    """A plain reference decoder of the ULID spec's text form: 26 Crockford base32 digits
    (case-insensitive, I/L read as 1 and O as 0), at most 2**128 - 1."""
    assert len(text) == 26, text
    value = 0
    for c in text.upper().replace("I", "1").replace("L", "1").replace("O", "0"):
        value = value * 32 + CROCKFORD.index(c)
    assert value < 2**128, text
    return value


def v7_fields(u: uuid.UUID) -> tuple[int, int, int, int, int]:
    """(unix_ts_ms, ver, counter, var, random) of a UUIDv7, by RFC 9562's bit positions."""
    n = u.int
    return n >> 80, (n >> 76) & 0xF, ((n >> 64) & 0xFFF) << 30 | (n >> 32) & (2**30 - 1), (n >> 62) & 3, n & 0xFFFFFFFF


@pytest.fixture(params=["uuid7", "ulid"])
def gen(request: pytest.FixtureRequest) -> UUIDv7Generator | ULIDGenerator:
    return UUIDv7Generator() if request.param == "uuid7" else ULIDGenerator()


# --- layout --------------------------------------------------------------------------


def test_uuid7_layout_follows_rfc_9562() -> None:
    gen = UUIDv7Generator()
    before = time.time_ns() // 1_000_000
    ids = [gen.next_uuid() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    for u in ids:
        ms, ver, _, var, _ = v7_fields(u)
        assert ver == 7 and u.version == 7
        assert var == 0b10 and u.variant == uuid.RFC_4122
        assert before <= ms <= after
        assert u.is_safe == uuid.SafeUUID.unknown
    for b in gen.next_array(5000).view(np.uint8).reshape(-1, 16):
        assert b[6] >> 4 == 7 and b[8] >> 6 == 0b10


def test_uuid7_counter_is_method_1_seeded_with_its_top_bit_clear() -> None:
    """Within a millisecond the 42-bit counter rises by exactly one; a new millisecond
    seeds it below 2**41 (RFC 9562's rollover guard); the low 32 bits are random."""
    gen = UUIDv7Generator()
    ids = [gen.next_uuid() for _ in range(20_000)]
    fields = [v7_fields(u) for u in ids]
    same_ms = 0
    for (ms0, _, c0, _, _), (ms1, _, c1, _, _) in zip(fields, fields[1:]):
        if ms1 == ms0:
            assert c1 == c0 + 1
            same_ms += 1
        else:
            assert ms1 > ms0 and c1 < 2**41
    assert same_ms > 0
    assert len({f[4] for f in fields}) > len(fields) * 0.99  # random tails, not a pattern


def test_ulid_layout_and_monotonic_rule() -> None:
    gen = ULIDGenerator()
    before = time.time_ns() // 1_000_000
    texts = [gen.next_str() for _ in range(5000)]
    after = time.time_ns() // 1_000_000
    values = [ulid_decode(t) for t in texts]
    for t, v in zip(texts, values):
        assert len(t) == 26 and t[0] in "01234567" and set(t) <= set(CROCKFORD)
        assert before <= v >> 80 <= after
    for v0, v1 in zip(values, values[1:]):
        if v1 >> 80 == v0 >> 80:
            assert v1 == v0 + 1  # the spec's rule: same millisecond, randomness + 1
        else:
            assert v1 > v0


def test_timestamp_ms_reads_every_form() -> None:
    v7 = UUIDv7Generator()
    u = v7.next_uuid()
    ms = u.int >> 80
    assert timestamp_ms(u) == timestamp_ms(str(u)) == timestamp_ms(u.bytes) == timestamp_ms(u.int) == ms
    t = ULIDGenerator().next_str()
    assert timestamp_ms(t) == timestamp_ms(t.lower()) == ulid_decode(t) >> 80
    with pytest.raises(BadArgument):
        timestamp_ms("not an id")
    with pytest.raises(BadArgument):
        timestamp_ms(b"short")
    with pytest.raises(BadArgument):
        timestamp_ms("8" + "0" * 25)  # 2**128: too large for a ULID
    with pytest.raises(WrongType):
        timestamp_ms(1.5)  # type: ignore[arg-type]


# --- forms round-trip ----------------------------------------------------------------


def test_uuid7_forms_round_trip_with_the_uuid_module() -> None:
    gen = UUIDv7Generator()
    s = gen.next_str()
    assert str(uuid.UUID(s)) == s and uuid.UUID(s).version == 7
    b = gen.next_bytes()
    assert isinstance(b, bytes) and uuid.UUID(bytes=b).bytes == b
    n = gen.next_int()
    assert uuid.UUID(int=n).int == n and uuid.UUID(int=n).version == 7
    u = gen.next_uuid()
    assert type(u) is uuid.UUID and uuid.UUID(str(u)) == u and hash(u) == hash(uuid.UUID(str(u)))
    assert uuid.UUID(s) < uuid.UUID(bytes=b) < uuid.UUID(int=n) < u
    for text, record in zip(gen.next_strs(100), gen.next_array(100)):
        assert str(uuid.UUID(text)) == text
        assert uuid.UUID(bytes=record.tobytes()).version == 7


def test_ulid_forms_agree() -> None:
    gen = ULIDGenerator()
    t = gen.next_str()
    b = gen.next_bytes()
    n = gen.next_int()
    u = gen.next_uuid()
    assert ulid_decode(t) < int.from_bytes(b, "big") < n < u.int
    # Text and binary of the same IDs: a batch's records against its strings, from the
    # same state. Within the same milliseconds they must be the same IDs; a tick between
    # the two draws new random bits, so that try is taken again.
    for _ in range(100):
        state = gen._get_state()
        binary = [int.from_bytes(r.tobytes(), "big") for r in gen.next_array(50)]
        gen._set_state(*state)
        text = [ulid_decode(s) for s in gen.next_strs(50)]
        if [x >> 80 for x in text] == [x >> 80 for x in binary]:  # the 48-bit times agree
            assert text == binary
            break
    else:
        raise AssertionError("never two batches within the same milliseconds")


def test_numpy_batch_views() -> None:
    ids = UUIDv7Generator().next_array(4)
    assert ids.dtype == ID_DTYPE and ids.shape == (4,)
    halves = ids.view(">u8").reshape(-1, 2)
    assert [(int(h) << 64) | int(lo) for h, lo in halves] == [uuid.UUID(bytes=r.tobytes()).int for r in ids]


# --- order and uniqueness --------------------------------------------------------------


def as_ints(gen: UUIDv7Generator | ULIDGenerator, n: int) -> list[int]:
    return [int.from_bytes(r.tobytes(), "big") for r in gen.next_array(n)]


def test_every_form_continues_one_rising_sequence(gen: UUIDv7Generator | ULIDGenerator) -> None:
    seq: list[int] = []
    for _ in range(200):
        seq.append(gen.next_int())
        seq.append(gen.next_uuid().int)
        seq.append(int.from_bytes(gen.next_bytes(), "big"))
        seq.extend(as_ints(gen, 7))
        seq.append(gen.next_int())
    assert all(a < b for a, b in zip(seq, seq[1:]))


@pytest.mark.slow
def test_large_batches_have_no_duplicates(gen: UUIDv7Generator | ULIDGenerator) -> None:
    out = np.empty(1_000_000, dtype=ID_DTYPE)
    a = gen.next_array(out=out).copy()
    b = gen.next_array(500_000)
    both = np.concatenate([a, b]).view(">u8").reshape(-1, 2)
    hi, lo = both[:, 0], both[:, 1]
    rising = (hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] > lo[:-1]))
    assert bool(rising.all())
    strs = gen.next_strs(200_000)
    assert len(set(strs)) == len(strs) and strs == sorted(strs)


def test_batch_fills_part_of_out() -> None:
    gen = UUIDv7Generator()
    out = np.zeros(10, dtype=ID_DTYPE)
    view = gen.next_array(4, out=out)
    assert len(view) == 4 and view.base is not None
    assert all(r.tobytes() != bytes(16) for r in out[:4]) and all(r.tobytes() == bytes(16) for r in out[4:])
    assert len(gen.next_array(0)) == 0 and gen.next_strs(0) == []


def test_threads_never_share_or_reorder(gen: UUIDv7Generator | ULIDGenerator) -> None:
    per_thread: list[list[int]] = [[] for _ in range(4)]
    go = threading.Barrier(4)

    def work(k: int) -> None:
        go.wait()
        mine = per_thread[k]
        for i in range(3000):
            if i % 3 == 0:
                mine.extend(as_ints(gen, 5))
            else:
                mine.append(gen.next_int())

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [v for mine in per_thread for v in mine]
    assert len(set(everything)) == len(everything)
    for mine in per_thread:
        assert all(a < b for a, b in zip(mine, mine[1:]))


def test_a_forked_child_continues_above_and_apart_from_its_parent(gen: UUIDv7Generator | ULIDGenerator) -> None:
    before = as_ints(gen, 1000)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its IDs down the pipe, then out without any cleanup
        try:
            os.close(r)
            mine = [gen.next_int() for _ in range(500)] + as_ints(gen, 1500)
            os.write(w, b"".join(v.to_bytes(16, "big") for v in mine))
        finally:
            os._exit(0)
    os.close(w)
    parent_after = [gen.next_int() for _ in range(500)] + as_ints(gen, 1500)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    assert os.waitpid(pid, 0)[1] == 0
    child = [int.from_bytes(data[i:i + 16], "big") for i in range(0, len(data), 16)]
    assert len(child) == 2000
    assert all(a < b for a, b in zip(child, child[1:]))
    assert child[0] > before[-1] and parent_after[0] > before[-1]
    assert not set(child) & set(parent_after) & set(before)
    assert not set(child) & set(parent_after)
    # Not the parent's counter walk with other random tails: the counters differ too.
    strip = (lambda v: v >> 32) if isinstance(gen, UUIDv7Generator) else (lambda v: v)
    assert not {strip(v) for v in child} & {strip(v) for v in parent_after}


# --- the clock and the counter's end --------------------------------------------------


def test_clock_going_back_keeps_the_timestamp_and_rises(gen: UUIDv7Generator | ULIDGenerator) -> None:
    clock = SkewClock()
    g = type(gen)(clock_source=clock)
    first = g.next_int()
    clock.jump(-5000)
    later = [g.next_int() for _ in range(100)] + as_ints(g, 100)
    assert all(v >> 80 == first >> 80 for v in later)
    assert all(a < b for a, b in zip([first, *later], later))
    clock.jump(5010)
    assert g.next_int() >> 80 > first >> 80


def test_uuid7_counter_overflow_moves_the_timestamp_ahead() -> None:
    clock = SkewClock()
    gen = UUIDv7Generator(clock_source=clock)
    clock.jump(-60_000)  # the clock stands a minute behind the state set below
    ms = time.time_ns() // 1_000_000
    gen._set_state(ms, V7_COUNTER_MAX - 2)
    ids = [gen.next_uuid() for _ in range(3)] + [uuid.UUID(bytes=r.tobytes()) for r in gen.next_array(3)]
    fields = [v7_fields(u) for u in ids]
    assert [f[2] for f in fields[:2]] == [V7_COUNTER_MAX - 1, V7_COUNTER_MAX]
    assert fields[2][0] == ms + 1 and fields[2][2] < 2**41  # re-seeded, a ms ahead, never wrapped
    assert all(a < b for a, b in zip(ids, ids[1:]))


def test_ulid_counter_overflow_moves_the_timestamp_ahead() -> None:
    clock = SkewClock()
    gen = ULIDGenerator(clock_source=clock)
    clock.jump(-60_000)
    ms = time.time_ns() // 1_000_000
    gen._set_state(ms, 2**80 - 2)
    values = [ulid_decode(gen.next_str()) for _ in range(3)]
    assert values[0] == (ms << 80) | (2**80 - 1)
    assert values[1] >> 80 == ms + 1 and values[1] > values[0]
    # A batch that runs across the end of a millisecond's counter.
    gen._set_state(ms + 5, 2**80 - 3)
    batch = as_ints(gen, 10)
    assert [v >> 80 for v in batch[:2]] == [ms + 5, ms + 5] and batch[2] >> 80 == ms + 6
    assert all(a < b for a, b in zip(batch, batch[1:]))


# --- defaults and errors ----------------------------------------------------------------


def test_shared_generators() -> None:
    a, b = uuid7(), uuid7()
    assert a < b and a.version == 7
    assert ulid_decode(ulid()) < ulid_decode(ulid())


def test_bad_arguments_are_refused_clearly(gen: UUIDv7Generator | ULIDGenerator) -> None:
    with pytest.raises(BadArgument, match="n must be in"):
        gen.next_array(-1)
    with pytest.raises(WrongType, match="n must be an int"):
        gen.next_array("3")  # type: ignore[arg-type]
    with pytest.raises(WrongType, match="n must be an int"):
        gen.next_array(2.0)  # type: ignore[arg-type]
    with pytest.raises(BadArgument, match="needs n or out"):
        gen.next_array()
    with pytest.raises(WrongType, match="dtype 'V16'"):
        gen.next_array(out=np.empty(4, dtype=np.int64))  # type: ignore[arg-type]
    with pytest.raises(WrongType, match="dtype 'V16'"):
        gen.next_array(out=[b"x" * 16])  # type: ignore[arg-type]
    with pytest.raises(BadArgument, match="C-contiguous"):
        gen.next_array(out=np.empty(8, dtype=ID_DTYPE)[::2])
    with pytest.raises(BadArgument, match=r"n must be in \[0, 4\]"):
        gen.next_array(5, out=np.empty(4, dtype=ID_DTYPE))
    with pytest.raises(BadArgument, match="n must be in"):
        gen.next_strs(-2)
    with pytest.raises(WrongType):
        gen.next_strs(None)  # type: ignore[arg-type]
    with pytest.raises(WrongType, match="clock_source"):
        type(gen)(clock_source=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        type(gen)(7)  # type: ignore[misc]
    assert issubclass(BadArgument, CoordcoreError)


def test_numpy_integers_are_accepted_as_counts(gen: UUIDv7Generator | ULIDGenerator) -> None:
    assert len(gen.next_array(np.int64(3))) == 3  # type: ignore[arg-type]
    assert len(gen.next_strs(np.uint32(2))) == 2  # type: ignore[arg-type]
