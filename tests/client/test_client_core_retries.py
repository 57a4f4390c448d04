"""The sans-I/O client core's retry loop (``ClientCore.execute``), stepped by hand: what
it raises when it gives up must say whether the command may have been applied."""
from __future__ import annotations

from typing import Any

import pytest

from coordcore.client._core import FAILOVER_WINDOW, ClientCore, Endpoints, Pause, Send
from coordcore.client._wire import parse_endpoint
from coordcore.errors import ConnectionLost, Moved


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _core(clock: Clock) -> ClientCore:
    endpoints = Endpoints([parse_endpoint("127.0.0.1:1"), parse_endpoint("127.0.0.1:2")])
    def no_sessions(*_: object) -> Any:
        raise AssertionError("execute opens no session")

    return ClientCore(retries=3, retry_delay=0.01, default_ttl=10.0, new_session=no_sessions, clock=clock,
                      endpoints=endpoints)


def _give_up(clock: Clock, first: Exception, then: Exception) -> BaseException:
    """Run ``execute`` until it raises: ``first`` for the first attempt, ``then`` for
    every later one, the clock moving a second per attempt."""
    proc: Any = _core(clock).execute(["LOCK.RELEASE", "k", "1.ab", "REQID", 7])
    op = next(proc)
    error: Exception = first
    for _ in range(1000):
        while isinstance(op, Pause):
            op = proc.send(None)
        assert isinstance(op, Send)
        clock.now += 1.0
        try:
            op = proc.throw(error)
        except BaseException as exc:  # noqa: BLE001 - what it gives up with is the point
            return exc
        error = then
    raise AssertionError("never gave up")


def test_redirects_after_a_lost_reply_end_in_an_unknown_outcome() -> None:
    clock = Clock()
    exc = _give_up(clock, ConnectionLost("the connection broke"), Moved("127.0.0.1:2"))
    assert isinstance(exc, ConnectionLost), exc  # not Moved: the first attempt may have been applied
    assert "unknown" in str(exc) and isinstance(exc.__cause__, Moved)
    assert clock.now - 100.0 > FAILOVER_WINDOW  # it did follow the redirects through the window


def test_redirects_alone_end_in_the_redirect() -> None:
    exc = _give_up(Clock(), Moved("127.0.0.1:2"), Moved("127.0.0.1:1"))
    assert isinstance(exc, Moved), exc  # nobody applied anything: a definite answer


@pytest.mark.parametrize("first", [ConnectionLost("broke"), Moved("127.0.0.1:2")])
def test_a_lost_connection_at_the_end_stays_a_lost_connection(first: Exception) -> None:
    exc = _give_up(Clock(), first, ConnectionLost("broke again"))
    assert isinstance(exc, ConnectionLost) and "broke again" in str(exc)
