"""Pure-Python reference models of coordcore.ring: the oracles its native code is tested
against. Written for obviousness, not speed: a dict of points and bisect, the jump loop
as printed in the paper, rendezvous scores with math.log, bounded loads with a walk.

Hashes come from the reference libraries (the ``xxhash`` package and ``hashlib.md5``),
never from coordcore.
"""
from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Union

import xxhash

Key = Union[str, bytes, bytearray, memoryview, int]

M64 = (1 << 64) - 1


def key_bytes(key: Key) -> bytes:
    """The documented encoding of a key: str as UTF-8, bytes as is, int as 8 LE bytes."""
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    if isinstance(key, bool):
        raise TypeError("bool is not a key")
    if isinstance(key, int):
        if not -(1 << 63) <= key < (1 << 64):
            raise ValueError("int key out of range")
        return (key & M64).to_bytes(8, "little")
    raise TypeError(type(key).__name__)


def hash64(key: Key, seed: int = 0) -> int:
    return xxhash.xxh64_intdigest(key_bytes(key), seed)


def ketama_key_bytes(key: Key) -> bytes:
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key).encode("ascii")
    return key_bytes(key)


def ketama_hash(key: Key) -> int:
    return int.from_bytes(hashlib.md5(ketama_key_bytes(key)).digest()[:4], "little")


def ketama_points(name: str, digests: int) -> list[int]:
    out = []
    for j in range(digests):
        d = hashlib.md5(f"{name}-{j}".encode()).digest()
        out.extend(int.from_bytes(d[4 * q:4 * q + 4], "little") for q in range(4))
    return out


class ModelRing:
    """A consistent-hash ring as the docs describe it.

    xxh64: node of weight w has max(1, floor(vnodes * w + 0.5)) points hash64(name, seed=j);
    on equal points the node whose UTF-8 name sorts first wins.
    ketama: floor(vnodes/4 * n * w / W) md5 digests of "name-j", 4 LE words each; on
    equal points the node listed later wins.
    A key goes to the first point >= its hash, wrapping to the first point.
    """

    def __init__(self, nodes: Mapping[str, float] | Iterable[str], vnodes: int = 160, hash: str = "xxh64") -> None:
        if isinstance(nodes, Mapping):
            self.nodes = list(nodes)
            self.weights = [float(nodes[n]) for n in self.nodes]
        else:
            self.nodes = list(nodes)
            self.weights = [1.0] * len(self.nodes)
        self.hash = hash
        owner: dict[int, str] = {}
        if hash == "xxh64":
            for name, w in zip(self.nodes, self.weights):
                count = max(1, math.floor(vnodes * w + 0.5))
                for j in range(count):
                    p = xxhash.xxh64_intdigest(name.encode("utf-8"), j)
                    if p not in owner or name.encode("utf-8") < owner[p].encode("utf-8"):
                        owner[p] = name
        else:
            total = sum(int(w) for w in self.weights)
            for name, w in zip(self.nodes, self.weights):
                digests = (vnodes // 4) * len(self.nodes) * int(w) // total
                for p in ketama_points(name, digests):
                    owner[p] = name  # later node overwrites, as in uhashring's dict
        self.points = sorted(owner)
        self.owner = owner

    def key_hash(self, key: Key) -> int:
        return hash64(key) if self.hash == "xxh64" else ketama_hash(key)

    def position(self, h: int) -> int:
        i = bisect.bisect_left(self.points, h)
        return 0 if i == len(self.points) else i

    def node_for_hash(self, h: int) -> str:
        return self.owner[self.points[self.position(h)]]

    def node_for(self, key: Key) -> str:
        return self.node_for_hash(self.key_hash(key))

    def walk(self, h: int) -> list[str]:
        """Every distinct node in ring order from the key's position."""
        i = self.position(h)
        seen: list[str] = []
        for k in range(len(self.points)):
            name = self.owner[self.points[(i + k) % len(self.points)]]
            if name not in seen:
                seen.append(name)
        return seen

    def nodes_for(self, key: Key, n: int) -> list[str]:
        return self.walk(self.key_hash(key))[:n]

    def shares(self) -> dict[str, float]:
        space = 2**64 if self.hash == "xxh64" else 2**32
        out = {name: 0.0 for name in self.nodes}
        pts = self.points
        if len(pts) == 1:
            out[self.owner[pts[0]]] = 1.0
            return out
        for i, p in enumerate(pts):
            arc = p - pts[i - 1] if i else space - pts[-1] + pts[0]
            out[self.owner[p]] += arc
        return {k: v / space for k, v in out.items()}


def jump(key: int, buckets: int) -> int:
    """Lamping and Veach's loop, with Python ints masked to 64 bits and IEEE doubles."""
    key &= M64
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & M64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


RENDEZVOUS_SEED = 0x52454E44455A564F


def fmix64(z: int) -> int:
    z ^= z >> 33
    z = (z * 0xFF51AFD7ED558CCD) & M64
    z ^= z >> 33
    z = (z * 0xC4CEB9FE1A85EC53) & M64
    z ^= z >> 33
    return z


def rendezvous_ranking(key: Key, nodes: Mapping[str, float]) -> list[str]:
    """Nodes best first: by h when all weights are equal, else by w / -ln(u) then h."""
    k = hash64(key)
    hs = {n: fmix64(k ^ xxhash.xxh64_intdigest(n.encode("utf-8"), RENDEZVOUS_SEED)) for n in nodes}
    if len(set(nodes.values())) <= 1:
        return sorted(nodes, key=lambda n: hs[n], reverse=True)

    def score(n: str) -> tuple[float, int]:
        u = ((hs[n] >> 11) + 0.5) * (1.0 / 9007199254740992.0)
        return (nodes[n] / -math.log(u), hs[n])

    return sorted(nodes, key=score, reverse=True)


class ModelBounded:
    """Bounded loads as documented: capacity ceil((1 + eps) * m * w / W); a key takes the
    first node in its ring order with room; a release sheds the most recently placed keys
    of every node above the lowered capacity to their next node with room."""

    def __init__(self, ring: ModelRing, eps: float) -> None:
        self.ring = ring
        self.eps = eps
        holders = set(ring.owner.values())
        self.w = {n: (w if n in holders else 0.0) for n, w in zip(ring.nodes, ring.weights)}
        self.wsum = math.fsum(self.w.values())
        self.where: dict[Key, str] = {}
        self.on: dict[str, list[Key]] = {n: [] for n in ring.nodes}

    def caps(self, m: int) -> dict[str, int]:
        return {n: math.ceil((1.0 + self.eps) * m * w / self.wsum) for n, w in self.w.items()}

    def _place(self, key: Key, caps: dict[str, int]) -> str:
        for n in self.ring.walk(self.ring.key_hash(key)):
            if len(self.on[n]) < caps[n]:
                return n
        raise RuntimeError("full")

    def assign(self, key: Key) -> str:
        if key in self.where:
            return self.where[key]
        n = self._place(key, self.caps(len(self.where) + 1))
        self.where[key] = n
        self.on[n].append(key)
        return n

    def release(self, key: Key) -> list[tuple[Key, str, str]]:
        n = self.where.pop(key)
        self.on[n].remove(key)
        caps = self.caps(len(self.where))
        moves = []
        for j in self.ring.nodes:
            while len(self.on[j]) > caps[j]:
                k = self.on[j].pop()
                t = self._place(k, caps)
                self.on[t].append(k)
                self.where[k] = t
                moves.append((k, j, t))
        return moves
