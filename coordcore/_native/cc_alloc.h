/* Counted allocation: every native module allocates its C memory through these, so a
   test can read how many blocks it holds (the module's `live_blocks()`) and check that
   what a machine, ring or lane allocated comes back when it goes (tracemalloc does not
   see malloc). One counter per module (each extension has its own copy of this file's
   statics); relaxed atomics because the ring allocates without the GIL, from any thread. */
#ifndef COORDCORE_CC_ALLOC_H
#define COORDCORE_CC_ALLOC_H
#include <stdlib.h>
#include "Python.h"

static Py_ssize_t cc_live_blocks_count;

static inline void cc_count_block(Py_ssize_t d) {
    __atomic_fetch_add(&cc_live_blocks_count, d, __ATOMIC_RELAXED);
}
static inline Py_ssize_t cc_live_blocks(void) {
    return __atomic_load_n(&cc_live_blocks_count, __ATOMIC_RELAXED);
}

static inline void *cc_malloc(size_t n) {
    void *p = malloc(n);
    if (p) cc_count_block(1);
    return p;
}
static inline void *cc_calloc(size_t count, size_t size) {
    void *p = calloc(count, size);
    if (p) cc_count_block(1);
    return p;
}
/* As realloc, for n > 0 (realloc(p, 0) may or may not free p: callers never ask). */
static inline void *cc_realloc(void *old, size_t n) {
    void *p = realloc(old, n);
    if (p && !old) cc_count_block(1);
    return p;
}
static inline void cc_free(void *p) {
    if (p) { cc_count_block(-1); free(p); }
}

/* The same over Python's allocator (the wire buffers use it: pymalloc is quicker for
   their small sizes, and tracemalloc sees them too). */
static inline void *cc_pymem_malloc(size_t n) {
    void *p = PyMem_Malloc(n);
    if (p) cc_count_block(1);
    return p;
}
static inline void *cc_pymem_realloc(void *old, size_t n) {
    void *p = PyMem_Realloc(old, n);
    if (p && !old) cc_count_block(1);
    return p;
}
static inline void cc_pymem_free(void *p) {
    if (p) { cc_count_block(-1); PyMem_Free(p); }
}

#endif
