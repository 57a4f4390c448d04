"""RFC 6962 Merkle tree hashing: an append-only tree, inclusion and consistency proofs.

Exactly RFC 6962 section 2.1 (kept as RFC 9162 section 2.1): a leaf hashes as
``SHA-256(0x00 || data)``, an interior node as ``SHA-256(0x01 || left || right)``, the
empty tree as ``SHA-256("")``, and a tree of ``n`` leaves splits at ``k``, the largest
power of two smaller than ``n``. Proofs are lists of 32-byte hashes, verified with RFC
9162's algorithms (sections 2.1.3.2 and 2.1.4.2), which check every input: a proof one
hash too long or too short fails. Nothing here trusts a proof's own claims about sizes.

>>> t = MerkleTree()
>>> for d in (b"a", b"b", b"c"):
...     _ = t.append(leaf_hash(d))
>>> t.root() == node_hash(node_hash(leaf_hash(b"a"), leaf_hash(b"b")), leaf_hash(b"c"))
True
>>> verify_inclusion(leaf_hash(b"c"), 2, 3, t.inclusion_proof(2, 3), t.root())
True
>>> verify_consistency(2, 3, t.root(2), t.root(3), t.consistency_proof(2, 3))
True
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactTree",
    "MerkleTree",
    "leaf_hash",
    "node_hash",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 MTH of one entry: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The RFC's recursive MTH over leaf hashes (the plain definition: a test oracle)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


class MerkleTree:
    """An append-only tree of leaf hashes that answers roots and proofs for any size
    it has had.

    Level ``h`` keeps the hash of every complete, aligned subtree of ``2**h`` leaves in
    one bytearray (32 bytes each): about 64 bytes per leaf in all, and a root or proof
    hashes only the O(log n) ragged right edge, O(log^2 n) at worst.
    """

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]

    @property
    def size(self) -> int:
        return len(self._levels[0]) // HASH_SIZE

    def leaf(self, index: int) -> bytes:
        """The hash of leaf ``index`` (0-based)."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} is outside a tree of {self.size}")
        return bytes(self._levels[0][index * HASH_SIZE:(index + 1) * HASH_SIZE])

    def append(self, leaf: bytes) -> int:
        """Add a leaf hash; returns its index."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf)}")
        levels = self._levels
        index = self.size
        levels[0] += leaf
        h, n = 0, index + 1
        while n % 2 == 0:  # this leaf completed a subtree of 2**(h+1) leaves
            row = levels[h]
            parent = node_hash(bytes(row[-2 * HASH_SIZE:-HASH_SIZE]), bytes(row[-HASH_SIZE:]))
            if len(levels) == h + 1:
                levels.append(bytearray())
            levels[h + 1] += parent
            h, n = h + 1, n // 2
        return index

    def truncate(self, size: int) -> None:
        """Forget every leaf from ``size`` on (a journal's unsynced tail)."""
        for h, row in enumerate(self._levels):
            del row[(size >> h) * HASH_SIZE:]

    def _mth(self, start: int, end: int) -> bytes:
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:  # a complete, aligned subtree: stored
            h = n.bit_length() - 1
            i = start >> h
            return bytes(self._levels[h][i * HASH_SIZE:(i + 1) * HASH_SIZE])
        k = _split(n)
        return node_hash(self._mth(start, start + k), self._mth(start + k, end))

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is outside 0..{self.size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """The root of the first ``size`` leaves (default: all)."""
        return self._mth(0, self._check_size(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 6962 PATH(index, D[0:size]): leaf to root, nearest sibling first."""
        n = self._check_size(size)
        if not 0 <= index < n:
            raise ValueError(f"leaf {index} is not in a tree of {n}")
        proof: list[bytes] = []
        start, end, m = 0, n, index
        while end - start > 1:
            k = _split(end - start)
            if m < k:
                proof.append(self._mth(start + k, end))
                end = start + k
            else:
                proof.append(self._mth(start, start + k))
                start, m = start + k, m - k
        proof.reverse()
        return proof

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """RFC 6962 PROOF(old, D[0:new]): shows the first ``old`` leaves are a prefix."""
        n = self._check_size(new)
        if not 0 <= old <= n:
            raise ValueError(f"old size {old} is outside 0..{n}")
        if old == 0 or old == n:
            return []
        proof: list[bytes] = []
        start, end, m, whole = 0, n, old, True
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                proof.append(self._mth(start + k, end))
                end = start + k
            else:
                proof.append(self._mth(start, start + k))
                start, m, whole = start + k, m - k, False
        if not whole:
            proof.append(self._mth(start, end))
        proof.reverse()
        return proof


class CompactTree:
    """The root of an append-only tree in O(log n) memory: only the roots of the
    perfect subtrees along its right edge (one per set bit of the size, largest first).
    What a writer needs to sign checkpoints; proofs come from a :class:`MerkleTree`
    built from the leaves when they are wanted.

    >>> c, m = CompactTree(), MerkleTree()
    >>> for i in range(11):
    ...     _ = c.append(leaf_hash(bytes([i]))), m.append(leaf_hash(bytes([i])))
    >>> c.root() == m.root(), c.size
    (True, 11)
    """

    __slots__ = ("size", "_edge")

    def __init__(self) -> None:
        self.size = 0
        self._edge: list[bytes] = []

    def append(self, leaf: bytes) -> int:
        """Add a leaf hash; returns its index."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf)}")
        edge = self._edge
        edge.append(leaf)
        n = index = self.size
        while n & 1:  # each trailing 1 bit: two subtrees of one height become one
            right = edge.pop()
            edge[-1] = node_hash(edge[-1], right)
            n >>= 1
        self.size = index + 1
        return index

    @property
    def edge(self) -> list[bytes]:
        """What :meth:`restore` takes back: the right edge's subtree roots."""
        return list(self._edge)

    def copy(self) -> CompactTree:
        tree = CompactTree()
        tree.size, tree._edge = self.size, list(self._edge)
        return tree

    @classmethod
    def restore(cls, size: int, edge: list[bytes]) -> CompactTree:
        """The tree of ``size`` leaves whose right edge is ``edge`` (ValueError if the
        edge cannot be one: one 32-byte hash per set bit of the size)."""
        if size < 0 or len(edge) != bin(size).count("1") or not _hashes(edge):
            raise ValueError(f"{len(edge)} hashes are not the right edge of a tree of {size}")
        tree = cls()
        tree.size, tree._edge = size, list(edge)
        return tree

    def root(self) -> bytes:
        edge = self._edge
        if not edge:
            return EMPTY_ROOT
        r = edge[-1]
        for left in reversed(edge[:-1]):
            r = node_hash(left, r)
        return r


def _hashes(proof: Sequence[bytes]) -> bool:
    return all(isinstance(p, bytes) and len(p) == HASH_SIZE for p in proof)


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2: True only if ``leaf`` is leaf ``index`` of the tree of ``size``
    leaves whose root is ``root``."""
    if not (0 <= index < size) or not _hashes(proof) or len(leaf) != HASH_SIZE:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False  # a proof longer than the path
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2: True only if the tree of ``new`` leaves with ``new_root``
    extends the tree of ``old`` leaves with ``old_root``."""
    if not 0 <= old <= new or not _hashes(proof):
        return False
    if old == new:
        return not proof and old_root == new_root
    if old == 0:
        return not proof  # the empty tree is a prefix of every tree
    if not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:  # old is a power of two: its root starts the path
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
