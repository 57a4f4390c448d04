"""Jump consistent hash: golden values shared by every implementation, agreement with the
paper's loop, the batch form, its consistency property and bad input."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordcore.errors import BadArgument, WrongType
from coordcore.ring import hash64, jump_hash, jump_hash_many

from tests.models import ring_model as model

# Guava's HashingTest golden values, also used by the Go, C and Rust ports.
GOLDEN100 = [0, 55, 62, 8, 45, 59, 86, 97, 82, 59, 73, 37, 17, 56, 86, 21, 90, 37, 38, 83]
GOLDEN = [
    (10863919174838991, 11, 6),
    (2016238256797177309, 11, 3),
    (1673758223894951030, 11, 5),
    (2, 100001, 80343),
    (2201, 100001, 22152),
    (2202, 100001, 15018),
]
# dgryski/go-jump's table: key -> buckets for 1..19 buckets.
TABLE = {
    0: [0] * 19,
    1: [0, 0, 0, 0, 0, 0, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 17, 17],
    0xDEADBEEF: [0, 1, 2, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 16, 16, 16],
    0x0DDC0FFEEBADF00D: [0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 15, 15, 15, 15],
}


def test_golden_values() -> None:
    assert [jump_hash(i, 100) for i in range(20)] == GOLDEN100
    assert jump_hash_many(np.arange(20, dtype=np.uint64), 100).tolist() == GOLDEN100
    for key, buckets, expected in GOLDEN:
        assert jump_hash(key, buckets) == expected
        assert jump_hash_many(np.array([key] * 11, dtype=np.uint64), buckets).tolist() == [expected] * 11
    for key, row in TABLE.items():
        assert [jump_hash(key, n) for n in range(1, 20)] == row


@given(st.integers(0, 2**64 - 1), st.integers(1, 2**31 - 1))
def test_agrees_with_the_papers_loop(key: int, buckets: int) -> None:
    assert jump_hash(key, buckets) == model.jump(key, buckets)


@given(st.lists(st.integers(0, 2**64 - 1), max_size=40), st.integers(1, 5000))
def test_batch_equals_scalar(keys: list[int], buckets: int) -> None:
    # Lengths around the 8-lane blocks exercise both the lockstep loop and the tail.
    got = jump_hash_many(np.array(keys, dtype=np.uint64), buckets)
    assert got.dtype == np.int32
    assert got.tolist() == [model.jump(k, buckets) for k in keys]


def test_key_forms() -> None:
    assert jump_hash(-1, 1000) == jump_hash(2**64 - 1, 1000)
    assert jump_hash("user:1", 1000) == jump_hash(hash64("user:1"), 1000)
    assert jump_hash(b"user:1", 1000) == jump_hash("user:1", 1000)
    keys = ["a", b"b", 3, -4, np.uint64(5)]
    assert jump_hash_many(keys, 77).tolist() == [jump_hash(k, 77) for k in keys]
    signed = np.array([-1, -2, 3], dtype=np.int64)
    assert jump_hash_many(signed, 50).tolist() == [jump_hash(int(v), 50) for v in signed]
    small = np.array([-1, 7], dtype=np.int8)  # sign-extended like the int it holds
    assert jump_hash_many(small, 50).tolist() == [jump_hash(-1, 50), jump_hash(7, 50)]
    out = np.empty(3, dtype=np.int32)
    assert jump_hash_many(signed, 50, out=out) is out
    assert jump_hash_many([], 5).shape == (0,)


def test_growing_moves_keys_only_to_the_new_bucket() -> None:
    keys = np.random.default_rng(11).integers(0, 2**64, size=300_000, dtype=np.uint64)
    prev = jump_hash_many(keys, 1)
    for n in range(2, 40):
        cur = jump_hash_many(keys, n)
        moved = cur != prev
        assert (cur[moved] == n - 1).all()
        assert moved.mean() == pytest.approx(1 / n, rel=0.05)
        prev = cur
    counts = np.bincount(prev, minlength=39) / keys.size
    assert counts.max() - counts.min() < 0.004  # jump hash balances almost perfectly


def test_sequential_int_keys_spread_evenly() -> None:
    counts = np.bincount(jump_hash_many(np.arange(200_000, dtype=np.uint64), 10), minlength=10)
    assert counts.min() > 19_000 and counts.max() < 21_000


@pytest.mark.parametrize("buckets", [0, -1, 2**31])
def test_bad_buckets(buckets: int) -> None:
    with pytest.raises(BadArgument, match="buckets"):
        jump_hash(1, buckets)
    with pytest.raises(BadArgument, match="buckets"):
        jump_hash_many(np.arange(3, dtype=np.uint64), buckets)


def test_bad_types() -> None:
    for bad in (1.5, "3", True, None):
        with pytest.raises(WrongType):
            jump_hash(1, bad)  # type: ignore[arg-type]
    for key in (1.5, None, True):
        with pytest.raises(WrongType):
            jump_hash(key, 3)  # type: ignore[arg-type]
    with pytest.raises(BadArgument, match="outside"):
        jump_hash(2**64, 3)
    with pytest.raises(WrongType):
        jump_hash_many(np.array([1.5]), 3)
    with pytest.raises(WrongType, match="dtype"):
        jump_hash_many(np.arange(3), 3, out=np.empty(3, dtype=np.int64))  # type: ignore[arg-type]
