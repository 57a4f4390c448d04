"""Rendezvous (HRW) hashing: agreement with the model, weights, minimal movement, errors."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordcore.errors import BadArgument, EmptyRing, NotFound, WrongType
from coordcore.ring import Rendezvous, hash64_many, rendezvous

from tests.models import ring_model as model

NODES = st.dictionaries(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8),
    st.one_of(st.just(1.0), st.floats(0.05, 10.0)),
    min_size=1,
    max_size=8,
)
KEYS = st.lists(st.one_of(st.text(max_size=20), st.binary(max_size=20), st.integers(-(2**63), 2**64 - 1)), max_size=30)


@given(NODES, KEYS)
def test_agrees_with_model(nodes: dict[str, float], keys: list) -> None:
    r = Rendezvous(nodes)
    for key in keys:
        ranking = model.rendezvous_ranking(key, nodes)
        assert r.node_for(key) == ranking[0]
        assert list(r.nodes_for(key, len(nodes))) == ranking
    idx = r.node_for_many(keys)
    assert [r.nodes[i] for i in idx] == [model.rendezvous_ranking(k, nodes)[0] for k in keys]
    assert r.node_for_many(hash64_many(keys)).tolist() == idx.tolist()


@given(st.lists(st.text(max_size=6), min_size=1, max_size=6, unique=True), KEYS)
def test_unweighted_list_form(names: list[str], keys: list) -> None:
    r = Rendezvous(names)
    for key in keys:
        assert r.node_for(key) == rendezvous(key, names) == model.rendezvous_ranking(key, dict.fromkeys(names, 1.0))[0]


def test_removal_moves_only_the_removed_nodes_keys() -> None:
    r = Rendezvous({f"n{i}": 1 + i % 3 for i in range(9)})
    keys = np.random.default_rng(5).integers(0, 2**64, size=200_000, dtype=np.uint64)
    before = np.array(r.nodes)[r.node_for_many(keys)]
    smaller = r.without_node("n4")
    after = np.array(smaller.nodes)[smaller.node_for_many(keys)]
    moved = before != after
    assert (before[moved] == "n4").all() and not (after == "n4").any()
    bigger = r.with_node("n9", 2)
    grown = np.array(bigger.nodes)[bigger.node_for_many(keys)]
    assert (grown[before != grown] == "n9").all()
    assert r.nodes == tuple(f"n{i}" for i in range(9))  # copies, the original is untouched


def test_weights_set_the_shares() -> None:
    r = Rendezvous({"a": 1, "b": 2, "c": 5})
    keys = np.random.default_rng(9).integers(0, 2**64, size=400_000, dtype=np.uint64)
    share = np.bincount(r.node_for_many(keys), minlength=3) / keys.size
    assert share.tolist() == pytest.approx([1 / 8, 2 / 8, 5 / 8], abs=0.005)
    even = Rendezvous(["a", "b", "c", "d"])
    share = np.bincount(even.node_for_many(keys), minlength=4) / keys.size
    assert share.tolist() == pytest.approx([0.25] * 4, abs=0.005)


def test_misc() -> None:
    r = Rendezvous({"a": 1, "b": 3})
    assert len(r) == 2 and "a" in r and "z" not in r and r.weights == (1.0, 3.0)
    assert "2 nodes" in repr(r)
    back = pickle.loads(pickle.dumps(r))
    assert back.nodes == r.nodes and back.node_for("k") == r.node_for("k")
    out = np.empty(2, dtype=np.int32)
    assert r.node_for_many(["x", "y"], out=out) is out


def test_bad_input() -> None:
    with pytest.raises(EmptyRing):
        Rendezvous([]).node_for("k")
    with pytest.raises(EmptyRing):
        Rendezvous([]).node_for_many(["k"])
    r = Rendezvous(["a", "b"])
    with pytest.raises(BadArgument, match=r"\[1, 2\]"):
        r.nodes_for("k", 3)
    with pytest.raises(BadArgument):
        r.nodes_for("k", 0)
    with pytest.raises(BadArgument, match="positive"):
        Rendezvous({"a": -1})
    with pytest.raises(BadArgument, match="already"):
        r.with_node("a")
    with pytest.raises(NotFound):
        r.without_node("zz")
    with pytest.raises(WrongType):
        r.node_for(2.5)  # type: ignore[arg-type]
    with pytest.raises(WrongType, match="ambiguous"):
        r.node_for_many(np.arange(3))
    with pytest.raises(WrongType, match="single str"):
        Rendezvous("ab")
