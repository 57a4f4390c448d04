# The mutable ring: copy-on-write snapshots swapped under a lock, and fork safety.
# Included by ring.pyx (one module: these parts share its cdef declarations).

# --- the mutable ring -----------------------------------------------------------------

cdef class HashRing:
    """A consistent-hash ring that changes by swapping immutable snapshots.

    HashRing(nodes=(), *, vnodes=160, hash="xxh64", replicas=3)

    Lookups read the current :class:`RingSnapshot` and never lock; add_node and
    remove_node build a new snapshot (serialised by a writer lock) and swap it in, so a
    lookup sees either the old ring or the new one, never a half-built one. Node indices
    from batch lookups refer to one snapshot's ``nodes``: under concurrent changes, take
    ``snap = ring.snapshot()`` and use ``snap`` for both.
    """

    cdef RingSnapshot _snap
    cdef object _wlock
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self._snap = _EMPTY
        self._wlock = threading.Lock()
        _LIVE_RINGS.add(self)

    def __init__(self, nodes=(), *, vnodes=DEF_VNODES, hash="xxh64", replicas=DEF_REPLICAS):
        self._set(RingSnapshot(nodes, vnodes=vnodes, hash=hash, replicas=replicas))

    cdef inline RingSnapshot _get(self):
        cdef RingSnapshot s
        # A plain load under the GIL; on free-threaded builds the critical section keeps the
        # reference from being freed between the load and the incref by a concurrent swap.
        with cython.critical_section(self):
            s = self._snap
        return s

    cdef inline void _set(self, RingSnapshot s):
        with cython.critical_section(self):
            self._snap = s

    @classmethod
    def from_snapshot(cls, RingSnapshot snapshot not None):
        """A HashRing whose current snapshot is ``snapshot``."""
        cdef HashRing ring = cls.__new__(cls)
        ring._set(snapshot)
        return ring

    @classmethod
    def from_bytes(cls, data):
        """The ring that ``to_bytes`` wrote (see RingSnapshot.to_bytes)."""
        return cls.from_snapshot(_snapshot_from_bytes(data))

    def snapshot(self):
        """The current immutable snapshot."""
        return self._get()

    def add_node(self, name, weight=1):
        """Add node ``name`` (BadArgument if present): builds and swaps in a new snapshot."""
        with self._wlock:
            self._set(self._get().with_node(name, weight))

    def remove_node(self, name):
        """Remove node ``name`` (NotFound if absent): builds and swaps in a new snapshot."""
        with self._wlock:
            self._set(self._get().without_node(name))

    def with_node(self, name, weight=1):
        """A new HashRing with node ``name`` added; this one is unchanged."""
        return type(self).from_snapshot(self._get().with_node(name, weight))

    def without_node(self, name):
        """A new HashRing without node ``name``; this one is unchanged."""
        return type(self).from_snapshot(self._get().without_node(name))

    def node_for(self, key):
        """The node owning ``key`` (see RingSnapshot.node_for)."""
        return self._get()._node_for(key)

    def nodes_for(self, key, n):
        """``n`` distinct nodes for ``key`` in ring order (see RingSnapshot.nodes_for)."""
        return self._get()._nodes_for(key, n)

    def node_for_many(self, keys, out=None):
        """Node indices of many keys (see RingSnapshot.node_for_many)."""
        return self._get()._node_for_many(keys, out)

    def nodes_for_many(self, keys, n, out=None):
        """Replica sets of many keys as node indices (see RingSnapshot.nodes_for_many)."""
        return self._get()._nodes_for_many(keys, n, out)

    def bounded_index(self, key, loads, capacity):
        """Load-aware lookup (see RingSnapshot.bounded_index)."""
        return self._get()._bounded_index(key, loads, capacity)

    def hash_key(self, key):
        """The ring's hash of ``key`` (see RingSnapshot.hash_key)."""
        return _mode_key(self._get().mode, key)

    def hash_keys(self, keys, out=None):
        """The ring's hash of many keys (see RingSnapshot.hash_keys)."""
        return self._get().hash_keys(keys, out)

    def index_of(self, name):
        """The index of node ``name`` in the current ``nodes``."""
        return self._get().index_of(name)

    def shares(self):
        """Each node's fraction of the hash space (see RingSnapshot.shares)."""
        return self._get().shares()

    def balance(self):
        """Balance of the current snapshot (see RingSnapshot.balance)."""
        return self._get().balance()

    def to_bytes(self):
        """The current snapshot as bytes (see RingSnapshot.to_bytes)."""
        return self._get().to_bytes()

    @property
    def nodes(self):
        """The current node names."""
        return self._get()._nodes

    @property
    def weights(self):
        """The current weights, in the order of ``nodes``."""
        return self._get()._weights

    @property
    def vnodes(self):
        """Points per unit of weight (xxh64) or per average node (ketama)."""
        return self._get()._vnodes

    @property
    def replicas(self):
        """Width of the precomputed replica table."""
        return self._get()._replicas

    @property
    def hash_name(self):
        """'xxh64' or 'ketama'."""
        return _MODE_NAMES[self._get().mode]

    @property
    def fingerprint(self):
        """The current snapshot's placement fingerprint."""
        return self._get()._fingerprint

    def __len__(self):
        return len(self._get()._nodes)

    def __contains__(self, name):
        return name in self._get()._pos

    def __repr__(self):
        s = self._get()
        return (f"{type(self).__name__}({len(s._nodes)} nodes, {s.r.npoints} points, "
                f"hash={s.hash_name!r}, vnodes={s._vnodes}, replicas={s._replicas})")

    def __reduce__(self):
        return (type(self).from_bytes, (self.to_bytes(),))


# A child forked while another thread was inside add_node/remove_node would inherit a
# held writer lock and deadlock on its next change. The ring itself is always whole (a
# writer's only mutation is the final swap), so the child just gets fresh locks.
_LIVE_RINGS = weakref.WeakSet()


def _reset_locks_after_fork():
    cdef HashRing ring
    for obj in list(_LIVE_RINGS):
        ring = <HashRing>obj
        ring._wlock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_after_fork)
