"""Bounded loads: the cap is never exceeded, placement follows the model exactly, a
release moves only the keys the lower cap forces, and bad input is refused."""
from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coordcore.errors import BadArgument, EmptyRing, NotFound, WrongType
from coordcore.ring import BoundedLoadRing, HashRing, Move, RingSnapshot

from tests.models import ring_model as model


class BoundedMachine(RuleBasedStateMachine):
    """Random assigns and releases against the model, checking the cap after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.real: BoundedLoadRing | None = None
        self.ref: model.ModelBounded | None = None

    @precondition(lambda self: self.real is None)
    @rule(
        nodes=st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from([1.0, 1.0, 2.0, 0.5]), min_size=1, max_size=6),
        eps=st.sampled_from([0.0, 0.1, 0.25, 1.0]),
        vnodes=st.sampled_from([1, 8, 40]),
    )
    def build(self, nodes: dict[str, float], eps: float, vnodes: int) -> None:
        self.real = BoundedLoadRing(HashRing(nodes, vnodes=vnodes), epsilon=eps)
        self.ref = model.ModelBounded(model.ModelRing(nodes, vnodes=vnodes), eps)

    @precondition(lambda self: self.real is not None)
    @rule(key=st.integers(0, 60))
    def assign(self, key: int) -> None:
        assert self.real is not None and self.ref is not None
        assert self.real.assign(f"k{key}") == self.ref.assign(f"k{key}")

    @precondition(lambda self: self.real is not None and len(self.real) > 0)
    @rule(pick=st.integers(0, 10**6))
    def release(self, pick: int) -> None:
        assert self.real is not None and self.ref is not None
        key = sorted(self.ref.where)[pick % len(self.ref.where)]
        moves = self.real.release(key)
        assert [(m.key, m.source, m.target) for m in moves] == self.ref.release(key)

    @invariant()
    def within_cap(self) -> None:
        if self.real is None or self.ref is None:
            return
        loads = self.real.loads
        caps = self.real.capacities()
        assert all(loads[n] <= caps[n] for n in loads), (loads, caps)
        assert loads == {n: len(v) for n, v in self.ref.on.items()}
        assert sum(loads.values()) == len(self.real)


TestBoundedMachine = BoundedMachine.TestCase
TestBoundedMachine.settings = settings(max_examples=40, stateful_step_count=60, deadline=None)


def test_cap_formula_and_no_overload_at_scale() -> None:
    ring = HashRing([f"n{i}" for i in range(10)], vnodes=16)  # few vnodes: a lumpy ring
    bl = BoundedLoadRing(ring, epsilon=0.1)
    for i in range(5000):
        bl.assign(f"k{i}")
        if i % 97 == 0:
            assert max(bl.loads.values()) <= math.ceil(1.1 * (i + 1) / 10)
    assert bl.capacity == math.ceil((1 + 0.1) * 5000 / 10) == 550
    assert max(bl.loads.values()) <= 550
    total_moves = 0
    for i in range(0, 5000, 2):
        total_moves += len(bl.release(f"k{i}"))
        assert max(bl.loads.values()) <= math.ceil(1.1 * len(bl) / 10)
    # Moves happen only when the cap drops onto a full node: far fewer than releases.
    assert total_moves < 2500


def test_keys_stay_on_their_ring_node_when_there_is_room() -> None:
    ring = HashRing([f"n{i}" for i in range(5)])
    bl = BoundedLoadRing(ring, epsilon=10.0)  # a cap nobody reaches
    for i in range(1000):
        assert bl.assign(f"k{i}") == ring.node_for(f"k{i}")


def test_assign_is_idempotent_and_lookups() -> None:
    bl = BoundedLoadRing(RingSnapshot(["a", "b"]), epsilon=0.5)
    n = bl.assign("x")
    assert bl.assign("x") == n and len(bl) == 1 and "x" in bl and bl.node_of("x") == n
    assert [] == bl.release("x")
    assert "x" not in bl and [1] not in bl
    assert "BoundedLoadRing(2 nodes, 0 keys" in repr(bl)
    assert bl.ring.nodes == ("a", "b") and bl.epsilon == 0.5


def test_release_returns_moves() -> None:
    ring = HashRing(["a", "b"], vnodes=1)
    bl = BoundedLoadRing(ring, epsilon=0.0)
    for i in range(40):
        bl.assign(i)
    seen: list[Move] = []
    for i in range(0, 40, 3):
        moves = bl.release(i)
        assert all(v <= math.ceil(len(bl) / 2) for v in bl.loads.values())
        for m in moves:
            assert bl.node_of(m.key) == m.target != m.source
        seen += moves
    assert seen  # eps=0 on two nodes: lowering the cap must have forced some moves


def test_weighted_caps() -> None:
    bl = BoundedLoadRing(HashRing({"a": 1, "b": 3}, vnodes=4), epsilon=0.0)
    for i in range(400):
        bl.assign(f"k{i}")
    assert bl.capacities() == {"a": 100, "b": 300}
    assert bl.loads == {"a": 100, "b": 300}  # eps=0: exactly the weighted average


def test_nodes_without_points_take_nothing() -> None:
    snap = RingSnapshot({"a": 1, "b": 1000}, hash="ketama")  # a owns no point
    bl = BoundedLoadRing(snap, epsilon=0.0)
    for i in range(100):
        assert bl.assign(i) == "b"
    assert bl.capacities()["a"] == 0


def test_threads() -> None:
    bl = BoundedLoadRing(HashRing([f"n{i}" for i in range(4)]), epsilon=0.2)

    def work(base: int) -> None:
        for i in range(500):
            bl.assign(base + i)
        for i in range(0, 500, 2):
            bl.release(base + i)

    threads = [threading.Thread(target=work, args=(b * 10_000,)) for b in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(bl) == 1000
    assert max(bl.loads.values()) <= math.ceil(1.2 * 1000 / 4)


def test_bad_input() -> None:
    with pytest.raises(EmptyRing):
        BoundedLoadRing(HashRing())
    with pytest.raises(WrongType):
        BoundedLoadRing(["a", "b"])  # type: ignore[arg-type]
    for eps in (-0.1, float("nan"), float("inf")):
        with pytest.raises(BadArgument):
            BoundedLoadRing(HashRing(["a"]), epsilon=eps)
    with pytest.raises(WrongType):
        BoundedLoadRing(HashRing(["a"]), epsilon="0.1")  # type: ignore[arg-type]
    bl = BoundedLoadRing(HashRing(["a"]))
    with pytest.raises(NotFound):
        bl.release("nope")
    with pytest.raises(NotFound):
        bl.node_of("nope")
    with pytest.raises(WrongType):
        bl.assign(bytearray(b"x"))  # unhashable
    with pytest.raises(WrongType):
        bl.assign(1.5)  # type: ignore[arg-type]
    bl.assign(1)
    with pytest.raises(WrongType):
        bl.assign(True)  # would alias the key 1
    assert True not in bl and 1 in bl
    with pytest.raises(WrongType):
        bl.release(True)
    assert len(bl) == 1


@given(st.integers(1, 6), st.floats(0.0, 2.0), st.integers(1, 300))
@settings(max_examples=30)
def test_never_over_cap(n: int, eps: float, m: int) -> None:
    bl = BoundedLoadRing(HashRing([f"n{i}" for i in range(n)], vnodes=4), epsilon=eps)
    for i in range(m):
        bl.assign(i)
    caps = bl.capacities()
    assert all(v <= caps[k] for k, v in bl.loads.items())
