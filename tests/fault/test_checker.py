"""The checker on hand-made histories: each violation kind is reported, valid histories pass.

So the fault test can fail: a checker that reports nothing would pass every run.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fault.checker import CLOCK_SLACK, check, lease_floor
from tests.fault.history import FenceAttempt, Fault, Op, Recorder, load_ops, ops_from_records


class H:
    """A tiny history builder: sessions, grants with their release, keep-alives."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.n = 0

    def op(self, process: str, f: str, start: float, end: float | None, outcome: str = "ok", **kw: object) -> Op:
        self.n += 1
        op = Op(process=process, op=self.n, f=f, start=start, end=end, outcome=outcome, **kw)  # type: ignore[arg-type]
        self.ops.append(op)
        return op

    def session(self, process: str, sid: int, at: float, ttl: float = 10.0, keepalives: tuple[float, ...] = ()) -> int:
        self.op(process, "open", at, at + 0.001, session=sid, ttl=ttl)
        for t in keepalives:
            self.op(process, "keepalive", t, t + 0.001, session=sid)
        return sid

    def hold(self, process: str, sid: int, key: str, token: int, inv: float, ack: float, rel: float | None,
             rel_outcome: str = "ok", rel_error: str | None = None) -> None:
        self.op(process, "acquire", inv, ack, key=key, session=sid, token=token)
        if rel is not None:
            self.op(process, "release", rel, rel + 0.001, rel_outcome, key=key, session=sid, token=token,
                    error=rel_error)


def fence(*writes: tuple[str, str, int, bool]) -> list[FenceAttempt]:
    return [FenceAttempt(seq=i, t=float(i), key=k, token=tok, accepted=acc, process=p)
            for i, (p, k, tok, acc) in enumerate(writes, 1)]


def valid() -> H:
    h = H()
    h.session("a", 1, 0.0)
    h.session("b", 2, 0.0)
    h.hold("a", 1, "k", 5, 0.1, 0.2, 1.0)
    h.hold("b", 2, "k", 7, 0.5, 1.1, 2.0)
    h.hold("a", 1, "j", 8, 2.1, 2.2, 2.5)
    return h


def test_a_valid_history_passes() -> None:
    h = valid()
    report = check(h.ops, fence(("a", "k", 5, True), ("b", "k", 7, True), ("a", "j", 8, True)),
                   quiesced={}, final={})
    assert report.ok, report.text()
    assert report.grants["released"] == 3
    assert "acquire ok=3" in report.text()


def test_overlapping_live_holders_are_reported() -> None:
    h = H()
    h.session("a", 1, 0.0, keepalives=(1.5,))
    h.session("b", 2, 0.0)
    h.hold("a", 1, "k", 5, 0.1, 1.0, 3.0)
    h.hold("b", 2, "k", 7, 0.5, 2.0, 4.0)
    report = check(h.ops)
    assert report.kinds() == {"overlap"}, report.text()
    (v,) = report.violations
    assert {op["process"] for op in v.ops} == {"a", "b"}


def test_a_holder_past_its_lease_floor_is_not_live_and_fencing_refuses_it() -> None:
    h = H()
    h.session("a", 1, 0.0, ttl=1.0)  # last extension sent at 0.0: floor 1.0 - slack
    h.session("b", 2, 0.0, keepalives=(1.0, 2.0))
    h.hold("a", 1, "k", 5, 0.1, 0.2, 3.0, "fail", "NOSESSION")  # paused while holding
    h.hold("b", 2, "k", 7, 0.5, 1.5, 2.5)
    report = check(h.ops, fence(("a", "k", 5, True), ("b", "k", 7, True), ("a", "k", 5, False)))
    assert report.ok, report.text()
    assert report.writes["refused-stale"] == 1
    assert report.grants["ended-with-session"] == 1


def test_lease_floor_counts_restart_downtime() -> None:
    kill = Fault("kill", "server", start=0.49, end=1.6, stopped=0.5, restart=1.5)
    assert lease_floor(0.0, 1.0, []) == pytest.approx(1.0 - CLOCK_SLACK)
    assert lease_floor(0.0, 1.0, [kill]) == pytest.approx(2.0 - CLOCK_SLACK)
    # A kill after the lease could have ended refunds nothing; one before the send neither.
    late = Fault("kill", "server", start=1.1, end=1.6, stopped=1.2, restart=1.5)
    early = Fault("kill", "server", start=-2.0, end=-1.0, stopped=-1.9, restart=-1.5)
    assert lease_floor(0.0, 1.0, [late, early]) == pytest.approx(1.0 - CLOCK_SLACK)
    # A send during the downtime: refunded from the send on.
    assert lease_floor(1.0, 1.0, [kill]) == pytest.approx(2.5 - CLOCK_SLACK)
    # Chained: the first refund makes the second kill fall inside the lease.
    second = Fault("kill", "server", start=1.7, end=2.5, stopped=1.8, restart=2.3)
    assert lease_floor(0.0, 1.0, [second, kill]) == pytest.approx(2.5 - CLOCK_SLACK)


@pytest.mark.parametrize("ack_b, overlap", [(1.8, True), (2.1, False)])
def test_overlap_across_a_restart_uses_the_refund(ack_b: float, overlap: bool) -> None:
    h = H()
    h.session("a", 1, 0.0, ttl=1.0)
    h.session("b", 2, 0.0, ttl=10.0)
    h.hold("a", 1, "k", 5, 0.1, 0.2, 3.0, "fail", "NOSESSION")
    h.hold("b", 2, "k", 7, 0.5, ack_b, 4.0)
    faults = [Fault("kill", "server", start=0.49, end=1.6, stopped=0.5, restart=1.5)]
    assert (check(h.ops, faults=faults).kinds() == {"overlap"}) is overlap


def test_a_stale_write_accepted_is_reported() -> None:
    h = valid()
    report = check(h.ops, fence(("b", "k", 7, True), ("a", "k", 5, True)))
    assert report.kinds() == {"stale-write-accepted"}, report.text()


@pytest.mark.parametrize("writes", [
    (("a", "k", 5, False),),                      # nothing seen yet
    (("a", "k", 5, True), ("b", "k", 7, False)),  # newer than the newest
    (("b", "k", 7, True), ("b", "k", 7, False)),  # equal: the same holder writes again
])
def test_an_unjustified_refusal_is_reported(writes: tuple[tuple[str, str, int, bool], ...]) -> None:
    report = check(valid().ops, fence(*writes))
    assert report.kinds() == {"unjustified-refusal"}, report.text()


def test_a_write_with_a_token_never_granted_is_reported() -> None:
    report = check(valid().ops, fence(("b", "k", 5, True)))  # token 5 was a's
    assert report.kinds() == {"write-without-grant"}, report.text()


def test_tokens_out_of_real_time_order_are_reported() -> None:
    h = H()
    h.session("a", 1, 0.0)
    h.session("b", 2, 0.0)
    h.hold("a", 1, "k", 10, 0.1, 1.0, 1.5)
    h.hold("b", 2, "j", 9, 2.0, 2.1, 2.5)  # invoked after token 10 was acknowledged
    report = check(h.ops)
    assert report.kinds() == {"token-order"}, report.text()
    # Concurrent acquires may get tokens in either order.
    h2 = H()
    h2.session("a", 1, 0.0)
    h2.session("b", 2, 0.0)
    h2.hold("a", 1, "k", 10, 0.1, 1.0, 1.5)
    h2.hold("b", 2, "j", 9, 0.9, 2.1, 2.5)
    assert check(h2.ops).ok


def test_a_token_issued_twice_is_reported() -> None:
    h = H()
    h.session("a", 1, 0.0)
    h.session("b", 2, 0.0)
    h.hold("a", 1, "k", 7, 0.1, 0.2, 0.5)
    h.hold("b", 2, "j", 7, 0.1, 0.3, 0.6)
    assert "token-reused" in check(h.ops).kinds()


def test_a_grant_gone_while_its_session_lived_is_lost() -> None:
    h = H()
    h.session("a", 1, 0.0, ttl=10.0, keepalives=(1.9,))
    h.hold("a", 1, "k", 5, 0.1, 0.2, 2.0, "fail", "NOTHOLDER")
    report = check(h.ops)
    assert report.kinds() == {"lost-grant"}, report.text()
    # The same refusal after the lease floor is the session's end, not a loss.
    h2 = H()
    h2.session("a", 1, 0.0, ttl=1.0)
    h2.hold("a", 1, "k", 5, 0.1, 0.2, 2.0, "fail", "NOTHOLDER")
    assert check(h2.ops).ok


def test_a_grant_never_released_must_be_held_at_the_end() -> None:
    h = H()
    h.session("a", 1, 0.0)
    h.hold("a", 1, "k", 5, 0.1, 0.2, None)
    assert check(h.ops, quiesced={}).kinds() == {"lost-grant"}
    held = check(h.ops, quiesced={"k": {"holders": [[1, 5]], "waiters": []}})
    assert held.kinds() == {"orphan"}  # held, but its client is idle: nobody knows it
    assert held.grants["held-at-end"] == 1


def test_orphans_and_locks_held_after_the_run_are_reported() -> None:
    h = valid()
    report = check(h.ops, quiesced={"k": {"holders": [], "waiters": [[2, 14]]}},
                   final={"j": {"holders": [[99, 40]], "waiters": []}})
    assert report.kinds() == {"orphan", "held-after-run"}, report.text()
    assert "opened by b" in report.text() and "nobody we know" in report.text()


def test_histories_round_trip_and_unfinished_ops_are_unknown(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "c0.jsonl", "c0")
    op = rec.invoke("acquire", key="k", session=3)
    rec.complete(op, "ok", token=12)
    rec.invoke("release", key="k", session=3, token=12)  # killed before the outcome
    rec.close()
    with open(tmp_path / "c0.jsonl", "a") as f:
        f.write('{"type": "ok", "op": 9, "t"')  # a line torn by SIGKILL
    ops, _ = load_ops([tmp_path / "c0.jsonl"])
    assert [(o.f, o.outcome, o.token, o.end is None) for o in ops] == [("acquire", "ok", 12, False),
                                                                        ("release", "info", 12, True)]
    assert ops_from_records("x", []) == []
