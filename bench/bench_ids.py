"""pytest-benchmark micro-benchmarks for coordcore.ids (opt-in, not part of ./dev test):

    .venv/bin/python -m pytest bench/bench_ids.py --benchmark-only
"""
import numpy as np
import pytest

from coordcore.ids import Snowflake


@pytest.fixture(scope="module")
def logical() -> Snowflake:
    return Snowflake(1, clock="logical")


def test_next_id_logical(benchmark, logical: Snowflake) -> None:  # type: ignore[no-untyped-def]
    benchmark(logical.next_id)


def test_next_id_wait(benchmark) -> None:  # type: ignore[no-untyped-def]
    benchmark(Snowflake(2, clock="wait").next_id)


def test_next_ids_4096_out(benchmark, logical: Snowflake) -> None:  # type: ignore[no-untyped-def]
    out = np.empty(4096, dtype=np.int64)
    benchmark(logical.next_ids, out=out)


def test_next_run(benchmark, logical: Snowflake) -> None:  # type: ignore[no-untyped-def]
    benchmark(logical.next_run, 4096)
