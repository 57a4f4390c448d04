# Keys: how str, bytes, int and buffer keys (and sequences of them) are hashed.
# Included by ring.pyx (one module: these parts share its cdef declarations).

# --- keys -----------------------------------------------------------------------------

cdef str _type_name(object o):
    return type(o).__name__


cdef const char* _utf8(object s, Py_ssize_t* n) except NULL:
    try:
        return PyUnicode_AsUTF8AndSize(s, n)
    except UnicodeEncodeError as exc:
        raise BadArgument(f"str key {s!r} cannot be encoded as UTF-8 ({exc.reason})") from None


cdef uint64_t _int_bits(object key) except? 0:
    """An int key as the uint64 it is modulo 2**64; only [-2**63, 2**64) is accepted."""
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(key, &overflow)
    cdef unsigned long long u
    if overflow == 0:
        return <uint64_t>v
    if overflow > 0:  # [2**63, 2**64) is half of all 64-bit hashes: keep it in C
        u = PyLong_AsUnsignedLongLong_raw(key)
        if u != 0xFFFFFFFFFFFFFFFFULL or PyErr_Occurred() == NULL:
            return u
        PyErr_Clear()
    raise BadArgument(
        f"int key {key} is outside [-2**63, 2**64): int keys are hashed as 8 little-endian "
        "bytes; hash a bigger number's bytes instead (e.g. n.to_bytes(16, 'little'))"
    )


cdef object _as_index(object key):
    """The int behind a non-int key with __index__ (numpy integers), bool refused."""
    if PyBool_Check(key) or isinstance(key, np.bool_):
        raise WrongType("bool is not a key: pass int(flag) if you mean 0 or 1")
    try:
        return operator.index(key)
    except TypeError:
        raise _bad_key(key) from None


cdef uint64_t _xxh_buffer(object key, uint64_t seed) except? 0:
    cdef Py_buffer view
    cdef uint64_t h
    try:
        PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
    except BufferError as exc:
        raise BadArgument(f"a {_type_name(key)} key must be a contiguous buffer ({exc})") from None
    try:
        h = cc_xxh64(view.buf, <size_t>view.len, seed)
    finally:
        PyBuffer_Release(&view)
    return h


cdef uint64_t _ketama_buffer(object key) except? 0:
    cdef Py_buffer view
    cdef uint64_t h
    try:
        PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
    except BufferError as exc:
        raise BadArgument(f"a {_type_name(key)} key must be a contiguous buffer ({exc})") from None
    try:
        h = cc_ketama_hash(view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return h


cdef object _bad_key(object key):
    return WrongType(
        f"keys must be str, bytes (or bytearray/memoryview) or int, not {_type_name(key)}"
    )


cdef uint64_t _xxh_slow(object key, uint64_t seed) except? 0:
    cdef Py_ssize_t n
    cdef const char* p
    if PyUnicode_Check(key):
        p = _utf8(key, &n)
        return cc_xxh64(p, <size_t>n, seed)
    if PyBytes_Check(key) or PyByteArray_Check(key) or PyMemoryView_Check(key):
        return _xxh_buffer(key, seed)
    if PyLong_Check(key) or PyIndex_Check(key):
        return cc_xxh64_u64(_int_bits(_as_index(key)), seed)
    raise _bad_key(key)


cdef inline uint64_t _xxh_key(object key, uint64_t seed) except? 0:
    """xxh64 of a key's encoding: str as UTF-8, bytes as is, int as 8 LE bytes mod 2**64."""
    if PyUnicode_CheckExact(key):
        if PyUnicode_IS_COMPACT_ASCII(key):
            # ASCII str stores its bytes inline: no copy, no cached UTF-8 needed.
            return cc_xxh64(PyUnicode_DATA(key), <size_t>PyUnicode_GET_LENGTH(key), seed)
        return _xxh_slow(key, seed)
    if PyBytes_CheckExact(key):
        return cc_xxh64(PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key), seed)
    if PyLong_CheckExact(key):
        return cc_xxh64_u64(_int_bits(key), seed)
    return _xxh_slow(key, seed)


cdef uint64_t _ketama_key(object key) except? 0:
    """libketama's key hash: the first little-endian word of md5(key). str keys are UTF-8,
    int keys their decimal digits (as uhashring's str(key)), bytes-like keys as is."""
    cdef Py_ssize_t n
    cdef const char* p
    if PyUnicode_CheckExact(key) and PyUnicode_IS_COMPACT_ASCII(key):
        return cc_ketama_hash(PyUnicode_DATA(key), <size_t>PyUnicode_GET_LENGTH(key))
    if PyUnicode_Check(key):
        p = _utf8(key, &n)
        return cc_ketama_hash(p, <size_t>n)
    if PyBytes_CheckExact(key):
        return cc_ketama_hash(PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key))
    if PyBytes_Check(key) or PyByteArray_Check(key) or PyMemoryView_Check(key):
        return _ketama_buffer(key)
    if PyLong_Check(key) or PyIndex_Check(key):
        digits = int.__repr__(_as_index(key)).encode("ascii")
        return cc_ketama_hash(PyBytes_AS_STRING(digits), <size_t>PyBytes_GET_SIZE(digits))
    raise _bad_key(key)


cdef inline uint64_t _mode_key(int mode, object key) except? 0:
    if mode == MODE_XXH64:
        return _xxh_key(key, 0)
    return _ketama_key(key)


cdef object _key_seq(object keys):
    """The keys of a batch call as a list or tuple (lists are read in place, see _hash_span;
    any other iterable is copied into a tuple)."""
    if PyList_CheckExact(keys) or PyTuple_CheckExact(keys):
        return keys
    if isinstance(keys, (str, bytes, bytearray, memoryview)):
        raise WrongType(
            f"keys must be a sequence of keys, not a single {_type_name(keys)} "
            "(use the scalar call for one key)"
        )
    if isinstance(keys, np.ndarray):
        if keys.ndim != 1:
            raise BadArgument(f"keys must be one-dimensional, got shape {keys.shape}")
        return tuple(keys.tolist())
    try:
        return tuple(keys)
    except TypeError:
        raise WrongType(f"keys must be an iterable of keys, not {_type_name(keys)}") from None


cdef enum:
    KIND_XXH = 0      # hash64
    KIND_KETAMA = 1   # ketama's md5 word
    KIND_JUMP = 2     # jump hash keys: ints as they are, str/bytes through hash64

cdef enum:
    SPAN = 512  # keys hashed per step of a batch lookup (4 KiB of hashes, stays in L1)


cdef inline uint64_t _hash_kind(int kind, object key, uint64_t seed) except? 0:
    if kind == KIND_XXH:
        return _xxh_key(key, seed)
    if kind == KIND_KETAMA:
        return _ketama_key(key)
    return _jump_key(key)


cdef int _hash_span(int kind, object seq, Py_ssize_t start, Py_ssize_t stop, uint64_t seed,
                    uint64_t* out) except -1:
    """Hash seq[start:stop] (a list or tuple) into out[0:stop-start].

    ASCII str keys are hashed straight from the borrowed item: nothing in that path can
    run Python code, so the key cannot be freed under us. Any other key is hashed through
    a reference of our own, and since its conversion may run Python code (__index__)
    that mutates a list, a list's length is re-read for every item. On free-threaded builds
    the list is also held in a critical section, as CPython's own list iteration does."""
    cdef bint is_list = PyList_CheckExact(seq)
    cdef Py_ssize_t i, ahead
    cdef PyObject* o
    cdef object key
    with cython.critical_section(seq):
        for i in range(start, stop):
            if is_list:
                if i >= PyList_GET_SIZE(seq):
                    raise BadArgument("the list of keys changed size during the call")
                o = PyList_GET_ITEM_p(seq, i)
                ahead = i + 8
                if ahead < PyList_GET_SIZE(seq):
                    cc_prefetch(PyList_GET_ITEM_p(seq, ahead))
            else:
                o = PyTuple_GET_ITEM_p(seq, i)
                ahead = i + 8
                if ahead < stop:
                    cc_prefetch(PyTuple_GET_ITEM_p(seq, ahead))
            if PyUnicode_CheckExact_p(o) and PyUnicode_IS_COMPACT_ASCII_p(o):
                if kind == KIND_KETAMA:
                    out[i - start] = cc_ketama_hash(PyUnicode_DATA_p(o), <size_t>PyUnicode_GET_LENGTH_p(o))
                else:
                    out[i - start] = cc_xxh64(PyUnicode_DATA_p(o), <size_t>PyUnicode_GET_LENGTH_p(o), seed)
            else:
                # A strong reference: __index__ may drop the list's (list.clear()) and the
                # key must outlive its own conversion (its error message names its type).
                key = <object>o
                out[i - start] = _hash_kind(kind, key, seed)
                key = None
    return 0


cdef object _hash_seq(int kind, object seq, uint64_t seed, object out):
    """All hashes of a list or tuple of keys, as a uint64 array (``out`` if given)."""
    cdef Py_ssize_t m = len(seq)
    res = _out_array(out, (m,), _UINT64)
    cdef uint64_t[::1] o
    if m:
        o = res
        _hash_span(kind, seq, 0, m, seed, &o[0])
    return res


cdef object _uint64_keys(object keys):
    """A 1-D uint64 array's C-contiguous native-order form, or None if keys is not one."""
    if isinstance(keys, np.ndarray) and keys.dtype.kind == "u" and keys.dtype.itemsize == 8:
        if keys.ndim != 1:
            raise BadArgument(f"keys must be one-dimensional, got shape {keys.shape}")
        return np.ascontiguousarray(keys, dtype=_UINT64)
    return None


cdef object _int_array_as_u64(object keys):
    """Any 1-D numpy integer array as uint64 values modulo 2**64 (sign-extended), or None."""
    if not isinstance(keys, np.ndarray) or keys.dtype.kind not in "iu":
        return None
    if keys.ndim != 1:
        raise BadArgument(f"keys must be one-dimensional, got shape {keys.shape}")
    if keys.dtype.kind == "i":
        return np.ascontiguousarray(keys, dtype=_INT64).view(_UINT64)
    return np.ascontiguousarray(keys, dtype=_UINT64)


cdef object _out_array(object out, tuple shape, object dtype):
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise WrongType(f"out must be a numpy array, not {_type_name(out)}")
    if out.dtype != dtype:
        raise WrongType(f"out must have dtype {dtype}, not {out.dtype}")
    if out.shape != shape:
        raise BadArgument(f"out must have shape {shape}, not {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise BadArgument("out must be a writeable C-contiguous array")
    return out


cdef uint64_t _seed(object seed) except? 0:
    if PyBool_Check(seed) or not PyLong_Check(seed):
        raise WrongType(f"seed must be an int, not {_type_name(seed)}")
    if not 0 <= seed < 18446744073709551616:
        raise BadArgument(f"seed must be in [0, 2**64), got {seed}")
    return <uint64_t>seed
