# Consistent hashing hot paths: xxHash64 and MD5 (from their published algorithms), the
# ring snapshot (sorted points + owners + a top-bits bucket index + a replica successor
# table), jump consistent hash and rendezvous hashing.
#
# Users import coordcore.ring; this module is its compiled core. The loops below touch no
# Python objects except where they must read a key's bytes; loops over numpy arrays run
# without the GIL.
cimport cython
from cpython.object cimport PyObject
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy
from libc.math cimport log, floor

import math
import numbers
import operator
import os
import struct
import threading
import weakref

import numpy as np

from coordcore.errors import BadArgument, EmptyRing, NotFound, Unavailable, WrongType

cdef extern from *:
    """
    #ifndef CC_DEBUG
    #define CC_DEBUG 0
    #endif
    """
    const bint CC_DEBUG

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

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    /* ---- byte order: the hashes are defined on little-endian words ---------------- */
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define CC_LE64(x) __builtin_bswap64(x)
    #define CC_LE32(x) __builtin_bswap32(x)
    #else
    #define CC_LE64(x) (x)
    #define CC_LE32(x) (x)
    #endif

    static inline uint64_t cc_read64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return CC_LE64(v); }
    static inline uint32_t cc_read32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return CC_LE32(v); }
    static inline uint64_t cc_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
    static inline uint32_t cc_rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

    /* ---- xxHash64 (Yann Collet's specification, XXH64) ----------------------------- */
    #define CC_P64_1 0x9E3779B185EBCA87ULL
    #define CC_P64_2 0xC2B2AE3D27D4EB4FULL
    #define CC_P64_3 0x165667B19E3779F9ULL
    #define CC_P64_4 0x85EBCA77C2B2AE63ULL
    #define CC_P64_5 0x27D4EB2F165667C5ULL

    static inline uint64_t cc_xxh64_round(uint64_t acc, uint64_t input) {
        acc += input * CC_P64_2;
        acc = cc_rotl64(acc, 31);
        return acc * CC_P64_1;
    }
    static inline uint64_t cc_xxh64_merge(uint64_t acc, uint64_t val) {
        acc ^= cc_xxh64_round(0, val);
        return acc * CC_P64_1 + CC_P64_4;
    }
    static inline uint64_t cc_xxh64_avalanche(uint64_t h) {
        h ^= h >> 33; h *= CC_P64_2;
        h ^= h >> 29; h *= CC_P64_3;
        h ^= h >> 32;
        return h;
    }
    static inline uint64_t cc_xxh64(const void *data, size_t len, uint64_t seed) {
        const uint8_t *p = (const uint8_t *)data;
        const uint8_t *end = p + len;
        uint64_t h;
        if (len >= 32) {
            const uint8_t *limit = end - 32;
            uint64_t v1 = seed + CC_P64_1 + CC_P64_2, v2 = seed + CC_P64_2;
            uint64_t v3 = seed, v4 = seed - CC_P64_1;
            do {
                v1 = cc_xxh64_round(v1, cc_read64(p));
                v2 = cc_xxh64_round(v2, cc_read64(p + 8));
                v3 = cc_xxh64_round(v3, cc_read64(p + 16));
                v4 = cc_xxh64_round(v4, cc_read64(p + 24));
                p += 32;
            } while (p <= limit);
            h = cc_rotl64(v1, 1) + cc_rotl64(v2, 7) + cc_rotl64(v3, 12) + cc_rotl64(v4, 18);
            h = cc_xxh64_merge(h, v1); h = cc_xxh64_merge(h, v2);
            h = cc_xxh64_merge(h, v3); h = cc_xxh64_merge(h, v4);
        } else {
            h = seed + CC_P64_5;
        }
        h += (uint64_t)len;
        while (p + 8 <= end) {
            h ^= cc_xxh64_round(0, cc_read64(p));
            h = cc_rotl64(h, 27) * CC_P64_1 + CC_P64_4;
            p += 8;
        }
        if (p + 4 <= end) {
            h ^= (uint64_t)cc_read32(p) * CC_P64_1;
            h = cc_rotl64(h, 23) * CC_P64_2 + CC_P64_3;
            p += 4;
        }
        while (p < end) {
            h ^= (uint64_t)(*p) * CC_P64_5;
            h = cc_rotl64(h, 11) * CC_P64_1;
            p++;
        }
        return cc_xxh64_avalanche(h);
    }
    /* xxh64 of the 8 little-endian bytes of v: the encoding of int keys. */
    static inline uint64_t cc_xxh64_u64(uint64_t v, uint64_t seed) {
        uint64_t h = seed + CC_P64_5 + 8;
        h ^= cc_xxh64_round(0, v);
        h = cc_rotl64(h, 27) * CC_P64_1 + CC_P64_4;
        return cc_xxh64_avalanche(h);
    }

    /* ---- MD5, for ketama compatibility ----------------------------------------------- */
    /* MD5 (RFC 1321), unrolled: the four round functions and the 64 steps, as published. */
    #define CC_MD5_F(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
    #define CC_MD5_G(x, y, z) ((y) ^ ((z) & ((x) ^ (y))))
    #define CC_MD5_H(x, y, z) ((x) ^ (y) ^ (z))
    #define CC_MD5_I(x, y, z) ((y) ^ ((x) | ~(z)))
    #define CC_MD5_STEP(f, a, b, c, d, x, t, s) \
        do { (a) += f((b), (c), (d)) + (x) + (t); (a) = cc_rotl32((a), (s)) + (b); } while (0)
    static void cc_md5_block(uint32_t st[4], const uint8_t *blk) {
        uint32_t m[16];
        for (int i = 0; i < 16; i++) m[i] = cc_read32(blk + 4 * i);
        uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
        CC_MD5_STEP(CC_MD5_F, a, b, c, d, m[0], 0xd76aa478U, 7);
        CC_MD5_STEP(CC_MD5_F, d, a, b, c, m[1], 0xe8c7b756U, 12);
        CC_MD5_STEP(CC_MD5_F, c, d, a, b, m[2], 0x242070dbU, 17);
        CC_MD5_STEP(CC_MD5_F, b, c, d, a, m[3], 0xc1bdceeeU, 22);
        CC_MD5_STEP(CC_MD5_F, a, b, c, d, m[4], 0xf57c0fafU, 7);
        CC_MD5_STEP(CC_MD5_F, d, a, b, c, m[5], 0x4787c62aU, 12);
        CC_MD5_STEP(CC_MD5_F, c, d, a, b, m[6], 0xa8304613U, 17);
        CC_MD5_STEP(CC_MD5_F, b, c, d, a, m[7], 0xfd469501U, 22);
        CC_MD5_STEP(CC_MD5_F, a, b, c, d, m[8], 0x698098d8U, 7);
        CC_MD5_STEP(CC_MD5_F, d, a, b, c, m[9], 0x8b44f7afU, 12);
        CC_MD5_STEP(CC_MD5_F, c, d, a, b, m[10], 0xffff5bb1U, 17);
        CC_MD5_STEP(CC_MD5_F, b, c, d, a, m[11], 0x895cd7beU, 22);
        CC_MD5_STEP(CC_MD5_F, a, b, c, d, m[12], 0x6b901122U, 7);
        CC_MD5_STEP(CC_MD5_F, d, a, b, c, m[13], 0xfd987193U, 12);
        CC_MD5_STEP(CC_MD5_F, c, d, a, b, m[14], 0xa679438eU, 17);
        CC_MD5_STEP(CC_MD5_F, b, c, d, a, m[15], 0x49b40821U, 22);
        CC_MD5_STEP(CC_MD5_G, a, b, c, d, m[1], 0xf61e2562U, 5);
        CC_MD5_STEP(CC_MD5_G, d, a, b, c, m[6], 0xc040b340U, 9);
        CC_MD5_STEP(CC_MD5_G, c, d, a, b, m[11], 0x265e5a51U, 14);
        CC_MD5_STEP(CC_MD5_G, b, c, d, a, m[0], 0xe9b6c7aaU, 20);
        CC_MD5_STEP(CC_MD5_G, a, b, c, d, m[5], 0xd62f105dU, 5);
        CC_MD5_STEP(CC_MD5_G, d, a, b, c, m[10], 0x02441453U, 9);
        CC_MD5_STEP(CC_MD5_G, c, d, a, b, m[15], 0xd8a1e681U, 14);
        CC_MD5_STEP(CC_MD5_G, b, c, d, a, m[4], 0xe7d3fbc8U, 20);
        CC_MD5_STEP(CC_MD5_G, a, b, c, d, m[9], 0x21e1cde6U, 5);
        CC_MD5_STEP(CC_MD5_G, d, a, b, c, m[14], 0xc33707d6U, 9);
        CC_MD5_STEP(CC_MD5_G, c, d, a, b, m[3], 0xf4d50d87U, 14);
        CC_MD5_STEP(CC_MD5_G, b, c, d, a, m[8], 0x455a14edU, 20);
        CC_MD5_STEP(CC_MD5_G, a, b, c, d, m[13], 0xa9e3e905U, 5);
        CC_MD5_STEP(CC_MD5_G, d, a, b, c, m[2], 0xfcefa3f8U, 9);
        CC_MD5_STEP(CC_MD5_G, c, d, a, b, m[7], 0x676f02d9U, 14);
        CC_MD5_STEP(CC_MD5_G, b, c, d, a, m[12], 0x8d2a4c8aU, 20);
        CC_MD5_STEP(CC_MD5_H, a, b, c, d, m[5], 0xfffa3942U, 4);
        CC_MD5_STEP(CC_MD5_H, d, a, b, c, m[8], 0x8771f681U, 11);
        CC_MD5_STEP(CC_MD5_H, c, d, a, b, m[11], 0x6d9d6122U, 16);
        CC_MD5_STEP(CC_MD5_H, b, c, d, a, m[14], 0xfde5380cU, 23);
        CC_MD5_STEP(CC_MD5_H, a, b, c, d, m[1], 0xa4beea44U, 4);
        CC_MD5_STEP(CC_MD5_H, d, a, b, c, m[4], 0x4bdecfa9U, 11);
        CC_MD5_STEP(CC_MD5_H, c, d, a, b, m[7], 0xf6bb4b60U, 16);
        CC_MD5_STEP(CC_MD5_H, b, c, d, a, m[10], 0xbebfbc70U, 23);
        CC_MD5_STEP(CC_MD5_H, a, b, c, d, m[13], 0x289b7ec6U, 4);
        CC_MD5_STEP(CC_MD5_H, d, a, b, c, m[0], 0xeaa127faU, 11);
        CC_MD5_STEP(CC_MD5_H, c, d, a, b, m[3], 0xd4ef3085U, 16);
        CC_MD5_STEP(CC_MD5_H, b, c, d, a, m[6], 0x04881d05U, 23);
        CC_MD5_STEP(CC_MD5_H, a, b, c, d, m[9], 0xd9d4d039U, 4);
        CC_MD5_STEP(CC_MD5_H, d, a, b, c, m[12], 0xe6db99e5U, 11);
        CC_MD5_STEP(CC_MD5_H, c, d, a, b, m[15], 0x1fa27cf8U, 16);
        CC_MD5_STEP(CC_MD5_H, b, c, d, a, m[2], 0xc4ac5665U, 23);
        CC_MD5_STEP(CC_MD5_I, a, b, c, d, m[0], 0xf4292244U, 6);
        CC_MD5_STEP(CC_MD5_I, d, a, b, c, m[7], 0x432aff97U, 10);
        CC_MD5_STEP(CC_MD5_I, c, d, a, b, m[14], 0xab9423a7U, 15);
        CC_MD5_STEP(CC_MD5_I, b, c, d, a, m[5], 0xfc93a039U, 21);
        CC_MD5_STEP(CC_MD5_I, a, b, c, d, m[12], 0x655b59c3U, 6);
        CC_MD5_STEP(CC_MD5_I, d, a, b, c, m[3], 0x8f0ccc92U, 10);
        CC_MD5_STEP(CC_MD5_I, c, d, a, b, m[10], 0xffeff47dU, 15);
        CC_MD5_STEP(CC_MD5_I, b, c, d, a, m[1], 0x85845dd1U, 21);
        CC_MD5_STEP(CC_MD5_I, a, b, c, d, m[8], 0x6fa87e4fU, 6);
        CC_MD5_STEP(CC_MD5_I, d, a, b, c, m[15], 0xfe2ce6e0U, 10);
        CC_MD5_STEP(CC_MD5_I, c, d, a, b, m[6], 0xa3014314U, 15);
        CC_MD5_STEP(CC_MD5_I, b, c, d, a, m[13], 0x4e0811a1U, 21);
        CC_MD5_STEP(CC_MD5_I, a, b, c, d, m[4], 0xf7537e82U, 6);
        CC_MD5_STEP(CC_MD5_I, d, a, b, c, m[11], 0xbd3af235U, 10);
        CC_MD5_STEP(CC_MD5_I, c, d, a, b, m[2], 0x2ad7d2bbU, 15);
        CC_MD5_STEP(CC_MD5_I, b, c, d, a, m[9], 0xeb86d391U, 21);
        st[0] += a; st[1] += b; st[2] += c; st[3] += d;
    }
    /* The four little-endian 32-bit words of md5(data): ketama's points are exactly these. */
    static void cc_md5_words(const void *data, size_t len, uint32_t out[4]) {
        const uint8_t *p = (const uint8_t *)data;
        uint32_t st[4] = {0x67452301U, 0xefcdab89U, 0x98badcfeU, 0x10325476U};
        size_t left = len;
        while (left >= 64) { cc_md5_block(st, p); p += 64; left -= 64; }
        uint8_t tail[128];
        memset(tail, 0, sizeof tail);
        if (left) memcpy(tail, p, left);
        tail[left] = 0x80;
        size_t tlen = left < 56 ? 64 : 128;
        uint64_t bits = (uint64_t)len * 8;
        for (int i = 0; i < 8; i++) tail[tlen - 8 + i] = (uint8_t)(bits >> (8 * i));
        cc_md5_block(st, tail);
        if (tlen == 128) cc_md5_block(st, tail + 64);
        for (int i = 0; i < 4; i++) out[i] = st[i];
    }
    static inline uint64_t cc_ketama_hash(const void *data, size_t len) {
        uint32_t w[4];
        cc_md5_words(data, len, w);
        return (uint64_t)w[0];
    }

    /* ---- jump consistent hash (Lamping and Veach, 2014) ------------------------------ */
    #define CC_JUMP_MUL 2862933555777941757ULL
    static inline int32_t cc_jump(uint64_t key, int32_t buckets) {
        int64_t b = -1, j = 0;
        while (j < buckets) {
            b = j;
            key = key * CC_JUMP_MUL + 1;
            j = (int64_t)((double)(b + 1) * ((double)(1LL << 31) / (double)((key >> 33) + 1)));
        }
        return (int32_t)b;
    }
    /* The same function on CC_LANES keys in lockstep: every lane steps every round (a lane
       that is done keeps its values through a select), so the divisions of different keys
       overlap instead of waiting on one key's chain and on a mispredicted loop exit. */
    #define CC_LANES 8
    static void cc_jump_many(const uint64_t *keys, Py_ssize_t n, int32_t buckets, int32_t *out) {
        Py_ssize_t i = 0;
        for (; i + CC_LANES <= n; i += CC_LANES) {
            uint64_t k[CC_LANES];
            int64_t b[CC_LANES], j[CC_LANES];
            for (int l = 0; l < CC_LANES; l++) { k[l] = keys[i + l]; b[l] = -1; j[l] = 0; }
            for (;;) {
                int active = 0;
                for (int l = 0; l < CC_LANES; l++) {
                    int go = j[l] < buckets;
                    active |= go;
                    uint64_t nk = k[l] * CC_JUMP_MUL + 1;
                    int64_t nb = j[l];
                    int64_t nj = (int64_t)((double)(nb + 1) * ((double)(1LL << 31) / (double)((nk >> 33) + 1)));
                    k[l] = go ? nk : k[l];
                    b[l] = go ? nb : b[l];
                    j[l] = go ? nj : j[l];
                }
                if (!active) break;
            }
            for (int l = 0; l < CC_LANES; l++) out[i + l] = (int32_t)b[l];
        }
        for (; i < n; i++) out[i] = cc_jump(keys[i], buckets);
    }

    /* ---- rendezvous scores ----------------------------------------------------------- */
    static inline uint64_t cc_fmix64(uint64_t z) {  /* MurmurHash3's finaliser: a bijection */
        z ^= z >> 33; z *= 0xff51afd7ed558ccdULL;
        z ^= z >> 33; z *= 0xc4ceb9fe1a85ec53ULL;
        z ^= z >> 33;
        return z;
    }

    /* ---- ring lookups ------------------------------------------------------------------ */
    typedef struct {
        const uint64_t *points;   /* sorted, strictly increasing */
        const int32_t *owners;    /* node index of each point */
        const uint32_t *index;    /* (1 << bits) + 1 entries: first point whose bucket >= b */
        const int32_t *succ;      /* npoints rows of `width` distinct nodes in ring order */
        uint64_t hmask;           /* the hash's bits: 32 for ketama, 64 for xxh64 */
        Py_ssize_t npoints;
        int shift;                /* bucket of h = h >> shift */
        int width;
    } cc_ring;

    /* The first point at or after h, wrapping to point 0 (libketama's and libmemcached's
       rule). The bucket index leaves about one point to look at. Points of later buckets
       are all > h and the array carries CC_PAD sentinels (UINT64_MAX) after its end, so
       counting the points below h among the next four needs no branch per point; a
       crowded bucket (hostile node names) takes a binary search instead. */
    #define CC_PAD 4
    #if defined(__GNUC__)
    #define CC_LIKELY(x) __builtin_expect(!!(x), 1)
    #define CC_PREFETCH(p) __builtin_prefetch(p)
    #else
    #define CC_LIKELY(x) (x)
    #define CC_PREFETCH(p) ((void)0)
    #endif
    static inline Py_ssize_t cc_ring_find(const cc_ring *r, uint64_t h) {
        /* Batch callers validate ketama hashes (< 2**32) before the lookup loop, but the
           array may change in between (another thread, no GIL held): masking keeps the
           bucket inside the index whatever the value. */
        h &= r->hmask;
        uint64_t bucket = h >> r->shift;
        Py_ssize_t i = (Py_ssize_t)r->index[bucket], e = (Py_ssize_t)r->index[bucket + 1];
        if (CC_LIKELY(e - i <= CC_PAD)) {
            const uint64_t *p = r->points + i;
            i += (Py_ssize_t)(p[0] < h) + (Py_ssize_t)(p[1] < h)
               + (Py_ssize_t)(p[2] < h) + (Py_ssize_t)(p[3] < h);
        } else {
            while (i < e) {
                Py_ssize_t mid = i + ((e - i) >> 1);
                if (r->points[mid] < h) i = mid + 1; else e = mid;
            }
        }
        return i == r->npoints ? 0 : i;
    }
    static inline void cc_prefetch(const void *p) { CC_PREFETCH(p); CC_PREFETCH((const char *)p + 64); }

    static void cc_ring_build_index(const uint64_t *points, Py_ssize_t n, int shift, int bits,
                                    uint32_t *index) {
        Py_ssize_t i = 0;
        uint64_t nb = (uint64_t)1 << bits;
        for (uint64_t b = 0; b <= nb; b++) {
            while (i < n && (points[i] >> shift) < b) i++;
            index[b] = (uint32_t)i;
        }
    }

    /* Row i: the first `width` distinct owners met walking the ring from point i.
       `stamp` has one slot per node, initialised to -1. width <= distinct owners. */
    static void cc_ring_build_succ(const int32_t *owners, Py_ssize_t n, int width,
                                   int64_t *stamp, int32_t *succ) {
        for (Py_ssize_t i = 0; i < n; i++) {
            int got = 0;
            Py_ssize_t j = i;
            while (got < width) {
                int32_t o = owners[j];
                if (stamp[o] != (int64_t)i) { stamp[o] = (int64_t)i; succ[i * width + got++] = o; }
                j = (j + 1 == n) ? 0 : j + 1;
            }
        }
    }

    /* Walk from point i collecting `want` distinct owners into out (n > width case). */
    static void cc_ring_walk(const cc_ring *r, Py_ssize_t i, int want, uint8_t *seen, int32_t *out) {
        int got = 0;
        while (got < want) {
            int32_t o = r->owners[i];
            if (!seen[o]) { seen[o] = 1; out[got++] = o; }
            i = (i + 1 == r->npoints) ? 0 : i + 1;
        }
        for (int k = 0; k < got; k++) seen[out[k]] = 0;
    }
    """
    uint64_t cc_xxh64(const void* data, size_t length, uint64_t seed) noexcept nogil
    uint64_t cc_xxh64_u64(uint64_t v, uint64_t seed) noexcept nogil
    void cc_md5_words(const void* data, size_t length, uint32_t* out) noexcept nogil
    uint64_t cc_ketama_hash(const void* data, size_t length) noexcept nogil
    int32_t cc_jump(uint64_t key, int32_t buckets) noexcept nogil
    void cc_jump_many(const uint64_t* keys, Py_ssize_t n, int32_t buckets, int32_t* out) noexcept nogil
    uint64_t cc_fmix64(uint64_t z) noexcept nogil
    ctypedef struct cc_ring:
        const uint64_t* points
        const int32_t* owners
        const uint32_t* index
        const int32_t* succ
        uint64_t hmask
        Py_ssize_t npoints
        int shift
        int width
    Py_ssize_t cc_ring_find(const cc_ring* r, uint64_t h) noexcept nogil
    void cc_prefetch(const void* p) noexcept nogil
    enum: CC_PAD
    void cc_ring_build_index(const uint64_t* points, Py_ssize_t n, int shift, int bits,
                             uint32_t* index) noexcept nogil
    void cc_ring_build_succ(const int32_t* owners, Py_ssize_t n, int width, int64_t* stamp,
                            int32_t* succ) noexcept nogil
    void cc_ring_walk(const cc_ring* r, Py_ssize_t i, int want, uint8_t* seen,
                      int32_t* out) noexcept nogil


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
        tmp = <int32_t*>malloc(want * sizeof(int32_t))
        seen = <uint8_t*>calloc(len(self._nodes), 1)
        if tmp == NULL or seen == NULL:
            free(tmp)
            free(seen)
            raise MemoryError()
        try:
            cc_ring_walk(&self.r, i, want, seen, tmp)
            for k in range(want):
                _tuple_set(res, k, self._nodes[tmp[k]])
        finally:
            free(tmp)
            free(seen)
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
        seen = <uint8_t*>calloc(len(self._nodes), 1)
        if seen == NULL:
            raise MemoryError()
        with nogil:
            for i in range(m):
                cc_ring_walk(&r, cc_ring_find(&r, hv[i]), want, seen, &o[i, 0])
        free(seen)
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
