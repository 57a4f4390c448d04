# Rendezvous (highest random weight) hashing.
# Included by ring.pyx (one module: these parts share its cdef declarations).

# --- rendezvous -----------------------------------------------------------------------

@cython.final
cdef class Rendezvous:
    """Rendezvous (highest random weight) hashing over a small node set, with weights.

    Rendezvous(nodes)  # an iterable of names or a mapping name -> weight

    Each node scores every key: h = fmix64(hash64(key) ^ hash64(name, seed)), the node
    with the highest h wins when all weights are equal; with weights, the highest
    w / -ln(u) where u = ((h >> 11) + 0.5) / 2**53 (Schindelhauer and Schomaker's
    logarithmic method), ties broken by the higher h. Removing a node moves only its keys;
    lookups cost O(nodes), so keep it for tens to hundreds of nodes.
    """

    cdef tuple _nodes
    cdef tuple _weights
    cdef dict _pos
    cdef object _seeds
    cdef object _w
    cdef bint _equal

    def __init__(self, nodes):
        if self._nodes is not None:
            raise TypeError("Rendezvous is immutable: build a new one")
        names, weights = _parse_nodes(nodes, False)
        self._set(names, weights)

    cdef _set(self, tuple names, tuple weights):
        self._nodes = names
        self._weights = weights
        self._pos = {name: k for k, name in enumerate(names)}
        seeds = np.empty(len(names), dtype=_UINT64)
        cdef uint64_t[::1] sv = seeds
        cdef Py_ssize_t k
        cdef bytes b
        for k in range(len(names)):
            b = names[k].encode("utf-8")
            sv[k] = cc_xxh64(<const char*>b, <size_t>len(b), RENDEZVOUS_SEED)
        self._seeds = _readonly(seeds)
        self._w = _readonly(np.array(weights, dtype=np.float64))
        self._equal = len(set(weights)) <= 1

    @property
    def nodes(self):
        """The node names."""
        return self._nodes

    @property
    def weights(self):
        """The node weights, in the order of ``nodes``."""
        return self._weights

    def __len__(self):
        return len(self._nodes)

    def __contains__(self, name):
        return name in self._pos

    def __repr__(self):
        return f"Rendezvous({len(self._nodes)} nodes)"

    def __reduce__(self):
        return (Rendezvous, (dict(zip(self._nodes, self._weights)),))

    def with_node(self, name, weight=1):
        """A new Rendezvous with node ``name`` added."""
        name = _node_name(name)
        if name in self._pos:
            raise BadArgument(f"node {name!r} is already in the set")
        cdef Rendezvous r = Rendezvous.__new__(Rendezvous)
        r._set(self._nodes + (name,), self._weights + (_weight(name, weight, False),))
        return r

    def without_node(self, name):
        """A new Rendezvous without node ``name`` (NotFound if absent)."""
        k = self._pos.get(name) if isinstance(name, str) else None
        if k is None:
            raise NotFound(f"node {name!r} is not in the set")
        cdef Rendezvous r = Rendezvous.__new__(Rendezvous)
        r._set(self._nodes[:k] + self._nodes[k + 1:], self._weights[:k] + self._weights[k + 1:])
        return r

    cdef int _require(self) except -1:
        if not self._nodes:
            raise EmptyRing("the rendezvous set has no nodes")
        return 0

    def node_for(self, key):
        """The highest-scoring node for ``key``."""
        self._require()
        cdef const uint64_t[::1] sv = self._seeds
        cdef const double[::1] wv = self._w
        return self._nodes[_hrw_best(_xxh_key(key, 0), &sv[0], &wv[0], len(self._nodes), self._equal)]

    def nodes_for(self, key, n):
        """The ``n`` highest-scoring nodes for ``key``, best first."""
        self._require()
        if PyBool_Check(n) or not PyLong_Check(n):
            raise WrongType(f"n must be an int, not {_type_name(n)}")
        if not 1 <= n <= len(self._nodes):
            raise BadArgument(f"n must be in [1, {len(self._nodes)}], got {n}")
        cdef uint64_t k = _xxh_key(key, 0)
        cdef const uint64_t[::1] sv = self._seeds
        cdef const double[::1] wv = self._w
        cdef Py_ssize_t nn = len(self._nodes), i
        cdef list hs = [cc_fmix64(k ^ sv[i]) for i in range(nn)]
        if self._equal:
            order = sorted(range(nn), key=lambda i: hs[i], reverse=True)
        else:
            scores = [_hrw_score(hs[i], wv[i]) for i in range(nn)]
            order = sorted(range(nn), key=lambda i: (scores[i], hs[i]), reverse=True)
        return tuple(self._nodes[i] for i in order[:n])

    def node_for_many(self, keys, out=None):
        """The winning node index (into ``nodes``) of every key, as an int32 array. ``keys``:
        a sequence of keys or a uint64 array of hash64 values (looked up without the GIL)."""
        self._require()
        arr = _uint64_keys(keys)
        if arr is None:
            if isinstance(keys, np.ndarray) and keys.dtype.kind in "iub":
                raise WrongType(f"a {keys.dtype} array is ambiguous: pass hash64_many(arr) or arr.view(np.uint64)")
            arr = _hash_seq(KIND_XXH, _key_seq(keys), 0, None)
        cdef Py_ssize_t i, m = arr.shape[0], nn = len(self._nodes)
        res = _out_array(out, (m,), _INT32)
        cdef const uint64_t[::1] hv
        cdef int32_t[::1] o
        cdef const uint64_t[::1] sv = self._seeds
        cdef const double[::1] wv = self._w
        cdef bint eq = self._equal
        if m:
            hv = arr
            o = res
            with nogil:
                for i in range(m):
                    o[i] = _hrw_best(hv[i], &sv[0], &wv[0], nn, eq)
        return res


cdef inline double _hrw_score(uint64_t h, double w) noexcept nogil:
    cdef double u = (<double>(h >> 11) + 0.5) * (1.0 / 9007199254740992.0)
    return w / -log(u)


cdef inline int32_t _hrw_best(uint64_t key, const uint64_t* seeds, const double* w,
                              Py_ssize_t n, bint equal) noexcept nogil:
    cdef Py_ssize_t i, best = 0
    cdef uint64_t h, bh = cc_fmix64(key ^ seeds[0])
    cdef double s, bs
    if equal:
        for i in range(1, n):
            h = cc_fmix64(key ^ seeds[i])
            if h > bh:
                bh = h
                best = i
        return <int32_t>best
    bs = _hrw_score(bh, w[0])
    for i in range(1, n):
        h = cc_fmix64(key ^ seeds[i])
        s = _hrw_score(h, w[i])
        if s > bs or (s == bs and h > bh):
            bs = s
            bh = h
            best = i
    return <int32_t>best
