# Cython declarations of coordcore's C helpers (the .h files beside this one), for every
# native module to cimport: one definition of each helper, in C, declared once here.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "cc_common.h":
    const bint CC_DEBUG

cdef extern from "cc_endian.h":
    uint64_t cc_ld64(const unsigned char *p) noexcept nogil
    uint32_t cc_ld32(const unsigned char *p) noexcept nogil
    uint16_t cc_ld16(const unsigned char *p) noexcept nogil
    void cc_st64(unsigned char *p, uint64_t v) noexcept nogil
    void cc_st32(unsigned char *p, uint32_t v) noexcept nogil
    void cc_st16(unsigned char *p, uint16_t v) noexcept nogil

cdef extern from "cc_hash.h":
    uint64_t cc_xxh64(const void *data, size_t length, uint64_t seed) noexcept nogil
    uint64_t cc_xxh64_u64(uint64_t v, uint64_t seed) noexcept nogil
    uint64_t cc_fmix64(uint64_t z) noexcept nogil

cdef extern from "cc_md5.h":
    void cc_md5_words(const void *data, size_t length, uint32_t *out) noexcept nogil
    uint64_t cc_ketama_hash(const void *data, size_t length) noexcept nogil

cdef extern from "cc_crc32c.h":
    void cc_crc32c_init() noexcept nogil
    uint32_t cc_crc32c(uint32_t crc, const unsigned char *p, size_t n) noexcept nogil
    uint32_t cc_crc32c_sw(uint32_t crc, const unsigned char *p, size_t n) noexcept nogil  # raw: no inversions

cdef extern from "cc_jump.h":
    int32_t cc_jump(uint64_t key, int32_t buckets) noexcept nogil
    void cc_jump_many(const uint64_t *keys, Py_ssize_t n, int32_t buckets, int32_t *out) noexcept nogil

cdef extern from "cc_ring.h":
    ctypedef struct cc_ring:
        const uint64_t *points
        const int32_t *owners
        const uint32_t *index
        const int32_t *succ
        uint64_t hmask
        Py_ssize_t npoints
        int shift
        int width
    enum: CC_PAD
    Py_ssize_t cc_ring_find(const cc_ring *r, uint64_t h) noexcept nogil
    void cc_prefetch(const void *p) noexcept nogil
    void cc_ring_build_index(const uint64_t *points, Py_ssize_t n, int shift, int bits,
                             uint32_t *index) noexcept nogil
    void cc_ring_build_succ(const int32_t *owners, Py_ssize_t n, int width, int64_t *stamp,
                            int32_t *succ) noexcept nogil
    void cc_ring_walk(const cc_ring *r, Py_ssize_t i, int want, uint8_t *seen,
                      int32_t *out) noexcept nogil

cdef extern from "cc_alloc.h":
    void *cc_malloc(size_t n) noexcept nogil
    void *cc_calloc(size_t count, size_t size) noexcept nogil
    void *cc_realloc(void *p, size_t n) noexcept nogil
    void cc_free(void *p) noexcept nogil
    void *cc_pymem_malloc(size_t n) noexcept
    void *cc_pymem_realloc(void *p, size_t n) noexcept
    void cc_pymem_free(void *p) noexcept
    Py_ssize_t cc_live_blocks() noexcept nogil

cdef extern from "cc_python.h":
    object cc_tuple_alloc(object cls, Py_ssize_t n)
