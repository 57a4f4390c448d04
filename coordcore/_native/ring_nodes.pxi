# Node sets: names, weights and the checks of constructor arguments.
# Included by ring.pyx (one module: these parts share its cdef declarations).

# --- node sets ------------------------------------------------------------------------

cdef double _weight(object name, object w, bint whole) except -1.0:
    if PyBool_Check(w) or isinstance(w, np.bool_) or not isinstance(w, numbers.Real):
        raise WrongType(f"the weight of node {name!r} must be a number, not {_type_name(w)}")
    cdef double d
    try:
        d = float(w)
    except OverflowError:
        raise BadArgument(f"the weight of node {name!r} is too large: {w}") from None
    if not math.isfinite(d) or d <= 0.0:
        raise BadArgument(
            f"the weight of node {name!r} must be a positive finite number, got {w!r} "
            "(remove the node instead of giving it weight 0)"
        )
    if whole and (d != floor(d) or d > 4294967295.0):
        raise BadArgument(
            f"ketama weights are whole numbers up to 2**32 - 1 (libketama's continuum); "
            f"node {name!r} has weight {w!r}"
        )
    return d


cdef str _node_name(object name):
    if not PyUnicode_Check(name):
        raise WrongType(f"node names must be str, not {_type_name(name)}: {name!r}")
    cdef Py_ssize_t n
    _utf8(name, &n)  # refuses names that cannot be encoded (lone surrogates)
    return str(name)


cdef tuple _parse_nodes(object nodes, bint whole):
    """(names, weights) from an iterable of names or a mapping name -> weight."""
    if isinstance(nodes, (str, bytes)):
        raise WrongType(
            f"nodes must be an iterable of names or a mapping name -> weight, not a single "
            f"{_type_name(nodes)}; write [{nodes!r}] for one node"
        )
    names = []
    weights = []
    if hasattr(nodes, "keys") and hasattr(nodes, "__getitem__"):
        for name in nodes.keys():
            names.append(_node_name(name))
            weights.append(_weight(name, nodes[name], whole))
    else:
        try:
            it = iter(nodes)
        except TypeError:
            raise WrongType(
                f"nodes must be an iterable of names or a mapping name -> weight, not {_type_name(nodes)}"
            ) from None
        for name in it:
            names.append(_node_name(name))
            weights.append(1.0)
    seen = set()
    for name in names:
        if name in seen:
            raise BadArgument(f"node {name!r} is listed twice")
        seen.add(name)
    if len(names) > MAX_NODES:
        raise BadArgument(f"at most {MAX_NODES} nodes, got {len(names)}")
    return tuple(names), tuple(weights)


cdef int _mode_of(object hash) except -1:
    if not isinstance(hash, str):
        raise WrongType(f"hash must be 'xxh64' or 'ketama', not {_type_name(hash)}")
    try:
        return _MODES[hash]
    except KeyError:
        raise BadArgument(f"hash must be 'xxh64' or 'ketama', not {hash!r}") from None


cdef int _positive_int(object value, str what, long long low, long long high) except -1:
    if PyBool_Check(value) or not PyLong_Check(value):
        raise WrongType(f"{what} must be an int, not {_type_name(value)}")
    if not low <= value <= high:
        raise BadArgument(f"{what} must be in [{low}, {high}], got {value}")
    return <int>value


cdef object _readonly(object arr):
    arr.flags.writeable = False
    return arr


cdef object _frozen(object arr):
    """A copy of ``arr`` backed by an immutable bytes object. A read-only flag alone is not
    enough: an array that owns its memory can be made writeable again (also through a
    view's ``.base``), and the lookups trust these arrays without bounds checks."""
    return np.frombuffer(arr.tobytes(), dtype=arr.dtype).reshape(arr.shape)
