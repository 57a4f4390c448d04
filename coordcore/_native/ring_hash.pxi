# The hash functions users call: hash64, ketama's MD5 and jump hash, one key and many.
# Included by ring.pyx (one module: these parts share its cdef declarations).

# --- hashing --------------------------------------------------------------------------

def hash64(key, seed=0):
    """xxHash64 of a key's encoding (str as UTF-8, bytes as is, int as 8 little-endian
    bytes modulo 2**64), seed 0 by default; the same value as ``xxhash.xxh64_intdigest``.

    >>> hash64("abc") == hash64(b"abc") == 0x44BC2CF5AD770999
    True
    >>> hash64(1) == hash64((1).to_bytes(8, "little"))
    True
    """
    return _xxh_key(key, _seed(seed))


def hash64_many(keys, seed=0, out=None):
    """hash64 of every key, into a uint64 array (``out`` if given). ``keys`` is a sequence
    of keys or a numpy integer array (its values are int keys; hashed without the GIL).

    >>> import numpy as np
    >>> bool(hash64_many(["abc", 1])[0] == hash64("abc"))
    True
    >>> bool(hash64_many(np.arange(3))[2] == hash64(2))
    True
    """
    cdef uint64_t s = _seed(seed)
    cdef Py_ssize_t i, m
    cdef uint64_t[::1] o
    cdef const uint64_t[::1] src
    arr = _int_array_as_u64(keys)
    if arr is not None:
        m = arr.shape[0]
        res = _out_array(out, (m,), _UINT64)
        if m:
            src = arr
            o = res
            with nogil:
                for i in range(m):
                    o[i] = cc_xxh64_u64(src[i], s)
        return res
    return _hash_seq(KIND_XXH, _key_seq(keys), s, out)


def ketama_hash(key):
    """libketama's 32-bit hash of a key: the first little-endian word of its md5 digest.

    >>> import hashlib
    >>> ketama_hash("abc") == int.from_bytes(hashlib.md5(b"abc").digest()[:4], "little")
    True
    """
    return _ketama_key(key)


def md5_words(data):
    """The md5 digest of ``data`` (bytes) as four little-endian 32-bit words; the native
    MD5 that ketama points are made of, exposed so tests can check it against hashlib."""
    cdef uint32_t w[4]
    cdef const unsigned char[::1] view = data
    cdef const unsigned char* p = &view[0] if view.shape[0] else <const unsigned char*>b""
    cc_md5_words(p, <size_t>view.shape[0], w)
    return (w[0], w[1], w[2], w[3])


# --- jump hash ------------------------------------------------------------------------

cdef long long _small_int(object value, str what) except? -1:
    """An int argument as a C long long, compared in C on the hot path; huge values clamp
    to +-2**63 - 1 so that the caller's range check reports them."""
    cdef int overflow = 0
    cdef long long v
    if PyBool_Check(value) or not PyLong_Check(value):
        raise WrongType(f"{what} must be an int, not {_type_name(value)}")
    v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow:
        return 9223372036854775807 if overflow > 0 else -9223372036854775807
    return v


cdef int32_t _buckets(object buckets) except -1:
    cdef long long v = _small_int(buckets, "buckets")
    if not 0 < v <= 2147483647:
        raise BadArgument(f"buckets must be in [1, 2**31 - 1], got {buckets}")
    return <int32_t>v


cdef uint64_t _jump_key(object key) except? 0:
    if PyLong_CheckExact(key):
        return _int_bits(key)
    if PyUnicode_Check(key) or PyBytes_Check(key) or PyByteArray_Check(key) or PyMemoryView_Check(key):
        return _xxh_key(key, 0)
    if PyLong_Check(key) or PyIndex_Check(key):
        return _int_bits(_as_index(key))
    raise _bad_key(key)


def jump_hash(key, buckets):
    """Lamping and Veach's jump consistent hash: the bucket in [0, buckets) of a 64-bit key.

    An int key is the 64-bit key itself (modulo 2**64, as in the paper); a str or bytes
    key is first hashed with :func:`hash64`. Buckets are numbered 0..buckets-1 and only
    the last can go away: to remove a middle one, use HashRing or Rendezvous, or keep
    jump hash over stable slots and map slots to nodes through a table you edit.

    >>> jump_hash(10863919174838991, 11), jump_hash(2, 100001)  # Guava's golden values
    (6, 80343)
    """
    cdef int32_t n = _buckets(buckets)
    return cc_jump(_jump_key(key), n)


def jump_hash_many(keys, buckets, out=None):
    """jump_hash of every key into an int32 array (``out`` if given). ``keys`` is a numpy
    integer array (the 64-bit keys, no GIL held) or a sequence of keys as for jump_hash.

    >>> import numpy as np
    >>> jump_hash_many(np.arange(5, dtype=np.uint64), 100).tolist()
    [0, 55, 62, 8, 45]
    """
    cdef int32_t n = _buckets(buckets)
    cdef Py_ssize_t i, m
    cdef int32_t[::1] o
    cdef const uint64_t[::1] src
    arr = _int_array_as_u64(keys)
    if arr is None:
        arr = _hash_seq(KIND_JUMP, _key_seq(keys), 0, None)
    m = arr.shape[0]
    res = _out_array(out, (m,), _INT32)
    if m:
        src = arr
        o = res
        with nogil:
            cc_jump_many(&src[0], m, n, &o[0])
    return res
