# The immutable ring snapshot: its arrays, lookups, replica sets, bounded loads and bytes.
# Included by ring.pyx (one module: these parts share its cdef declarations).

# --- the ring snapshot ----------------------------------------------------------------

@cython.final
cdef class RingSnapshot:
    """An immutable consistent-hash ring: sorted points, their owners, a top-bits bucket
    index and a replica successor table. Every lookup method of :class:`HashRing` exists
    here too; a snapshot's node indices always match its own ``nodes``.

    RingSnapshot(nodes=(), *, vnodes=160, hash="xxh64", replicas=3)
    """

    cdef tuple _nodes
    cdef tuple _weights
    cdef dict _pos
    cdef int _vnodes
    cdef int _replicas
    cdef int mode
    cdef int nholders
    cdef uint64_t _fingerprint
    cdef object _points
    cdef object _padded
    cdef object _owners
    cdef object _index
    cdef object _succ
    cdef cc_ring r

    def __init__(self, nodes=(), *, vnodes=DEF_VNODES, hash="xxh64", replicas=DEF_REPLICAS):
        if self._nodes is not None:
            # Rebuilding in place would free arrays that a lookup on another thread may be
            # reading without the GIL.
            raise TypeError("RingSnapshot is immutable: build a new one")
        cdef int mode = _mode_of(hash)
        cdef int v = _positive_int(vnodes, "vnodes", 1, 1 << 20)
        if mode == MODE_KETAMA and v % 4:
            raise BadArgument(f"ketama places 4 points per md5 digest: vnodes must be a multiple of 4, got {v}")
        cdef int rep = _positive_int(replicas, "replicas", 1, MAX_REPLICAS)
        names, weights = _parse_nodes(nodes, mode == MODE_KETAMA)
        self._build(names, weights, v, mode, rep)

    cdef _build(self, tuple names, tuple weights, int vnodes, int mode, int replicas):
        cdef Py_ssize_t nnodes = len(names)
        cdef Py_ssize_t k, total = 0, c
        cdef list counts = []
        self._nodes = names
        self._weights = weights
        self._pos = {name: k for k, name in enumerate(names)}
        self._vnodes = vnodes
        self._replicas = replicas
        self.mode = mode
        # Points per node. xxh64: absolute, vnodes per unit of weight (so adding a node
        # never changes another node's points). ketama: libketama's share of the
        # continuum, floor(vnodes/4 * n * w / W) md5 digests of 4 points (as uhashring).
        cdef double want
        if mode == MODE_XXH64:
            for k in range(nnodes):
                want = floor(vnodes * <double>weights[k] + 0.5)
                if want > MAX_POINTS:
                    raise BadArgument(
                        f"node {names[k]!r} would have {want:.0f} points (at most {MAX_POINTS}): "
                        "lower vnodes or weights"
                    )
                c = <Py_ssize_t>want
                counts.append(c if c > 0 else 1)
        else:
            wsum_int = sum(int(w) for w in weights)
            for k in range(nnodes):
                counts.append(4 * ((vnodes // 4) * nnodes * int(weights[k]) // wsum_int))
        total = sum(counts)
        if total > MAX_POINTS:
            raise BadArgument(
                f"the ring would have {total} points (at most {MAX_POINTS}): lower vnodes or weights"
            )
        pts = np.empty(total, dtype=_UINT64)
        own = np.empty(total, dtype=_INT32)
        tie = np.empty(total, dtype=_INT64)
        cdef uint64_t[::1] pv = pts
        cdef int32_t[::1] ov = own
        cdef int64_t[::1] tv = tie
        cdef Py_ssize_t at = 0, j
        cdef uint32_t words[4]
        cdef int64_t rank
        cdef int q
        cdef bytes b, label
        # Equal points are settled by a fixed rule, never by build order luck. xxh64: the
        # node whose UTF-8 name sorts first keeps the point (independent of node order).
        # ketama: the node listed last keeps it, as in uhashring, whose dict continuum
        # lets the later node overwrite the earlier one.
        if mode == MODE_XXH64:
            order = sorted(range(nnodes), key=lambda i: names[i].encode("utf-8"))
            ranks = [0] * nnodes
            for k in range(nnodes):
                ranks[order[k]] = k
        for k in range(nnodes):
            b = names[k].encode("utf-8")
            c = counts[k]
            if mode == MODE_XXH64:
                rank = ranks[k]
                for j in range(c):
                    pv[at] = cc_xxh64(<const char*>b, <size_t>len(b), <uint64_t>j)
                    ov[at] = <int32_t>k
                    tv[at] = rank
                    at += 1
            else:
                rank = -k
                for j in range(c // 4):
                    label = b + b"-" + str(j).encode("ascii")
                    cc_md5_words(<const char*>label, <size_t>len(label), words)
                    for q in range(4):
                        pv[at] = words[q]
                        ov[at] = <int32_t>k
                        tv[at] = rank
                        at += 1
        # Sorting by point alone is 6x faster than the tie-aware lexsort; equal points are
        # rare (a 64-bit hash; large ketama rings), and only then is the tie key needed.
        order = np.argsort(pts)
        if total and bool(np.any(pts[order][1:] == pts[order][:total - 1])):
            order = np.lexsort((tie, pts))
        pts = pts[order]
        own = own[order]
        if total:
            keep = np.empty(total, dtype=bool)
            keep[0] = True
            np.not_equal(pts[1:], pts[:total - 1], out=keep[1:])
            pts = np.ascontiguousarray(pts[keep])
            own = np.ascontiguousarray(own[keep])
        cdef Py_ssize_t npoints = pts.shape[0]
        # CC_PAD sentinels after the last point let cc_ring_find count without bounds checks.
        padded = np.full(npoints + CC_PAD, 0xFFFFFFFFFFFFFFFF, dtype=_UINT64)
        padded[:npoints] = pts
        padded = _frozen(padded)
        own = _frozen(own)
        self._padded = padded
        self._points = padded[:npoints]
        self._owners = own
        cdef int hashbits = 64 if mode == MODE_XXH64 else 32
        cdef int bits = 1
        while bits < 24 and ((<Py_ssize_t>1) << bits) < npoints:
            bits += 1
        index = np.empty(((<Py_ssize_t>1) << bits) + 1, dtype=np.uint32)
        cdef uint32_t[::1] iv = index
        cdef const uint64_t[::1] cpv
        cdef const int32_t[::1] cov
        self.nholders = int(np.count_nonzero(np.bincount(own, minlength=nnodes))) if npoints else 0
        cdef int width = min(replicas, self.nholders)
        succ = np.empty((npoints * width,), dtype=_INT32)
        cdef int32_t[::1] sv
        cdef int64_t[::1] stv
        if npoints:
            cpv = padded
            cov = own
            stamp = np.full(nnodes, -1, dtype=_INT64)
            stv = stamp
            sv = succ
            with nogil:
                cc_ring_build_index(&cpv[0], npoints, hashbits - bits, bits, &iv[0])
                cc_ring_build_succ(&cov[0], npoints, width, &stv[0], &sv[0])
            self.r.points = &cpv[0]
            self.r.owners = &cov[0]
            self.r.succ = &sv[0]
        else:
            iv[:] = 0
            self.r.points = NULL
            self.r.owners = NULL
            self.r.succ = NULL
        self._index = _readonly(index)
        self._succ = _readonly(succ.reshape(npoints, width))
        self.r.index = &iv[0]
        self.r.hmask = 0xFFFFFFFFFFFFFFFFULL if mode == MODE_XXH64 else 0xFFFFFFFFULL
        self.r.npoints = npoints
        self.r.shift = hashbits - bits
        self.r.width = width
        if CC_DEBUG:
            assert npoints == 0 or bool(np.all(pts[1:] > pts[:npoints - 1])), "ring points not strictly increasing"
            assert npoints == 0 or (0 <= int(own.min()) and int(own.max()) < nnodes), "owner out of range"
        self._fingerprint = _fingerprint_of(self)

    # -- construction helpers -------------------------------------------------------

    cdef RingSnapshot _derive(self, tuple names, tuple weights):
        cdef RingSnapshot s = RingSnapshot.__new__(RingSnapshot)
        s._build(names, weights, self._vnodes, self.mode, self._replicas)
        return s

    def with_node(self, name, weight=1):
        """A new snapshot with node ``name`` added (weight: vnodes scale with it).

        >>> RingSnapshot(["a"]).with_node("b", 2).weights
        (1.0, 2.0)
        """
        name = _node_name(name)
        if name in self._pos:
            raise BadArgument(f"node {name!r} is already in the ring")
        if len(self._nodes) >= MAX_NODES:
            raise BadArgument(f"at most {MAX_NODES} nodes")
        w = _weight(name, weight, self.mode == MODE_KETAMA)
        return self._derive(self._nodes + (name,), self._weights + (w,))

    def without_node(self, name):
        """A new snapshot without node ``name`` (NotFound if it is not in the ring)."""
        if not isinstance(name, str):
            raise WrongType(f"node names must be str, not {_type_name(name)}")
        k = self._pos.get(name)
        if k is None:
            raise NotFound(f"node {name!r} is not in the ring")
        return self._derive(self._nodes[:k] + self._nodes[k + 1:], self._weights[:k] + self._weights[k + 1:])

    # -- properties -------------------------------------------------------------------

    @property
    def nodes(self):
        """The node names; node indices returned by batch lookups index this tuple."""
        return self._nodes

    @property
    def weights(self):
        """Each node's weight, in the order of ``nodes``."""
        return self._weights

    @property
    def vnodes(self):
        """Points per unit of weight (xxh64) or per average node (ketama)."""
        return self._vnodes

    @property
    def replicas(self):
        """Width of the precomputed replica table: nodes_for(key, n <= replicas) is a table read."""
        return self._replicas

    @property
    def hash_name(self):
        """'xxh64' or 'ketama'."""
        return _MODE_NAMES[self.mode]

    @property
    def points(self):
        """The sorted ring points (read-only uint64 array)."""
        return self._points

    @property
    def owners(self):
        """The node index owning each point (read-only int32 array)."""
        return self._owners

    @property
    def fingerprint(self):
        """A 64-bit digest of the placement (mode, names, points, owners): two snapshots
        with equal fingerprints place every key on the same node."""
        return self._fingerprint

    def __len__(self):
        return len(self._nodes)

    def __contains__(self, name):
        return name in self._pos

    def __repr__(self):
        return (f"RingSnapshot({len(self._nodes)} nodes, {self.r.npoints} points, "
                f"hash={self.hash_name!r}, vnodes={self._vnodes}, replicas={self._replicas})")

    def __reduce__(self):
        return (_snapshot_from_bytes, (self.to_bytes(),))

    def index_of(self, name):
        """The index of node ``name`` in ``nodes`` (NotFound if absent)."""
        k = self._pos.get(name) if isinstance(name, str) else None
        if k is None:
            raise NotFound(f"node {name!r} is not in the ring")
        return k

    # -- hashing --------------------------------------------------------------------------

    def hash_key(self, key):
        """The ring's hash of a key: hash64(key) for xxh64, the 32-bit md5 word for ketama.
        Batch lookups accept uint64 arrays of these (pre-hashed keys)."""
        return _mode_key(self.mode, key)

    def hash_keys(self, keys, out=None):
        """hash_key of every key into a uint64 array (``out`` if given). Unlike the batch
        lookups, a numpy integer array here holds int keys to hash, not hashes."""
        if self.mode == MODE_XXH64:
            return hash64_many(keys, 0, out)
        return _hash_seq(KIND_KETAMA, _key_seq(keys), 0, out)

    # -- lookups ----------------------------------------------------------------------------

    cdef inline int _require_nodes(self) except -1:
        if self.r.npoints == 0:
            raise EmptyRing("the ring has no nodes" if not self._nodes else
                            "no node of the ring owns any point (weights too small for ketama)")
        return 0

    cdef int _check_n(self, object n) except -1:
        cdef long long v = _small_int(n, "n")
        if v < 1:
            raise BadArgument(f"n must be at least 1, got {n}")
        if v > self.nholders:
            raise BadArgument(
                f"n={n} but the ring has only {self.nholders} node(s) owning points"
            )
        return <int>v

    cdef object _node_for(self, object key):
        self._require_nodes()
        cdef uint64_t h = _mode_key(self.mode, key)
        cdef Py_ssize_t i = cc_ring_find(&self.r, h)
        return self._nodes[self.r.owners[i]]

    cdef tuple _nodes_for(self, object key, object n):
        self._require_nodes()
        cdef int want = self._check_n(n)
        cdef uint64_t h = _mode_key(self.mode, key)
        cdef Py_ssize_t i = cc_ring_find(&self.r, h)
        cdef tuple res = PyTuple_New_(want)
        cdef int k
        cdef const int32_t* row
        cdef int32_t* tmp
        cdef uint8_t* seen
        if want <= self.r.width:
            row = self.r.succ + i * self.r.width
            for k in range(want):
                _tuple_set(res, k, self._nodes[row[k]])
            return res
        tmp = <int32_t*>cc_malloc(want * sizeof(int32_t))
        seen = <uint8_t*>cc_calloc(len(self._nodes), 1)
        if tmp == NULL or seen == NULL:
            cc_free(tmp)
            cc_free(seen)
            raise MemoryError()
        try:
            cc_ring_walk(&self.r, i, want, seen, tmp)
            for k in range(want):
                _tuple_set(res, k, self._nodes[tmp[k]])
        finally:
            cc_free(tmp)
            cc_free(seen)
        return res

    cdef object _prehashed(self, object keys):
        arr = _uint64_keys(keys)
        if arr is None:
            if isinstance(keys, np.ndarray) and keys.dtype.kind in "iub":
                raise WrongType(
                    f"a {keys.dtype} array is ambiguous: batch lookups take uint64 arrays of "
                    "pre-hashed keys (ring.hash_keys(keys)); pass ring.hash_keys(arr) to look "
                    "up int keys, or arr.view(np.uint64) if the values are already hashes"
                )
            return None
        cdef const uint64_t[::1] v
        cdef uint64_t acc = 0
        cdef Py_ssize_t i, m = arr.shape[0]
        if self.mode == MODE_KETAMA and m:
            v = arr
            with nogil:
                for i in range(m):
                    acc |= v[i]
            if acc >> 32:
                raise BadArgument("ketama hashes are 32-bit: the array holds values >= 2**32")
        return arr

    cdef object _node_for_many(self, object keys, object out):
        self._require_nodes()
        cdef cc_ring r = self.r
        cdef Py_ssize_t i, m
        cdef int32_t[::1] o
        cdef const uint64_t[::1] hv
        cdef int mode = self.mode
        arr = self._prehashed(keys)
        if arr is not None:
            m = arr.shape[0]
            res = _out_array(out, (m,), _INT32)
            if m:
                hv = arr
                o = res
                with nogil:
                    for i in range(m):
                        o[i] = r.owners[cc_ring_find(&r, hv[i])]
            return res
        seq = _key_seq(keys)
        m = len(seq)
        res = _out_array(out, (m,), _INT32)
        cdef uint64_t buf[SPAN]
        cdef Py_ssize_t start, stop
        cdef int kind = KIND_XXH if mode == MODE_XXH64 else KIND_KETAMA
        if m:
            o = res
            # Hash a span into a small buffer, then look it up: two tight loops over L1 data.
            for start in range(0, m, SPAN):
                stop = min(start + SPAN, m)
                _hash_span(kind, seq, start, stop, 0, buf)
                for i in range(start, stop):
                    o[i] = r.owners[cc_ring_find(&r, buf[i - start])]
        return res

    cdef object _nodes_for_many(self, object keys, object n, object out):
        self._require_nodes()
        cdef int want = self._check_n(n)
        cdef cc_ring r = self.r
        cdef Py_ssize_t i, m
        cdef int k
        cdef int32_t[:, ::1] o
        cdef const uint64_t[::1] hv
        cdef uint64_t[::1] tmp
        arr = self._prehashed(keys)
        if arr is None:
            arr = self.hash_keys(keys)
        m = arr.shape[0]
        res = _out_array(out, (m, want), _INT32)
        if not m:
            return res
        hv = arr
        o = res
        cdef uint8_t* seen
        if want <= r.width:
            with nogil:
                for i in range(m):
                    memcpy(&o[i, 0], r.succ + cc_ring_find(&r, hv[i]) * r.width, want * sizeof(int32_t))
            return res
        seen = <uint8_t*>cc_calloc(len(self._nodes), 1)
        if seen == NULL:
            raise MemoryError()
        with nogil:
            for i in range(m):
                cc_ring_walk(&r, cc_ring_find(&r, hv[i]), want, seen, &o[i, 0])
        cc_free(seen)
        return res

    cdef Py_ssize_t _bounded_index(self, object key, object loads, object capacity) except -1:
        self._require_nodes()
        cdef Py_ssize_t nn = len(self._nodes)
        la = np.ascontiguousarray(loads, dtype=_INT64)
        ca = np.ascontiguousarray(capacity, dtype=_INT64)
        if la.shape != (nn,) or ca.shape != (nn,):
            raise BadArgument(f"loads and capacity must have one entry per node ({nn})")
        cdef const int64_t[::1] lv = la
        cdef const int64_t[::1] cv = ca
        cdef uint64_t h = _mode_key(self.mode, key)
        cdef Py_ssize_t i = cc_ring_find(&self.r, h), steps
        cdef int32_t o
        cdef Py_ssize_t found = -1
        # Walk the points from the key's position; the first owner with room takes it. A
        # full lap visits every owner, so a lap without room means there is none.
        for steps in range(self.r.npoints):
            o = self.r.owners[i]
            if lv[o] < cv[o]:
                found = o
                break
            i = i + 1 if i + 1 < self.r.npoints else 0
        if found < 0:
            raise Unavailable("every node is at its capacity")
        return found

    def node_for(self, key):
        """The node owning ``key`` (str, bytes or int): the first point at or after its hash.

        >>> RingSnapshot(["a", "b", "c"]).node_for("user:42") in ("a", "b", "c")
        True
        """
        return self._node_for(key)

    def nodes_for(self, key, n):
        """``n`` distinct nodes for ``key`` in ring order (its replica set); the first is
        node_for(key). A table read for n <= replicas."""
        return self._nodes_for(key, n)

    def node_for_many(self, keys, out=None):
        """The node index (into ``nodes``) of every key, as an int32 array (``out`` if given).
        ``keys``: a sequence of keys, or a uint64 array of pre-hashed keys (hash_keys),
        looked up without the GIL."""
        return self._node_for_many(keys, out)

    def nodes_for_many(self, keys, n, out=None):
        """nodes_for of every key as node indices, an int32 array of shape (len(keys), n)."""
        return self._nodes_for_many(keys, n, out)

    def bounded_index(self, key, loads, capacity):
        """Load-aware lookup: the index of the first node in ``key``'s ring order whose load
        is below its capacity (``loads`` and ``capacity``: one integer per node).
        Unavailable if every node is full."""
        return self._bounded_index(key, loads, capacity)

    # -- diagnostics --------------------------------------------------------------------

    def shares(self):
        """Each node's fraction of the hash space (float64 array in ``nodes`` order)."""
        cdef Py_ssize_t n = self.r.npoints, i
        res = np.zeros(len(self._nodes), dtype=np.float64)
        cdef double[::1] sv = res
        cdef double space = 18446744073709551616.0 if self.mode == MODE_XXH64 else 4294967296.0
        cdef uint64_t arc
        if n == 0:
            return res
        if n == 1:
            sv[self.r.owners[0]] = 1.0
            return res
        for i in range(1, n):
            sv[self.r.owners[i]] += <double>(self.r.points[i] - self.r.points[i - 1])
        # Point 0 owns the wrap-around arc (last point, end of space) and [0, points[0]].
        # Written without wrapping (first < last), which debug builds' overflowcheck
        # would refuse: space - last + first.
        if self.mode == MODE_KETAMA:
            arc = ((<uint64_t>1 << 32) - self.r.points[n - 1]) + self.r.points[0]
        else:
            arc = (0xFFFFFFFFFFFFFFFFULL - self.r.points[n - 1]) + self.r.points[0] + 1
        sv[self.r.owners[0]] += <double>arc
        for i in range(len(self._nodes)):
            sv[i] /= space
        return res

    def balance(self):
        """Each node's share of the hash space against its weight's share, and the
        peak-to-mean ratio (1.0 is perfect; about 1 + 1/sqrt(vnodes) spread is expected)."""
        self._require_nodes()
        shares = self.shares()
        cdef Py_ssize_t nn = len(self._nodes)
        counts = np.bincount(self._owners, minlength=nn)
        total_w = math.fsum(self._weights)
        expected = [w / total_w for w in self._weights]
        ratios = [shares[k] / expected[k] for k in range(nn)]
        peak = max(range(nn), key=lambda k: ratios[k])
        return RingBalance(
            {self._nodes[k]: float(shares[k]) for k in range(nn)},
            {self._nodes[k]: expected[k] for k in range(nn)},
            {self._nodes[k]: int(counts[k]) for k in range(nn)},
            float(ratios[peak]),
            float(min(ratios)),
            self._nodes[peak],
        )

    # -- serialisation --------------------------------------------------------------------

    def to_bytes(self):
        """The ring as bytes (format version 1, xxh64-checksummed): node names, weights,
        vnodes, replicas, hash, and a fingerprint of the placement. from_bytes rebuilds it
        and refuses to load if the rebuilt placement differs by a single point."""
        parts = [_HEADER.pack(_FORMAT_MAGIC, _FORMAT_VERSION, self.mode, 0, 0,
                              self._vnodes, self._replicas, len(self._nodes))]
        for name, w in zip(self._nodes, self._weights):
            b = name.encode("utf-8")
            parts.append(_U32.pack(len(b)))
            parts.append(b)
            parts.append(_F64.pack(w))
        parts.append(_TRAILER.pack(self.r.npoints, self._fingerprint))
        body = b"".join(parts)
        return body + _U64.pack(cc_xxh64(<const char*>body, <size_t>len(body), 0))

    @staticmethod
    def from_bytes(data):
        """The snapshot that ``to_bytes`` wrote (BadArgument if the bytes are not one)."""
        return _snapshot_from_bytes(data)


cdef extern from "Python.h":
    tuple PyTuple_New_ "PyTuple_New"(Py_ssize_t)
    void PyTuple_SET_ITEM_ "PyTuple_SET_ITEM"(object, Py_ssize_t, PyObject*)
    void Py_INCREF_ "Py_INCREF"(object)


cdef inline void _tuple_set(tuple t, Py_ssize_t k, object v):
    Py_INCREF_(v)  # SET_ITEM steals a reference
    PyTuple_SET_ITEM_(t, k, <PyObject*>v)


cdef uint64_t _fingerprint_of(RingSnapshot s):
    cdef bytes names = "\x00".join(s._nodes).encode("utf-8")
    cdef uint64_t h = cc_xxh64(<const char*>names, <size_t>len(names), <uint64_t>s.mode)
    cdef Py_ssize_t n = s.r.npoints
    pts = np.ascontiguousarray(s._points, dtype="<u8").tobytes()
    own = np.ascontiguousarray(s._owners, dtype="<i4").tobytes()
    h = cc_xxh64(<const char*>pts, <size_t>len(pts), h)
    h = cc_xxh64(<const char*>own, <size_t>len(own), h)
    return cc_xxh64_u64(<uint64_t>n, h)


def _snapshot_from_bytes(data):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WrongType(f"a ring's bytes must be bytes-like, not {_type_name(data)}")
    cdef bytes b = bytes(data)
    if len(b) < _HEADER.size + _TRAILER.size + _U64.size:
        raise BadArgument(f"not a coordcore ring: {len(b)} bytes is too short")
    magic, version, mode, _r1, _r2, vnodes, replicas, nnodes = _HEADER.unpack_from(b, 0)
    if magic != _FORMAT_MAGIC:
        raise BadArgument("not a coordcore ring (bad magic)")
    if version != _FORMAT_VERSION:
        raise BadArgument(f"ring format version {version} is not supported (this coordcore reads {_FORMAT_VERSION})")
    body = b[:len(b) - 8]
    (checksum,) = _U64.unpack_from(b, len(b) - 8)
    if cc_xxh64(<const char*>body, <size_t>len(body), 0) != checksum:
        raise BadArgument("the ring's bytes are corrupt (checksum mismatch)")
    if mode not in (MODE_XXH64, MODE_KETAMA) or _r1 or _r2:
        raise BadArgument(f"unknown ring hash mode {mode} or flags")
    pos = _HEADER.size
    names = []
    weights = {}
    try:
        for _ in range(nnodes):
            (ln,) = _U32.unpack_from(body, pos)
            pos += 4
            if pos + ln > len(body):
                raise BadArgument("the ring's bytes are truncated")
            name = body[pos:pos + ln].decode("utf-8")
            pos += ln
            (w,) = _F64.unpack_from(body, pos)
            pos += 8
            names.append(name)
            weights[name] = w
        npoints, fingerprint = _TRAILER.unpack_from(body, pos)
        pos += _TRAILER.size
    except (struct.error, UnicodeDecodeError) as exc:
        raise BadArgument(f"the ring's bytes are malformed ({exc})") from None
    if pos != len(body) or len(weights) != len(names):
        raise BadArgument("the ring's bytes are malformed (length or duplicate names)")
    snap = RingSnapshot(weights, vnodes=vnodes, hash=_MODE_NAMES[mode], replicas=replicas)
    if snap.points.shape[0] != npoints or snap.fingerprint != fingerprint:
        raise BadArgument(
            "these ring bytes describe a placement this coordcore version does not rebuild "
            "identically (fingerprint mismatch); load them with the version that wrote them"
        )
    return snap


@cython.final
cdef class RingBalance:
    """How evenly a ring splits the hash space: ``shares`` (each node's fraction),
    ``expected`` (its weight's fraction), ``points`` (points it owns), ``peak_to_mean``
    (largest share / expected; 1.0 is perfect), ``min_to_mean`` and ``peak_node``."""

    cdef readonly dict shares
    cdef readonly dict expected
    cdef readonly dict points
    cdef readonly double peak_to_mean
    cdef readonly double min_to_mean
    cdef readonly str peak_node

    def __init__(self, shares, expected, points, peak_to_mean, min_to_mean, peak_node):
        self.shares = dict(shares)
        self.expected = dict(expected)
        self.points = dict(points)
        self.peak_to_mean = peak_to_mean
        self.min_to_mean = min_to_mean
        self.peak_node = str(peak_node)

    def __repr__(self):
        return (f"RingBalance(nodes={len(self.shares)}, peak_to_mean={self.peak_to_mean:.4f}, "
                f"min_to_mean={self.min_to_mean:.4f}, peak_node={self.peak_node!r})")

    def __reduce__(self):
        return (RingBalance, (self.shares, self.expected, self.points, self.peak_to_mean,
                              self.min_to_mean, self.peak_node))


cdef RingSnapshot _EMPTY = RingSnapshot()
