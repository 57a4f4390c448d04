"""hash64 (native xxHash64) and the native MD5 behind ketama, against the reference
libraries (the xxhash package, hashlib) on many inputs, and the documented key encoding."""
from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from coordcore.errors import BadArgument, WrongType
from coordcore.ring import hash64, hash64_many, ketama_hash
from coordcore._native import ring as native

from tests.models import ring_model as model


def test_published_vectors() -> None:
    # XXH64 of the empty input and of "abc", seed 0, as published with the reference code.
    assert hash64(b"") == 0xEF46DB3751D8E999
    assert hash64("abc") == 0x44BC2CF5AD770999


def test_every_length_and_alignment_matches_xxhash(rng: random.Random) -> None:
    # Lengths 0..300 cover the <4, 4..7, 8..31 tails and the 32-byte stripe loop with each
    # tail; slicing at offsets 0..7 covers unaligned reads.
    blob = rng.randbytes(400)
    for length in range(301):
        for offset in (0, 1, 3, 7):
            data = blob[offset:offset + length]
            seed = rng.randrange(2**64)
            assert hash64(data) == xxhash.xxh64_intdigest(data), length
            assert hash64(data, seed) == xxhash.xxh64_intdigest(data, seed), (length, seed)


@given(st.binary(max_size=200), st.integers(0, 2**64 - 1))
def test_bytes_match_xxhash(data: bytes, seed: int) -> None:
    assert hash64(data, seed) == xxhash.xxh64_intdigest(data, seed)
    assert hash64(bytearray(data), seed) == hash64(memoryview(data), seed) == hash64(data, seed)


@given(st.text(max_size=100))
def test_str_is_hashed_as_utf8(text: str) -> None:
    assert hash64(text) == xxhash.xxh64_intdigest(text.encode("utf-8"))


def test_non_ascii_str_and_str_subclass() -> None:
    class S(str):
        pass

    for text in ("é", "naïve café", "中文键", "emoji \U0001F600", "a" * 1000 + "é"):
        assert hash64(text) == xxhash.xxh64_intdigest(text.encode("utf-8"))
        assert hash64(S(text)) == hash64(text)


@given(st.integers(-(2**63), 2**64 - 1))
def test_int_keys_are_eight_little_endian_bytes(n: int) -> None:
    assert hash64(n) == xxhash.xxh64_intdigest((n % 2**64).to_bytes(8, "little"))
    assert hash64(n) == model.hash64(n)


def test_int_encoding_edges() -> None:
    assert hash64(-1) == hash64(2**64 - 1)  # modulo 2**64, like an int64 array viewed as uint64
    assert hash64(-(2**63)) == hash64(2**63)
    assert hash64(np.int64(-5)) == hash64(-5) == hash64(np.uint64(2**64 - 5))
    for bad in (2**64, -(2**63) - 1, 10**30, -(10**30)):
        with pytest.raises(BadArgument, match="outside"):
            hash64(bad)


@pytest.mark.parametrize("bad", [1.5, None, [1], (1,), {"a": 1}, object(), True, np.True_, np.float64(1.0)])
def test_unhashable_keys_raise_wrongtype(bad: object) -> None:
    with pytest.raises(WrongType):
        hash64(bad)  # type: ignore[arg-type]
    with pytest.raises(WrongType):
        hash64_many(["ok", bad])  # type: ignore[list-item]
    with pytest.raises(WrongType):
        ketama_hash(bad)  # type: ignore[arg-type]


def test_lone_surrogate_is_a_clear_error() -> None:
    with pytest.raises(BadArgument, match="UTF-8"):
        hash64("bad \ud800")


def test_non_contiguous_memoryview_is_a_clear_error() -> None:
    view = memoryview(b"abcdef")[::2]
    with pytest.raises(BadArgument, match="contiguous"):
        hash64(view)


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_bad_seed(seed: int) -> None:
    with pytest.raises(BadArgument):
        hash64("k", seed)


def test_hash64_many_matches_scalar(rng: random.Random) -> None:
    keys: list[object] = [rng.randbytes(rng.randrange(40)) for _ in range(300)]
    keys += [f"key-{i}-é" for i in range(100)] + [rng.randrange(-(2**63), 2**64) for _ in range(100)]
    rng.shuffle(keys)
    expected = [hash64(k) for k in keys]  # type: ignore[arg-type]
    assert hash64_many(keys).tolist() == expected  # type: ignore[arg-type]
    assert hash64_many(tuple(keys)).tolist() == expected  # type: ignore[arg-type]
    assert hash64_many(iter(keys)).tolist() == expected  # type: ignore[arg-type]
    out = np.empty(len(keys), dtype=np.uint64)
    assert hash64_many(keys, out=out) is out  # type: ignore[arg-type]
    assert out.tolist() == expected
    assert hash64_many(keys, seed=7).tolist() == [hash64(k, 7) for k in keys]  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64])
def test_hash64_many_integer_arrays_are_int_keys(dtype: type) -> None:
    info = np.iinfo(dtype)
    arr = np.array([0, 1, info.max, info.min, info.max // 3], dtype=dtype)
    assert hash64_many(arr).tolist() == [hash64(int(v)) for v in arr]
    strided = np.repeat(arr, 2)[::2]  # not contiguous
    assert hash64_many(strided).tolist() == [hash64(int(v)) for v in arr]


def test_hash64_many_numpy_str_arrays_and_empty() -> None:
    arr = np.array(["a", "bé", "c"])
    assert hash64_many(arr).tolist() == [hash64(s) for s in ("a", "bé", "c")]
    assert hash64_many([]).shape == (0,)
    assert hash64_many(np.array([], dtype=np.uint64)).dtype == np.uint64


def test_hash64_many_rejects_bad_batches() -> None:
    with pytest.raises(WrongType, match="single str"):
        hash64_many("abc")
    with pytest.raises(WrongType):
        hash64_many(5)  # type: ignore[arg-type]
    with pytest.raises(BadArgument, match="one-dimensional"):
        hash64_many(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(WrongType, match="dtype"):
        hash64_many(["a"], out=np.empty(1, dtype=np.int64))  # type: ignore[arg-type]
    with pytest.raises(BadArgument, match="shape"):
        hash64_many(["a"], out=np.empty(2, dtype=np.uint64))
    with pytest.raises(BadArgument, match="C-contiguous"):
        hash64_many(["a", "b"], out=np.empty(4, dtype=np.uint64)[::2])


def test_list_mutated_during_batch_is_detected() -> None:
    keys: list[object] = ["a", "b", "c", "d"]

    class Shrinks:
        def __index__(self) -> int:
            del keys[2:]
            return 1

    keys[1] = Shrinks()
    with pytest.raises(BadArgument, match="changed size"):
        hash64_many(keys)  # type: ignore[arg-type]


def test_md5_matches_hashlib(rng: random.Random) -> None:
    # 0..200 bytes crosses the one-block/two-block padding boundary (55/56) and 64-byte blocks.
    for length in range(201):
        data = rng.randbytes(length)
        digest = hashlib.md5(data).digest()
        words = tuple(int.from_bytes(digest[4 * i:4 * i + 4], "little") for i in range(4))
        assert native.md5_words(data) == words, length


@given(st.one_of(st.text(max_size=80), st.binary(max_size=80), st.integers(-(10**30), 10**30)))
def test_ketama_hash_matches_md5(key: str | bytes | int) -> None:
    assert ketama_hash(key) == model.ketama_hash(key)
