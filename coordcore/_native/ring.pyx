# Consistent hashing hot paths: the ring snapshot (sorted points + owners + a top-bits
# bucket index + a replica successor table), jump consistent hash and rendezvous hashing.
# The C underneath (xxHash64 and MD5 from their published algorithms, jump hash, the
# lookups) is in cc_hash.h, cc_md5.h, cc_jump.h and cc_ring.h; the parts of this module
# are the ring_*.pxi files included at its end, one concern each.
#
# Users import coordcore.ring; this module is its compiled core. The loops touch no
# Python objects except where they must read a key's bytes; loops over numpy arrays run
# without the GIL.
cimport cython
from cpython.object cimport PyObject
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from libc.math cimport log, floor
from coordcore._native.cc cimport (CC_DEBUG, CC_PAD, cc_calloc, cc_free, cc_fmix64, cc_jump, cc_jump_many,
    cc_ketama_hash, cc_live_blocks, cc_malloc, cc_md5_words, cc_prefetch, cc_ring, cc_ring_build_index,
    cc_ring_build_succ, cc_ring_find, cc_ring_walk, cc_xxh64, cc_xxh64_u64)

import math
import numbers
import operator
import os
import struct
import threading
import weakref

import numpy as np

from coordcore.errors import BadArgument, EmptyRing, NotFound, Unavailable, WrongType


cdef extern from "Python.h":
    bint PyUnicode_CheckExact(object)
    bint PyUnicode_Check(object)
    bint PyBytes_CheckExact(object)
    bint PyBytes_Check(object)
    bint PyLong_CheckExact(object)
    bint PyLong_Check(object)
    bint PyBool_Check(object)
    bint PyByteArray_Check(object)
    bint PyMemoryView_Check(object)
    bint PyIndex_Check(object)
    int PyUnicode_IS_COMPACT_ASCII(object)
    const void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL
    const char* PyBytes_AS_STRING(object)
    Py_ssize_t PyBytes_GET_SIZE(object)
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1
    unsigned long long PyLong_AsUnsignedLongLong(object) except? -1
    # The same without Cython's error check: _int_bits clears the OverflowError itself.
    unsigned long long PyLong_AsUnsignedLongLong_raw "PyLong_AsUnsignedLongLong"(object)
    PyObject* PyErr_Occurred()
    void PyErr_Clear()
    bint PyList_CheckExact(object)
    bint PyTuple_CheckExact(object)
    Py_ssize_t PyList_GET_SIZE(object)
    Py_ssize_t PyTuple_GET_SIZE(object)
    # Borrowed-pointer forms for the batch loops: no reference counting per key.
    PyObject* PyList_GET_ITEM_p "PyList_GET_ITEM"(object, Py_ssize_t)
    PyObject* PyTuple_GET_ITEM_p "PyTuple_GET_ITEM"(object, Py_ssize_t)
    bint PyUnicode_CheckExact_p "PyUnicode_CheckExact"(PyObject*)
    int PyUnicode_IS_COMPACT_ASCII_p "PyUnicode_IS_COMPACT_ASCII"(PyObject*)
    const void* PyUnicode_DATA_p "PyUnicode_DATA"(PyObject*)
    Py_ssize_t PyUnicode_GET_LENGTH_p "PyUnicode_GET_LENGTH"(PyObject*)



# --- constants ----------------------------------------------------------------------

DEF_VNODES = 160
DEF_REPLICAS = 3
#: Widest precomputed replica table; nodes_for(key, n) with larger n walks the ring.
MAX_REPLICAS = 64
#: Upper bound on a ring's points (12 bytes each, plus the index and replica table).
MAX_POINTS = 1 << 26
#: Most nodes a ring or a rendezvous set holds (owners are int32; this keeps tables sane).
MAX_NODES = 1 << 20
#: Seed of rendezvous node hashes, so a node named like a key does not score specially.
RENDEZVOUS_SEED = 0x52454E44455A564F

cdef enum:
    MODE_XXH64 = 0
    MODE_KETAMA = 1

cdef dict _MODES = {"xxh64": MODE_XXH64, "ketama": MODE_KETAMA}
cdef tuple _MODE_NAMES = ("xxh64", "ketama")

_FORMAT_MAGIC = b"CCRING"
_FORMAT_VERSION = 1
_HEADER = struct.Struct("<6sHBBHIII")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_TRAILER = struct.Struct("<IQ")
_U64 = struct.Struct("<Q")

_UINT64 = np.dtype(np.uint64)
_INT32 = np.dtype(np.int32)
_INT64 = np.dtype(np.int64)


def live_blocks():
    """How many C blocks this module holds now (a leak test reads it before and after)."""
    return cc_live_blocks()


include "ring_keys.pxi"
include "ring_hash.pxi"
include "ring_nodes.pxi"
include "ring_snapshot.pxi"
include "ring_mutable.pxi"
include "ring_rendezvous.pxi"
