"""Shared fixtures: a seeded RNG, hypothesis profiles, and async tests on asyncio and uvloop.

Async tests take the ``run`` fixture: ``run(coro, timeout=...)`` runs the coroutine on a
fresh loop of the parametrised kind (asyncio and uvloop both) and fails the test if the
loop swallowed an exception (an unhandled error in a callback or a forgotten task).
"""
from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop
from hypothesis import HealthCheck, settings

from tests.wheel_recipe import RECIPE

settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

T = TypeVar("T")


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A random.Random seeded per test; the seed is printed so a failure can be replayed
    with COORDCORE_TEST_SEED=<seed>."""
    seed = int(os.environ.get("COORDCORE_TEST_SEED", random.randrange(2**32)))
    print(f"\n[{request.node.name}] COORDCORE_TEST_SEED={seed}")
    return random.Random(seed)


LOOPS = {"asyncio": asyncio.DefaultEventLoopPolicy, "uvloop": uvloop.EventLoopPolicy}


@pytest.fixture(params=sorted(LOOPS))
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(loop_kind: str) -> Callable[..., Any]:
    """Run a coroutine to completion on a new loop of kind ``loop_kind``, with a timeout,
    failing on any exception the loop's exception handler saw."""

    def runner(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        loop = LOOPS[loop_kind]().new_event_loop()
        swallowed: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: swallowed.append(ctx))
        try:
            result = loop.run_until_complete(asyncio.wait_for(coro, timeout))
            # Let callbacks scheduled by the last step run, so their errors are seen too.
            loop.run_until_complete(asyncio.sleep(0))
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        if swallowed:
            details = "; ".join(str(ctx.get("exception") or ctx.get("message")) for ctx in swallowed)
            pytest.fail(f"the event loop swallowed {len(swallowed)} error(s): {details}")
        return result

    return runner


def pytest_collection_finish(session: pytest.Session) -> None:
    # The wheel recipe compiles for minutes: start it now so it overlaps the suite.
    if any(item.nodeid.startswith("tests/test_wheel.py::") for item in session.items):
        RECIPE.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    RECIPE.stop()
