"""Consistent hashing: a native hash ring with replica sets, bounded loads, jump hash,
rendezvous hashing and a ketama mode compatible with memcached clients.

A ring maps keys to nodes so that changing the node set moves few keys:

>>> from coordcore.ring import HashRing
>>> ring = HashRing(["cache-a", "cache-b", "cache-c"])
>>> ring.node_for("user:42") in ring.nodes
True
>>> len(set(ring.nodes_for("user:42", 2)))       # a replica set: 2 distinct nodes
2
>>> before = ring.snapshot()
>>> ring.add_node("cache-d")
>>> moved_fraction(before, ring, [f"user:{i}" for i in range(10_000)]) < 0.35
True

Keys are ``str`` (hashed as UTF-8), ``bytes`` (as they are) or ``int`` (as 8 little-endian
bytes, modulo 2**64: ints in [-2**63, 2**64) are accepted, so -1 and 2**64 - 1 are the same
key, exactly as in a numpy int64 or uint64 array). A ``str`` and its UTF-8 bytes are the
same key. The hash is xxHash64 with seed 0 (:func:`hash64`), identical to the ``xxhash``
package's ``xxh64_intdigest``, so other languages can place keys the same way.

How a ring is built (``hash="xxh64"``, the default): a node (a str name) of weight w
gets floor(vnodes * w + 0.5) points, at least one, point j being ``hash64(name, seed=j)``
for j = 0, 1, ...; a key belongs to the
first point at or after its hash, wrapping around. Weights are absolute, so adding or
removing a node never changes the other nodes' points: only the keys that the new node
takes, or that the removed node had, move. If two points are equal, the node whose UTF-8
name sorts first keeps it, whatever order the nodes were given in.

Batch lookups return node indices into ``ring.nodes`` as numpy arrays. A ring changes by
swapping immutable snapshots; when other threads may change it, look up and map indices
through one snapshot:

>>> snap = ring.snapshot()
>>> idx = snap.node_for_many(["a", "b", "c"])
>>> [snap.nodes[i] for i in idx] == [snap.node_for(k) for k in "abc"]
True

``hash="ketama"`` places keys as libketama and libmemcached do (md5 points, 40 digests of
4 points per node at average weight, whole-number weights scaling a node's share of the
continuum, the later node keeping a point two nodes share), so a coordcore client can sit
beside existing memcached clients. One detail differs from ``uhashring``: a key whose
32-bit hash equals a point exactly belongs to that point (libketama and libmemcached
search ``<=``), where uhashring's ``bisect_right`` gives it to the next point. A key hits
a point exactly with probability points / 2**32: one key in 2.7 million on a 10-node ring.

Jump consistent hash (:func:`jump_hash`) needs no memory and balances perfectly, but its
buckets are numbered 0..n-1 and only the last one can be removed. To take a middle bucket
out, use a :class:`HashRing` or :class:`Rendezvous` instead, or keep jump hash over stable
slot numbers and map slots to nodes through a table you edit.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from coordcore._native import require
from coordcore.errors import BadArgument, EmptyRing, NotFound, WrongType

try:
    from coordcore._native.ring import (
        HashRing,
        Rendezvous,
        RingBalance,
        RingSnapshot,
        hash64,
        hash64_many,
        jump_hash,
        jump_hash_many,
        ketama_hash,
    )
except ImportError:
    require("ring")  # raises an ImportError that says plainly how to fix the build
    raise

__all__ = [
    "BoundedLoadRing",
    "HashRing",
    "Key",
    "Move",
    "Rendezvous",
    "RingBalance",
    "RingSnapshot",
    "hash64",
    "hash64_many",
    "jump_hash",
    "jump_hash_many",
    "ketama_hash",
    "moved_fraction",
    "moved_mask",
    "rendezvous",
]

#: A key: str (UTF-8), bytes-like (as is) or int (8 little-endian bytes modulo 2**64).
Key: TypeAlias = str | bytes | bytearray | memoryview | int
_Ring: TypeAlias = HashRing | RingSnapshot


def _snapshot_of(ring: object, what: str) -> RingSnapshot:
    if isinstance(ring, HashRing):
        return ring.snapshot()
    if isinstance(ring, RingSnapshot):
        return ring
    raise WrongType(f"{what} must be a HashRing or RingSnapshot, not {type(ring).__name__}")


def rendezvous(key: Key, nodes: Iterable[str] | Mapping[str, float]) -> str:
    """The rendezvous (highest random weight) winner for ``key`` among ``nodes`` (names or
    a mapping name -> weight). Build a :class:`Rendezvous` once to look up many keys.

    >>> rendezvous("user:42", ["a", "b", "c"]) == Rendezvous(["a", "b", "c"]).node_for("user:42")
    True
    """
    return Rendezvous(nodes).node_for(key)


def moved_mask(old: _Ring, new: _Ring, keys: Iterable[Key] | npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """For each key, whether ``old`` and ``new`` place it on different nodes (compared by
    name). ``keys``: a sequence of keys, or a uint64 array of pre-hashed keys when both
    rings use the same hash.

    >>> a = HashRing(["x", "y"])
    >>> moved_mask(a, a.with_node("z"), ["k1", "k2", "k3"]).dtype
    dtype('bool')
    """
    o = _snapshot_of(old, "old")
    n = _snapshot_of(new, "new")
    if isinstance(keys, np.ndarray):
        if keys.dtype == np.uint64 and o.hash_name != n.hash_name:
            raise BadArgument(
                f"pre-hashed keys cannot be compared across a {o.hash_name} and a {n.hash_name} ring; pass the keys"
            )
    elif not isinstance(keys, (list, tuple)):
        keys = list(keys)  # read twice below
    a = o.node_for_many(keys)
    b = n.node_for_many(keys)
    # Old node index -> new node index of the same name (-1 if the node is gone).
    remap = np.array([n.index_of(name) if name in n else -1 for name in o.nodes], dtype=np.int64)
    result: npt.NDArray[np.bool_] = remap[a] != b
    return result


def moved_fraction(old: _Ring, new: _Ring, keys: Iterable[Key] | npt.NDArray[Any]) -> float:
    """The fraction of ``keys`` that ``old`` and ``new`` place on different nodes.

    >>> a = HashRing(["x", "y"])
    >>> moved_fraction(a, a, ["k1", "k2"])
    0.0
    """
    mask = moved_mask(old, new, keys)
    return float(mask.mean()) if mask.size else 0.0


#: A bounded-load capacity above any count of keys (stays exact in float64 and int64).
_MAX_CAP = float(2**62)


def _bounded_key(key: object) -> None:
    # Keys live in a dict: refuse what would alias (True == 1) or cannot be hashed stably.
    if isinstance(key, bool) or not isinstance(key, (str, bytes, int)):
        raise WrongType(f"bounded-load keys must be str, bytes or int, not {type(key).__name__}")


@dataclass(frozen=True, slots=True)
class Move:
    """A key that :meth:`BoundedLoadRing.release` moved to keep every node under its cap."""

    key: Key
    source: str
    target: str


class BoundedLoadRing:
    """Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018).

    Keys are assigned one at a time; each goes to the first node in its ring order that is
    below its capacity. With m keys assigned, node i's capacity is

        ceil((1 + epsilon) * m * w_i / W)       (W: the sum of the weights)

    evaluated in that order in double precision, i.e. ceil((1 + epsilon) x average load)
    for equal weights. No node ever holds more than its capacity: when a release lowers
    the capacities, the fewest keys needed (the most recently placed ones on each node
    over its cap) move to their next node with room, and ``release`` returns those moves.
    Nothing else ever moves. The ring is the snapshot given (or current) at construction.

    >>> ring = HashRing(["a", "b", "c", "d"])
    >>> bl = BoundedLoadRing(ring, epsilon=0.25)
    >>> nodes = [bl.assign(f"conn-{i}") for i in range(100)]
    >>> max(bl.loads.values()) <= bl.capacity == 32          # ceil(1.25 * 100 / 4)
    True
    >>> bl.node_of("conn-7") == nodes[7]
    True
    >>> moves = bl.release("conn-7")
    >>> all(bl.loads[n] <= c for n, c in bl.capacities().items())
    True

    Thread-safe (one lock); keys are str, bytes or int (compared by value, as dict keys).
    """

    __slots__ = ("_snap", "_epsilon", "_w", "_wsum", "_loads", "_where", "_on", "_lock")

    def __init__(self, ring: _Ring, *, epsilon: float = 0.25) -> None:
        snap = _snapshot_of(ring, "ring")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
            raise WrongType(f"epsilon must be a number, not {type(epsilon).__name__}")
        if not math.isfinite(epsilon) or epsilon < 0:
            raise BadArgument(f"epsilon must be a finite number >= 0, got {epsilon!r}")
        if len(snap.owners) == 0:
            raise EmptyRing("a bounded-load ring needs a ring with nodes")
        self._snap = snap
        self._epsilon = float(epsilon)
        # A node that owns no point (possible only in ketama mode, for tiny weights) can take
        # no key; its capacity counts for nothing, so its weight must not count either.
        holders = np.zeros(len(snap.nodes), dtype=bool)
        holders[np.unique(snap.owners)] = True
        self._w = np.where(holders, np.asarray(snap.weights, dtype=np.float64), 0.0)
        self._wsum = math.fsum(self._w.tolist())
        self._loads = np.zeros(len(snap.nodes), dtype=np.int64)
        self._where: dict[Key, int] = {}
        self._on: list[dict[Key, None]] = [{} for _ in snap.nodes]
        self._lock = threading.Lock()

    def _caps(self, m: int) -> npt.NDArray[np.int64]:
        # Clipped before the cast: a large epsilon makes the product huge or infinite,
        # which cast to int64 as a negative number (every node "full"); nodes that own
        # no point (weight 0 here) get 0, not inf * 0 = NaN.
        with np.errstate(over="ignore", invalid="ignore"):
            raw = np.ceil((1.0 + self._epsilon) * m * self._w / self._wsum)
        caps: npt.NDArray[np.int64] = np.where(self._w > 0, np.minimum(raw, _MAX_CAP), 0.0).astype(np.int64)
        return caps

    @property
    def ring(self) -> RingSnapshot:
        """The ring snapshot keys are placed on."""
        return self._snap

    @property
    def epsilon(self) -> float:
        """The allowed excess over the average load (0.25: at most 25% above average)."""
        return self._epsilon

    @property
    def loads(self) -> dict[str, int]:
        """Keys held by each node."""
        with self._lock:
            return dict(zip(self._snap.nodes, self._loads.tolist()))

    @property
    def capacity(self) -> int:
        """The largest per-node capacity for the keys now assigned."""
        with self._lock:
            return int(self._caps(len(self._where)).max())

    def capacities(self) -> dict[str, int]:
        """Each node's capacity for the keys now assigned."""
        with self._lock:
            return dict(zip(self._snap.nodes, self._caps(len(self._where)).tolist()))

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, bool) or not isinstance(key, (str, bytes, int)):
            return False
        return key in self._where

    def node_of(self, key: Key) -> str:
        """The node ``key`` is assigned to (NotFound if it is not assigned)."""
        _bounded_key(key)
        try:
            k = self._where[key]
        except KeyError:
            raise NotFound(f"key {key!r} is not assigned") from None
        return self._snap.nodes[k]

    def assign(self, key: Key) -> str:
        """Place ``key`` on the first node in its ring order with room, and return that
        node. A key already assigned stays where it is (its node is returned)."""
        _bounded_key(key)
        with self._lock:
            k = self._where.get(key)
            if k is not None:
                return self._snap.nodes[k]
            caps = self._caps(len(self._where) + 1)
            k = self._snap.bounded_index(key, self._loads, caps)
            self._loads[k] += 1
            self._where[key] = k
            self._on[k][key] = None
            return self._snap.nodes[k]

    def release(self, key: Key) -> list[Move]:
        """Remove ``key`` (NotFound if it is not assigned). Returns the keys moved so that
        no node exceeds the (now lower) capacity; usually none."""
        _bounded_key(key)
        with self._lock:
            try:
                k = self._where.pop(key)
            except KeyError:
                raise NotFound(f"key {key!r} is not assigned") from None
            del self._on[k][key]
            self._loads[k] -= 1
            caps = self._caps(len(self._where))
            moves: list[Move] = []
            for j in np.flatnonzero(self._loads > caps).tolist():
                while self._loads[j] > caps[j]:
                    moved, _ = self._on[j].popitem()  # the most recently placed key on j
                    self._loads[j] -= 1
                    # j is still at or over its cap, so the walk passes it by.
                    t = self._snap.bounded_index(moved, self._loads, caps)
                    self._loads[t] += 1
                    self._where[moved] = t
                    self._on[t][moved] = None
                    moves.append(Move(moved, self._snap.nodes[j], self._snap.nodes[t]))
            return moves

    def __repr__(self) -> str:
        return f"BoundedLoadRing({len(self._snap.nodes)} nodes, {len(self._where)} keys, epsilon={self._epsilon})"
