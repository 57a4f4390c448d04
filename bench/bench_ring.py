"""pytest-benchmark micro-benchmarks of coordcore.ring (opt-in, not part of the test run):

    .venv/bin/python -m pytest bench/bench_ring.py --benchmark-only

The side-by-side comparison with peers is bench/compare_ring.py (./dev bench ring).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from coordcore.ring import HashRing, Rendezvous, hash64_many, jump_hash_many

NODES = [f"cache-{i:02d}" for i in range(10)]
KEYS = [f"user:{i}:profile" for i in range(100_000)]
HASHES = hash64_many(KEYS)


@pytest.fixture(scope="module")
def ring() -> HashRing:
    return HashRing(NODES)


def test_node_for(benchmark: Any, ring: HashRing) -> None:
    benchmark(ring.node_for, "user:12345:profile")


def test_nodes_for_3(benchmark: Any, ring: HashRing) -> None:
    benchmark(ring.nodes_for, "user:12345:profile", 3)


def test_node_for_many_str(benchmark: Any, ring: HashRing) -> None:
    out = np.empty(len(KEYS), dtype=np.int32)
    benchmark(ring.node_for_many, KEYS, out)


def test_node_for_many_prehashed(benchmark: Any, ring: HashRing) -> None:
    out = np.empty(len(HASHES), dtype=np.int32)
    benchmark(ring.node_for_many, HASHES, out)


@pytest.mark.parametrize("buckets", [10, 100])
def test_jump_hash_many(benchmark: Any, buckets: int) -> None:
    out = np.empty(len(HASHES), dtype=np.int32)
    benchmark(jump_hash_many, HASHES, buckets, out)


def test_rendezvous_many(benchmark: Any) -> None:
    r = Rendezvous(NODES)
    benchmark(r.node_for_many, HASHES)


def test_add_node_1000_node_ring(benchmark: Any) -> None:
    big = HashRing([f"n{i}" for i in range(1000)])
    benchmark(big.with_node, "extra")
