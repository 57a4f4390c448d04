"""RFC 6962 hashing, roots, and proofs: vectors, the RFC's recursive definitions as an
oracle, and every proof verifying while every tampered one fails."""
from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from coordcore.audit.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# The eight entries of certificate-transparency's reference tree tests, and the roots
# of their first n (as published there).
ENTRIES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
           bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def tree_of(n: int) -> MerkleTree:
    t = MerkleTree()
    for i in range(n):
        t.append(leaf_hash(i.to_bytes(4, "big")))
    return t


def test_hashing_is_rfc_6962() -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest() == MerkleTree().root()
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()


def test_reference_roots() -> None:
    t = MerkleTree()
    for e in ENTRIES:
        t.append(leaf_hash(e))
    assert [t.root(n).hex() for n in range(1, 9)] == ROOTS


def test_hand_computed_proofs_of_a_tree_of_five() -> None:
    t = MerkleTree()
    h = [leaf_hash(e) for e in ENTRIES[:5]]
    for x in h:
        t.append(x)
    ab, cd = node_hash(h[0], h[1]), node_hash(h[2], h[3])
    assert t.root() == node_hash(node_hash(ab, cd), h[4])
    assert t.inclusion_proof(2) == [h[3], ab, h[4]]
    assert t.inclusion_proof(4) == [node_hash(ab, cd)]
    # PROOF(3, D[5]) = SUBPROOF(3, D[0:4], true) : h4 = [h2, h3, ab] : h4
    assert t.consistency_proof(3) == [h[2], h[3], ab, h[4]]
    assert t.consistency_proof(4) == [h[4]]


@given(st.integers(1, 70), st.data())
def test_tree_matches_the_recursive_definition(n: int, data: st.DataObject) -> None:
    t = tree_of(n)
    leaves = [t.leaf(i) for i in range(n)]
    size = data.draw(st.integers(0, n))
    assert t.root(size) == root_of(leaves[:size])


@given(st.integers(1, 70), st.data())
def test_every_inclusion_proof_verifies_and_tampered_ones_fail(n: int, data: st.DataObject) -> None:
    t = tree_of(n)
    size = data.draw(st.integers(1, n))
    i = data.draw(st.integers(0, size - 1))
    proof, root, leaf = t.inclusion_proof(i, size), t.root(size), t.leaf(i)
    assert verify_inclusion(leaf, i, size, proof, root)
    assert not verify_inclusion(leaf_hash(b"forged"), i, size, proof, root)
    assert not verify_inclusion(leaf, i, size, proof, leaf_hash(b"other root"))
    assert not verify_inclusion(leaf, i, size, [*proof, leaf], root)
    assert not verify_inclusion(leaf, size, size, proof, root)
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
        assert not verify_inclusion(leaf, i, size, bad, root)
        assert not verify_inclusion(leaf, i, size, proof[:-1], root)
    if size > 1:
        other = (i + 1) % size
        if t.leaf(other) != leaf:
            assert not verify_inclusion(leaf, other, size, proof, root)


@given(st.integers(1, 70), st.data())
def test_every_consistency_proof_verifies_and_tampered_ones_fail(n: int, data: st.DataObject) -> None:
    t = tree_of(n)
    new = data.draw(st.integers(1, n))
    old = data.draw(st.integers(1, new))
    proof = t.consistency_proof(old, new)
    assert verify_consistency(old, new, t.root(old), t.root(new), proof)
    assert not verify_consistency(old, new, leaf_hash(b"x"), t.root(new), proof)
    assert not verify_consistency(old, new, t.root(old), leaf_hash(b"x"), proof)
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[j] = bytes([bad[j][0] ^ 0x80]) + bad[j][1:]
        assert not verify_consistency(old, new, t.root(old), t.root(new), bad)
        assert not verify_consistency(old, new, t.root(old), t.root(new), proof[:-1])
    assert not verify_consistency(old, new, t.root(old), t.root(new), [*proof, t.root(old)])
    # A tree that differs inside the old prefix is not an extension of it.
    forged = MerkleTree()
    for i in range(new):
        forged.append(leaf_hash(b"forged") if i == old - 1 else t.leaf(i))
    assert not verify_consistency(old, new, t.root(old), forged.root(new), forged.consistency_proof(old, new))


def test_truncate_forgets_the_tail() -> None:
    t = tree_of(13)
    root7 = t.root(7)
    t.truncate(7)
    assert t.size == 7 and t.root() == root7
    t.append(leaf_hash(b"new"))
    assert t.root() == root_of([*(t.leaf(i) for i in range(7)), leaf_hash(b"new")])


@given(st.integers(0, 300))
def test_the_compact_tree_has_the_full_tree_root(n: int) -> None:
    from coordcore.audit.merkle import CompactTree

    full, compact = MerkleTree(), CompactTree()
    for i in range(n):
        leaf = leaf_hash(i.to_bytes(4, "big"))
        full.append(leaf)
        compact.append(leaf)
        assert compact.root() == full.root()
    assert compact.size == full.size == n and len(compact._edge) == bin(n).count("1")
