"""The native ring under hostile input: keys whose conversion mutates the batch, arrays
changed by another thread mid-lookup, extreme arguments, malformed serialised rings and
error paths looped for leaks. It raises coordcore errors; it never crashes.
"""
from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import tracemalloc
import weakref
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordcore import errors
from coordcore.ring import (
    BoundedLoadRing,
    HashRing,
    Rendezvous,
    RingSnapshot,
    hash64,
    hash64_many,
    jump_hash,
    jump_hash_many,
)

ROOT = Path(__file__).resolve().parents[1]


# --- keys that free themselves ------------------------------------------------------------


class SelfDropping:
    """A key whose __index__ (a staticmethod: no frame holds the key) clears the list
    being hashed, dropping the last reference to the key, then records whether the key
    survived its own conversion."""

    batch: list[Any] = []
    alive_after_clear: list[bool] = []
    current: weakref.ref[SelfDropping] | None = None

    @staticmethod
    def __index__() -> int:
        SelfDropping.batch.clear()
        ref = SelfDropping.current
        SelfDropping.alive_after_clear.append(ref is not None and ref() is not None)
        raise TypeError("not an integer")


LOOKUPS: dict[str, Callable[[list[Any]], object]] = {
    "hash64_many": hash64_many,
    "jump_hash_many": lambda keys: jump_hash_many(keys, 10),
    "node_for_many": HashRing(["a", "b"]).node_for_many,
    "ketama_node_for_many": HashRing(["a", "b"], hash="ketama").node_for_many,
    "nodes_for_many": lambda keys: HashRing(["a", "b", "c"]).nodes_for_many(keys, 2),
    "ketama_hash_keys": HashRing(["a"], hash="ketama").hash_keys,
    "rendezvous": Rendezvous(["a", "b"]).node_for_many,
}


@pytest.mark.parametrize("lookup", sorted(LOOKUPS))
def test_a_key_dropped_by_its_own_conversion_stays_alive(lookup: str) -> None:
    # The batch loops passed the list's borrowed pointer down; once __index__ dropped the
    # list's reference the key was freed, and the error message read its type from freed
    # memory (heap-use-after-free under ASan; a wrong type name or a crash otherwise).
    key = SelfDropping()
    SelfDropping.current = weakref.ref(key)
    SelfDropping.alive_after_clear.clear()
    SelfDropping.batch[:] = ["x", key, "y"]
    del key
    with pytest.raises(errors.WrongType, match="not SelfDropping"):
        LOOKUPS[lookup](SelfDropping.batch)
    assert SelfDropping.alive_after_clear == [True]
    assert SelfDropping.current() is None  # and it is released afterwards


def test_a_list_shrunk_by_a_key_is_refused() -> None:
    class Shrinking:
        def __init__(self, batch: list[Any]) -> None:
            self.batch = batch

        def __index__(self) -> int:
            del self.batch[1:]
            return 5

    batch: list[Any] = [0, 0, 0]
    batch[0] = Shrinking(batch)
    with pytest.raises(errors.BadArgument, match="changed size"):
        hash64_many(batch)


# --- arrays changed while the GIL is released --------------------------------------------


def test_ketama_lookups_survive_hashes_changed_by_another_thread() -> None:
    # Ketama lookups of pre-hashed keys check every value is < 2**32, then look them up
    # without the GIL. A value changed in between indexed the bucket table far out of
    # bounds (a segfault within a second or two of this loop).
    result = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import threading, time
        import numpy as np
        from coordcore.ring import HashRing
        from coordcore.errors import BadArgument
        ring = HashRing([f"n{i}" for i in range(20)], hash="ketama")
        arr = np.random.default_rng(1).integers(0, 2**32, size=1_000_000, dtype=np.uint64)
        stop = False
        def flip():
            while not stop:
                arr[-1] = 2**64 - 1
                arr[-1] = 5
        t = threading.Thread(target=flip)
        t.start()
        calls = 0
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            for call in (lambda: ring.node_for_many(arr), lambda: ring.nodes_for_many(arr, 2)):
                try:
                    idx = call()
                    assert 0 <= idx.min() and idx.max() < 20
                except BadArgument:
                    pass
                calls += 1
        stop = True
        t.join()
        print("OK", calls > 0)
    """)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.split() == ["OK", "True"], (result.returncode, result.stderr)


def test_ketama_prehashed_values_of_64_bits_are_refused() -> None:
    ring = HashRing(["a", "b"], hash="ketama")
    for bad in (np.array([2**32], dtype=np.uint64), np.array([1, 2**64 - 1], dtype=np.uint64)):
        with pytest.raises(errors.BadArgument, match="32-bit"):
            ring.node_for_many(bad)
        with pytest.raises(errors.BadArgument, match="32-bit"):
            ring.nodes_for_many(bad, 2)


# --- extreme arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("key", [0, 1, -1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1, np.uint64(2**64 - 1),
                                 np.int64(-(2**63))])
@pytest.mark.parametrize("buckets", [1, 2, 2**31 - 1])
def test_jump_hash_at_the_limits(key: Any, buckets: int) -> None:
    b = jump_hash(key, buckets)
    assert 0 <= b < buckets
    arr = np.array([int(key) % 2**64] * 9, dtype=np.uint64)  # one full lane group and a tail
    assert jump_hash_many(arr, buckets).tolist() == [b] * 9


@pytest.mark.parametrize("bad", [0, -1, 2**31, 2**63, 2**64, -(2**64), 10**30])
def test_out_of_range_counts_are_refused(bad: int) -> None:
    ring = HashRing(["a", "b", "c"])
    with pytest.raises(errors.BadArgument):
        jump_hash(1, bad)
    with pytest.raises(errors.BadArgument):
        jump_hash_many(np.arange(3, dtype=np.uint64), bad)
    with pytest.raises(errors.BadArgument):
        ring.nodes_for("k", bad)
    with pytest.raises(errors.BadArgument):
        ring.nodes_for_many(["k"], bad)
    with pytest.raises(errors.BadArgument):
        Rendezvous(["a", "b"]).nodes_for("k", bad)


@pytest.mark.parametrize("key", [2**64, -(2**63) - 1, 10**40])
def test_int_keys_outside_64_bits_are_refused(key: int) -> None:
    ring = HashRing(["a", "b"])
    with pytest.raises(errors.BadArgument):
        hash64(key)
    with pytest.raises(errors.BadArgument):
        ring.node_for_many([key])
    with pytest.raises(errors.BadArgument):
        jump_hash(key, 3)


def test_out_arrays_of_the_wrong_kind_are_refused() -> None:
    ring = HashRing(["a", "b", "c"])
    keys = np.arange(8, dtype=np.uint64)
    readonly = np.zeros(8, dtype=np.int32)
    readonly.flags.writeable = False
    wrong: list[Any] = [np.zeros(8, dtype=np.int64), np.zeros(7, dtype=np.int32), np.zeros(16, dtype=np.int32)[::2],
                        readonly, np.zeros(8, dtype=">i4"), [0] * 8, np.zeros((8, 1), dtype=np.int32)]
    for out in wrong:
        with pytest.raises((errors.BadArgument, errors.WrongType)):
            ring.node_for_many(keys, out=out)
        with pytest.raises((errors.BadArgument, errors.WrongType)):
            jump_hash_many(keys, 5, out=out)
    with pytest.raises((errors.BadArgument, errors.WrongType)):
        ring.nodes_for_many(keys, 2, out=np.zeros((8, 2), dtype=np.int32).T)
    with pytest.raises((errors.BadArgument, errors.WrongType)):
        hash64_many(keys, out=np.zeros(8, dtype=np.int64))


def test_empty_and_strange_inputs() -> None:
    ring = HashRing(["a", "b", "c"], hash="ketama")
    empty_u64 = np.zeros(0, dtype=np.uint64)
    assert ring.node_for_many([]).shape == (0,)
    assert ring.node_for_many(empty_u64).shape == (0,)
    assert ring.nodes_for_many(empty_u64, 3).shape == (0, 3)
    assert jump_hash_many(empty_u64, 3).shape == (0,)
    assert hash64_many([]).shape == (0,)
    assert ring.node_for(b"") in ring.nodes and ring.node_for("") in ring.nodes
    assert ring.node_for(bytearray(b"k")) == ring.node_for(b"k") == ring.node_for(memoryview(b"k"))
    strided = memoryview(b"abcdef")[::2]
    with pytest.raises(errors.BadArgument, match="contiguous"):
        ring.node_for(strided)
    with pytest.raises(errors.BadArgument, match="UTF-8"):
        ring.node_for("\ud800")
    with pytest.raises(errors.WrongType):
        ring.node_for(1.5)  # type: ignore[arg-type]
    with pytest.raises(errors.EmptyRing):
        HashRing([]).node_for_many(empty_u64)
    bare = RingSnapshot.__new__(RingSnapshot)  # never initialised: refuses, never reads NULL
    with pytest.raises(errors.EmptyRing):
        bare.node_for("k")
    with pytest.raises(errors.EmptyRing):
        bare.node_for_many(np.arange(3, dtype=np.uint64))


def test_bounded_loads_with_a_huge_epsilon_are_unbounded() -> None:
    # (1 + eps) * m * w / W overflowed the int64 cast: every node looked full.
    for eps in (1e18, 1e300, 1.7e308):
        bl = BoundedLoadRing(HashRing(["a", "b", "c"]), epsilon=eps)
        nodes = [bl.assign(f"k{i}") for i in range(50)]
        assert set(nodes) <= {"a", "b", "c"}
        assert bl.capacity >= 50
        assert bl.release("k7") == []


def test_bounded_loads_with_a_node_owning_no_point() -> None:
    # ketama can leave a tiny-weight node without points; its capacity must be 0, not NaN.
    ring = HashRing({"big": 10_000, "tiny": 1}, hash="ketama")
    assert 1 not in set(ring.snapshot().owners.tolist())
    bl = BoundedLoadRing(ring, epsilon=1e300)
    assert all(bl.assign(i) == "big" for i in range(20))
    assert bl.capacities()["tiny"] == 0
    assert bl.release(3) == []


# --- serialised rings -------------------------------------------------------------------------


def _reseal(body: bytes) -> bytes:
    return body + struct.pack("<Q", hash64(body))


@given(st.binary(max_size=200), st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2]),
       st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1))
def test_from_bytes_refuses_garbage_with_a_valid_checksum(tail: bytes, vnodes: int, mode: int,
                                                          replicas: int, nnodes: int) -> None:
    header = struct.pack("<6sHBBHIII", b"CCRING", 1, mode, 0, 0, vnodes % 16, replicas % 70, nnodes)
    for blob in (tail, _reseal(tail), _reseal(header + tail)):
        try:
            snap = RingSnapshot.from_bytes(blob)
        except errors.BadArgument:
            continue
        assert RingSnapshot.from_bytes(snap.to_bytes()).fingerprint == snap.fingerprint


SPECIAL_WEIGHTS = [float("nan"), float("inf"), -1.0, 0.0, 1e-300, 3.0, 2.0**33, 0.5]


@given(st.data())
def test_from_bytes_of_mutated_rings(data: st.DataObject) -> None:
    names = {"a": 1, "b": 2, "ccc": 1}
    ring = RingSnapshot(names, vnodes=8, hash=data.draw(st.sampled_from(["xxh64", "ketama"])))
    good = ring.to_bytes()
    body = bytearray(good[:-8])
    # Weights are replaced by chosen values, never by random bits: a random weight can
    # legitimately ask for tens of millions of points, which is slow, not wrong.
    weights, pos = [], 24
    for name in names:
        pos += 4 + len(name)
        weights.append(pos)
        pos += 8
    mutable = [i for i in range(len(body)) if not any(w <= i < w + 8 for w in weights)]
    for _ in range(data.draw(st.integers(1, 3))):
        if data.draw(st.booleans()):
            i = data.draw(st.sampled_from(mutable))
            body[i] = data.draw(st.integers(0, 255))
        else:
            struct.pack_into("<d", body, data.draw(st.sampled_from(weights)), data.draw(st.sampled_from(SPECIAL_WEIGHTS)))
    for blob in (bytes(body) + good[-8:], _reseal(bytes(body))):
        try:
            snap = RingSnapshot.from_bytes(blob)
        except errors.BadArgument:
            continue
        snap.node_for("k")  # whatever loaded is a working ring


def test_from_bytes_wrong_types() -> None:
    for bad in (None, "CCRING", 5, [1, 2]):
        with pytest.raises(errors.WrongType):
            RingSnapshot.from_bytes(bad)  # type: ignore[arg-type]


# --- error paths do not leak -------------------------------------------------------------------


def test_failing_calls_do_not_leak() -> None:
    ring = HashRing(["a", "b", "c"], hash="ketama")
    bad_u64 = np.array([2**40], dtype=np.uint64)
    calls: list[Callable[[], object]] = [
        lambda: ring.node_for_many(["ok", 1.5]),  # type: ignore[list-item]
        lambda: ring.node_for_many(bad_u64),
        lambda: ring.nodes_for_many(["k"] * 10, 5),
        lambda: ring.nodes_for("k", 99),
        lambda: hash64_many(["k", "\ud800"]),
        lambda: jump_hash_many([1, 2, object()], 5),  # type: ignore[list-item]
        lambda: RingSnapshot.from_bytes(b"CCRING" + b"\x00" * 40),
        lambda: ring.node_for(memoryview(b"abcd")[::2]),
    ]

    def loop(n: int) -> None:
        for _ in range(n):
            for call in calls:
                try:
                    call()
                except errors.CoordcoreError:
                    pass

    loop(200)  # warm caches
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        loop(3000)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
    assert grown < 64 * 1024, [str(s) for s in after.compare_to(before, "lineno")[:5]]
